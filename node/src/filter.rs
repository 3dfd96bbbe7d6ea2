//! Stateful packet filter: connection tracking for TCP, UDP, ICMP and other
//! protocols, keyed by 5-tuple.
//!
//! A new flow is admitted iff the peer's port set for that direction allows
//! it (`outbound` for flows this node opens, `inbound` for flows the peer
//! opens). Packets of a tracked flow pass in both directions, so replies
//! never need a rule; ICMP errors pass when they quote a tracked flow. Both
//! ends of a tunnel run this filter, so neither has to trust the other.
//! Only admitted flows take state; refused ones are remembered briefly and
//! in bounded space, just so a retransmitting client yields one flow event.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use segmesh_config::{PortSet, PublicKey};

use crate::packet::{
    Class, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, TCP_FIN, TCP_RST,
};
use crate::status::{Direction, Verdict};

/// The flow tables' hash: keyed with a random per-process key (flow keys
/// come from peers' packets, so collisions must not be predictable) and
/// several times cheaper than std's SipHash, which showed up as a tenth of a
/// packet's instructions.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// Timeouts, close to Linux conntrack's defaults so that long idle TCP
/// sessions (database pools) survive like they do without segmesh.
const TCP_UNREPLIED: Duration = Duration::from_secs(60);
const TCP_ESTABLISHED: Duration = Duration::from_secs(5 * 24 * 3600);
const TCP_CLOSING: Duration = Duration::from_secs(30);
const UDP_UNREPLIED: Duration = Duration::from_secs(30);
const UDP_REPLIED: Duration = Duration::from_secs(180);
const ICMP_TIMEOUT: Duration = Duration::from_secs(30);
const OTHER_UNREPLIED: Duration = Duration::from_secs(60);
const OTHER_REPLIED: Duration = Duration::from_secs(600);
/// How long a refused flow is remembered (to report it once).
const DENIED_MEMORY: Duration = Duration::from_secs(10);
/// How long later fragments of an admitted first fragment are accepted.
const FRAGMENT_MEMORY: Duration = Duration::from_secs(5);

/// Default bound on tracked flows; a full table refuses new flows.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
const MAX_DENIED: usize = 4096;
const MAX_FRAGMENTS: usize = 4096;

/// The filter's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Part of (or related to) a tracked flow.
    Pass,
    /// The first packet of a flow, with the verdict; worth a flow event.
    New(Verdict),
    /// Refused without a new event (a refused flow seen again, or an
    /// orphan fragment or ICMP error).
    Drop,
}

#[derive(Debug, Clone)]
struct Entry {
    peer: PublicKey,
    direction: Direction,
    /// True when the flow was opened against its stored key's orientation
    /// (see [`stored`]).
    flipped: bool,
    /// True once a packet travelled against the original direction.
    replied: bool,
    closing: bool,
    expires: Instant,
}

type FragKey = (IpAddr, IpAddr, u8, u32);

/// The key a flow is stored under, the same for both directions (the end
/// with the lower port as source; on equal ports the lower address), and
/// whether `key` is reversed from it. One entry per flow means one table
/// probe per packet: with the opening direction's key as the index, every
/// reply (half of a TCP stream's packets, every echo reply) first missed
/// and then probed again. Ports first because they are cheap to compare
/// and nearly always differ.
fn stored(key: &FlowKey) -> (FlowKey, bool) {
    let forward = match key.src_port.cmp(&key.dst_port) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => key.src <= key.dst,
    };
    if forward {
        (*key, false)
    } else {
        (key.reversed(), true)
    }
}

/// Connection tracking state of one node.
#[derive(Debug)]
pub struct Filter {
    flows: HashMap<FlowKey, Entry>,
    denied: HashMap<FlowKey, Instant>,
    fragments: HashMap<FragKey, Instant>,
    max_flows: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FLOWS)
    }
}

fn timeout(proto: u8, replied: bool, closing: bool) -> Duration {
    match (proto, replied) {
        (PROTO_TCP, _) if closing => TCP_CLOSING,
        (PROTO_TCP, false) => TCP_UNREPLIED,
        (PROTO_TCP, true) => TCP_ESTABLISHED,
        (PROTO_UDP, false) => UDP_UNREPLIED,
        (PROTO_UDP, true) => UDP_REPLIED,
        (PROTO_ICMP | PROTO_ICMPV6, _) => ICMP_TIMEOUT,
        (_, false) => OTHER_UNREPLIED,
        (_, true) => OTHER_REPLIED,
    }
}

