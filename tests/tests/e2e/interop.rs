//! Interoperability with a WireGuard implementation no one here wrote:
//! Debian's wireguard-go, configured with wg(8), handshakes with
//! segmesh-node and carries TCP both ways.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use segmesh_config::PublicKey;
use segmesh_e2e::mesh::{addr, netmap, peer};
use segmesh_e2e::{Lab, NodeSetup, Proc, WG_PORT, probe, run, sh_in, wait_until};

#[test]
fn wireguard_go_and_segmesh_node_carry_tcp_both_ways() {
    let lab = Lab::new("wggo");
    let (hs, hg) = (lab.host("seg-1"), lab.host("wggo-1"));
    let seg = NodeSetup::new(&lab, &hs, "seg-1");
    let go_if = lab.iface("wggo");
    let go_addr: IpAddr = "100.80.0.2".parse().expect("ip");
    let go_endpoint = SocketAddr::new(IpAddr::V4(hg.underlay), WG_PORT);

    // wireguard-go's key, made with wg(8) like any WireGuard user would.
    let go_key = lab.path("wggo.key");
    let genkey = run("wg", &["genkey"]);
    std::fs::write(&go_key, &genkey.stdout).expect("write key");
    let go_pub: PublicKey = sh_in(&hg.ns, &format!("wg pubkey < {}", go_key.display()))
        .trim()
        .parse()
        .expect("wg pubkey");

    seg.write_netmap(&netmap(
        &seg,
        &[addr(&seg)],
        vec![peer(
            go_pub,
            "wggo-1",
            &[go_addr],
            Some(go_endpoint),
            &["tcp/7000"],
            &["tcp/7001"],
        )],
    ));
    let seg = seg.start(&lab);

    let sock = format!("/var/run/wireguard/{go_if}.sock");
    let _ = std::fs::remove_file(&sock);
    let _wggo = Proc::spawn(
        "wireguard-go",
        Some(&hg.ns),
        lab.dir(),
        std::path::Path::new("env"),
        &["WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", &go_if],
    );
    wait_until(
        Duration::from_secs(10),
        "wireguard-go's UAPI socket",
        || std::path::Path::new(&sock).exists().then_some(()),
    );
    sh_in(
        &hg.ns,
        &format!(
            "wg set {go_if} private-key {key} listen-port {WG_PORT} \
               peer {seg_pub} allowed-ips {seg_addr}/32 endpoint {seg_ep}
             ip addr add {go_addr}/16 dev {go_if}
             ip link set {go_if} mtu 1420 up",
            key = go_key.display(),
            seg_pub = seg.setup.public_key,
            seg_addr = addr(&seg.setup),
            seg_ep = seg.setup.endpoint(),
        ),
    );

    let go_7000 = SocketAddr::new(go_addr, 7000);
    let seg_7001 = SocketAddr::new(addr(&seg.setup), 7001);
    let l_go = probe::listen(&lab, &hg, go_7000);
    let l_seg = probe::listen(&lab, &hs, seg_7001);

    // segmesh-node initiates: handshake + TCP to wireguard-go's side.
    let (c, took) = probe::connect_eventually(seg.ns(), go_7000, Duration::from_secs(15));
    assert_eq!(c.reply.as_deref(), Some("segmesh"));
    println!("segmesh-node -> wireguard-go: first TCP echo after {took:?} (handshake included)");
    assert!(
        probe::accepted(&l_go)
            .iter()
            .any(|p| p.ip() == addr(&seg.setup))
    );

    // And the other way: wireguard-go's side opens a connection to us.
    let (c, _) = probe::connect_eventually(&hg.ns, seg_7001, Duration::from_secs(10));
    assert!(c.ok);
    assert!(probe::accepted(&l_seg).iter().any(|p| p.ip() == go_addr));

    // Both ends agree a handshake happened.
    let hs = sh_in(&hg.ns, &format!("wg show {go_if} latest-handshakes"));
    let secs: u64 = hs
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(secs > 0, "wireguard-go reports no handshake: {hs}");
    let s = seg.status();
    let p = s
        .peers
        .iter()
        .find(|p| p.public_key == go_pub)
        .expect("wireguard-go peer");
    assert!(
        p.last_handshake_unix_ms.is_some() && p.rx_bytes > 0,
        "{p:?}"
    );
}
