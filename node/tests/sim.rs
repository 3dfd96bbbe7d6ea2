//! Deterministic simulation tests of the node core (harness in
//! `common/mod.rs`): allowed flows pass, denied and unrouted ones are
//! dropped, unknown keys get no answer, spoofed sources are dropped, a
//! netmap update removes a peer, under loss too.

// Test code: unwrap is the assertion, and the virtual clock needs one real
// origin instant (all later times are offsets from it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use segmesh_node::core::Event;
use segmesh_node::craft;
use segmesh_node::packet::{self, Class, TCP_ACK, TCP_SYN};
use segmesh_node::status::{DropReason, Verdict};

/// Nodes web and api under the three-tier policy, fed queued or `lone`,
/// with `loss` on the network; and their IPv4 addresses.
fn web_api(seed: u64, loss: f64, lone: bool) -> (Sim, IpAddr, IpAddr) {
    let mut s = Sim::new(&["web", "api"], seed, loss).lone(lone);
    s.apply(THREE_TIER);
    let (web, api) = (s.addr("web", false), s.addr("api", false));
    (s, web, api)
}

/// `client` (node, address, port) sends a SYN to `server`; the server's
/// TUN gets it and the client's gets the SYN-ACK back.
fn syn_answered(s: &mut Sim, client: (&str, IpAddr, u16), server: (&str, IpAddr, u16)) {
    let ((c, caddr, cport), (sv, saddr, sport)) = (client, server);
    s.send(c, &craft::tcp(caddr, cport, saddr, sport, TCP_SYN, &[]));
    s.run(Duration::from_millis(100));
    assert!(
        s.take_tun(sv).iter().any(|p| is_tcp(p, TCP_SYN, sport)),
        "{c} -> {sv}"
    );
    assert!(
        s.take_tun(c)
            .iter()
            .any(|p| is_tcp(p, TCP_SYN | TCP_ACK, cport)),
        "{sv} -> {c}"
    );
}

/// `node` sends `packet` and counts exactly one more drop for `reason`.
fn dropped(s: &mut Sim, node: &str, packet: &[u8], reason: DropReason) {
    let before = s.drops(node, reason);
    s.send(node, packet);
    s.run(Duration::from_millis(100));
    assert_eq!(s.drops(node, reason), before + 1, "{node}: {reason:?}");
}

#[test]
fn allowed_flows_pass_denied_and_unrouted_are_dropped() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        let mut s = Sim::new(&["web", "api", "db"], 1, 0.0).lone(lone);
        s.apply(THREE_TIER);
        for v6 in [false, true] {
            let (web, api, db) = (s.addr("web", v6), s.addr("api", v6), s.addr("db", v6));
            // web -> api tcp/8080: the SYN reaches api, the SYN-ACK comes back.
            syn_answered(&mut s, ("web", web, 40000), ("api", api, 8080));
            // web -> db: no peer, so no route and an ICMP prohibited locally.
            let syn = craft::tcp(web, 40001, db, 5432, TCP_SYN, &[]);
            dropped(&mut s, "web", &syn, DropReason::NoRoute);
            assert!(s.take_tun("web").iter().all(|p| is_prohibited(p)));
            let stray = s.take_tun("db");
            assert!(
                stray.is_empty(),
                "{:?}",
                stray.iter().map(|p| packet::parse(p)).collect::<Vec<_>>()
            );
            // web -> api tcp/22: known peer, port not allowed.
            let syn = craft::tcp(web, 40002, api, 22, TCP_SYN, &[]);
            dropped(&mut s, "web", &syn, DropReason::Policy);
            assert!(s.take_tun("api").is_empty());
            // api -> db tcp/5432 works; db (inbound-only towards api) cannot open.
            syn_answered(&mut s, ("api", api, 41000), ("db", db, 5432));
            let syn = craft::tcp(db, 5432, api, 8080, TCP_SYN, &[]);
            dropped(&mut s, "db", &syn, DropReason::Policy);
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
}