impl Filter {
    /// A filter tracking at most `max_flows` flows.
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: HashMap::default(),
            denied: HashMap::default(),
            fragments: HashMap::default(),
            max_flows,
        }
    }

    /// Decides on one packet exchanged with `peer`. `direction` says who
    /// would be opening the flow if it is new, and `ports` is the peer's port
    /// set for that direction.
    pub fn check(
        &mut self,
        now: Instant,
        pkt: &Packet,
        peer: &PublicKey,
        direction: Direction,
        ports: &PortSet,
    ) -> Decision {
        let key = &pkt.key;
        if let Some(frag) = pkt.fragment.filter(|f| !f.first) {
            let fk = (key.src, key.dst, key.proto, frag.id);
            return match self.fragments.get(&fk) {
                Some(&exp) if exp > now => Decision::Pass,
                _ => Decision::Drop,
            };
        }
        if let Class::Related(inner) = pkt.class {
            let tracked = self
                .flows
                .get(&stored(&inner).0)
                .is_some_and(|e| e.peer == *peer && e.expires > now);
            return if tracked {
                Decision::Pass
            } else {
                Decision::Drop
            };
        }
        let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let (k, flipped) = stored(key);
        if let Some(e) = self.flows.get_mut(&k)
            && e.peer == *peer
            && e.expires > now
        {
            e.replied |= flipped != e.flipped;
            e.closing |= closing;
            e.expires = now + timeout(k.proto, e.replied, e.closing);
            self.note_fragment(now, pkt);
            return Decision::Pass;
        }
        let allowed = pkt.class == Class::Flow && ports.allows(key.proto, key.dst_port);
        if allowed && self.flows.len() >= self.max_flows {
            self.sweep(now);
        }
        if allowed && self.flows.len() < self.max_flows {
            let entry = Entry {
                peer: *peer,
                direction,
                flipped,
                replied: false,
                closing,
                expires: now + timeout(key.proto, false, closing),
            };
            self.flows.insert(k, entry);
            self.note_fragment(now, pkt);
            return Decision::New(Verdict::Allow);
        }
        if self.first_refusal(now, key) {
            Decision::New(Verdict::Deny)
        } else {
            Decision::Drop
        }
    }

    /// Remembers a refused flow for a few seconds; true the first time, so
    /// a retransmitting sender yields one flow event, not one per packet.
    pub fn first_refusal(&mut self, now: Instant, key: &FlowKey) -> bool {
        match self.denied.get(key) {
            Some(&exp) if exp > now => false,
            _ => {
                if self.denied.len() >= MAX_DENIED {
                    self.denied.retain(|_, exp| *exp > now);
                }
                if self.denied.len() < MAX_DENIED {
                    self.denied.insert(*key, now + DENIED_MEMORY);
                }
                true
            }
        }
    }

    fn note_fragment(&mut self, now: Instant, pkt: &Packet) {
        if let Some(f) = pkt.fragment.filter(|f| f.first)
            && self.fragments.len() < MAX_FRAGMENTS
        {
            let k = &pkt.key;
            self.fragments
                .insert((k.src, k.dst, k.proto, f.id), now + FRAGMENT_MEMORY);
        }
    }

    /// Forgets expired state; call about once a second.
    pub fn sweep(&mut self, now: Instant) {
        self.flows.retain(|_, e| e.expires > now);
        self.denied.retain(|_, exp| *exp > now);
        self.fragments.retain(|_, exp| *exp > now);
    }

    /// Drops tracked flows that `keep` no longer admits (after a netmap
    /// change: a removed peer, or ports taken away). `keep` sees the peer,
    /// who opened the flow, and its key in the opening direction.
    pub fn revalidate(&mut self, mut keep: impl FnMut(&PublicKey, Direction, &FlowKey) -> bool) {
        self.flows.retain(|k, e| {
            let opened = if e.flipped { k.reversed() } else { *k };
            keep(&e.peer, e.direction, &opened)
        });
        self.denied.clear();
    }

    /// Number of tracked flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
