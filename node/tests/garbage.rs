//! Property tests: whatever arrives on the UDP socket or the TUN device,
//! the core never panics, and every dropped input is counted.

// Test code: unwrap is the assertion, and the virtual clock needs one real
// origin instant (all later times are offsets from it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use segmesh_config::{NETMAP_FORMAT, NetMap, NodeName, Peer, PortSet, PublicKey, SelfNode};
use segmesh_node::core::Node;
use segmesh_node::craft;

fn node() -> (Node, Instant) {
    let now = Instant::now();
    let mut n = Node::new([1; 32], 5, now);
    let me = n.public_key();
    let map = NetMap {
        format: NETMAP_FORMAT,
        version: 1,
        node: SelfNode {
            name: NodeName::new("me").unwrap(),
            public_key: me,
            addresses: vec!["100.64.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            labels: Default::default(),
        },
        overlay: vec![],
        peers: vec![Peer {
            public_key: PublicKey::from_bytes([9; 32]),
            allowed_ips: vec![
                "100.64.0.2/32".parse().unwrap(),
                "fd00::2/128".parse().unwrap(),
            ]
            .into(),
            outbound: PortSet::any(),
            inbound: PortSet::any(),
            name: None,
            labels: None,
            endpoints: Some(vec!["192.0.2.2:51820".parse().unwrap()].into()),
        }],
    };
    n.apply_netmap(now, &map).unwrap();
    (n, now)
}

/// Datagrams shaped like WireGuard messages (right type byte and size),
/// plus anything at all.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            1u8..=4,
            prop::sample::select(vec![148usize, 92, 64, 32, 100, 1500])
        )
            .prop_flat_map(|(t, len)| {
                prop::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
                    v[0] = t;
                    v[1..4].fill(0);
                    v
                })
            }),
    ]
}

/// Frames that are random, or crafted IP packets with random bytes flipped
/// or cut off.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let me: std::net::IpAddr = "100.64.0.1".parse().unwrap();
    let peer: std::net::IpAddr = "100.64.0.2".parse().unwrap();
    let me6: std::net::IpAddr = "fd00::1".parse().unwrap();
    let peer6: std::net::IpAddr = "fd00::2".parse().unwrap();
    let seeds = vec![
        craft::tcp(me, 1, peer, 2, 2, b"x"),
        craft::udp(me6, 1, peer6, 53, b"q"),
        craft::echo_request(me, peer, 1, 1),
        craft::echo_request(me6, peer6, 1, 1),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        (
            prop::sample::select(seeds),
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            any::<usize>()
        )
            .prop_map(|(mut p, flips, cut)| {
                for (i, b) in flips {
                    let n = p.len();
                    p[i % n] = b;
                }
                let keep = cut % (p.len() + 1);
                if keep > 0 {
                    p.truncate(keep.max(1));
                }
                p
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_datagrams_never_panic(ds in prop::collection::vec(datagram(), 1..8)) {
        let (mut n, now) = node();
        let from: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        for (i, d) in ds.iter().enumerate() {
            n.handle_udp(now + Duration::from_millis(i as u64), from, d);
        }
        n.handle_timeout(now + Duration::from_secs(1));
        let drops = n.status(now).drops;
        let counted = drops.bad_packet + drops.unknown_key;
        // Nothing random authenticates, so every datagram is a counted drop
        // and nothing is written to the TUN.
        prop_assert_eq!(counted, ds.len() as u64);
        prop_assert!(n.poll_tun_write().is_none());
    }

    #[test]
    fn random_frames_never_panic(fs in prop::collection::vec(frame(), 1..8)) {
        let (mut n, now) = node();
        for f in &fs {
            n.handle_tun(now, f);
        }
        while let Some(t) = n.poll_transmit() {
            n.recycle(t.payload);
        }
        while let Some(p) = n.poll_tun_write() {
            // Only ICMP errors come back to the TUN, and they parse.
            prop_assert!(segmesh_node::packet::parse(&p).is_ok());
        }
    }
}