#[test]
fn pings_get_through_under_loss() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        for seed in 0..4 {
            let (mut s, web, api) = web_api(seed, 0.3, lone);
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
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        let mut s = Sim::new(&["web", "api", "db"], 3, 0.0).lone(lone);
        s.apply(THREE_TIER);
        let (db, api) = (s.addr("db", false), s.addr("api", false));
        // web sends to api with db's address as source.
        s.send("web", &craft::tcp(db, 40000, api, 8080, TCP_SYN, &[]));
        s.run(Duration::from_millis(200));
        assert_eq!(s.drops("api", DropReason::SpoofedSource), 1);
        assert!(s.take_tun("api").is_empty());
    }
}

#[test]
fn netmap_update_removes_a_peer_and_keeps_others() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        let mut s = Sim::new(&["web", "api", "db"], 5, 0.0).lone(lone);
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

#[test]
fn inbound_only_peers_are_never_initiated_to() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        // db -> api is allowed (so db may open flows), but api only accepts:
        // from api's side db is known by key alone, without an endpoint.
        let mut s = Sim::new(&["api", "db"], 13, 0.0).lone(lone);
        s.apply(&[("db", "api", &["tcp/8080"])]);
        let (api, db) = (s.addr("api", false), s.addr("db", false));
        // A reply-shaped packet from api before db ever spoke: no endpoint, so
        // nothing leaves api (and the filter refuses it anyway).
        s.send(
            "api",
            &craft::tcp(api, 8080, db, 40000, TCP_SYN | TCP_ACK, &[]),
        );
        s.run(Duration::from_secs(10));
        assert_eq!(
            s.nodes[s.idx("db")].udp_in,
            0,
            "api initiated to an inbound-only peer"
        );
        // Once db opens a flow, api learns db's endpoint and replies flow.
        s.send("db", &craft::tcp(db, 40000, api, 8080, TCP_SYN, &[]));
        s.run(Duration::from_millis(100));
        assert!(s.take_tun("api").iter().any(|p| is_tcp(p, TCP_SYN, 8080)));
        assert!(
            s.take_tun("db")
                .iter()
                .any(|p| is_tcp(p, TCP_SYN | TCP_ACK, 40000))
        );
        let st = s.nodes[s.idx("api")].core.status(s.now);
        assert_eq!(st.peers[0].endpoint, Some(s.nodes[s.idx("db")].udp));
    }
}

#[test]
fn endpoints_roam_on_authenticated_packets_only() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        let (mut s, web, api) = web_api(17, 0.0, lone);
        s.send("web", &craft::echo_request(web, api, 1, 1));
        s.run(Duration::from_millis(100));
        assert_eq!(s.take_tun("web").len(), 1);
        // web moves to a new address (NAT rebinding); its next packet moves
        // api's idea of web's endpoint, and api's replies follow.
        let moved: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let i = s.idx("web");
        s.nodes[i].udp = moved;
        s.send("web", &craft::echo_request(web, api, 1, 2));
        s.run(Duration::from_millis(100));
        assert_eq!(
            s.take_tun("web").len(),
            1,
            "reply did not follow the roaming peer"
        );
        let a = s.idx("api");
        let st = s.nodes[a].core.status(s.now);
        assert_eq!(st.peers[0].endpoint, Some(moved));
        assert!(
            s.nodes[a].events.iter().any(
                |e| matches!(e, Event::EndpointChanged { endpoint, .. } if *endpoint == moved)
            )
        );
        // A replayed datagram from elsewhere fails authentication and moves
        // nothing.
        s.send("web", &craft::echo_request(web, api, 1, 3));
        let captured = s.in_flight.last().unwrap().3.clone();
        s.run(Duration::from_millis(100));
        let before = s.drops("api", DropReason::BadPacket);
        let now = s.now;
        let fake: SocketAddr = "203.0.113.9:1".parse().unwrap();
        s.nodes[a].core.handle_udp(now, fake, &captured);
        assert_eq!(s.nodes[a].core.status(now).peers[0].endpoint, Some(moved));
        assert_eq!(s.drops("api", DropReason::BadPacket), before + 1);
    }
}

