//! The node <-> coordinator control protocol: join tokens and the JSON
//! bodies of `/v1/enroll`, `/v1/stream`, `/v1/ack` and `/v1/endpoints`.
//!
//! Golden fixtures in the tests pin the JSON shapes; a change there is a
//! protocol change.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};

use crate::identity::{NodeName, PublicKey};
use crate::netmap::{NetMap, Peer};

/// Prefix of a join token; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "smj1.";

/// A join token: where the coordinator is, the enrollment secret, and the
/// SHA-256 of the coordinator's CA certificate (as `kubeadm join` pins it),
/// so the node's first contact is authenticated without a public PKI.
///
/// `Debug` hides the secret; only [`JoinToken::encode`] reveals it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// Coordinator base URLs (`https://host:port`), tried in order.
    pub urls: Vec<String>,
    /// 32 random bytes, base64url without padding.
    pub secret: String,
    /// Hex SHA-256 of the CA certificate DER.
    pub ca_sha256: String,
}

/// Why a join token string was rejected. Never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token must start with {TOKEN_PREFIX:?}")]
    Prefix,
    #[error("join token is not valid base64url")]
    Base64,
    #[error("join token payload is not valid: {0}")]
    Payload(String),
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("urls", &self.urls)
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Builds a token from a raw secret.
    pub fn new(urls: Vec<String>, secret: &[u8; 32], ca_sha256: String) -> Self {
        Self {
            urls,
            secret: B64URL.encode(secret),
            ca_sha256,
        }
    }

    /// The `smj1.<base64url(json)>` form given to `segmesh-node join`.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", B64URL.encode(json))
    }

    /// Parses and checks a token string.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let json = B64URL.decode(body).map_err(|_| TokenError::Base64)?;
        let t: JoinToken =
            serde_json::from_slice(&json).map_err(|e| TokenError::Payload(e.to_string()))?;
        if t.urls.is_empty() {
            return Err(TokenError::Payload("no coordinator URL".into()));
        }
        decode_secret(&t.secret).map_err(|e| TokenError::Payload(e.to_string()))?;
        let hex_ok = t.ca_sha256.len() == 64 && t.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(TokenError::Payload("ca_sha256 is not 64 hex digits".into()));
        }
        Ok(t)
    }

    /// The raw 32-byte secret.
    pub fn secret_bytes(&self) -> Result<[u8; 32], TokenError> {
        decode_secret(&self.secret)
    }
}

/// Decodes a base64url token secret into its 32 bytes.
pub fn decode_secret(s: &str) -> Result<[u8; 32], TokenError> {
    let v = B64URL.decode(s).map_err(|_| TokenError::Base64)?;
    v.try_into()
        .map_err(|_| TokenError::Payload("secret is not 32 bytes".into()))
}

/// POST /v1/enroll (no client certificate: the token authenticates).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The token's secret (base64url), not the whole token.
    pub secret: String,
    #[serde(default)]
    pub name: Option<NodeName>,
    pub public_key: PublicKey,
    /// PEM PKCS#10 request for the node's TLS key.
    pub csr_pem: String,
    #[serde(default)]
    pub endpoints: EndpointsReport,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// Reply to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub name: NodeName,
    pub addresses: Vec<IpAddr>,
    /// The node's client certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, PEM (its SHA-256 equals the token's pin).
    pub ca_pem: String,
    pub netmap: NetMap,
}

/// The node's local underlay addresses and WireGuard listen port
/// (POST /v1/endpoints and part of enrollment). The coordinator adds the
/// source address it observes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsReport {
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub listen_port: u16,
}

