//! The compiler: (inventory, policy) -> one netmap per node.
//!
//! Steps, and why:
//! 1. Index the rules: each side is "every node" or a set of segment indices.
//! 2. Sort nodes into *classes* of equal segment membership. Policy only sees
//!    membership, so two nodes of one class are treated identically; with
//!    10,000 nodes there are typically a few hundred classes, and step 3
//!    works on classes instead of node pairs.
//! 3. For every ordered pair of classes (a, b), the ports a member of `a`
//!    may open to a member of `b`: the union of the allows whose `from`
//!    matches `a` and whose `to` matches `b`, minus the union of the
//!    matching denies. Only non-empty results are kept; two classes are
//!    *related* when either direction is non-empty.
//! 4. A node's netmap lists every member of a related class (except itself)
//!    with `outbound` = ports(own class -> theirs) and `inbound` =
//!    ports(theirs -> own), sorted by public key. Name, labels and
//!    endpoints are added only when `outbound` is non-empty (need-to-know).
//!
//! [`Compiler`] keeps steps 1-3 so that a change to one node recomputes only
//! what involves that node ([`Compiler::upsert_node`]). The plain statement
//! of the semantics is [`Policy::ports_between`]; the property tests check
//! the two agree.

mod bits;
mod delta;
mod incremental;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::identity::{Labels, NodeName, PublicKey};
use crate::inventory::{Inventory, InventoryNode};
use crate::netmap::{NETMAP_FORMAT, NetMap, Peer, SelfNode};
use crate::policy::{Action, Membership, Policy, Targets};
use crate::ports::PortSet;
use bits::Bits;

pub use delta::{Changes, NodeUpdate, PeerDelta};

/// Compiles every inventory node's netmap (version 0). Pure and
/// deterministic: equal inputs give equal output.
pub fn compile(inventory: &Inventory, policy: &Policy) -> BTreeMap<NodeName, NetMap> {
    Compiler::new(inventory, policy).netmaps()
}

/// One rule side, by segment index.
#[derive(Debug, Clone)]
struct Side {
    every: bool,
    segments: Vec<usize>,
}

impl Side {
    fn matches(&self, sig: &Bits) -> bool {
        self.every || self.segments.iter().any(|&s| sig.get(s))
    }
}

#[derive(Debug, Clone)]
struct IndexedRule {
    action: Action,
    from: Side,
    to: Side,
    ports: PortSet,
}

/// Nodes with equal segment membership.
#[derive(Debug, Clone)]
struct Class {
    /// Which segments the members belong to.
    sig: Bits,
    /// Rules whose `from` matches the members.
    from_rules: Bits,
    /// Rules whose `to` matches the members.
    to_rules: Bits,
    /// Slots of the member nodes.
    members: BTreeSet<usize>,
    /// Classes with a non-empty port set in either direction (maybe itself).
    related: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
struct Slot {
    node: InventoryNode,
    /// What netmaps share of this node (built once, cloned by reference).
    allowed_ips: Arc<[IpNet]>,
    labels: Arc<Labels>,
    endpoints: Arc<[SocketAddr]>,
    class: usize,
}

/// An incremental compiler: holds the indexed policy and per-class results
/// so that one node's change costs work proportional to its peers.
#[derive(Debug, Clone)]
pub struct Compiler {
    policy: Policy,
    overlay: Vec<IpNet>,
    segment_index: BTreeMap<String, usize>,
    rules: Vec<IndexedRule>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_name: BTreeMap<NodeName, usize>,
    classes: Vec<Class>,
    class_by_sig: HashMap<Bits, usize>,
    /// Non-empty ports from class a to class b.
    pairs: HashMap<(usize, usize), PortSet>,
}

impl Compiler {
    /// Indexes `policy` and places every inventory node (steps 1-3).
    pub fn new(inventory: &Inventory, policy: &Policy) -> Compiler {
        let segment_index: BTreeMap<String, usize> = policy
            .segments
            .keys()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let side = |t: &Targets| match t {
            Targets::Every => Side {
                every: true,
                segments: Vec::new(),
            },
            Targets::Segments(names) => Side {
                every: false,
                segments: names
                    .iter()
                    .filter_map(|n| segment_index.get(n).copied())
                    .collect(),
            },
        };
        let rules = policy
            .rules
            .iter()
            .map(|r| IndexedRule {
                action: r.action,
                from: side(&r.from),
                to: side(&r.to),
                ports: r.ports.clone(),
            })
            .collect();
        let mut c = Compiler {
            policy: policy.clone(),
            overlay: inventory.overlay.clone(),
            segment_index,
            rules,
            slots: Vec::with_capacity(inventory.nodes.len()),
            free: Vec::new(),
            by_name: BTreeMap::new(),
            classes: Vec::new(),
            class_by_sig: HashMap::new(),
            pairs: HashMap::new(),
        };
        // Membership depends only on labels, and nodes of one role share
        // them: match each distinct label set against the segments once
        // (at 10,000 nodes and 500 segments this was most of `new`).
        let mut sigs: BTreeMap<&Labels, Bits> = BTreeMap::new();
        for n in &inventory.nodes {
            let sig = match sigs.get(&n.labels) {
                Some(s) => s.clone(),
                None => {
                    let s = c.signature(n);
                    sigs.insert(&n.labels, s.clone());
                    s
                }
            };
            c.place_with(n.clone(), sig);
        }
        c
    }