#[test]
fn a_changed_key_replaces_the_peer() {
    let mut s = Sim::new(&["web", "api", "imposter"], 19, 0.0);
    s.apply(THREE_TIER);
    let (web, api) = (s.addr("web", false), s.addr("api", false));
    s.send("web", &craft::echo_request(web, api, 1, 1));
    s.run(Duration::from_millis(100));
    assert_eq!(s.take_tun("web").len(), 1);
    assert_eq!(s.take_tun("api").len(), 1);
    // api's netmap now says web's addresses belong to another key: the old
    // key's sessions are gone at once, and web's packets are refused.
    let mut map = s.netmaps(THREE_TIER)["api"].clone();
    let web_key = s.key("web");
    let p = map
        .peers
        .iter_mut()
        .find(|p| p.public_key == web_key)
        .unwrap();
    p.public_key = s.key("imposter");
    map.peers.sort_by_key(|p| p.public_key);
    let a = s.idx("api");
    let now = s.now;
    let diff = s.nodes[a].core.apply_netmap(now, &map).unwrap();
    assert_eq!(
        (diff.removed, diff.added),
        (vec![web_key], vec![s.key("imposter")])
    );
    s.send("web", &craft::echo_request(web, api, 1, 2));
    s.run(Duration::from_secs(1));
    assert!(s.take_tun("api").is_empty() && s.take_tun("web").is_empty());
    assert!(s.drops("api", DropReason::UnknownKey) >= 1);
}

#[test]
fn key_rotation_costs_one_handshake_and_retires_the_old_key() {
    // Both ways of feeding packets: queued, and lone as the driver
    // does for interactive traffic.
    for lone in [false, true] {
        let rules: &[(&str, &str, &[&str])] =
            &[("web", "api", &["icmp"]), ("api", "web", &["icmp"])];
        let mut s = Sim::new(&["web", "api"], 23, 0.0).lone(lone);
        s.apply(rules);
        let (web, api) = (s.addr("web", false), s.addr("api", false));
        s.send("web", &craft::echo_request(web, api, 1, 1));
        s.run(Duration::from_millis(100));
        assert_eq!(s.take_tun("web").len(), 1);
        s.take_tun("api");
        let (w, a) = (s.idx("web"), s.idx("api"));
        let old_secret = s.nodes[w].secret;
        let old_key = s.key("web");

        // The order production follows: the coordinator waits for api's ack of
        // the rotation before answering web, so api holds the new key first.
        s.nodes[w].secret = [42; 32];
        let maps = s.netmaps(rules);
        let now = s.now;
        s.nodes[a].core.apply_netmap(now, &maps["api"]).unwrap();
        // api talks to web in that window: queued in api's new tunnel, and
        // api's initiation to the new key is not answered by web's old key.
        s.send("api", &craft::echo_request(api, web, 2, 1));
        s.run(Duration::from_millis(20));
        let events_before = s.nodes[w].events.len();
        let now = s.now;
        let new_key = s.nodes[w].core.rotate_key(now, [42; 32]);
        assert_eq!(new_key, s.key("web"));
        s.nodes[w].core.apply_netmap(now, &maps["web"]).unwrap();
        // One handshake round trip (2 x 5 ms) and the keepalive's trip later,
        // the session exists and api's queued ping has reached web, without
        // any timer firing.
        let t0 = s.now;
        s.run(Duration::from_millis(20));
        let handshakes: Vec<_> = s.nodes[w].events[events_before..]
            .iter()
            .filter(|e| matches!(e, Event::Handshake { .. }))
            .collect();
        assert_eq!(handshakes.len(), 1, "{handshakes:?}");
        assert!(s.now - t0 <= Duration::from_millis(20));
        assert_eq!(s.take_tun("web").len(), 1, "api's queued ping");
        s.run(Duration::from_millis(20));
        assert_eq!(s.take_tun("api").len(), 1, "web's echo reply");
        s.send("web", &craft::echo_request(web, api, 1, 2));
        s.run(Duration::from_millis(20));
        assert_eq!(s.take_tun("web").len(), 1, "api's echo reply");

        // A node still holding the old key is refused by api.
        let mut stale = segmesh_node::core::Node::new(old_secret, 99 << 16, s.now);
        let mut old_map = s.netmaps(rules)["web"].clone();
        old_map.node.public_key = old_key;
        stale.apply_netmap(s.now, &old_map).unwrap();
        stale.handle_tun(s.now, &craft::echo_request(web, api, 3, 1));
        let init = stale.poll_transmit().expect("initiation");
        let before = s.drops("api", DropReason::UnknownKey);
        let now = s.now;
        let from = s.nodes[w].udp;
        s.nodes[a].core.handle_udp(now, from, &init.payload);
        assert_eq!(s.drops("api", DropReason::UnknownKey), before + 1);
        assert!(
            s.nodes[a].core.poll_transmit().is_none(),
            "answered the old key"
        );
    }
}

