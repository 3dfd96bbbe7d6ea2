//! The control-protocol decoders read untrusted bytes (a join token pasted by
//! a user, stream lines from the network): arbitrary input must give an
//! error, never a panic, and valid values must round-trip.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use proptest::prelude::*;
use segmesh_config::control::{JoinToken, StreamMessage, apply_delta, peer_delta};
use segmesh_config::{NETMAP_FORMAT, NetMap, NodeName, Peer, PortSet, PublicKey, SelfNode};

fn netmap(version: u64, keys: &[u8]) -> NetMap {
    NetMap {
        format: NETMAP_FORMAT,
        version,
        node: SelfNode {
            name: NodeName::new("me").unwrap(),
            public_key: PublicKey::from_bytes([0; 32]),
            addresses: vec!["100.80.0.1".parse().unwrap()],
            labels: Default::default(),
        },
        overlay: vec![],
        peers: keys
            .iter()
            .map(|k| Peer {
                public_key: PublicKey::from_bytes([*k; 32]),
                allowed_ips: vec![format!("100.81.0.{k}/32").parse().unwrap()].into(),
                outbound: PortSet::empty(),
                inbound: PortSet::empty(),
                name: None,
                labels: None,
                endpoints: None,
            })
            .collect(),
    }
}

proptest! {
    #[test]
    fn token_parser_never_panics(s in ".{0,300}") {
        let _ = JoinToken::parse(&s);
        let _ = JoinToken::parse(&format!("smj1.{s}"));
    }

    #[test]
    fn token_roundtrips(secret in any::<[u8; 32]>(), port in 1u16..) {
        let t = JoinToken::new(vec![format!("https://10.0.0.1:{port}")], &secret, "ab".repeat(32));
        prop_assert_eq!(JoinToken::parse(&t.encode()).unwrap().secret_bytes().unwrap(), secret);
    }

    #[test]
    fn stream_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = serde_json::from_slice::<StreamMessage>(&bytes);
    }

    #[test]
    fn delta_reproduces_the_new_netmap(
        old in proptest::collection::btree_set(1u8..60, 0..20),
        new in proptest::collection::btree_set(1u8..60, 0..20),
    ) {
        let old: Vec<u8> = old.into_iter().collect();
        let new: Vec<u8> = new.into_iter().collect();
        let (a, b) = (netmap(4, &old), netmap(5, &new));
        let (remove, upsert) = peer_delta(&a, &b).unwrap();
        prop_assert_eq!(apply_delta(&a, 5, &remove, &upsert), b);
    }
}
