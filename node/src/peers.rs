//! The peer table: one WireGuard tunnel per netmap peer, cryptokey routing
//! by allowed IPs, and the index used to demultiplex incoming datagrams.
//!
//! Peers are keyed by public key. Applying a netmap keeps the tunnel (and so
//! the sessions) of every peer whose key is still present and only updates
//! its addresses, ports and endpoints; a peer whose key disappeared is
//! dropped at once, with its sessions. A new key always gets a fresh tunnel
//! and a fresh local index, so stale datagrams cannot reach it.
//!
//! Peers live in slots ([`Slot`]); the per-packet lookups (receiver index,
//! destination address) yield a slot, so a packet finds its peer with one
//! hash probe and an array index, not a second search by key (which on an
//! idle tunnel's cold cache cost a tree walk and a 32-byte comparison per
//! packet). Slots of removed peers are reused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use ipnet::IpNet;
use segmesh_config::{NetMap, NodeName, PortSet, PublicKey};

use crate::tunn::Tunnel;

/// Looked up once per packet; keyed per process like the flow tables.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// Handshake messages per second the node answers before demanding cookies
/// (counted twice per message: admission and the tunnel both verify).
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// Local indices are 24 bits: boringtun puts a session counter in the low 8.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// One permitted peer.
#[derive(Debug)]
pub struct PeerState {
    pub key: PublicKey,
    pub name: Option<NodeName>,
    pub allowed_ips: Arc<[IpNet]>,
    pub outbound: PortSet,
    pub inbound: PortSet,
    /// Endpoints from the netmap; empty for an inbound-only peer.
    pub configured: Arc<[SocketAddr]>,
    /// Where datagrams go: learned from authenticated packets, else the
    /// first configured endpoint, else unknown (never initiated to).
    pub endpoint: Option<SocketAddr>,
    /// True once `endpoint` comes from the peer itself.
    pub learned: bool,
    pub index: u32,
    /// Completed handshakes, to tell the first one (peer up) from rekeys.
    pub handshakes: u64,
    pub tunnel: Tunnel,
}

/// What applying a netmap changed, for logs and events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerDiff {
    pub added: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
    pub updated: Vec<PublicKey>,
}

/// Where a peer lives in its table; valid until the next
/// [`PeerTable::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

/// All peers of a node.
pub struct PeerTable {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    slots: Vec<Option<PeerState>>,
    /// Ordered, so listings are stable.
    by_key: BTreeMap<PublicKey, Slot>,
    by_index: HashMap<u32, Slot>,
    /// Host routes (/32, /128): the common case, one hash lookup.
    hosts: HashMap<IpAddr, Slot>,
    /// Wider prefixes, scanned in order (netmaps forbid overlaps).
    nets: Vec<(IpNet, Slot)>,
    next_index: u32,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.by_key.len())
            .finish_non_exhaustive()
    }
}

impl PeerTable {
    /// A table for the node holding `secret`. `index_seed` picks the first
    /// local index (random in production, fixed in simulations).
    pub fn new(secret: [u8; 32], index_seed: u32) -> Self {
        let secret = x25519::StaticSecret::from(secret);
        let public = x25519::PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Self {
            secret,
            public,
            limiter,
            slots: Vec::new(),
            by_key: BTreeMap::new(),
            by_index: HashMap::default(),
            hosts: HashMap::default(),
            nets: Vec::new(),
            next_index: index_seed & INDEX_MASK,
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.public.to_bytes())
    }