impl EndpointsReport {
    /// The reported addresses combined with the listen port, plus the
    /// observed source address; sorted, deduplicated. Empty when no port.
    pub fn endpoints(&self, observed: Option<IpAddr>) -> Vec<SocketAddr> {
        if self.listen_port == 0 {
            return Vec::new();
        }
        let mut v: Vec<SocketAddr> = self
            .addresses
            .iter()
            .chain(observed.iter())
            .filter(|a| !a.is_unspecified() && !a.is_loopback())
            .map(|a| SocketAddr::new(*a, self.listen_port))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A key rotation: `old` may be replaced by `new` for the named peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rotation {
    pub old: PublicKey,
    pub new: PublicKey,
}

/// One line of GET /v1/stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMessage {
    /// A full netmap (the first message, and every update: deltas are not
    /// implemented yet). `rotations` lists peer key changes the node must
    /// accept; any other key change of a known peer is refused by the node.
    Netmap {
        netmap: NetMap,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rotations: Vec<Rotation>,
    },
    /// Peer changes relative to version `base_version`, which the node
    /// holds (the stream is ordered and starts with a full netmap): drop the
    /// `remove` keys, then insert or replace the `upsert` entries; the
    /// result is version `version`. A node holding another version
    /// reconnects and gets a full netmap. Sent only when the node's own
    /// entry and the overlay are unchanged.
    Delta {
        base_version: u64,
        version: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<PublicKey>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        upsert: Vec<Peer>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rotations: Vec<Rotation>,
    },
    /// Sent every few seconds so both sides notice a dead connection.
    Heartbeat { at: i64 },
}

/// One line a node sends on its session (GET /v1/session, an HTTP/1.1
/// upgrade): what POST /v1/ack and POST /v1/endpoints carry, without a
/// second connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeMessage {
    /// The node applied this netmap version.
    Ack { version: u64 },
    /// The node's local addresses and listen port.
    Endpoints { endpoints: EndpointsReport },
}

/// POST /v1/ack: the netmap version the node applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub version: u64,
}

/// POST /v1/rotate-key: the node's new WireGuard public key. Peers receive
/// the change marked as a [`Rotation`], so their pinning accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    pub public_key: PublicKey,
}