    /// The policy this compiler was built from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current inventory (nodes sorted by name).
    pub fn inventory(&self) -> Inventory {
        Inventory {
            overlay: self.overlay.clone(),
            nodes: self
                .by_name
                .values()
                .filter_map(|&s| self.slot(s).map(|x| x.node.clone()))
                .collect(),
        }
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&InventoryNode> {
        self.slot(*self.by_name.get(name)?).map(|s| &s.node)
    }

    /// Node names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &NodeName> {
        self.by_name.keys()
    }

    /// The segments a node belongs to.
    pub fn membership(&self, name: &NodeName) -> Option<Membership> {
        let slot = self.slot(*self.by_name.get(name)?)?;
        let sig = &self.classes[slot.class].sig;
        Some(
            self.segment_index
                .iter()
                .filter(|(_, i)| sig.get(**i))
                .map(|(n, _)| n.clone())
                .collect(),
        )
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn signature(&self, node: &InventoryNode) -> Bits {
        let mut sig = Bits::new(self.segment_index.len());
        for (name, &i) in &self.segment_index {
            if self.policy.segments[name].contains(&node.labels) {
                sig.set(i);
            }
        }
        sig
    }

    /// Step 3 for one ordered class pair.
    fn class_ports(&self, a: usize, b: usize) -> PortSet {
        let (ca, cb) = (&self.classes[a], &self.classes[b]);
        let mut allow = PortSet::empty();
        let mut deny = PortSet::empty();
        for r in ca.from_rules.and_iter(&cb.to_rules) {
            let rule = &self.rules[r];
            match rule.action {
                Action::Allow => allow.union_with(&rule.ports),
                Action::Deny => deny.union_with(&rule.ports),
            }
        }
        allow.subtract(&deny);
        allow
    }

    /// The class for a signature, created (with its pairs) when new.
    fn class_for(&mut self, sig: Bits) -> usize {
        if let Some(&c) = self.class_by_sig.get(&sig) {
            return c;
        }
        let mut from_rules = Bits::new(self.rules.len());
        let mut to_rules = Bits::new(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            if r.from.matches(&sig) {
                from_rules.set(i);
            }
            if r.to.matches(&sig) {
                to_rules.set(i);
            }
        }
        let c = self.classes.len();
        self.classes.push(Class {
            sig: sig.clone(),
            from_rules,
            to_rules,
            members: BTreeSet::new(),
            related: BTreeSet::new(),
        });
        self.class_by_sig.insert(sig, c);
        for d in 0..=c {
            for (x, y) in [(c, d), (d, c)] {
                if x == y && d != c {
                    continue;
                }
                if !self.classes[x]
                    .from_rules
                    .intersects(&self.classes[y].to_rules)
                {
                    continue;
                }
                let ports = self.class_ports(x, y);
                if !ports.is_empty() {
                    self.pairs.insert((x, y), ports);
                    self.classes[c].related.insert(d);
                    self.classes[d].related.insert(c);
                }
            }
        }
        c
    }

    /// Adds a node to the tables (no netmaps are produced).
    fn place(&mut self, node: InventoryNode) -> usize {
        let sig = self.signature(&node);
        self.place_with(node, sig)
    }

    /// [`Compiler::place`] with the node's segment signature known.
    fn place_with(&mut self, node: InventoryNode, sig: Bits) -> usize {
        let class = self.class_for(sig);
        let allowed_ips = node.addresses.iter().map(|a| IpNet::from(*a)).collect();
        let name = node.name.clone();
        let slot = Slot {
            allowed_ips,
            labels: Arc::new(node.labels.clone()),
            endpoints: Arc::from(node.endpoints.as_slice()),
            node,
            class,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.classes[class].members.insert(i);
        self.by_name.insert(name, i);
        i
    }

    /// Removes a node from the tables.
    fn unplace(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(i)?.take()?;
        self.classes[slot.class].members.remove(&i);
        self.by_name.remove(&slot.node.name);
        self.free.push(i);
        Some(slot)
    }

    /// Step 4's pairs for one node: (peer slot, outbound, inbound).
    fn peers_of(&self, i: usize) -> Vec<(usize, &PortSet, &PortSet)> {
        let empty = empty_set();
        let Some(me) = self.slot(i) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &b in &self.classes[me.class].related {
            let outbound = self.pairs.get(&(me.class, b)).unwrap_or(empty);
            let inbound = self.pairs.get(&(b, me.class)).unwrap_or(empty);
            for &j in &self.classes[b].members {
                if j != i {
                    out.push((j, outbound, inbound));
                }
            }
        }
        out
    }

    /// How node `j` appears in a netmap, given the ports between them.
    fn peer_entry(&self, j: &Slot, outbound: &PortSet, inbound: &PortSet) -> Peer {
        let reveal = !outbound.is_empty();
        Peer {
            public_key: j.node.public_key,
            allowed_ips: j.allowed_ips.clone(),
            outbound: outbound.clone(),
            inbound: inbound.clone(),
            name: reveal.then(|| j.node.name.clone()),
            labels: reveal.then(|| Arc::clone(&j.labels)),
            endpoints: reveal.then(|| Arc::clone(&j.endpoints)),
        }
    }

    /// Builds one node's netmap, peers sorted by key.
    fn netmap_of(&self, i: usize) -> Option<NetMap> {
        let me = self.slot(i)?;
        // Sort small (slot, ports) tuples, not finished peers: a Peer is
        // about a hundred bytes and moving it dominated the sort.
        let mut order: Vec<(&Slot, &PortSet, &PortSet)> = self
            .peers_of(i)
            .into_iter()
            .filter_map(|(j, o, n)| self.slot(j).map(|s| (s, o, n)))
            .collect();
        order.sort_unstable_by_key(|t| t.0.node.public_key);
        let peers = order
            .into_iter()
            .map(|(s, o, n)| self.peer_entry(s, o, n))
            .collect();
        Some(self.netmap_with(me, peers))
    }

    /// A netmap for `me` with these (sorted) peers.
    fn netmap_with(&self, me: &Slot, peers: Vec<Peer>) -> NetMap {
        NetMap {
            format: NETMAP_FORMAT,
            version: 0,
            node: SelfNode {
                name: me.node.name.clone(),
                public_key: me.node.public_key,
                addresses: me.node.addresses.clone(),
                labels: me.node.labels.clone(),
            },
            overlay: self.overlay.clone(),
            peers,
        }
    }

    /// One node's netmap (version 0).
    pub fn netmap(&self, name: &NodeName) -> Option<NetMap> {
        self.netmap_of(*self.by_name.get(name)?)
    }

    /// Every node's netmap (version 0).
    ///
    /// Works class by class: members of one class have the same peers
    /// (minus themselves) with the same ports, so the sorted peer list is
    /// built once per class and copied per member. Copying from one hot
    /// template keeps the shared reference counts in cache; building each
    /// netmap from scattered slots was cache-miss-bound (docs/benchmarks.md).
    /// Single-threaded on purpose: every netmap clones the same `Arc`s, and
    /// two threads bouncing those counters between cores were slower than one.
    pub fn netmaps(&self) -> BTreeMap<NodeName, NetMap> {
        let rank = self.key_ranks();
        let mut out = BTreeMap::new();
        let empty = empty_set();
        for (c, class) in self.classes.iter().enumerate() {
            if class.members.is_empty() {
                continue;
            }
            let mut template: Vec<(u32, usize, Peer)> = Vec::new();
            for &b in &class.related {
                let outbound = self.pairs.get(&(c, b)).unwrap_or(empty);
                let inbound = self.pairs.get(&(b, c)).unwrap_or(empty);
                for &j in &self.classes[b].members {
                    if let Some(s) = self.slot(j) {
                        template.push((rank[j], j, self.peer_entry(s, outbound, inbound)));
                    }
                }
            }
            template.sort_unstable_by_key(|t| t.0);
            for &i in &class.members {
                let Some(me) = self.slot(i) else { continue };
                let mut peers = Vec::with_capacity(template.len());
                peers.extend(template.iter().filter(|t| t.1 != i).map(|t| t.2.clone()));
                out.insert(me.node.name.clone(), self.netmap_with(me, peers));
            }
        }
        out
    }

    /// Position of every slot in public-key order (the netmap peer order).
    fn key_ranks(&self) -> Vec<u32> {
        let mut by_key: Vec<(&PublicKey, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (&s.node.public_key, i)))
            .collect();
        by_key.sort_unstable();
        let mut rank = vec![0u32; self.slots.len()];
        for (r, (_, i)) in by_key.into_iter().enumerate() {
            rank[i] = u32::try_from(r).unwrap_or(u32::MAX);
        }
        rank
    }

    /// Every ordered pair of nodes with what the first may open to the second.
    pub fn paths(&self) -> BTreeMap<(NodeName, NodeName), PortSet> {
        let mut out = BTreeMap::new();
        for (name, &i) in &self.by_name {
            for (j, outbound, _) in self.peers_of(i) {
                if let (false, Some(s)) = (outbound.is_empty(), self.slot(j)) {
                    out.insert((name.clone(), s.node.name.clone()), outbound.clone());
                }
            }
        }
        out
    }
}

fn empty_set() -> &'static PortSet {
    static EMPTY: std::sync::OnceLock<PortSet> = std::sync::OnceLock::new();
    EMPTY.get_or_init(PortSet::empty)
}
