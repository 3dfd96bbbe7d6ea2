//! Catching up with the shared store: what lets several coordinators serve
//! one mesh from one PostgreSQL database.
//!
//! Every coordinator keeps all nodes' current netmaps in memory and streams
//! to the nodes connected to it. A change made through any coordinator is
//! committed to the store, and that coordinator records the new netmap
//! versions, which sends a notification (see
//! [`crate::store::postgres::CHANGES_CHANNEL`]). [`Distributor::sync`] is what
//! every coordinator runs on such a notification, and, in shared mode, for
//! its own changes too: it recompiles from the store's nodes and policy and,
//! per node,
//! - adopts a version another coordinator recorded when its content is what
//!   this coordinator computes (so all coordinators send the same version
//!   for the same netmap and a node can fail over without a resync);
//! - records the next version when the computed netmap differs from the
//!   newest one known (a change whose netmaps nobody recorded yet);
//! - pushes the result to the node if it streams from here.
//!
//! Two coordinators recording at once meet in the store's compare-and-set
//! (`netmap_version < $1`): the loser re-reads everything and tries again,
//! now seeing the winner's versions. The coordinator whose change committed
//! last always syncs after that commit, so the final netmaps reflect every
//! change.

use std::collections::BTreeMap;
use std::time::Instant;

use segmesh_config::control::Rotation;
use segmesh_config::{NetMap, NodeName};

use super::{
    Distributor, Slot, State, current_policy, inventory, message, netmap_digest, same_content,
};
use crate::store::{NetmapRecord, NodeRecord, StoreError};
use segmesh_config::compile::Compiler;

/// How often a sync is retried when another coordinator recorded first.
const SYNC_ATTEMPTS: usize = 8;

/// One node's outcome of a sync, applied only once the store accepted the
/// new versions.
#[derive(Debug)]
struct Update {
    node: NodeRecord,
    map: NetMap,
}

impl Distributor {
    /// Recompiles from the store and pushes what changed (see the module
    /// docs). Returns the versions pushed, by node.
    pub async fn sync(&self, now: Instant) -> Result<BTreeMap<NodeName, u64>, StoreError> {
        let mut st = self.state.lock().await;
        self.sync_locked(&mut st, now).await
    }

    pub(super) async fn sync_locked(
        &self,
        st: &mut State,
        now: Instant,
    ) -> Result<BTreeMap<NodeName, u64>, StoreError> {
        let mut last_conflict = None;
        for _ in 0..SYNC_ATTEMPTS {
            let (compiler, updates, records, gone) = self.plan(st).await?;
            match self.store.record_netmaps(&records).await {
                Ok(()) => {
                    st.compiler = compiler;
                    st.generation += 1;
                    for name in gone {
                        // Dropping the sender ends the node's stream.
                        st.slots.remove(&name);
                    }
                    return Ok(self.apply(st, updates, now));
                }
                Err(StoreError::Conflict(e)) => last_conflict = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "netmap versions kept moving during {SYNC_ATTEMPTS} attempts: {}",
            last_conflict.unwrap_or_default()
        )))
    }

    /// Reads the store and decides every node's netmap and version.
    async fn plan(
        &self,
        st: &State,
    ) -> Result<(Compiler, Vec<Update>, Vec<NetmapRecord>, Vec<NodeName>), StoreError> {
        let nodes = self.store.list_nodes().await?;
        let policy = current_policy(self.store.as_ref()).await?;
        let compiler = Compiler::new(&inventory(&nodes, &self.overlay), &policy);
        let active: std::collections::BTreeSet<&NodeName> = nodes
            .iter()
            .filter(|n| !n.revoked)
            .map(|n| &n.name)
            .collect();
        let gone: Vec<NodeName> = st
            .slots
            .keys()
            .filter(|name| !active.contains(name))
            .cloned()
            .collect();
        let mut updates = Vec::new();
        let mut records = Vec::new();
        for n in nodes.iter().filter(|n| !n.revoked) {
            let Some(mut map) = compiler.netmap(&n.name) else {
                continue;
            };
            let held = st.slots.get(&n.name).map(|s| &s.map);
            let held_version = held.map_or(0, |m| m.version);
            // (version, same content) of the newest netmap known for the
            // node: the stored one when another coordinator recorded past
            // what this one holds (compared by digest), else the held one.
            let newest = if n.netmap_version > held_version || held.is_none() {
                self.store
                    .latest_netmap(n.id)
                    .await?
                    .map(|(v, digest)| (v, digest == netmap_digest(&map)))
            } else {
                held.map(|h| (h.version, same_content(h, &map)))
            };
            match newest {
                Some((v, true)) => map.version = v,
                _ => {
                    let last = newest.map_or(0, |(v, _)| v).max(n.netmap_version);
                    records.push(NetmapRecord {
                        node_id: n.id,
                        version: last + 1,
                        body: netmap_digest(&map),
                    });
                    map.version = last + 1;
                }
            }
            if held.is_none_or(|h| h.version != map.version) {
                updates.push(Update {
                    node: n.clone(),
                    map,
                });
            }
        }
        Ok((compiler, updates, records, gone))
    }

    /// Installs the planned netmaps and pushes them to connected nodes.
    fn apply(&self, st: &mut State, updates: Vec<Update>, now: Instant) -> BTreeMap<NodeName, u64> {
        let mut pushed = BTreeMap::new();
        for Update { node, map } in updates {
            let slot = st.slots.entry(node.name.clone()).or_insert_with(|| Slot {
                id: node.id,
                map: NetMap {
                    version: 0,
                    ..map.clone()
                },
                acked: node.acked_version,
                stream: None,
                pushed_at: BTreeMap::new(),
            });
            let rotations = rotations(&slot.map, &map);
            let msg = message(&slot.map, &map, rotations);
            slot.id = node.id;
            slot.map = map;
            slot.pushed_at.insert(slot.map.version, now);
            pushed.insert(node.name, slot.map.version);
            self.send(slot, &msg);
        }
        pushed
    }
}

/// Key changes of known peers between two netmaps of one node. Keys only
/// change in the store through a node's own rotation request, so a peer
/// (same name, or same addresses when names are not shown) whose key
/// differs is a rotation the node must accept.
fn rotations(old: &NetMap, new: &NetMap) -> Vec<Rotation> {
    new.peers
        .iter()
        .filter_map(|p| {
            let before = old.peers.iter().find(|o| match (&o.name, &p.name) {
                (Some(a), Some(b)) => a == b,
                _ => o.allowed_ips == p.allowed_ips,
            })?;
            (before.public_key != p.public_key).then_some(Rotation {
                old: before.public_key,
                new: p.public_key,
            })
        })
        .collect()
}
