//! Deterministic simulation: several node cores exchange datagrams through
//! a virtual network with a virtual clock (each step jumps to the earliest
//! timer or delivery), latency and seeded loss. A tiny "kernel" per node
//! answers pings, TCP SYNs and UDP, so flows are checked end to end.

// Test code: unwrap is the assertion, and the virtual clock needs one real
// origin instant (all later times are offsets from it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

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
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

struct SimNode {
    name: &'static str,
    secret: [u8; 32],
    udp: SocketAddr,
    v4: IpAddr,
    v6: IpAddr,
    core: Node,
    /// Packets the core wrote to this node's TUN.
    tun_in: Vec<Vec<u8>>,
    events: Vec<Event>,
    /// Datagrams this node received from the network.
    udp_in: usize,
}

struct Sim {
    now: Instant,
    nodes: Vec<SimNode>,
    in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    rng: Rng,
    loss: f64,
    latency: Duration,
}

fn public(secret: [u8; 32]) -> PublicKey {
    PublicKey::from_bytes(x25519::PublicKey::from(&x25519::StaticSecret::from(secret)).to_bytes())
}

fn ports(s: &[&str]) -> PortSet {
    let specs: Vec<_> = s.iter().map(|p| p.parse().unwrap()).collect();
    PortSet::from_specs(&specs)
}

impl Sim {
    fn new(names: &[&'static str], seed: u64, loss: f64) -> Self {
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
        }
    }

    fn idx(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn key(&self, name: &str) -> PublicKey {
        public(self.nodes[self.idx(name)].secret)
    }

    /// Netmaps compiled from `rules` (from, to, ports), the way the policy
    /// compiler does: both ends know each other; only the opener learns the
    /// other's name and endpoint.
    fn netmaps(&self, rules: &[(&str, &str, &[&str])]) -> BTreeMap<&'static str, NetMap> {
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
                    allowed_ips: vec![IpNet::from(o.v4), IpNet::from(o.v6)],
                    outbound: PortSet::empty(),
                    inbound: PortSet::empty(),
                    name: None,
                    labels: None,
                    endpoints: None,
                });
                if outbound {
                    e.outbound.union_with(&ports(p));
                    e.name = Some(NodeName::new(other).unwrap());
                    e.endpoints = Some(vec![o.udp]);
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

    fn apply(&mut self, rules: &[(&str, &str, &[&str])]) {
        let maps = self.netmaps(rules);
        let now = self.now;
        for n in &mut self.nodes {
            n.core.apply_netmap(now, &maps[n.name]).unwrap();
        }
    }

    /// A local process on `name` sends `packet` into its TUN.
    fn send(&mut self, name: &str, packet: &[u8]) {
        let i = self.idx(name);
        let now = self.now;
        self.nodes[i].core.handle_tun(now, packet);
        self.drain();
    }

    /// Moves every queued output: datagrams into the network (or lost),
    /// TUN writes to the node's kernel, which may answer.
    fn drain(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                let now = self.now;
                while let Some(t) = self.nodes[i].core.poll_transmit() {
                    busy = true;
                    if !self.rng.chance(self.loss) {
                        self.in_flight.push((
                            now + self.latency,
                            self.nodes[i].udp,
                            t.dst,
                            t.payload,
                        ));
                    }
                }
                while let Some(ev) = self.nodes[i].core.poll_event() {
                    self.nodes[i].events.push(ev);
                }
                while let Some(p) = self.nodes[i].core.poll_tun_write() {
                    busy = true;
                    if let Some(answer) = kernel_answer(&p) {
                        self.nodes[i].core.handle_tun(now, &answer);
                    }
                    self.nodes[i].tun_in.push(p);
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn run(&mut self, d: Duration) {
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
                if let Some(n) = self.nodes.iter_mut().find(|n| n.udp == to) {
                    n.udp_in += 1;
                    n.core.handle_udp(now, from, &payload);
                }
            }
            for n in &mut self.nodes {
                if n.core.poll_timeout().is_some_and(|t| t <= now) {
                    n.core.handle_timeout(now);
                }
            }
        }
    }

    fn drops(&self, name: &str, r: DropReason) -> u64 {
        self.nodes[self.idx(name)]
            .core
            .status(self.now)
            .drops
            .get(r)
    }

    fn take_tun(&mut self, name: &str) -> Vec<Vec<u8>> {
        let i = self.idx(name);
        std::mem::take(&mut self.nodes[i].tun_in)
    }

    fn addr(&self, name: &str, v6: bool) -> IpAddr {
        let n = &self.nodes[self.idx(name)];
        if v6 { n.v6 } else { n.v4 }
    }
}

