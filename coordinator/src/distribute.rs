//! Netmap distribution: on any change, recompute the affected nodes'
//! netmaps with the incremental policy compiler and push only to the nodes
//! whose netmap changed, each with its next monotonic version.
//!
//! One async mutex serialises changes, so versions are assigned and stored
//! in order and a push never overtakes an older one. Each update is sent as a
//! full netmap (the compiler also produces per-peer deltas; sending them is a
//! later step, see docs/architecture.md). Streams are bounded channels: a
//! node too slow to drain its channel is disconnected and gets the full
//! current netmap when it reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use segmesh_config::compile::Compiler;
use segmesh_config::control::{Rotation, StreamMessage, peer_delta};
use segmesh_config::{Inventory, InventoryNode, NetMap, NodeName, Policy};
use tokio::sync::{Mutex, mpsc, watch};

use crate::clock::Now;
use crate::metrics::Metrics;
use crate::store::{NetmapRecord, NodeRecord, Store, StoreError};

mod sync;

/// How often `wait_acks` re-reads the shared store for acks that other
/// coordinators received.
const SHARED_ACK_POLL: Duration = Duration::from_millis(100);

/// Per-stream channel depth; a node this far behind is disconnected.
const STREAM_DEPTH: usize = 16;

/// The state of one active (enrolled, not revoked) node.
#[derive(Debug)]
struct Slot {
    id: i64,
    /// The current netmap, with its version.
    map: NetMap,
    acked: u64,
    stream: Option<(u64, mpsc::Sender<Bytes>)>,
    /// When each not-yet-acked version was pushed (apply latency).
    pushed_at: BTreeMap<u64, Instant>,
}

#[derive(Debug)]
struct State {
    compiler: Compiler,
    /// Bumped whenever the compiler's inventory changes, so a compiler
    /// built outside the lock can be checked for being current.
    generation: u64,
    slots: BTreeMap<NodeName, Slot>,
    next_conn: u64,
}

/// How many of the nodes a change was pushed to acked it, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckReport {
    pub acked: usize,
    pub total: usize,
    pub elapsed_ms: u64,
}

/// The netmap distributor. Shared by all API handlers.
#[derive(Debug)]
pub struct Distributor {
    store: Arc<dyn Store>,
    overlay: Vec<IpNet>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Bumped on every ack, to wake [`Distributor::wait_acks`].
    acks: watch::Sender<u64>,
    /// Acks on their way to the store (see [`ack_writer`]).
    ack_writer: mpsc::UnboundedSender<AckMsg>,
    /// Other coordinators write to the same store: every change goes
    /// through [`Distributor::sync`] (see `distribute/sync.rs`).
    shared: bool,
}

