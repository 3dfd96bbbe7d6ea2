//! The netmap: everything one node is told about the mesh.
//!
//! This is also the node <-> coordinator wire format and the file format of
//! `segmeshctl policy netmap --json`. It is pinned by golden fixtures
//! (`config/tests/fixtures/`); change [`NETMAP_FORMAT`] when a change is not
//! backwards compatible. Unknown fields are ignored on read (a newer
//! coordinator may add optional fields), but a different `format` is refused.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::{Labels, NodeName, PublicKey};
use crate::ports::PortSet;

/// The netmap format this build reads and writes.
pub const NETMAP_FORMAT: u32 = 1;

/// What one node is told: itself, its peers, and what it may exchange with each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMap {
    /// Format of this document; see [`NETMAP_FORMAT`].
    pub format: u32,
    /// Monotonic per node, assigned by whoever distributes netmaps (0 offline).
    pub version: u64,
    /// The node this netmap is for.
    pub node: SelfNode,
    /// Overlay prefixes the node routes into its tunnel interface.
    #[serde(default)]
    pub overlay: Vec<IpNet>,
    /// Permitted peers, sorted by public key.
    pub peers: Vec<Peer>,
}

/// The receiving node itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfNode {
    pub name: NodeName,
    pub public_key: PublicKey,
    /// Overlay addresses (host addresses, IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub labels: Labels,
}

/// One permitted peer.
///
/// Need-to-know: `name`, `labels` and `endpoints` are present only when
/// `outbound` is non-empty, i.e. when this node may open flows to the peer. A
/// peer that may only contact us is known by key and overlay addresses alone,
/// which is what WireGuard needs to accept it; its endpoint is learned from
/// its handshake.
///
/// The list and map fields are shared (`Arc`): the compiler puts the same
/// peer into hundreds of netmaps, and copying them per netmap made a full
/// compile allocation-bound (docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub public_key: PublicKey,
    /// The peer's overlay addresses as /32 or /128 networks.
    pub allowed_ips: Arc<[IpNet]>,
    /// What this node may open to the peer.
    pub outbound: PortSet,
    /// What the peer may open to this node.
    pub inbound: PortSet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<NodeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Arc<Labels>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Arc<[SocketAddr]>>,
}

/// Why a netmap document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum NetMapError {
    #[error("netmap is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("netmap format {found} is not supported (this build reads format {NETMAP_FORMAT})")]
    Format { found: u32 },
    #[error("peer {0} appears twice")]
    DuplicatePeer(PublicKey),
    #[error("peer {0} is this node's own key")]
    SelfPeer(PublicKey),
    #[error("allowed IP {net} of peer {peer} overlaps another peer's or this node's address")]
    Overlap { peer: PublicKey, net: IpNet },
    #[error("peer {0} carries a name, labels or endpoints but no outbound ports (need-to-know)")]
    NeedToKnow(PublicKey),
}

impl NetMap {
    /// Parses and validates a netmap document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, NetMapError> {
        let map: NetMap = serde_json::from_slice(bytes)?;
        map.validate()?;
        Ok(map)
    }

    /// Serialises as pretty JSON with a trailing newline (the file form).
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Checks the invariants a node relies on: a known format, unique peers,
    /// no overlapping allowed IPs, and need-to-know.
    pub fn validate(&self) -> Result<(), NetMapError> {
        if self.format != NETMAP_FORMAT {
            return Err(NetMapError::Format { found: self.format });
        }
        let mut keys = BTreeSet::new();
        let mut nets: Vec<IpNet> = self
            .node
            .addresses
            .iter()
            .map(|a| IpNet::from(*a))
            .collect();
        for p in &self.peers {
            if p.public_key == self.node.public_key {
                return Err(NetMapError::SelfPeer(p.public_key));
            }
            if !keys.insert(p.public_key) {
                return Err(NetMapError::DuplicatePeer(p.public_key));
            }
            let hidden = p.name.is_some() || p.labels.is_some() || p.endpoints.is_some();
            if p.outbound.is_empty() && hidden {
                return Err(NetMapError::NeedToKnow(p.public_key));
            }
            for net in p.allowed_ips.iter() {
                if nets.iter().any(|n| n.contains(net) || net.contains(n)) {
                    return Err(NetMapError::Overlap {
                        peer: p.public_key,
                        net: *net,
                    });
                }
                nets.push(*net);
            }
        }
        Ok(())
    }

    /// The peer with this key, if permitted.
    pub fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.public_key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    fn sample() -> NetMap {
        NetMap {
            format: NETMAP_FORMAT,
            version: 3,
            node: SelfNode {
                name: NodeName::new("api-1").unwrap(),
                public_key: key(1),
                addresses: vec!["100.80.0.2".parse().unwrap()],
                labels: Labels::from([("role".into(), "api".into())]),
            },
            overlay: vec!["100.80.0.0/16".parse().unwrap()],
            peers: vec![Peer {
                public_key: key(2),
                allowed_ips: vec!["100.80.0.1/32".parse().unwrap()].into(),
                outbound: PortSet::empty(),
                inbound: serde_json::from_str(r#"["tcp/8080"]"#).unwrap(),
                name: None,
                labels: None,
                endpoints: None,
            }],
        }
    }

    #[test]
    fn roundtrip_and_validate() {
        let m = sample();
        let back = NetMap::from_json(m.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(back, m);
        let mut bad = m.clone();
        bad.peers[0].name = Some(NodeName::new("web-1").unwrap());
        assert!(matches!(bad.validate(), Err(NetMapError::NeedToKnow(_))));
        let mut bad = m.clone();
        bad.peers.push(bad.peers[0].clone());
        assert!(matches!(bad.validate(), Err(NetMapError::DuplicatePeer(_))));
        let mut bad = m.clone();
        bad.peers[0].allowed_ips = vec!["100.80.0.0/24".parse().unwrap()].into();
        assert!(matches!(bad.validate(), Err(NetMapError::Overlap { .. })));
        let mut bad = m;
        bad.format = 9;
        assert!(matches!(
            bad.validate(),
            Err(NetMapError::Format { found: 9 })
        ));
    }
}
