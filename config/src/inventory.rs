//! The inventory: every node the policy is compiled against.
//!
//! Offline it is a TOML file (`[[node]]` tables) given to `segmeshctl policy`
//! commands; the coordinator builds the same structure from its store.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::{Labels, NodeName, PublicKey};

/// Overlay prefixes used when an inventory names none.
pub const DEFAULT_OVERLAY: [&str; 2] = ["100.80.0.0/16", "fd5e:6d00::/64"];

/// All nodes known to the compiler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Overlay prefixes every node routes into its tunnel.
    #[serde(default = "default_overlay")]
    pub overlay: Vec<IpNet>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<InventoryNode>,
}

/// One node of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryNode {
    pub name: NodeName,
    #[serde(default)]
    pub labels: Labels,
    pub public_key: PublicKey,
    /// Overlay host addresses (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
    /// Underlay endpoints where the node's WireGuard socket is reachable.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

fn default_overlay() -> Vec<IpNet> {
    DEFAULT_OVERLAY
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Why an inventory was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}:{message}")]
    Parse { path: String, message: String },
    #[error("{path}: node name {name} appears twice")]
    DuplicateName { path: String, name: NodeName },
    #[error("{path}: public key {key} is used by {first} and {second}")]
    DuplicateKey {
        path: String,
        key: PublicKey,
        first: NodeName,
        second: NodeName,
    },
    #[error("{path}: address {addr} is used by {first} and {second}")]
    DuplicateAddress {
        path: String,
        addr: IpAddr,
        first: NodeName,
        second: NodeName,
    },
}

impl Inventory {
    /// Parses an inventory from TOML text; `path` is only used in messages.
    pub fn from_toml(path: &str, text: &str) -> Result<Self, InventoryError> {
        let inv: Inventory = toml::from_str(text).map_err(|e| InventoryError::Parse {
            path: path.to_string(),
            message: crate::toml_error_message(text, &e),
        })?;
        inv.check(path)?;
        Ok(inv)
    }

    /// Names, keys and addresses must be unique.
    pub fn check(&self, path: &str) -> Result<(), InventoryError> {
        let mut names = BTreeSet::new();
        let mut keys = std::collections::BTreeMap::new();
        let mut addrs = std::collections::BTreeMap::new();
        for n in &self.nodes {
            if !names.insert(&n.name) {
                return Err(InventoryError::DuplicateName {
                    path: path.into(),
                    name: n.name.clone(),
                });
            }
            if let Some(first) = keys.insert(n.public_key, &n.name) {
                return Err(InventoryError::DuplicateKey {
                    path: path.into(),
                    key: n.public_key,
                    first: first.clone(),
                    second: n.name.clone(),
                });
            }
            for a in &n.addresses {
                if let Some(first) = addrs.insert(*a, &n.name) {
                    return Err(InventoryError::DuplicateAddress {
                        path: path.into(),
                        addr: *a,
                        first: first.clone(),
                        second: n.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&InventoryNode> {
        self.nodes.iter().find(|n| n.name.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn parses_and_checks() {
        let text = format!(
            "[[node]]\nname = \"web-1\"\nlabels = {{ role = \"web\" }}\npublic_key = \"{KEY_A}\"\naddresses = [\"100.80.0.1\", \"fd5e:6d00::1\"]\nendpoints = [\"10.231.0.1:51820\"]\n\n[[node]]\nname = \"db-1\"\npublic_key = \"{KEY_B}\"\naddresses = [\"100.80.0.2\"]\n"
        );
        let inv = Inventory::from_toml("inv.toml", &text).unwrap();
        assert_eq!(inv.nodes.len(), 2);
        assert_eq!(inv.overlay.len(), 2);
        let dup = text.replace(KEY_B, KEY_A);
        assert!(matches!(
            Inventory::from_toml("inv.toml", &dup),
            Err(InventoryError::DuplicateKey { .. })
        ));
        let typo = text.replace("labels", "lables");
        let err = Inventory::from_toml("inv.toml", &typo)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("inv.toml:3:1: "), "{err}");
    }
}