/// Work for the ack writer.
#[derive(Debug)]
enum AckMsg {
    /// (node id, version, unix time)
    Ack(i64, u64, i64),
    /// Answered once every earlier ack is in the store.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Writes acks to the store, batching whatever arrived meanwhile into one
/// transaction. An ack lost in a crash only makes `policy audit` report the
/// node as stale until it reconnects and acks its netmap again.
async fn ack_writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut acks = Vec::new();
        let mut at = 0;
        let mut flushes = Vec::new();
        for m in batch {
            match m {
                AckMsg::Ack(id, v, t) => {
                    acks.push((id, v));
                    at = at.max(t);
                }
                AckMsg::Flush(done) => flushes.push(done),
            }
        }
        if !acks.is_empty()
            && let Err(e) = store.ack_netmaps(&acks, at).await
        {
            tracing::error!(error = %e, acks = acks.len(), "cannot record acks");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// The compiler's view of a stored node.
pub fn inventory_node(n: &NodeRecord) -> InventoryNode {
    InventoryNode {
        name: n.name.clone(),
        labels: n.labels.clone(),
        public_key: n.public_key,
        addresses: n.addresses(),
        endpoints: n.endpoints.clone(),
    }
}

/// The inventory of all active nodes.
pub fn inventory(nodes: &[NodeRecord], overlay: &[IpNet]) -> Inventory {
    Inventory {
        overlay: overlay.to_vec(),
        nodes: nodes
            .iter()
            .filter(|n| !n.revoked)
            .map(inventory_node)
            .collect(),
    }
}

/// The policy currently in force (an empty, deny-all one before any apply).
pub async fn current_policy(store: &dyn Store) -> Result<Policy, StoreError> {
    match store.policy().await? {
        Some(p) => Policy::parse(&format!("policy v{}", p.version), &p.text)
            .map_err(|e| StoreError::Corrupt(format!("stored policy v{}: {e}", p.version))),
        None => Ok(Policy::empty("(no policy applied)")),
    }
}

/// Feeds serialized bytes straight into a hash (no buffer per netmap).
struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `sha256:<hex>` of the netmap's JSON with its version set to 0: equal
/// for equal content whatever the version (what the store records per
/// version, see [`NetmapRecord::body`]).
pub fn netmap_digest(map: &NetMap) -> String {
    let zeroed;
    let map = if map.version == 0 {
        map
    } else {
        zeroed = NetMap {
            version: 0,
            ..map.clone()
        };
        &zeroed
    };
    let mut w = HashWriter(sha2::Sha256::default());
    // Serializing plain data into a hash cannot fail.
    let _ = serde_json::to_writer(&mut w, map);
    format!("sha256:{}", crate::ca::hex(&sha2::Digest::finalize(w.0)))
}

fn same_content(a: &NetMap, b: &NetMap) -> bool {
    a.node == b.node && a.overlay == b.overlay && a.peers == b.peers && a.format == b.format
}

/// What a node holding `old` is sent to reach `new`: a delta when only
/// peers changed and the node holds a real version (it has seen a stream),
/// else the full netmap.
fn message(old: &NetMap, new: &NetMap, rotations: Vec<Rotation>) -> StreamMessage {
    match peer_delta(old, new) {
        Some((remove, upsert)) if old.version > 0 => StreamMessage::Delta {
            base_version: old.version,
            version: new.version,
            remove,
            upsert,
            rotations,
        },
        _ => StreamMessage::Netmap {
            netmap: new.clone(),
            rotations,
        },
    }
}

/// `f` over `items` on every core, results in order. For pure,
/// CPU-bound per-node work; small inputs stay on the calling thread.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if items.len() < 512 || threads < 2 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(items.len().div_ceil(threads.min(8)))
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for w in workers {
            match w.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

fn line(msg: &StreamMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

impl Distributor {
    /// Loads state and compiles every netmap. A node keeps its stored
    /// version when its netmap is unchanged since the last run.
    pub async fn load(
        store: Arc<dyn Store>,
        overlay: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let nodes = store.list_nodes().await?;
        let policy = current_policy(store.as_ref()).await?;
        let compiler = Compiler::new(&inventory(&nodes, &overlay), &policy);
        let mut slots = BTreeMap::new();
        let mut records = Vec::new();
        for n in nodes.iter().filter(|n| !n.revoked) {
            let Some(mut map) = compiler.netmap(&n.name) else {
                continue;
            };
            let stored = store.latest_netmap(n.id).await?;
            let digest = netmap_digest(&map);
            let unchanged = stored.is_some_and(|(_, d)| d == digest);
            map.version = n.netmap_version;
            if !unchanged {
                map.version += 1;
                records.push(NetmapRecord {
                    node_id: n.id,
                    version: map.version,
                    body: digest,
                });
            }
            slots.insert(
                n.name.clone(),
                Slot {
                    id: n.id,
                    map,
                    acked: n.acked_version,
                    stream: None,
                    pushed_at: BTreeMap::new(),
                },
            );
        }
        store.record_netmaps(&records).await?;
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(ack_writer(Arc::clone(&store), ack_rx));
        Ok(Self {
            ack_writer: ack_tx,
            store,
            overlay,
            metrics,
            state: Mutex::new(State {
                compiler,
                generation: 0,
                slots,
                next_conn: 0,
            }),
            acks: watch::channel(0).0,
            shared: false,
        })
    }

    /// Marks the store as shared with other coordinators: changes are then
    /// applied by recompiling from the store, which also adopts the
    /// versions other coordinators recorded.
    pub fn into_shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Re-reads one node from the store (after enroll, label, revoke,
    /// endpoint or key change) and pushes to every node whose netmap
    /// changed. Returns the pushed versions by node.
    pub async fn node_changed(
        &self,
        name: &NodeName,
        rotations: Vec<Rotation>,
        now: Instant,
    ) -> Result<BTreeMap<NodeName, u64>, StoreError> {
        if self.shared {
            // Rotations are derived from the key change itself there.
            return self.sync(now).await;
        }
        let rec = self.store.node(name).await?;
        let mut st = self.state.lock().await;
        st.generation += 1;
        let changes = match &rec {
            Some(n) if !n.revoked => st.compiler.upsert_node(inventory_node(n)),
            _ => st.compiler.remove_node(name),
        };
        if !matches!(&rec, Some(n) if !n.revoked) {
            // Dropping the sender ends the node's stream.
            st.slots.remove(name);
        }
        let names: Vec<NodeName> = changes.nodes.keys().cloned().collect();
        self.publish(&mut st, rec.as_ref(), &names, None, &rotations, now)
            .await
    }

    /// The current compiler (a copy) and its generation, for work done
    /// outside the lock (a policy diff, the next policy's compiler).
    pub async fn compiler(&self) -> (Compiler, u64) {
        let st = self.state.lock().await;
        (st.compiler.clone(), st.generation)
    }

    /// Installs a new policy, compiled by the caller from the inventory of
    /// `generation` (rebuilt here if a node changed since), and pushes
    /// every netmap that changed.
    pub async fn policy_changed(
        &self,
        compiler: Compiler,
        generation: u64,
        now: Instant,
    ) -> Result<BTreeMap<NodeName, u64>, StoreError> {
        if self.shared {
            return self.sync(now).await;
        }
        let mut st = self.state.lock().await;
        st.compiler = if st.generation == generation {
            compiler
        } else {
            Compiler::new(&st.compiler.inventory(), compiler.policy())
        };
        st.generation += 1;
        let names: Vec<NodeName> = st.slots.keys().cloned().collect();
        // Every netmap at once: per class, not per node (see
        // `Compiler::netmaps`).
        let all = st.compiler.netmaps();
        self.publish(&mut st, None, &names, Some(all), &[], now)
            .await
    }

    /// Recomputes `names`, records new versions, pushes to connected nodes.
    async fn publish(
        &self,
        st: &mut State,
        new_node: Option<&NodeRecord>,
        names: &[NodeName],
        mut computed: Option<BTreeMap<NodeName, NetMap>>,
        rotations: &[Rotation],
        now: Instant,
    ) -> Result<BTreeMap<NodeName, u64>, StoreError> {
        #[allow(clippy::disallowed_methods)] // phase timings for the log
        let t0 = Instant::now();
        let mut pushed = BTreeMap::new();
        let mut updated: Vec<(NodeName, NetMap)> = Vec::new();
        for name in names {
            let map = match computed.as_mut().and_then(|c| c.remove(name)) {
                Some(m) => Some(m),
                None => st.compiler.netmap(name),
            };
            let Some(map) = map else {
                continue;
            };
            let mut fresh = false;
            if !st.slots.contains_key(name) {
                // A newly enrolled node: continue from its stored version.
                let Some(rec) = new_node.filter(|n| &n.name == name) else {
                    continue;
                };
                fresh = true;
                let mut start = map.clone();
                start.version = rec.netmap_version;
                st.slots.insert(
                    name.clone(),
                    Slot {
                        id: rec.id,
                        map: start,
                        acked: rec.acked_version,
                        stream: None,
                        pushed_at: BTreeMap::new(),
                    },
                );
            }
            let Some(slot) = st.slots.get(name) else {
                continue;
            };
            if !fresh && same_content(&slot.map, &map) {
                continue;
            }
            updated.push((name.clone(), map));
        }
        // Digests and stream lines are serialization-bound and independent
        // per node: spread over the cores.
        let digests = par_map(&updated, |(_, m)| netmap_digest(m));
        let mut records = Vec::with_capacity(updated.len());
        for ((name, map), body) in updated.iter_mut().zip(digests) {
            let Some(slot) = st.slots.get(name) else {
                continue;
            };
            map.version = slot.map.version + 1;
            records.push(NetmapRecord {
                node_id: slot.id,
                version: map.version,
                body,
            });
        }
        let computed = t0.elapsed();
        // One transaction for the whole change, then the pushes.
        self.store.record_netmaps(&records).await?;
        let recorded = t0.elapsed();
        let slots = &st.slots;
        let lines = par_map(&updated, |(name, map)| {
            let slot = slots.get(name)?;
            slot.stream.as_ref()?;
            let rot: Vec<Rotation> = rotations
                .iter()
                .filter(|r| map.peer(&r.new).is_some())
                .cloned()
                .collect();
            Some(line(&message(&slot.map, map, rot)))
        });
        for ((name, map), line) in updated.into_iter().zip(lines) {
            let Some(slot) = st.slots.get_mut(&name) else {
                continue;
            };
            slot.map = map;
            slot.pushed_at.insert(slot.map.version, now);
            pushed.insert(name, slot.map.version);
            if let Some(line) = line {
                self.send_line(slot, line);
            }
        }
        if names.len() >= 100 {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                nodes = names.len(),
                changed = pushed.len(),
                compute_ms = ms(computed),
                record_ms = ms(recorded - computed),
                push_ms = ms(t0.elapsed() - recorded),
                "netmaps published"
            );
        }
        Ok(pushed)
    }

    fn send(&self, slot: &mut Slot, msg: &StreamMessage) {
        if slot.stream.is_some() {
            self.send_line(slot, line(msg));
        }
    }

    fn send_line(&self, slot: &mut Slot, line: Bytes) {
        let Some((_, tx)) = &slot.stream else {
            return;
        };
        if tx.try_send(line).is_ok() {
            self.metrics.pushes.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!(node = %slot.map.node.name, "stream too slow or closed; disconnecting");
            slot.stream = None;
        }
    }

    /// Opens a node's stream: the current netmap is queued first, unless
    /// the node already holds that version (`since`; then `resumed` is
    /// true). A second stream for the same node replaces (and so closes)
    /// the first. Returns (connection id, receiver, resumed).
    pub async fn subscribe(
        &self,
        name: &NodeName,
        now: Instant,
        since: Option<u64>,
    ) -> Option<(u64, mpsc::Receiver<Bytes>, bool)> {
        let mut st = self.state.lock().await;
        if self.shared && !st.slots.contains_key(name) {
            // Enrolled through another coordinator, feed not yet seen.
            if let Err(e) = self.sync_locked(&mut st, now).await {
                tracing::warn!(node = %name, error = %e, "cannot sync before opening a stream");
            }
        }
        st.next_conn += 1;
        let conn = st.next_conn;
        let slot = st.slots.get_mut(name)?;
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        slot.stream = Some((conn, tx));
        let resumed = since == Some(slot.map.version);
        if !resumed {
            let full = StreamMessage::Netmap {
                netmap: slot.map.clone(),
                rotations: Vec::new(),
            };
            self.send(slot, &full);
        }
        Some((conn, rx, resumed))
    }

    /// Ends every node's stream and session (coordinator shutdown: sessions
    /// run in their own tasks, outside the server's connection set).
    pub async fn disconnect_all(&self) {
        let mut st = self.state.lock().await;
        for slot in st.slots.values_mut() {
            slot.stream = None;
        }
    }

    /// Forgets a stream that ended (unless a newer one replaced it).
    pub async fn unsubscribe(&self, name: &NodeName, conn: u64) {
        let mut st = self.state.lock().await;
        if let Some(slot) = st.slots.get_mut(name)
            && slot.stream.as_ref().is_some_and(|(c, _)| *c == conn)
        {
            slot.stream = None;
        }
    }

    /// Records that the node applied `version`.
    pub async fn ack(&self, name: &NodeName, version: u64, now: Now) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        let slot = st
            .slots
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(format!("node {name}")))?;
        if version > slot.map.version {
            return Err(StoreError::Invalid(format!(
                "version {version} was never sent (latest is {})",
                slot.map.version
            )));
        }
        if version <= slot.acked {
            return Ok(()); // duplicate or reordered ack: harmless
        }
        // Persisted by the ack writer, batched: the node's ack is not held
        // up by (or serialised on) a disk sync per node.
        let _ = self
            .ack_writer
            .send(AckMsg::Ack(slot.id, version, now.unix));
        slot.acked = version;
        if let Some(at) = slot.pushed_at.get(&version) {
            self.metrics
                .observe_apply(now.instant.saturating_duration_since(*at));
        }
        slot.pushed_at.retain(|v, _| *v > version);
        self.metrics.acks.fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.acks.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Waits until every node in `targets` acked at least its version, or
    /// `timeout` passes (nodes that are gone count as not acked).
    pub async fn wait_acks(
        &self,
        targets: &BTreeMap<NodeName, u64>,
        start: Instant,
        timeout: Duration,
    ) -> AckReport {
        let mut rx = self.acks.subscribe();
        let deadline = tokio::time::Instant::from_std(start + timeout);
        loop {
            let mut acked: BTreeSet<&NodeName> = {
                let st = self.state.lock().await;
                targets
                    .iter()
                    .filter(|(n, v)| st.slots.get(*n).is_some_and(|s| s.acked >= **v))
                    .map(|(n, _)| n)
                    .collect()
            };
            if self.shared && acked.len() < targets.len() {
                // Nodes streaming from other coordinators ack there; their
                // ack writers put the acks in the shared store.
                if let Ok(nodes) = self.store.list_nodes().await {
                    acked.extend(nodes.iter().filter_map(|n| {
                        let (name, v) = targets.get_key_value(&n.name)?;
                        (n.acked_version >= *v).then_some(name)
                    }));
                }
            }
            let done = acked.len() == targets.len();
            if done || self.wait_ack_change(&mut rx, deadline).await {
                #[allow(clippy::disallowed_methods)] // measuring a real wait
                let elapsed = Instant::now().saturating_duration_since(start);
                return AckReport {
                    acked: acked.len(),
                    total: targets.len(),
                    elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                };
            }
        }
    }

    /// Waits for a local ack (or, in shared mode, at most
    /// [`SHARED_ACK_POLL`] so acks recorded by other coordinators are seen).
    /// Returns true once `deadline` has passed.
    async fn wait_ack_change(
        &self,
        rx: &mut watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let woke = if self.shared {
            tokio::time::timeout(SHARED_ACK_POLL, rx.changed())
                .await
                .is_ok()
        } else {
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_ok()
        };
        #[allow(clippy::disallowed_methods)] // comparing with a real deadline
        let now = tokio::time::Instant::now();
        !woke && now >= deadline
    }

    /// Waits until every ack received so far is in the store.
    pub async fn flush_acks(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.ack_writer.send(AckMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The netmap the node should have now (with its current version).
    pub async fn expected(&self, name: &NodeName) -> Option<NetMap> {
        self.state
            .lock()
            .await
            .slots
            .get(name)
            .map(|s| s.map.clone())
    }

    /// Whether the node has a stream open.
    pub async fn connected(&self) -> BTreeMap<NodeName, bool> {
        let st = self.state.lock().await;
        st.slots
            .iter()
            .map(|(n, s)| (n.clone(), s.stream.is_some()))
            .collect()
    }

    /// The compiler's current inventory (active nodes) and policy.
    pub async fn snapshot(&self) -> (Inventory, Policy) {
        let st = self.state.lock().await;
        (st.compiler.inventory(), st.compiler.policy().clone())
    }

    /// Overlay prefixes every node routes.
    pub fn overlay(&self) -> &[IpNet] {
        &self.overlay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use segmesh_config::PublicKey;

    #[test]
    fn par_map_keeps_order_at_any_size() {
        for n in [0usize, 3, 511, 512, 2001] {
            let items: Vec<usize> = (0..n).collect();
            let out = par_map(&items, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
    }

    #[test]
    fn digest_ignores_the_version_and_sees_every_peer_change() {
        let map = NetMap::from_json(
            br#"{"format":1,"version":7,"node":{"name":"a","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","addresses":["100.80.0.1"],"labels":{}},"overlay":["100.80.0.0/16"],"peers":[{"public_key":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","allowed_ips":["100.80.0.2/32"],"outbound":["tcp/80"],"inbound":[]}]}"#,
        )
        .unwrap();
        let d = netmap_digest(&map);
        assert!(d.starts_with("sha256:") && d.len() == 71, "{d}");
        let mut other = map.clone();
        other.version = 8;
        assert_eq!(netmap_digest(&other), d);
        other.peers[0].public_key = PublicKey::from_bytes([3; 32]);
        assert_ne!(netmap_digest(&other), d);
    }
}
