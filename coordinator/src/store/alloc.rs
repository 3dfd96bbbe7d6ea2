//! Overlay address allocation: the lowest free host address of each prefix.
//!
//! Pure, so every store backend allocates the same way; the backend calls it
//! inside its enrolling transaction with the addresses currently held, and a
//! UNIQUE constraint catches any race the transaction isolation would miss.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// The overlay prefixes nodes get their addresses from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefixes {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

impl Default for Prefixes {
    fn default() -> Self {
        Self {
            v4: Ipv4Net::new(Ipv4Addr::new(100, 80, 0, 0), 16).unwrap_or_default(),
            v6: Ipv6Net::new(Ipv6Addr::new(0xfd5e, 0x6d00, 0, 0, 0, 0, 0, 0), 64)
                .unwrap_or_default(),
        }
    }
}

/// The lowest host address of `net` not in `used`. The network address and
/// (for IPv4) the broadcast address are never handed out.
pub fn next_v4(net: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(net.network()).checked_add(1)?;
    let last = u32::from(net.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
}

/// The lowest address of `net` after the network address not in `used`.
pub fn next_v6(net: Ipv6Net, used: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let first = u128::from(net.network()).checked_add(1)?;
    let last = u128::from(net.broadcast());
    let mut a = first;
    // `used` is finite, so at most used.len() + 1 candidates are examined.
    while a <= last {
        let cand = Ipv6Addr::from(a);
        if !used.contains(&cand) {
            return Some(cand);
        }
        a = a.checked_add(1)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_and_exhaustion() {
        let net: Ipv4Net = "10.9.0.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(next_v4(net, &used), Some(Ipv4Addr::new(10, 9, 0, 1)));
        used.insert(Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(next_v4(net, &used), Some(Ipv4Addr::new(10, 9, 0, 2)));
        used.insert(Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(next_v4(net, &used), None, "broadcast is never used");
        used.remove(&Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(next_v4(net, &used), Some(Ipv4Addr::new(10, 9, 0, 1)));

        let net6: Ipv6Net = "fd00::/126".parse().unwrap();
        let mut used6 = BTreeSet::new();
        for want in ["fd00::1", "fd00::2", "fd00::3"] {
            let got = next_v6(net6, &used6).unwrap();
            assert_eq!(got, want.parse::<Ipv6Addr>().unwrap());
            used6.insert(got);
        }
        assert_eq!(next_v6(net6, &used6), None);
    }
}
