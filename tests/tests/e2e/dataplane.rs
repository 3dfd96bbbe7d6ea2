//! The packet path under load: while a bulk TCP transfer fills the tunnel,
//! a flow of numbered UDP datagrams arrives in order (gaps from drops are
//! allowed, reordering and duplicates are not), and the TCP stream arrives
//! byte for byte. This covers batching, TUN super-packet splitting and
//! coalescing, and UDP GSO/GRO, all of which could reorder or mangle.

use std::net::SocketAddr;
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap, peer};
use segmesh_e2e::{Lab, NodeSetup, Proc, bin_path, wait_until};

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
    let lab = Lab::new("order");
    let (hs, hr) = (lab.host("snd-1"), lab.host("rcv-1"));
    let snd = NodeSetup::new(&lab, &hs, "snd-1");
    let rcv = NodeSetup::new(&lab, &hr, "rcv-1");
    let ports = ["udp/9000", "tcp/9001"];
    snd.write_netmap(&netmap(
        &snd,
        &[addr(&snd)],
        vec![peer(
            rcv.public_key,
            "rcv-1",
            &[addr(&rcv)],
            Some(rcv.endpoint()),
            &ports,
            &[],
        )],
    ));
    rcv.write_netmap(&netmap(
        &rcv,
        &[addr(&rcv)],
        vec![peer(
            snd.public_key,
            "snd-1",
            &[addr(&snd)],
            None,
            &[],
            &ports,
        )],
    ));
    let (snd, rcv) = (snd.start(&lab), rcv.start(&lab));
    let tool = bin_path("flowcheck");
    let at = |port| SocketAddr::new(addr(&rcv.setup), port).to_string();

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
