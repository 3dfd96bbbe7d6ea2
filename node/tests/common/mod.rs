//! The simulation harness shared by the simulation tests: several node
//! cores exchange datagrams through a virtual network with a virtual clock
//! (each step jumps to the earliest timer or delivery), latency and seeded
//! loss. A tiny "kernel" per node answers pings, TCP SYNs and UDP, so flows
//! are checked end to end.

// Not every test binary uses every helper.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::x25519;
use ipnet::IpNet;
use segmesh_config::{NETMAP_FORMAT, NetMap, NodeName, Peer, PortSet, PublicKey, SelfNode};
use segmesh_node::core::{Event, Node};
use segmesh_node::craft;
use segmesh_node::packet::{self, Class, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};
use segmesh_node::status::{DropReason, Verdict};

/// splitmix64: small, seeded, good enough for loss decisions.
pub struct Rng(u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

pub struct SimNode {
    pub name: &'static str,
    pub secret: [u8; 32],
    pub udp: SocketAddr,
    v4: IpAddr,
    v6: IpAddr,
    pub core: Node,
    /// Packets the core wrote to this node's TUN.
    pub tun_in: Vec<Vec<u8>>,
    pub events: Vec<Event>,
    /// Datagrams this node received from the network.
    pub udp_in: usize,
}

pub struct Sim {
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    pub in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    pub rng: Rng,
    pub loss: f64,
    pub latency: Duration,
    /// Feed packets through the lone-packet calls (`handle_tun_lone`,
    /// `handle_udp_lone`), as the driver does for interactive traffic,
    /// instead of the queued ones.
    pub lone: bool,
}

pub fn public(secret: [u8; 32]) -> PublicKey {
    PublicKey::from_bytes(x25519::PublicKey::from(&x25519::StaticSecret::from(secret)).to_bytes())
}

pub fn ports(s: &[&str]) -> PortSet {
    let specs: Vec<_> = s.iter().map(|p| p.parse().unwrap()).collect();
    PortSet::from_specs(&specs)
}

impl Sim {
    pub fn new(names: &[&'static str], seed: u64, loss: f64) -> Self {
        let now = Instant::now();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, &name)| {
                let n = i as u8 + 1;
                let secret = [n; 32];
                SimNode {
                    name,
                    secret,
                    udp: format!("192.0.2.{n}:51820").parse().unwrap(),
                    v4: format!("100.64.0.{n}").parse().unwrap(),
                    v6: format!("fd5e:6d00::{n}").parse().unwrap(),
                    core: Node::new(secret, u32::from(n) << 16, now),
                    tun_in: Vec::new(),
                    events: Vec::new(),
                    udp_in: 0,
                }
            })
            .collect();
        Sim {
            now,
            nodes,
            in_flight: Vec::new(),
            rng: Rng(seed),
            loss,
            latency: Duration::from_millis(5),
            lone: false,
        }
    }

    /// The same simulation with every packet fed through the lone calls.
    pub fn lone(mut self, lone: bool) -> Self {
        self.lone = lone;
        self
    }

    /// Node `i`'s local stack writes `packet` to its TUN device.
    fn tun_read(&mut self, i: usize, packet: &[u8]) {
        let now = self.now;
        if !self.lone {
            return self.nodes[i].core.handle_tun(now, packet);
        }
        let mut out = Vec::new();
        if let Some((dst, n)) = self.nodes[i].core.handle_tun_lone(now, packet, &mut out) {
            out.truncate(n);
            self.transmit(i, dst, out);
        }
    }

    /// A datagram from `from` arrives at node `i`.
    fn udp_arrives(&mut self, i: usize, from: SocketAddr, payload: &[u8]) {
        let now = self.now;
        self.nodes[i].udp_in += 1;
        if !self.lone {
            return self.nodes[i].core.handle_udp(now, from, payload);
        }
        // Room in front, as the driver keeps for the TUN's virtio header.
        const HEADROOM: usize = 12;
        let mut out = Vec::new();
        if let Some(n) = self.nodes[i]
            .core
            .handle_udp_lone(now, from, payload, &mut out, HEADROOM)
        {
            out.truncate(HEADROOM + n);
            out.drain(..HEADROOM);
            self.tun_write(i, out);
        }
    }

    /// Node `i` sends a datagram (or the network loses it). The network
    /// gets a copy and the buffer goes back to the core, as the driver hands
    /// back spent buffers: the core's next outputs are then written over
    /// earlier packets' bytes.
    fn transmit(&mut self, i: usize, dst: SocketAddr, payload: Vec<u8>) {
        if !self.rng.chance(self.loss) {
            let src = self.nodes[i].udp;
            self.in_flight
                .push((self.now + self.latency, src, dst, payload.clone()));
        }
        self.nodes[i].core.recycle(payload);
    }

    /// Node `i` writes a packet to its TUN device; its kernel may answer.
    /// The buffer goes back to the core as in `transmit`.
    fn tun_write(&mut self, i: usize, p: Vec<u8>) {
        if let Some(answer) = kernel_answer(&p) {
            self.tun_read(i, &answer);
        }
        self.nodes[i].tun_in.push(p.clone());
        self.nodes[i].core.recycle(p);
    }

    pub fn idx(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    pub fn key(&self, name: &str) -> PublicKey {
        public(self.nodes[self.idx(name)].secret)
    }

    /// Netmaps compiled from `rules` (from, to, ports), the way the policy
    /// compiler does: both ends know each other; only the opener learns the
    /// other's name and endpoint.
    pub fn netmaps(&self, rules: &[(&str, &str, &[&str])]) -> BTreeMap<&'static str, NetMap> {
        let mut maps = BTreeMap::new();
        for n in &self.nodes {
            let mut peers: BTreeMap<PublicKey, Peer> = BTreeMap::new();
            for &(from, to, p) in rules {
                if !self.nodes.iter().any(|x| x.name == from)
                    || !self.nodes.iter().any(|x| x.name == to)
                {
                    continue;
                }
                let (other, outbound) = if from == n.name {
                    (to, true)
                } else if to == n.name {
                    (from, false)
                } else {
                    continue;
                };
                let o = &self.nodes[self.idx(other)];
                let e = peers.entry(public(o.secret)).or_insert_with(|| Peer {
                    public_key: public(o.secret),
                    allowed_ips: vec![IpNet::from(o.v4), IpNet::from(o.v6)].into(),
                    outbound: PortSet::empty(),
                    inbound: PortSet::empty(),
                    name: None,
                    labels: None,
                    endpoints: None,
                });
                if outbound {
                    e.outbound.union_with(&ports(p));
                    e.name = Some(NodeName::new(other).unwrap());
                    e.endpoints = Some(vec![o.udp].into());
                } else {
                    e.inbound.union_with(&ports(p));
                }
            }
            maps.insert(
                n.name,
                NetMap {
                    format: NETMAP_FORMAT,
                    version: 1,
                    node: SelfNode {
                        name: NodeName::new(n.name).unwrap(),
                        public_key: public(n.secret),
                        addresses: vec![n.v4, n.v6],
                        labels: Default::default(),
                    },
                    overlay: vec!["100.64.0.0/16".parse().unwrap()],
                    peers: peers.into_values().collect(),
                },
            );
        }
        maps
    }

    pub fn apply(&mut self, rules: &[(&str, &str, &[&str])]) {
        let maps = self.netmaps(rules);
        let now = self.now;
        for n in &mut self.nodes {
            n.core.apply_netmap(now, &maps[n.name]).unwrap();
        }
    }

    /// A local process on `name` sends `packet` into its TUN.
    pub fn send(&mut self, name: &str, packet: &[u8]) {
        let i = self.idx(name);
        self.tun_read(i, packet);
        self.drain();
    }

    /// Moves every queued output: datagrams into the network (or lost),
    /// TUN writes to the node's kernel, which may answer.
    pub fn drain(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].core.poll_transmit() {
                    busy = true;
                    self.transmit(i, t.dst, t.payload);
                }
                while let Some(ev) = self.nodes[i].core.poll_event() {
                    self.nodes[i].events.push(ev);
                }
                while let Some(p) = self.nodes[i].core.poll_tun_write() {
                    busy = true;
                    self.tun_write(i, p);
                }
            }
            if !busy {
                return;
            }
        }
    }

    pub fn run(&mut self, d: Duration) {
        let deadline = self.now + d;
        loop {
            self.drain();
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.core.poll_timeout())
                .min();
            let next_packet = self.in_flight.iter().map(|f| f.0).min();
            let next = [next_timer, next_packet]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if next > deadline {
                self.now = deadline;
                return;
            }
            self.now = next;
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|f| f.0 <= now);
            self.in_flight = rest;
            for (_, from, to, payload) in due {
                if let Some(i) = self.nodes.iter().position(|n| n.udp == to) {
                    self.udp_arrives(i, from, &payload);
                }
            }
            for n in &mut self.nodes {
                if n.core.poll_timeout().is_some_and(|t| t <= now) {
                    n.core.handle_timeout(now);
                }
            }
        }
    }

    pub fn drops(&self, name: &str, r: DropReason) -> u64 {
        self.nodes[self.idx(name)]
            .core
            .status(self.now)
            .drops
            .get(r)
    }

    pub fn take_tun(&mut self, name: &str) -> Vec<Vec<u8>> {
        let i = self.idx(name);
        std::mem::take(&mut self.nodes[i].tun_in)
    }

    pub fn addr(&self, name: &str, v6: bool) -> IpAddr {
        let n = &self.nodes[self.idx(name)];
        if v6 { n.v6 } else { n.v4 }
    }
}

