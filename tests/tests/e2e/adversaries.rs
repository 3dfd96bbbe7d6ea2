//! Nodes that try what the netmap does not grant: a rogue key that knows
//! db-1's public key and endpoint, and a peer that forges its inner source.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap, peer, web_api_pair};
use segmesh_e2e::{Lab, NodeSetup, Proc, WG_PORT, probe, run, wait_until};

#[test]
fn a_rogue_key_gets_no_handshake_answer() {
    let lab = Lab::new("rogue");
    let (hd, hr) = (lab.host("db-1"), lab.host("rogue"));
    let db = NodeSetup::new(&lab, &hd, "db-1");
    let rogue = NodeSetup::new(&lab, &hr, "rogue");
    // db-1 knows nobody; the rogue knows db-1's key, address and endpoint.
    db.write_netmap(&netmap(&db, &[addr(&db)], vec![]));
    rogue.write_netmap(&netmap(
        &rogue,
        &[addr(&rogue)],
        vec![peer(
            db.public_key,
            "db-1",
            &[addr(&db)],
            Some(db.endpoint()),
            &["tcp/5432"],
            &[],
        )],
    ));
    let db = db.start(&lab);
    let rogue = rogue.start(&lab);
    let db_5432 = SocketAddr::new(addr(&db.setup), 5432);
    let listener = probe::listen(&lab, &hd, db_5432);

    // Capture db-1's WireGuard traffic while the rogue tries.
    let pcap = lab.path("db-1.pcap");
    let mut capture = Proc::spawn(
        "tcpdump-db-1",
        Some(db.ns()),
        lab.dir(),
        std::path::Path::new("tcpdump"),
        &[
            "-i",
            "eth0",
            "-n",
            "-U",
            "-w",
            pcap.to_str().expect("utf-8"),
            "udp",
            "port",
            &WG_PORT.to_string(),
        ],
    );
    wait_until(Duration::from_secs(5), "tcpdump listening", || {
        capture.stderr_text().contains("listening on").then_some(())
    });

    let before = db.status().drops.unknown_key;
    let c = probe::connect(rogue.ns(), db_5432, Duration::from_secs(3));
    assert!(!c.ok, "the rogue reached db-1: {c:?}");
    let after = wait_until(
        Duration::from_secs(5),
        "db-1 to count the rogue's handshake",
        || {
            let n = db.status().drops.unknown_key;
            (n > before).then_some(n)
        },
    );
    println!("db-1 unknown_key drops: {before} -> {after}");
    assert!(probe::accepted(&listener).is_empty());
    assert!(db.status().peers.is_empty());

    capture.signal(libc::SIGTERM);
    wait_until(Duration::from_secs(5), "tcpdump to exit", || {
        capture.try_exit()
    });
    let out = run("tcpdump", &["-r", pcap.to_str().expect("utf-8"), "-n"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (r, d) = (rogue.setup.host.underlay, db.setup.host.underlay);
    let inits = text
        .lines()
        .filter(|l| {
            l.contains(&format!("{r}.{WG_PORT} > {d}.{WG_PORT}")) && l.ends_with("length 148")
        })
        .count();
    let answers = text
        .lines()
        .filter(|l| l.contains(&format!("{d}.")) && l.contains(&format!("> {r}.")))
        .count();
    assert!(inits >= 1, "no handshake initiation captured:\n{text}");
    assert_eq!(answers, 0, "db-1 sent something to the rogue:\n{text}");
    println!("capture: {inits} handshake initiation(s) from the rogue, {answers} datagrams back");
}

#[test]
fn a_forged_inner_source_is_dropped_and_counted() {
    let lab = Lab::new("spoof");
    let (hd, hx) = (lab.host("db-1"), lab.host("x-1"));
    let db = NodeSetup::new(&lab, &hd, "db-1");
    let x = NodeSetup::new(&lab, &hx, "x-1");
    // db-1 admits x-1 from x-1's own overlay address only.
    db.write_netmap(&netmap(
        &db,
        &[addr(&db)],
        vec![peer(
            x.public_key,
            "x-1",
            &[addr(&x)],
            None,
            &[],
            &["tcp/5432"],
        )],
    ));
    // x-1's own netmap gives it another address: what it sends through the
    // tunnel carries a source db-1 never granted it.
    let forged: IpAddr = "100.80.0.99".parse().expect("ip");
    x.write_netmap(&netmap(
        &x,
        &[forged],
        vec![peer(
            db.public_key,
            "db-1",
            &[addr(&db)],
            Some(db.endpoint()),
            &["tcp/5432"],
            &[],
        )],
    ));
    let db = db.start(&lab);
    let x = x.start(&lab);
    let db_5432 = SocketAddr::new(addr(&db.setup), 5432);
    let listener = probe::listen(&lab, &hd, db_5432);

    let c = probe::connect(x.ns(), db_5432, Duration::from_secs(3));
    assert!(!c.ok, "a forged source reached db-1: {c:?}");
    let n = wait_until(
        Duration::from_secs(5),
        "db-1 to count spoofed sources",
        || {
            let n = db.status().drops.spoofed_source;
            (n > 0).then_some(n)
        },
    );
    println!("db-1 spoofed_source drops: {n}");
    assert!(probe::accepted(&listener).is_empty());
    // The tunnel itself was up: only the inner packet was refused.
    let s = db.status();
    let p = s
        .peers
        .iter()
        .find(|p| p.public_key == x.setup.public_key)
        .expect("x-1 peer");
    assert!(p.last_handshake_unix_ms.is_some(), "{p:?}");
}

#[test]
fn garbage_datagrams_are_counted_and_the_node_keeps_working() {
    let lab = Lab::new("junk");
    let (web, api) = web_api_pair(&lab);
    let hj = lab.host("junk");
    let to = api.setup.endpoint().to_string();
    let probe_bin = segmesh_e2e::bin_path("probe");
    let probe_bin = probe_bin.to_str().expect("utf-8");
    // Empty-ish, truncated handshake, unknown type, a data header with a
    // bogus receiver index, and 1400 random-looking bytes.
    let junk = [
        "00".to_string(),
        "01000000".to_string(),
        format!("01000000{}", "ab".repeat(60)),
        format!("ff{}", "00".repeat(40)),
        format!("04000000{}", "11".repeat(60)),
        (0..1400)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect::<String>(),
    ];
    for j in &junk {
        let out = segmesh_e2e::run_in(&hj.ns, probe_bin, &["udp-send", &to, j, "--count", "5"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(Duration::from_secs(5), "api-1 to count bad packets", || {
        (api.status().drops.bad_packet > 0).then_some(())
    });
    let mut api = api;
    assert!(api.proc.try_exit().is_none(), "api-1 died on garbage");
    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let _l = probe::listen(&lab, &api.setup.host, api_8080);
    probe::connect_eventually(web.ns(), api_8080, Duration::from_secs(10));
    println!("api-1 drops after junk: {:?}", api.status().drops);
}

#[test]
fn a_port_scan_cannot_flood_the_flow_log() {
    let lab = Lab::new("scan");
    let (web, api) = web_api_pair(&lab);
    let probe_bin = segmesh_e2e::bin_path("probe");
    let probe_bin = probe_bin.to_str().expect("utf-8");
    let target = addr(&api.setup).to_string();
    // 3000 new UDP flows in a fraction of a second, none of them allowed.
    let out = segmesh_e2e::run_in(
        web.ns(),
        probe_bin,
        &["udp-scan", &target, "10000", "12999"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Some of the burst is lost in the TUN device's queue before the node
    // reads it; what reaches the node is dropped and counted.
    let policy = wait_until(Duration::from_secs(5), "web-1 to count the scan", || {
        let n = web.status().drops.policy;
        (n >= 500).then_some(n)
    });
    std::thread::sleep(Duration::from_millis(300));
    let policy = web.status().drops.policy.max(policy);
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let logged = lines(&web.setup.flow_log);
    println!(
        "scan: {policy} policy drops, {} flow log lines",
        logged.len()
    );
    assert!(
        logged.len() >= 100,
        "the burst should be logged: {}",
        logged.len()
    );
    assert!(
        logged.len() <= 400,
        "the scan flooded the flow log: {} lines",
        logged.len()
    );
    assert!(
        logged
            .iter()
            .any(|f| f["verdict"] == "deny" && f["proto"] == 17)
    );

    // Once tokens are back, the next flow brings a summary of what was left out.
    std::thread::sleep(Duration::from_millis(1500));
    let out = segmesh_e2e::run_in(
        web.ns(),
        probe_bin,
        &["udp-scan", &target, "13000", "13000"],
    );
    assert!(out.status.success());
    let total = policy + 1;
    let (records, suppressed) =
        wait_until(Duration::from_secs(5), "every flow accounted for", || {
            let all = lines(&web.setup.flow_log);
            let suppressed: u64 = all
                .iter()
                .filter_map(|l| l.get("suppressed")?.as_u64())
                .sum();
            let records = all.iter().filter(|l| l.get("suppressed").is_none()).count() as u64;
            (records + suppressed >= total).then_some((records, suppressed))
        });
    println!(
        "flow log: {records} records + {suppressed} suppressed (in summaries) for {total} flows"
    );
    assert!(records <= 400, "{records}");
}
