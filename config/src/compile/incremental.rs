//! Incremental recompute: one node added, changed or removed. Only pairs
//! involving that node can change (a pair's ports depend on the two nodes'
//! classes alone), so the work is proportional to its peers.

use std::collections::{BTreeMap, BTreeSet};

use super::{Changes, Compiler, NodeUpdate, PeerDelta};
use crate::identity::NodeName;
use crate::inventory::InventoryNode;
use crate::netmap::Peer;

impl Compiler {
    /// How node `i` appears in each of its peers' netmaps, by peer slot.
    fn views_of(&self, i: usize) -> BTreeMap<usize, Peer> {
        let Some(me) = self.slot(i) else {
            return BTreeMap::new();
        };
        // Our outbound is their inbound and vice versa.
        self.peers_of(i)
            .into_iter()
            .map(|(j, outbound, inbound)| (j, self.peer_entry(me, inbound, outbound)))
            .collect()
    }

    /// Adds or replaces a node (new labels, key, addresses or endpoints)
    /// and returns what changed: the node's full netmap, and for every
    /// other node whose netmap changed, the peer entries to replace or drop.
    pub fn upsert_node(&mut self, node: InventoryNode) -> Changes {
        let old_views = match self.by_name.get(&node.name).copied() {
            Some(i) => {
                let views = self.views_of(i);
                self.unplace(i);
                views
            }
            None => BTreeMap::new(),
        };
        let name = node.name.clone();
        let i = self.place(node);
        let new_views = self.views_of(i);
        let mut changes = self.peer_changes(old_views, new_views);
        if let Some(map) = self.netmap_of(i) {
            changes.nodes.insert(name, NodeUpdate::Full(map));
        }
        changes
    }

    /// Removes a node; every node that had it as a peer drops it.
    pub fn remove_node(&mut self, name: &NodeName) -> Changes {
        let Some(i) = self.by_name.get(name).copied() else {
            return Changes::default();
        };
        let old_views = self.views_of(i);
        self.unplace(i);
        let mut changes = self.peer_changes(old_views, BTreeMap::new());
        changes.nodes.insert(name.clone(), NodeUpdate::Removed);
        changes
    }

    fn peer_changes(&self, old: BTreeMap<usize, Peer>, new: BTreeMap<usize, Peer>) -> Changes {
        let mut changes = Changes::default();
        let slots: BTreeSet<usize> = old.keys().chain(new.keys()).copied().collect();
        for j in slots {
            let Some(peer) = self.slot(j) else { continue };
            let mut delta = PeerDelta::default();
            match (old.get(&j), new.get(&j)) {
                (Some(o), Some(n)) if o == n => continue,
                (o, Some(n)) => {
                    if let Some(o) = o.filter(|o| o.public_key != n.public_key) {
                        delta.remove.push(o.public_key);
                    }
                    delta.upsert.push(n.clone());
                }
                (Some(o), None) => delta.remove.push(o.public_key),
                (None, None) => continue,
            }
            changes
                .nodes
                .insert(peer.node.name.clone(), NodeUpdate::Peers(delta));
        }
        changes
    }
}