    pub(crate) fn secret(&self) -> (&x25519::StaticSecret, &x25519::PublicKey) {
        (&self.secret, &self.public)
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Replaces this node's key (a rotation): new handshakes use it, and
    /// the handshake rate limiter checks MACs against the new public key.
    /// The caller re-keys each peer's tunnel with [`PeerTable::secret`] and
    /// [`PeerTable::limiter_arc`].
    pub(crate) fn set_secret(&mut self, secret: [u8; 32]) {
        self.secret = x25519::StaticSecret::from(secret);
        self.public = x25519::PublicKey::from(&self.secret);
        self.limiter = Arc::new(RateLimiter::new(&self.public, HANDSHAKE_RATE_LIMIT));
    }

    pub(crate) fn limiter_arc(&self) -> Arc<RateLimiter> {
        Arc::clone(&self.limiter)
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = (self.next_index + 1) & INDEX_MASK;
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// Makes the table match the netmap's peers.
    pub fn apply(&mut self, map: &NetMap) -> PeerDiff {
        let mut diff = PeerDiff::default();
        let wanted: BTreeMap<_, _> = map.peers.iter().map(|p| (p.public_key, p)).collect();
        let gone: Vec<PublicKey> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(slot) = self.by_key.remove(&key)
                && let Some(p) = self.slots[slot.0].take()
            {
                self.by_index.remove(&p.index);
            }
            diff.removed.push(key);
        }
        for (key, p) in wanted {
            let configured = p.endpoints.clone().unwrap_or_default();
            if let Some(st) = self.get_mut(&key) {
                let changed = st.allowed_ips != p.allowed_ips
                    || st.outbound != p.outbound
                    || st.inbound != p.inbound
                    || st.configured != configured
                    || st.name != p.name;
                if !st.learned {
                    st.endpoint = configured.first().copied();
                }
                st.allowed_ips.clone_from(&p.allowed_ips);
                st.outbound = p.outbound.clone();
                st.inbound = p.inbound.clone();
                st.configured = configured;
                st.name.clone_from(&p.name);
                if changed {
                    diff.updated.push(key);
                }
                continue;
            }
            let index = self.alloc_index();
            let tunnel = Tunnel::new(
                self.secret.clone(),
                x25519::PublicKey::from(*key.as_bytes()),
                index,
                self.limiter.clone(),
            );
            let slot = Slot(
                self.slots
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or(self.slots.len()),
            );
            if slot.0 == self.slots.len() {
                self.slots.push(None);
            }
            self.by_index.insert(index, slot);
            self.by_key.insert(key, slot);
            self.slots[slot.0] = Some(PeerState {
                key,
                name: p.name.clone(),
                allowed_ips: p.allowed_ips.clone(),
                outbound: p.outbound.clone(),
                inbound: p.inbound.clone(),
                endpoint: configured.first().copied(),
                configured,
                learned: false,
                index,
                handshakes: 0,
                tunnel,
            });
            diff.added.push(key);
        }
        self.rebuild_routes();
        diff
    }

    fn rebuild_routes(&mut self) {
        self.hosts.clear();
        self.nets.clear();
        for &slot in self.by_key.values() {
            let Some(p) = &self.slots[slot.0] else {
                continue;
            };
            for net in p.allowed_ips.iter() {
                if net.prefix_len() == net.max_prefix_len() {
                    self.hosts.insert(net.addr(), slot);
                } else {
                    self.nets.push((*net, slot));
                }
            }
        }
    }

    /// Cryptokey routing: the peer whose allowed IPs cover `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<Slot> {
        if let Some(&s) = self.hosts.get(&dst) {
            return Some(s);
        }
        self.nets
            .iter()
            .find(|(n, _)| n.contains(&dst))
            .map(|&(_, s)| s)
    }

    /// The peer owning a receiver index from an incoming datagram.
    pub fn by_receiver(&self, receiver_index: u32) -> Option<Slot> {
        self.by_index.get(&(receiver_index >> 8)).copied()
    }

    /// The slot of the peer with this key.
    pub fn find(&self, key: &PublicKey) -> Option<Slot> {
        self.by_key.get(key).copied()
    }

    pub fn get(&self, key: &PublicKey) -> Option<&PeerState> {
        self.find(key).and_then(|s| self.slot(s))
    }

    pub fn get_mut(&mut self, key: &PublicKey) -> Option<&mut PeerState> {
        self.find(key).and_then(|s| self.slot_mut(s))
    }

    pub fn slot(&self, slot: Slot) -> Option<&PeerState> {
        self.slots.get(slot.0).and_then(Option::as_ref)
    }

    pub fn slot_mut(&mut self, slot: Slot) -> Option<&mut PeerState> {
        self.slots.get_mut(slot.0).and_then(Option::as_mut)
    }

    /// Peers in key order.
    pub fn iter(&self) -> impl Iterator<Item = &PeerState> {
        self.by_key.values().filter_map(|&s| self.slot(s))
    }