/// What the node's kernel answers to a packet delivered on its TUN: echo
/// replies, SYN-ACKs for SYNs, UDP echoes.
fn kernel_answer(p: &[u8]) -> Option<Vec<u8>> {
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

fn is_tcp(p: &[u8], flags: u8, dport: u16) -> bool {
    packet::parse(p)
        .is_ok_and(|x| x.key.proto == PROTO_TCP && x.tcp_flags == flags && x.key.dst_port == dport)
}

fn is_prohibited(p: &[u8]) -> bool {
    (p[0] >> 4 == 4 && p[20] == 3 && p[21] == 13) || (p[0] >> 4 == 6 && p[40] == 1 && p[41] == 1)
}

const THREE_TIER: &[(&str, &str, &[&str])] = &[
    ("web", "api", &["tcp/8080", "icmp"]),
    ("api", "db", &["tcp/5432"]),
];

#[test]
fn allowed_flows_pass_denied_and_unrouted_are_dropped() {
    let mut s = Sim::new(&["web", "api", "db"], 1, 0.0);
    s.apply(THREE_TIER);
    for v6 in [false, true] {
        let (web, api, db) = (s.addr("web", v6), s.addr("api", v6), s.addr("db", v6));
        // web -> api tcp/8080: the SYN reaches api, the SYN-ACK comes back.
        s.send("web", &craft::tcp(web, 40000, api, 8080, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert!(
            s.take_tun("api").iter().any(|p| is_tcp(p, TCP_SYN, 8080)),
            "v6={v6}"
        );
        assert!(
            s.take_tun("web")
                .iter()
                .any(|p| is_tcp(p, TCP_SYN | TCP_ACK, 40000))
        );
        // web -> db: no peer, so no route and an ICMP prohibited locally.
        let before = s.drops("web", DropReason::NoRoute);
        s.send("web", &craft::tcp(web, 40001, db, 5432, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert_eq!(s.drops("web", DropReason::NoRoute), before + 1);
        assert!(s.take_tun("web").iter().all(|p| is_prohibited(p)));
        let stray = s.take_tun("db");
        assert!(
            stray.is_empty(),
            "{:?}",
            stray.iter().map(|p| packet::parse(p)).collect::<Vec<_>>()
        );
        // web -> api tcp/22: known peer, port not allowed.
        let before = s.drops("web", DropReason::Policy);
        s.send("web", &craft::tcp(web, 40002, api, 22, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert_eq!(s.drops("web", DropReason::Policy), before + 1);
        assert!(s.take_tun("api").is_empty());
        // api -> db tcp/5432 works; db (inbound-only towards api) cannot open.
        s.send("api", &craft::tcp(api, 41000, db, 5432, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert!(s.take_tun("db").iter().any(|p| is_tcp(p, TCP_SYN, 5432)));
        assert!(
            s.take_tun("api")
                .iter()
                .any(|p| is_tcp(p, TCP_SYN | TCP_ACK, 41000))
        );
        let before = s.drops("db", DropReason::Policy);
        s.send("db", &craft::tcp(db, 5432, api, 8080, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert_eq!(s.drops("db", DropReason::Policy), before + 1);
        assert!(s.take_tun("api").is_empty());
        assert!(s.take_tun("db").iter().all(|p| is_prohibited(p)));
    }
    // Flow events: allowed and denied flows were reported with peers.
    let web = &s.nodes[s.idx("web")];
    let flows: Vec<_> = web
        .events
        .iter()
        .filter_map(|e| {
            if let Event::Flow(f) = e {
                Some(f)
            } else {
                None
            }
        })
        .collect();
    assert!(flows.iter().any(|f| f.verdict == Verdict::Allow
        && f.dst_port == 8080
        && f.peer_name.as_ref().is_some_and(|n| n.as_str() == "api")));
    assert!(
        flows
            .iter()
            .any(|f| f.verdict == Verdict::Deny && f.reason == "no_route")
    );
    assert!(
        flows
            .iter()
            .any(|f| f.verdict == Verdict::Deny && f.reason == "policy" && f.dst_port == 22)
    );
    let st = s.nodes[s.idx("web")].core.status(s.now);
    let api = st
        .peers
        .iter()
        .find(|p| p.public_key == s.key("api"))
        .unwrap();
    assert!(api.since_handshake.is_some() && api.tx_bytes > 0 && api.rx_bytes > 0);
    // The db learned api's endpoint from its handshake.
    let st = s.nodes[s.idx("db")].core.status(s.now);
    assert_eq!(st.peers[0].endpoint, Some(s.nodes[s.idx("api")].udp));
}

#[test]
fn pings_get_through_under_loss() {
    for seed in 0..4 {
        let mut s = Sim::new(&["web", "api"], seed, 0.3);
        s.apply(THREE_TIER);
        let (web, api) = (s.addr("web", false), s.addr("api", false));
        let mut replies = 0;
        for seq in 0..30 {
            s.send("web", &craft::echo_request(web, api, 77, seq));
            s.run(Duration::from_secs(1));
            replies += s
                .take_tun("web")
                .iter()
                .filter(|p| packet::parse(p).is_ok_and(|x| x.class == Class::Reply))
                .count();
        }
        // 30% loss each way: about half the pings come back once the
        // handshake (retransmitted on the virtual clock) is through.
        assert!(replies >= 8, "seed {seed}: only {replies} replies");
    }
}

#[test]
fn unknown_keys_get_no_answer() {
    let mut s = Sim::new(&["api", "db", "rogue"], 7, 0.0);
    s.apply(&[("api", "db", &["tcp/5432"])]);
    // The rogue knows db's key and endpoint, but db's netmap does not list it.
    let mut rogue_map = s.netmaps(&[("rogue", "db", &["any"])])["rogue"].clone();
    rogue_map.peers[0].public_key = s.key("db");
    let i = s.idx("rogue");
    let now = s.now;
    s.nodes[i].core.apply_netmap(now, &rogue_map).unwrap();
    let (rogue, db) = (s.addr("rogue", false), s.addr("db", false));
    for seq in 0..3 {
        s.send(
            "rogue",
            &craft::tcp(rogue, 50000 + seq, db, 5432, TCP_SYN, &[]),
        );
        s.run(Duration::from_secs(6));
    }
    assert!(s.drops("db", DropReason::UnknownKey) >= 3);
    assert_eq!(s.nodes[i].udp_in, 0, "db answered the rogue");
    assert!(s.take_tun("db").is_empty());
}

#[test]
fn spoofed_inner_sources_are_dropped() {
    let mut s = Sim::new(&["web", "api", "db"], 3, 0.0);
    s.apply(THREE_TIER);
    let (db, api) = (s.addr("db", false), s.addr("api", false));
    // web sends to api with db's address as source.
    s.send("web", &craft::tcp(db, 40000, api, 8080, TCP_SYN, &[]));
    s.run(Duration::from_millis(200));
    assert_eq!(s.drops("api", DropReason::SpoofedSource), 1);
    assert!(s.take_tun("api").is_empty());
}

#[test]
fn netmap_update_removes_a_peer_and_keeps_others() {
    let mut s = Sim::new(&["web", "api", "db"], 5, 0.0);
    s.apply(THREE_TIER);
    let (web, api, db) = (
        s.addr("web", false),
        s.addr("api", false),
        s.addr("db", false),
    );
    s.send("web", &craft::echo_request(web, api, 1, 1));
    s.send("api", &craft::tcp(api, 41000, db, 5432, TCP_SYN, &[]));
    s.run(Duration::from_millis(100));
    assert_eq!(s.take_tun("web").len(), 1);
    assert_eq!(s.take_tun("api").len(), 2);
    let db_handshake = s.nodes[s.idx("api")]
        .core
        .status(s.now)
        .peers
        .iter()
        .find(|p| p.public_key == s.key("db"))
        .unwrap()
        .since_handshake;
    // api's new netmap drops web; db is unchanged.
    let maps = s.netmaps(&[("api", "db", &["tcp/5432"])]);
    let i = s.idx("api");
    let now = s.now;
    let diff = s.nodes[i].core.apply_netmap(now, &maps["api"]).unwrap();
    assert_eq!(diff.removed, vec![s.key("web")]);
    s.run(Duration::from_secs(1));
    let before = s.drops("api", DropReason::UnknownKey);
    s.send("web", &craft::echo_request(web, api, 1, 2));
    s.run(Duration::from_secs(1));
    assert!(s.take_tun("api").is_empty() && s.take_tun("web").is_empty());
    assert!(s.drops("api", DropReason::UnknownKey) > before);
    // The api -> db session survived the update (same handshake, still works).
    let st = s.nodes[i].core.status(s.now);
    let p = st
        .peers
        .iter()
        .find(|p| p.public_key == s.key("db"))
        .unwrap();
    assert_eq!(
        p.since_handshake,
        db_handshake.map(|d| d + Duration::from_secs(2))
    );
    s.send("api", &craft::tcp(api, 41000, db, 5432, TCP_ACK, b"data"));
    s.run(Duration::from_millis(100));
    assert!(s.take_tun("db").iter().any(|p| is_tcp(p, TCP_ACK, 5432)));
}

#[test]
fn garbage_is_counted_not_fatal() {
    let mut s = Sim::new(&["web", "api"], 9, 0.0);
    s.apply(THREE_TIER);
    let now = s.now;
    let from: SocketAddr = "198.51.100.1:1234".parse().unwrap();
    let core = &mut s.nodes[0].core;
    core.handle_udp(now, from, &[1, 2, 3]);
    core.handle_udp(
        now,
        from,
        &[
            4, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            13, 14, 15, 16,
        ],
    );
    core.handle_tun(now, &[0x00, 1, 2]);
    core.handle_tun(now, &[]);
    let d = core.status(now).drops;
    assert_eq!(d.bad_packet, 3);
    assert_eq!(d.unknown_key, 1);
    assert!(core.poll_transmit().is_none());
}

/// Collects everything logged at TRACE, to check no secret leaks.
#[derive(Clone, Default)]
struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_never_contain_private_keys() {
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let secrets: Vec<[u8; 32]> = tracing::subscriber::with_default(subscriber, || {
        let mut s = Sim::new(&["web", "api", "db", "rogue"], 11, 0.1);
        s.apply(THREE_TIER);
        let (web, api, db) = (
            s.addr("web", false),
            s.addr("api", false),
            s.addr("db", false),
        );
        for seq in 0..5 {
            s.send("web", &craft::echo_request(web, api, 3, seq));
            s.send("web", &craft::tcp(web, 40000, db, 5432, TCP_SYN, &[]));
            s.send("rogue", &craft::tcp(web, 40000, db, 5432, TCP_SYN, &[]));
            s.run(Duration::from_secs(2));
        }
        s.nodes.iter().map(|n| n.secret).collect()
    });
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("drop"), "nothing was logged at TRACE");
    use base64::Engine as _;
    for sk in secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(sk);
        let hex: String = sk.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !text.contains(&b64) && !text.contains(&hex),
            "a private key was logged"
        );
        assert!(
            !text.contains(&format!("{sk:?}")),
            "a private key was logged (Debug)"
        );
    }
}