#[test]
fn lone_calls_hand_back_the_packet_and_leave_the_queues_empty() {
    let (mut s, web, api) = web_api(29, 0.0, true);
    s.send("web", &craft::echo_request(web, api, 1, 1));
    s.run(Duration::from_millis(100));
    assert_eq!(s.take_tun("web").len(), 1, "session up");
    s.take_tun("api");
    let (w, a) = (s.idx("web"), s.idx("api"));
    let now = s.now;
    // A tracked flow: the datagram comes back to the caller, nothing queued.
    let ping = craft::echo_request(web, api, 1, 2);
    let mut out = Vec::new();
    let (dst, n) = s.nodes[w]
        .core
        .handle_tun_lone(now, &ping, &mut out)
        .expect("a datagram");
    assert_eq!(dst, s.nodes[a].udp);
    assert!(!s.nodes[w].core.has_output());
    // On the far side the plain packet comes back, nothing queued either.
    let from = s.nodes[w].udp;
    let mut plain = Vec::new();
    let m = s.nodes[a]
        .core
        .handle_udp_lone(now, from, &out[..n], &mut plain, 10)
        .expect("a packet");
    assert_eq!(&plain[10..10 + m], &ping[..], "after the headroom");
    assert!(!s.nodes[a].core.has_output());
    // The same datagram again is a replay: nothing for the TUN, counted.
    let before = s.drops("api", DropReason::BadPacket);
    assert_eq!(
        s.nodes[a]
            .core
            .handle_udp_lone(now, from, &out[..n], &mut plain, 0),
        None
    );
    assert_eq!(s.drops("api", DropReason::BadPacket), before + 1);
    // A new flow: the datagram still comes back, and the flow's event waits.
    let syn = craft::tcp(web, 40000, api, 8080, TCP_SYN, &[]);
    assert!(
        s.nodes[w]
            .core
            .handle_tun_lone(now, &syn, &mut out)
            .is_some()
    );
    assert!(s.nodes[w].core.has_output());
    assert!(matches!(
        s.nodes[w].core.poll_event(),
        Some(Event::Flow(f)) if f.verdict == Verdict::Allow && f.dst_port == 8080
    ));
    // Refused: nothing to send; the ICMP error waits for the TUN.
    let denied = craft::tcp(web, 40001, api, 22, TCP_SYN, &[]);
    assert_eq!(
        s.nodes[w].core.handle_tun_lone(now, &denied, &mut out),
        None
    );
    assert!(
        s.nodes[w]
            .core
            .poll_tun_write()
            .is_some_and(|p| is_prohibited(&p))
    );
}

#[test]
fn recycled_buffers_carry_exactly_each_packet() {
    // The core's buffers are reused without zeroing: after a full-size
    // packet, shorter ones must still leave and arrive byte for byte, with
    // nothing of the earlier packet's tail (which the peer could not even
    // authenticate) on the wire or on the TUN, queued and lone alike.
    for lone in [false, true] {
        let (mut s, web, api) = web_api(31, 0.0, lone);
        syn_answered(&mut s, ("web", web, 40000), ("api", api, 8080));
        s.take_tun("api");
        for len in [1300, 1, 700, 0, 1300, 20] {
            let data = craft::tcp(web, 40000, api, 8080, TCP_ACK, &vec![0xa5; len]);
            s.send("web", &data);
            s.run(Duration::from_millis(10));
            assert_eq!(s.take_tun("api"), vec![data], "lone {lone}, {len} bytes");
            let back = craft::tcp(api, 8080, web, 40000, TCP_ACK, &vec![0x5a; len / 2]);
            s.send("api", &back);
            s.run(Duration::from_millis(10));
            assert_eq!(
                s.take_tun("web"),
                vec![back],
                "lone {lone}, {len} bytes back"
            );
        }
    }
}