// Tests need one real origin instant; all later times are offsets from it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::craft;
    use crate::packet::{TCP_ACK, TCP_SYN, parse};

    fn ports(s: &str) -> PortSet {
        serde_json::from_str(s).unwrap()
    }

    fn addrs() -> (IpAddr, IpAddr) {
        ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap())
    }

    const PEER: PublicKey = PublicKey::from_bytes([2; 32]);

    #[test]
    fn outbound_flow_and_reply() {
        let (me, them) = addrs();
        let t = Instant::now();
        let mut f = Filter::default();
        let out = ports(r#"["tcp/5432"]"#);
        let syn = parse(&craft::tcp(me, 40000, them, 5432, TCP_SYN, &[])).unwrap();
        assert_eq!(
            f.check(t, &syn, &PEER, Direction::Outbound, &out),
            Decision::New(Verdict::Allow)
        );
        // The reply travels the other way and is checked as inbound with an
        // empty inbound set: it passes because it is tracked.
        let synack = parse(&craft::tcp(them, 5432, me, 40000, TCP_SYN | TCP_ACK, &[])).unwrap();
        assert_eq!(
            f.check(t, &synack, &PEER, Direction::Inbound, &PortSet::empty()),
            Decision::Pass
        );
        // Another peer cannot ride on the flow.
        let other = PublicKey::from_bytes([3; 32]);
        assert_ne!(
            f.check(t, &synack, &other, Direction::Inbound, &PortSet::empty()),
            Decision::Pass
        );
        // Denied port: refused once with an event, then quietly.
        let bad = parse(&craft::tcp(me, 40001, them, 22, TCP_SYN, &[])).unwrap();
        assert_eq!(
            f.check(t, &bad, &PEER, Direction::Outbound, &out),
            Decision::New(Verdict::Deny)
        );
        assert_eq!(
            f.check(t, &bad, &PEER, Direction::Outbound, &out),
            Decision::Drop
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn timeouts_and_echo() {
        let (me, them) = addrs();
        let t = Instant::now();
        let mut f = Filter::default();
        let icmp = ports(r#"["icmp"]"#);
        // An unsolicited echo reply never opens a flow.
        let rep = parse(&craft::echo_reply(them, me, 5, 1)).unwrap();
        assert_eq!(
            f.check(t, &rep, &PEER, Direction::Inbound, &icmp),
            Decision::New(Verdict::Deny)
        );
        let req = parse(&craft::echo_request(me, them, 5, 1)).unwrap();
        assert_eq!(
            f.check(t, &req, &PEER, Direction::Outbound, &icmp),
            Decision::New(Verdict::Allow)
        );
        assert_eq!(
            f.check(t, &rep, &PEER, Direction::Inbound, &PortSet::empty()),
            Decision::Pass
        );
        let later = t + ICMP_TIMEOUT + Duration::from_secs(1);
        f.sweep(later);
        assert!(f.is_empty());
        assert_eq!(
            f.check(later, &rep, &PEER, Direction::Inbound, &PortSet::empty()),
            Decision::New(Verdict::Deny)
        );
    }

    #[test]
    fn related_icmp_error_and_revalidate() {
        let (me, them) = addrs();
        let t = Instant::now();
        let mut f = Filter::default();
        let udp = craft::udp(me, 5000, them, 53, b"q");
        let p = parse(&udp).unwrap();
        assert_eq!(
            f.check(t, &p, &PEER, Direction::Outbound, &ports(r#"["udp/53"]"#)),
            Decision::New(Verdict::Allow)
        );
        let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&udp);
        let e = parse(&craft::ip(them, me, PROTO_ICMP, err, Some(2))).unwrap();
        assert_eq!(
            f.check(t, &e, &PEER, Direction::Inbound, &PortSet::empty()),
            Decision::Pass
        );
        f.revalidate(|_, _, k| k.dst_port != 53);
        assert_eq!(
            f.check(t, &e, &PEER, Direction::Inbound, &PortSet::empty()),
            Decision::Drop
        );
    }

    #[test]
    fn either_end_may_open_a_flow_and_its_replies_keep_it_alive() {
        let (low, high) = addrs();
        let t = Instant::now();
        // Whichever end sorts first in the stored key (by port, or by
        // address on equal ports), the opener's packets and the replies are
        // one flow, a reply extends it, and revalidate sees the key in the
        // opening direction.
        for (me, them) in [(low, high), (high, low)] {
            for (mine, theirs) in [(5000, 53), (53, 5000), (4242, 4242)] {
                let mut f = Filter::default();
                let q = parse(&craft::udp(me, mine, them, theirs, b"q")).unwrap();
                let a = parse(&craft::udp(them, theirs, me, mine, b"a")).unwrap();
                assert_eq!(
                    f.check(t, &q, &PEER, Direction::Outbound, &PortSet::any()),
                    Decision::New(Verdict::Allow)
                );
                assert_eq!(
                    f.check(t, &a, &PEER, Direction::Inbound, &PortSet::empty()),
                    Decision::Pass
                );
                assert_eq!(f.len(), 1, "one entry for both directions");
                // Unreplied it would be gone after 30 s; replied, 180 s.
                let later = t + UDP_UNREPLIED + Duration::from_secs(1);
                f.sweep(later);
                assert_eq!(
                    f.check(later, &q, &PEER, Direction::Outbound, &PortSet::empty()),
                    Decision::Pass
                );
                let mut seen = Vec::new();
                f.revalidate(|_, dir, k| {
                    seen.push((dir, *k));
                    true
                });
                assert_eq!(seen, vec![(Direction::Outbound, q.key)]);
            }
        }
    }

    #[test]
    fn full_table_refuses() {
        let (me, them) = addrs();
        let t = Instant::now();
        let mut f = Filter::new(1);
        let any = PortSet::any();
        let a = parse(&craft::udp(me, 1, them, 9, b"")).unwrap();
        let b = parse(&craft::udp(me, 2, them, 9, b"")).unwrap();
        assert_eq!(
            f.check(t, &a, &PEER, Direction::Outbound, &any),
            Decision::New(Verdict::Allow)
        );
        assert_eq!(
            f.check(t, &b, &PEER, Direction::Outbound, &any),
            Decision::New(Verdict::Deny)
        );
        let later = t + UDP_UNREPLIED + Duration::from_secs(1);
        assert_eq!(
            f.check(later, &b, &PEER, Direction::Outbound, &any),
            Decision::New(Verdict::Allow)
        );
    }
}