    /// Peers in slot order (for timers and rotations, where order does
    /// not matter).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut PeerState> {
        self.slots.iter_mut().flatten()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl PeerState {
    /// True when `src` is one of the peer's allowed IPs.
    pub fn owns(&self, src: IpAddr) -> bool {
        self.allowed_ips.iter().any(|n| n.contains(&src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use segmesh_config::{NETMAP_FORMAT, Peer, SelfNode};

    fn peer(b: u8, ip: &str, endpoints: Option<Vec<SocketAddr>>) -> Peer {
        Peer {
            public_key: PublicKey::from_bytes(
                x25519::PublicKey::from(&x25519::StaticSecret::from([b; 32])).to_bytes(),
            ),
            allowed_ips: vec![ip.parse().unwrap()].into(),
            outbound: PortSet::any(),
            inbound: PortSet::empty(),
            name: None,
            labels: None,
            endpoints: endpoints.map(Into::into),
        }
    }

    fn map(peers: Vec<Peer>) -> NetMap {
        NetMap {
            format: NETMAP_FORMAT,
            version: 1,
            node: SelfNode {
                name: NodeName::new("me").unwrap(),
                public_key: PublicKey::from_bytes([0; 32]),
                addresses: vec!["100.64.0.1".parse().unwrap()],
                labels: Default::default(),
            },
            overlay: vec![],
            peers,
        }
    }

    #[test]
    fn diff_keeps_routes_and_indices() {
        let mut t = PeerTable::new([1; 32], 0xffff_fffe);
        let ep: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let a = peer(2, "100.64.0.2/32", Some(vec![ep]));
        let b = peer(3, "100.64.1.0/24", None);
        let d = t.apply(&map(vec![a.clone(), b.clone()]));
        assert_eq!(d.added.len(), 2);
        let (sa, sb) = (t.find(&a.public_key), t.find(&b.public_key));
        assert!(sa.is_some() && sb.is_some() && sa != sb);
        assert_eq!(t.route("100.64.0.2".parse().unwrap()), sa);
        assert_eq!(t.route("100.64.1.77".parse().unwrap()), sb);
        assert_eq!(t.route("100.64.0.3".parse().unwrap()), None);
        assert_eq!(t.get(&a.public_key).unwrap().endpoint, Some(ep));
        assert_eq!(t.get(&b.public_key).unwrap().endpoint, None);
        let ia = t.get(&a.public_key).unwrap().index;
        assert!(ia <= INDEX_MASK);
        assert_eq!(t.by_receiver((ia << 8) | 3), sa);
        // Same key again: kept (same index); b removed.
        let d = t.apply(&map(vec![a.clone()]));
        assert_eq!(d.removed, vec![b.public_key]);
        assert!(d.added.is_empty() && d.updated.is_empty());
        assert_eq!(t.get(&a.public_key).unwrap().index, ia);
        assert_eq!(t.route("100.64.1.77".parse().unwrap()), None);
        assert!(
            t.get(&a.public_key)
                .unwrap()
                .owns("100.64.0.2".parse().unwrap())
        );
    }

    #[test]
    fn a_freed_slot_serves_the_new_peer_and_nothing_of_the_old() {
        let mut t = PeerTable::new([1; 32], 7);
        let a = peer(2, "100.64.0.2/32", None);
        let b = peer(3, "100.64.0.3/32", None);
        let c = peer(4, "100.64.0.4/32", None);
        t.apply(&map(vec![a.clone(), b.clone()]));
        let ib = t.get(&b.public_key).unwrap().index;
        let sb = t.find(&b.public_key).unwrap();
        t.apply(&map(vec![a.clone(), c.clone()]));
        let sc = t.find(&c.public_key).unwrap();
        assert_eq!(sc, sb, "b's slot is reused");
        assert_eq!(t.by_receiver(ib << 8), None, "b's index is gone");
        assert_eq!(t.route("100.64.0.3".parse().unwrap()), None);
        let via_route = t.route("100.64.0.4".parse().unwrap()).unwrap();
        assert_eq!(t.slot(via_route).unwrap().key, c.public_key);
        let ic = t.get(&c.public_key).unwrap().index;
        assert_eq!(t.by_receiver(ic << 8), Some(sc));
        assert_eq!(t.len(), 2);
        let keys: Vec<_> = t.iter().map(|p| p.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "listed in key order");
        assert_eq!(t.iter_mut().count(), 2);
    }
}
