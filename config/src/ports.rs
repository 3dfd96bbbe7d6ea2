//! Protocol/port specifications (`tcp/5432`, `udp`, `icmp`, `any`) and sets of them.
//!
//! A [`PortSet`] is kept in one canonical form (sorted, merged ranges per
//! protocol) so that equal sets serialise to equal strings: the compiler, the
//! audit and the node's filter all compare sets, never spellings.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a port specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("unknown protocol {0:?}: expected tcp, udp, icmp, other or any")]
    UnknownProto(String),
    #[error("{0:?} is not a port number (0-65535)")]
    BadPort(String),
    #[error("port range {0}-{1} is reversed: the first port must not exceed the second")]
    Reversed(u16, u16),
    #[error("{0} takes no port numbers")]
    NoPorts(&'static str),
}

/// The protocols a rule can name. `Other` is every IP protocol that is not
/// TCP, UDP or ICMP/ICMPv6 (it appears when a deny cuts a hole in `any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl Proto {
    /// The canonical lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Other => "other",
        }
    }

    /// Classifies an IP protocol number (IPv4 protocol / IPv6 next header).
    pub const fn from_ip_proto(n: u8) -> Proto {
        match n {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 | 58 => Proto::Icmp,
            _ => Proto::Other,
        }
    }

    const fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

/// One element of a rule's `ports` list, as written by a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every protocol and port.
    Any,
    /// One protocol; for TCP/UDP optionally a port range (inclusive).
    Proto(Proto, Option<(u16, u16)>),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PortSpec::Any => f.write_str("any"),
            PortSpec::Proto(p, None) => f.write_str(p.as_str()),
            PortSpec::Proto(p, Some((a, b))) if a == b => write!(f, "{}/{a}", p.as_str()),
            PortSpec::Proto(p, Some((a, b))) => write!(f, "{}/{a}-{b}", p.as_str()),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, PortError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::BadPort(s.to_string()));
    }
    s.parse::<u16>()
        .map_err(|_| PortError::BadPort(s.to_string()))
}

impl FromStr for PortSpec {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (proto, ports) = match s.split_once('/') {
            Some((p, r)) => (p, Some(r)),
            None => (s, None),
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "any" if ports.is_none() => return Ok(PortSpec::Any),
            "any" => return Err(PortError::NoPorts("any")),
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "other" => Proto::Other,
            other => return Err(PortError::UnknownProto(other.to_string())),
        };
        let Some(range) = ports else {
            return Ok(PortSpec::Proto(proto, None));
        };
        if !proto.has_ports() {
            return Err(PortError::NoPorts(proto.as_str()));
        }
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let p = parse_port(range)?;
                (p, p)
            }
        };
        if a > b {
            return Err(PortError::Reversed(a, b));
        }
        Ok(PortSpec::Proto(proto, Some((a, b))))
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Sorted, disjoint, non-adjacent inclusive ranges over 0..=65535.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Ranges(Vec<(u16, u16)>);

impl Ranges {
    const FULL: (u16, u16) = (0, u16::MAX);

    fn full() -> Self {
        Ranges(vec![Self::FULL])
    }

    fn is_full(&self) -> bool {
        *self.0 == [Self::FULL]
    }

    /// Sorts and merges overlapping or adjacent ranges.
    fn normalize(&mut self) {
        self.0.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match out.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        self.0 = out;
    }

    fn insert(&mut self, r: (u16, u16)) {
        self.0.push(r);
        self.normalize();
    }

    fn union(&mut self, other: &Ranges) {
        if other.0.is_empty() {
            return;
        }
        self.0.extend_from_slice(&other.0);
        self.normalize();
    }

    fn subtract(&mut self, other: &Ranges) {
        if other.0.is_empty() || self.0.is_empty() {
            return;
        }
        let mut cur = std::mem::take(&mut self.0);
        for &(da, db) in &other.0 {
            let mut next = Vec::with_capacity(cur.len() + 1);
            for (a, b) in cur {
                if db < a || da > b {
                    next.push((a, b));
                    continue;
                }
                if a < da {
                    next.push((a, da - 1));
                }
                if b > db {
                    next.push((db + 1, b));
                }
            }
            cur = next;
        }
        self.0 = cur;
    }

    fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= p && p <= b)
    }
}

/// The contents of a [`PortSet`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Sets {
    tcp: Ranges,
    udp: Ranges,
    icmp: bool,
    other: bool,
}

/// A canonical set of protocol/port pairs: what one node may open to another.
///
/// Shared behind one thin `Arc`: sets are built once per class pair and
/// cloned into every peer entry of every netmap (millions in a large mesh),
/// so a clone must be one reference count and the handle one word.
/// Mutation copies on write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSet(Arc<Sets>);

impl Default for PortSet {
    fn default() -> Self {
        static EMPTY: std::sync::OnceLock<PortSet> = std::sync::OnceLock::new();
        EMPTY
            .get_or_init(|| PortSet(Arc::new(Sets::default())))
            .clone()
    }
}

impl PortSet {
    /// The empty set: nothing allowed.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every protocol and port.
    pub fn any() -> Self {
        Self(Arc::new(Sets {
            tcp: Ranges::full(),
            udp: Ranges::full(),
            icmp: true,
            other: true,
        }))
    }

    /// True when nothing is in the set.
    pub fn is_empty(&self) -> bool {
        let s = &*self.0;
        s.tcp.0.is_empty() && s.udp.0.is_empty() && !s.icmp && !s.other
    }

