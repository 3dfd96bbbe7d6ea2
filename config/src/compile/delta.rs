//! What an incremental recompute returns: per affected node, either its
//! whole netmap or the peer entries to replace and drop. The coordinator
//! streams these as deltas; [`Changes::apply`] folds them into cached netmaps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{NodeName, PublicKey};
use crate::netmap::{NetMap, Peer};

/// Changes to some nodes' netmaps, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub nodes: BTreeMap<NodeName, NodeUpdate>,
}

/// The change for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeUpdate {
    /// The node's complete new netmap (the node that changed).
    Full(NetMap),
    /// Peer entries to replace or drop (a node whose peer changed).
    Peers(PeerDelta),
    /// The node left the inventory.
    Removed,
}

/// Peer entries to drop (by key), then peer entries to insert or replace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDelta {
    pub remove: Vec<PublicKey>,
    pub upsert: Vec<Peer>,
}

impl PeerDelta {
    /// Applies the delta, keeping peers sorted by public key.
    pub fn apply(&self, map: &mut NetMap) {
        map.peers.retain(|p| !self.remove.contains(&p.public_key));
        for peer in &self.upsert {
            match map
                .peers
                .binary_search_by(|p| p.public_key.cmp(&peer.public_key))
            {
                Ok(i) => map.peers[i] = peer.clone(),
                Err(i) => map.peers.insert(i, peer.clone()),
            }
        }
    }
}

impl Changes {
    /// The number of nodes whose netmap changed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no netmap changed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Folds the changes into a set of cached netmaps (as the coordinator
    /// keeps them). Versions are left to the caller.
    pub fn apply(&self, maps: &mut BTreeMap<NodeName, NetMap>) {
        for (name, update) in &self.nodes {
            match update {
                NodeUpdate::Full(m) => {
                    maps.insert(name.clone(), m.clone());
                }
                NodeUpdate::Peers(d) => {
                    if let Some(m) = maps.get_mut(name) {
                        d.apply(m);
                    }
                }
                NodeUpdate::Removed => {
                    maps.remove(name);
                }
            }
        }
    }
}