/// Reply to a key rotation: the node's netmap version carrying the new key,
/// and how many of the peers it was pushed to applied it before the reply
/// (the coordinator waits for their acks, bounded by its ack timeout, so a
/// node that switches keys on this reply finds its peers ready).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    pub version: u64,
    #[serde(default)]
    pub peers_acked: usize,
    #[serde(default)]
    pub peers_total: usize,
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// Error body of every non-2xx API reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Labels, as the admin API and the CLI carry them.
pub type LabelMap = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_errors() {
        let t = JoinToken::new(
            vec!["https://127.0.0.1:8443".into()],
            &[7; 32],
            "ab".repeat(32),
        );
        let s = t.encode();
        assert!(s.starts_with("smj1."));
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(t.secret_bytes().unwrap(), [7; 32]);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(JoinToken::parse("smj2.abc"), Err(TokenError::Prefix));
        assert_eq!(JoinToken::parse("smj1.***"), Err(TokenError::Base64));
        let bad = JoinToken {
            ca_sha256: "zz".into(),
            ..t.clone()
        };
        assert!(matches!(
            JoinToken::parse(&bad.encode()),
            Err(TokenError::Payload(_))
        ));
        let bad = JoinToken {
            secret: "AAAA".into(),
            ..t
        };
        assert!(matches!(
            JoinToken::parse(&bad.encode()),
            Err(TokenError::Payload(_))
        ));
    }

    #[test]
    fn golden_stream_messages() {
        let hb = StreamMessage::Heartbeat { at: 5 };
        assert_eq!(
            serde_json::to_string(&hb).unwrap(),
            r#"{"type":"heartbeat","at":5}"#
        );
        let ack: AckRequest = serde_json::from_str(r#"{"version":3}"#).unwrap();
        assert_eq!(ack.version, 3);
        assert!(serde_json::from_str::<AckRequest>(r#"{"version":3,"x":1}"#).is_err());
        let rep = EndpointsReport {
            addresses: vec!["10.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            listen_port: 51820,
        };
        let eps = rep.endpoints(Some("192.0.2.9".parse().unwrap()));
        let eps: Vec<String> = eps.iter().map(ToString::to_string).collect();
        assert_eq!(eps, ["10.0.0.2:51820", "192.0.2.9:51820"]);
    }
}

/// The delta from `old` to `new` when only peers differ (same node entry,
/// overlay and format); `None` when a full netmap must be sent. Returns
/// (removed keys, inserted or replaced peers).
pub fn peer_delta(old: &NetMap, new: &NetMap) -> Option<(Vec<PublicKey>, Vec<Peer>)> {
    if old.node != new.node || old.overlay != new.overlay || old.format != new.format {
        return None;
    }
    let remove = old
        .peers
        .iter()
        .filter(|p| new.peer(&p.public_key).is_none())
        .map(|p| p.public_key)
        .collect();
    let upsert = new
        .peers
        .iter()
        .filter(|p| old.peer(&p.public_key) != Some(*p))
        .cloned()
        .collect();
    Some((remove, upsert))
}

/// Applies a delta to `base` (peers stay sorted by key) and stamps `version`.
pub fn apply_delta(base: &NetMap, version: u64, remove: &[PublicKey], upsert: &[Peer]) -> NetMap {
    let mut map = base.clone();
    map.peers.retain(|p| !remove.contains(&p.public_key));
    for peer in upsert {
        match map
            .peers
            .binary_search_by(|p| p.public_key.cmp(&peer.public_key))
        {
            Ok(i) => map.peers[i] = peer.clone(),
            Err(i) => map.peers.insert(i, peer.clone()),
        }
    }
    map.version = version;
    map
}

#[cfg(test)]
mod delta_tests {
    use super::*;
    use crate::identity::NodeName;
    use crate::netmap::{NETMAP_FORMAT, SelfNode};
    use crate::ports::PortSet;

    fn peer(k: u8, port: &str) -> Peer {
        Peer {
            public_key: PublicKey::from_bytes([k; 32]),
            allowed_ips: vec![format!("100.80.0.{k}/32").parse().unwrap()].into(),
            outbound: serde_json::from_str(&format!("[\"{port}\"]")).unwrap(),
            inbound: PortSet::empty(),
            name: Some(NodeName::new(format!("n-{k}")).unwrap()),
            labels: None,
            endpoints: None,
        }
    }

    fn map(version: u64, peers: Vec<Peer>) -> NetMap {
        NetMap {
            format: NETMAP_FORMAT,
            version,
            node: SelfNode {
                name: NodeName::new("me").unwrap(),
                public_key: PublicKey::from_bytes([1; 32]),
                addresses: vec!["100.80.0.1".parse().unwrap()],
                labels: Default::default(),
            },
            overlay: vec![],
            peers,
        }
    }

    #[test]
    fn delta_roundtrip() {
        let old = map(
            3,
            vec![peer(2, "tcp/1"), peer(3, "tcp/1"), peer(5, "tcp/1")],
        );
        let new = map(
            4,
            vec![peer(3, "tcp/2"), peer(4, "tcp/1"), peer(5, "tcp/1")],
        );
        let (remove, upsert) = peer_delta(&old, &new).unwrap();
        assert_eq!(remove, vec![PublicKey::from_bytes([2; 32])]);
        assert_eq!(upsert.len(), 2, "peer 3 changed, peer 4 added; 5 unchanged");
        assert_eq!(apply_delta(&old, 4, &remove, &upsert), new);
        let mut moved = new.clone();
        moved.node.addresses = vec!["100.80.0.9".parse().unwrap()];
        assert!(peer_delta(&old, &moved).is_none());
        let msg = StreamMessage::Delta {
            base_version: 3,
            version: 4,
            remove,
            upsert,
            rotations: vec![],
        };
        let back: StreamMessage =
            serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }
}
