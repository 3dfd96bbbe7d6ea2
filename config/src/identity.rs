//! Identity newtypes: node names, labels and WireGuard public keys.
//!
//! These are parsed once at the edge (TOML, JSON, CLI) so the rest of the code
//! never handles a bare string that might be a typo.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identity value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Node names are DNS-label-like so they can be used in hostnames and files.
    #[error(
        "invalid node name {0:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName(String),
    /// A WireGuard key is 32 bytes, written as 44 characters of standard base64.
    #[error("invalid WireGuard public key {0:?}: expected 32 bytes in base64 (44 characters)")]
    BadKey(String),
    /// Label keys and values share the name alphabet plus '/' in keys.
    #[error(
        "invalid label {0:?}: expected key=value with 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/'"
    )]
    BadLabel(String),
}

/// A node's unique name, e.g. `web-1`.
///
/// Shared (`Arc<str>`): a name is copied into every netmap that reveals the
/// node (hundreds each), so a clone must be a reference count, not an
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeName(Arc<str>);

impl NodeName {
    /// Validates and wraps a name.
    pub fn new(s: impl Into<String>) -> Result<Self, IdentityError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(Self(Arc::from(s)))
        } else {
            Err(IdentityError::BadName(s))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets maps keyed by `NodeName` be searched with a `&str` (the orders agree).
impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// Labels an admin assigned to a node (`role=web`, `env=prod`). Sorted, so that
/// serialisation and hashing are deterministic.
pub type Labels = BTreeMap<String, String>;

fn label_part_ok(s: &str, allow_slash: bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.')
                || (allow_slash && b == b'/')
        })
}

/// Parses one `key=value` label.
pub fn parse_label(s: &str) -> Result<(String, String), IdentityError> {
    match s.split_once('=') {
        Some((k, v)) if label_part_ok(k, true) && label_part_ok(v, false) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(IdentityError::BadLabel(s.to_string())),
    }
}

/// Parses `role=web,env=prod` (the CLI form) into labels.
pub fn parse_labels(s: &str) -> Result<Labels, IdentityError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_label(p.trim()))
        .collect()
}

/// Checks a label key and value pair as found in a TOML table.
pub fn validate_label(key: &str, value: &str) -> Result<(), IdentityError> {
    if label_part_ok(key, true) && label_part_ok(value, false) {
        Ok(())
    } else {
        Err(IdentityError::BadLabel(format!("{key}={value}")))
    }
}

/// A WireGuard (Curve25519) public key. Displayed as base64, like `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, the form WireGuard's UAPI uses.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|_| IdentityError::BadKey(s.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadKey(s.to_string()))?;
        Ok(Self(arr))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(NodeName::new("web-1").is_ok());
        assert!(NodeName::new("db.eu_1").is_ok());
        for bad in ["", "-web", "Web", "a b", &"x".repeat(64)] {
            assert!(NodeName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_roundtrip() {
        let k = PublicKey::from_bytes([7; 32]);
        let s = k.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>().unwrap(), k);
        assert!("AAAA".parse::<PublicKey>().is_err());
        assert_eq!(k.to_hex(), "07".repeat(32));
    }

    #[test]
    fn labels() {
        let l = parse_labels("role=web, env=prod").unwrap();
        assert_eq!(l.get("role").map(String::as_str), Some("web"));
        assert!(parse_labels("role").is_err());
        assert!(parse_labels("role=a b").is_err());
    }
}