/// What the node's kernel answers to a packet delivered on its TUN: echo
/// replies, SYN-ACKs for SYNs, UDP echoes.
pub fn kernel_answer(p: &[u8]) -> Option<Vec<u8>> {
    let pkt = packet::parse(p).ok()?;
    let k = pkt.key;
    match k.proto {
        PROTO_TCP if pkt.tcp_flags == TCP_SYN => Some(craft::tcp(
            k.dst,
            k.dst_port,
            k.src,
            k.src_port,
            TCP_SYN | TCP_ACK,
            &[],
        )),
        PROTO_UDP => Some(craft::udp(k.dst, k.dst_port, k.src, k.src_port, b"echo")),
        _ if pkt.class == Class::Flow && k.src_port == k.dst_port && k.src_port != 0 => {
            Some(craft::echo_reply(k.dst, k.src, k.src_port, 1))
        }
        _ => None,
    }
}

pub fn is_tcp(p: &[u8], flags: u8, dport: u16) -> bool {
    packet::parse(p)
        .is_ok_and(|x| x.key.proto == PROTO_TCP && x.tcp_flags == flags && x.key.dst_port == dport)
}

pub fn is_prohibited(p: &[u8]) -> bool {
    (p[0] >> 4 == 4 && p[20] == 3 && p[21] == 13) || (p[0] >> 4 == 6 && p[40] == 1 && p[41] == 1)
}

pub const THREE_TIER: &[(&str, &str, &[&str])] = &[
    ("web", "api", &["tcp/8080", "icmp"]),
    ("api", "db", &["tcp/5432"]),
];