    /// Builds a set from a list of specs.
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a PortSpec>) -> Self {
        let mut s = Self::empty();
        for spec in specs {
            s.insert(*spec);
        }
        s
    }

    /// Adds one spec.
    pub fn insert(&mut self, spec: PortSpec) {
        let PortSpec::Proto(proto, range) = spec else {
            *self = Self::any();
            return;
        };
        let s = Arc::make_mut(&mut self.0);
        match proto {
            Proto::Tcp => s.tcp.insert(range.unwrap_or(Ranges::FULL)),
            Proto::Udp => s.udp.insert(range.unwrap_or(Ranges::FULL)),
            Proto::Icmp => s.icmp = true,
            Proto::Other => s.other = true,
        }
    }

    /// `self ∪= other`.
    pub fn union_with(&mut self, other: &PortSet) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other.clone();
            return;
        }
        let (s, o) = (Arc::make_mut(&mut self.0), &*other.0);
        s.tcp.union(&o.tcp);
        s.udp.union(&o.udp);
        s.icmp |= o.icmp;
        s.other |= o.other;
    }

    /// `self −= other`.
    pub fn subtract(&mut self, other: &PortSet) {
        if other.is_empty() || self.is_empty() {
            return;
        }
        let (s, o) = (Arc::make_mut(&mut self.0), &*other.0);
        s.tcp.subtract(&o.tcp);
        s.udp.subtract(&o.udp);
        s.icmp &= !o.icmp;
        s.other &= !o.other;
    }

    /// True when a new flow of this IP protocol number and destination port
    /// (ignored for protocols without ports) is in the set.
    pub fn allows(&self, ip_proto: u8, dst_port: u16) -> bool {
        let s = &*self.0;
        match Proto::from_ip_proto(ip_proto) {
            Proto::Tcp => s.tcp.contains(dst_port),
            Proto::Udp => s.udp.contains(dst_port),
            Proto::Icmp => s.icmp,
            Proto::Other => s.other,
        }
    }

    /// True when every element of `self` is in `other`.
    pub fn is_subset(&self, other: &PortSet) -> bool {
        let mut rest = self.clone();
        rest.subtract(other);
        rest.is_empty()
    }

    /// The canonical list of specs, in a fixed order: `any`, or tcp ranges,
    /// udp ranges, icmp, other.
    pub fn to_specs(&self) -> Vec<PortSpec> {
        let s = &*self.0;
        if s.tcp.is_full() && s.udp.is_full() && s.icmp && s.other {
            return vec![PortSpec::Any];
        }
        let mut out = Vec::new();
        for (proto, ranges) in [(Proto::Tcp, &s.tcp), (Proto::Udp, &s.udp)] {
            if ranges.is_full() {
                out.push(PortSpec::Proto(proto, None));
            } else {
                out.extend(ranges.0.iter().map(|&r| PortSpec::Proto(proto, Some(r))));
            }
        }
        if s.icmp {
            out.push(PortSpec::Proto(Proto::Icmp, None));
        }
        if s.other {
            out.push(PortSpec::Proto(Proto::Other, None));
        }
        out
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let specs = self.to_specs();
        if specs.is_empty() {
            return f.write_str("(none)");
        }
        for (i, s) in specs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_specs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let specs = Vec::<PortSpec>::deserialize(d)?;
        Ok(PortSet::from_specs(&specs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(specs: &[&str]) -> PortSet {
        let v: Vec<PortSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
        PortSet::from_specs(&v)
    }

    fn strs(s: &PortSet) -> Vec<String> {
        s.to_specs().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parse_and_display() {
        for s in [
            "tcp/5432",
            "tcp/8000-8100",
            "udp/53",
            "tcp",
            "udp",
            "icmp",
            "any",
            "other",
        ] {
            assert_eq!(s.parse::<PortSpec>().unwrap().to_string(), s);
        }
        assert_eq!(
            "tcp/80-80".parse::<PortSpec>().unwrap().to_string(),
            "tcp/80"
        );
        assert_eq!(
            "tcp/70000".parse::<PortSpec>(),
            Err(PortError::BadPort("70000".into()))
        );
        assert_eq!(
            "tcp/90-80".parse::<PortSpec>(),
            Err(PortError::Reversed(90, 80))
        );
        assert!("icmp/8".parse::<PortSpec>().is_err());
        assert!("sctp/1".parse::<PortSpec>().is_err());
        assert!("tcp/".parse::<PortSpec>().is_err());
        assert!("tcp/-1".parse::<PortSpec>().is_err());
        assert!("tcp/+1".parse::<PortSpec>().is_err());
    }

    #[test]
    fn algebra() {
        let mut s = set(&["tcp/8000-8100", "tcp/8101-8200", "tcp/22"]);
        assert_eq!(strs(&s), ["tcp/22", "tcp/8000-8200"]);
        s.subtract(&set(&["tcp/8050"]));
        assert_eq!(strs(&s), ["tcp/22", "tcp/8000-8049", "tcp/8051-8200"]);
        let mut any = PortSet::any();
        assert_eq!(strs(&any), ["any"]);
        any.subtract(&set(&["tcp/22"]));
        assert_eq!(
            strs(&any),
            ["tcp/0-21", "tcp/23-65535", "udp", "icmp", "other"]
        );
        assert!(any.allows(6, 80) && !any.allows(6, 22) && any.allows(1, 0) && any.allows(47, 0));
        any.subtract(&PortSet::any());
        assert!(any.is_empty());
        assert!(set(&["tcp/80"]).is_subset(&set(&["tcp"])));
        assert!(!set(&["udp/53"]).is_subset(&set(&["tcp"])));
    }

    #[test]
    fn serde_canonical() {
        let s: PortSet = serde_json::from_str(r#"["tcp/443","tcp/442","icmp"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"["tcp/442-443","icmp"]"#
        );
    }
}
