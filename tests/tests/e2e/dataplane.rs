//! The packet path under load: while a bulk TCP transfer fills the tunnel,
//! a flow of numbered UDP datagrams arrives in order (gaps from drops are
//! allowed, reordering and duplicates are not), and the TCP stream arrives
//! byte for byte. This covers batching, TUN super-packet splitting and
//! coalescing, and UDP GSO/GRO, all of which could reorder or mangle; once
//! over IPv4 and once over IPv6 (the super-packets' headers differ).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap, overlay_v6, peer};
use segmesh_e2e::{Lab, NodeHandle, NodeSetup, Proc, bin_path, wait_until};

const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 9001;
const DATAGRAMS: u64 = 20_000;
const TCP_BYTES: u64 = 32 << 20;

fn json(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("flowcheck output {text:?}: {e}"))
}

fn finish(p: &mut Proc, what: &str) -> serde_json::Value {
    let status = wait_until(Duration::from_secs(120), what, || p.try_exit());
    assert!(status.success(), "{what}: {status}: {}", p.stderr_text());
    json(&p.stdout_text())
}

#[test]
fn one_flow_stays_in_order_and_bulk_tcp_arrives_intact_under_load() {
    order_and_integrity("order", false);
}

#[test]
fn the_same_over_ipv6() {
    order_and_integrity("order6", true);
}

fn ip(n: &NodeSetup, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(overlay_v6(n))
    } else {
        addr(n)
    }
}

/// A sender and a receiver node; the sender may open the test's UDP and
/// TCP ports on the receiver, over IPv4 or IPv6.
fn pair(lab: &Lab, v6: bool) -> (NodeHandle, NodeHandle) {
    let (hs, hr) = (lab.host("snd-1"), lab.host("rcv-1"));
    let snd = NodeSetup::new(lab, &hs, "snd-1");
    let rcv = NodeSetup::new(lab, &hr, "rcv-1");
    let map = |n: &NodeSetup, p| {
        let mut m = netmap(n, &[ip(n, v6)], vec![p]);
        if v6 {
            m.overlay = vec!["fd5e:6d00::/64".parse().expect("prefix")];
        }
        m
    };
    let ports = ["udp/9000", "tcp/9001"];
    snd.write_netmap(&map(
        &snd,
        peer(
            rcv.public_key,
            "rcv-1",
            &[ip(&rcv, v6)],
            Some(rcv.endpoint()),
            &ports,
            &[],
        ),
    ));
    rcv.write_netmap(&map(
        &rcv,
        peer(snd.public_key, "snd-1", &[ip(&snd, v6)], None, &[], &ports),
    ));
    (snd.start(lab), rcv.start(lab))
}

fn order_and_integrity(name: &str, v6: bool) {
    let lab = Lab::new(name);
    let (snd, rcv) = pair(&lab, v6);
    let tool = bin_path("flowcheck");
    let at = |port| SocketAddr::new(ip(&rcv.setup, v6), port).to_string();

    let mut udp_rx = Proc::spawn(
        "udp-recv",
        Some(rcv.ns()),
        lab.dir(),
        &tool,
        &["udp-recv", &at(UDP_PORT), "--idle-ms", "3000"],
    );
    let mut tcp_rx = Proc::spawn(
        "tcp-recv",
        Some(rcv.ns()),
        lab.dir(),
        &tool,
        &["tcp-recv", &at(TCP_PORT)],
    );
    wait_until(Duration::from_secs(5), "receivers ready", || {
        (udp_rx.stdout_text().contains("ready") && tcp_rx.stdout_text().contains("ready"))
            .then_some(())
    });

    let bytes = TCP_BYTES.to_string();
    let mut tcp_tx = Proc::spawn(
        "tcp-send",
        Some(snd.ns()),
        lab.dir(),
        &tool,
        &["tcp-send", &at(TCP_PORT), "--bytes", &bytes],
    );
    // The UDP flow starts once TCP is under way (the handshake is done and
    // the tunnel is busy).
    wait_until(Duration::from_secs(10), "the TCP transfer to start", || {
        (rcv.status().peers.iter().map(|p| p.rx_bytes).sum::<u64>() > 1 << 20).then_some(())
    });
    let count = DATAGRAMS.to_string();
    let mut udp_tx = Proc::spawn(
        "udp-send",
        Some(snd.ns()),
        lab.dir(),
        &tool,
        &[
            "udp-send",
            &at(UDP_PORT),
            "--count",
            &count,
            "--size",
            "1200",
        ],
    );
    finish(&mut udp_tx, "udp-send");
    finish(&mut tcp_tx, "tcp-send");

    let tcp = finish(&mut tcp_rx, "tcp-recv");
    assert_eq!(tcp["bytes"], TCP_BYTES, "{tcp}");
    assert!(tcp["first_bad_offset"].is_null(), "corrupted stream: {tcp}");

    let udp = finish(&mut udp_rx, "udp-recv");
    let received = udp["received"].as_u64().unwrap_or(0);
    assert!(received >= 100, "too few datagrams arrived to judge: {udp}");
    assert_eq!(udp["reordered"], 0, "{udp}");
    assert_eq!(udp["duplicates"], 0, "{udp}");
    assert_eq!(udp["corrupt"], 0, "{udp}");
    drop((snd, rcv));
}

/// The offloads at work, seen in the nodes' own counters: a bulk TCP
/// transfer leaves the sender's TUN as super-packets (several packets per
/// read) and reaches the receiver's TUN coalesced (several per write). A
/// regression to one packet per system call (which once went unnoticed:
/// the coalescing buffers were too small to ever merge) fails here.
#[test]
fn bulk_tcp_moves_in_super_packets_at_both_ends() {
    let lab = Lab::new("gso");
    let (snd, rcv) = pair(&lab, false);
    let tool = bin_path("flowcheck");
    let at = SocketAddr::new(ip(&rcv.setup, false), TCP_PORT).to_string();
    let mut tcp_rx = Proc::spawn(
        "tcp-recv",
        Some(rcv.ns()),
        lab.dir(),
        &tool,
        &["tcp-recv", &at],
    );
    wait_until(Duration::from_secs(5), "receiver ready", || {
        tcp_rx.stdout_text().contains("ready").then_some(())
    });
    let bytes = (16u64 << 20).to_string();
    let mut tcp_tx = Proc::spawn(
        "tcp-send",
        Some(snd.ns()),
        lab.dir(),
        &tool,
        &["tcp-send", &at, "--bytes", &bytes],
    );
    finish(&mut tcp_tx, "tcp-send");
    let got = finish(&mut tcp_rx, "tcp-recv");
    assert_eq!(got["bytes"], 16u64 << 20, "{got}");

    let (sent, received) = (snd.status().tun, rcv.status().tun);
    // 16 MiB is ~12,000 full-sized packets.
    assert!(sent.packets_read >= 10_000, "{sent:?}");
    assert!(received.packets_written >= 10_000, "{received:?}");
    assert!(
        sent.packets_read >= 4 * sent.reads,
        "sender read packet by packet: {sent:?}"
    );
    assert!(
        received.packets_written >= 4 * received.writes,
        "receiver wrote packet by packet: {received:?}"
    );
    drop((snd, rcv));
}
