//! The three-tier policy on real nodes: allowed paths carry TCP, a path the
//! policy does not grant does not exist (no route, ICMP prohibited), and an
//! inbound-only peer cannot open anything.

use std::net::SocketAddr;
use std::time::Duration;

use segmesh_e2e::mesh::{addr, compile_netmaps, inventory_toml, overlay_v6};
use segmesh_e2e::{Lab, NodeSetup, probe};

/// web -> api on tcp/8080, api -> db on tcp/5432, nothing else.
pub const THREE_TIER: &str = r#"
[segments.web]
match = { role = "web" }
[segments.api]
match = { role = "api" }
[segments.db]
match = { role = "db" }

[[allow]]
from = "web"
to = "api"
ports = ["tcp/8080"]

[[allow]]
from = "api"
to = "db"
ports = ["tcp/5432"]
"#;

#[test]
fn three_tier_paths_exist_only_where_the_policy_says() {
    let lab = Lab::new("tier");
    let (hw, ha, hd) = (lab.host("web-1"), lab.host("api-1"), lab.host("db-1"));
    let hc = lab.host("ci-1");
    let web = NodeSetup::new(&lab, &hw, "web-1");
    let api = NodeSetup::new(&lab, &ha, "api-1");
    let db = NodeSetup::new(&lab, &hd, "db-1");
    // The fourth node is enrolled but in no segment: no rule names it.
    let ci = NodeSetup::new(&lab, &hc, "ci-1");
    let inv = inventory_toml(&[
        (&web, "role=web"),
        (&api, "role=api"),
        (&db, "role=db"),
        (&ci, "role=ci"),
    ]);
    let maps = compile_netmaps(&lab, THREE_TIER, &inv, &["web-1", "api-1", "db-1", "ci-1"]);
    // Need-to-know: web-1 is never told about db-1, and db-1 knows api-1 only
    // by key and address (no endpoint: it may not initiate).
    assert!(maps["web-1"].peer(&db.public_key).is_none());
    let api_in_db = maps["db-1"]
        .peer(&api.public_key)
        .expect("api-1 in db-1's netmap");
    assert!(api_in_db.endpoints.is_none() && api_in_db.outbound.is_empty());
    // ci-1 has no peers, and no one has ci-1.
    assert!(maps["ci-1"].peers.is_empty());
    assert!(maps.values().all(|m| m.peer(&ci.public_key).is_none()));
    for n in [&web, &api, &db, &ci] {
        n.write_netmap(&maps[&n.name]);
    }
    let web = web.start(&lab);
    let api = api.start(&lab);
    let db = db.start(&lab);
    let ci = ci.start(&lab);

    let api_8080 = SocketAddr::new(addr(&api.setup), 8080);
    let api_22 = SocketAddr::new(addr(&api.setup), 22);
    let db_5432 = SocketAddr::new(addr(&db.setup), 5432);
    let l_api = probe::listen(&lab, &ha, api_8080);
    let l_api22 = probe::listen(&lab, &ha, api_22);
    let l_db = probe::listen(&lab, &hd, db_5432);

    // web-1 -> api-1:8080 works (the first attempt includes the handshake).
    let (c, took) = probe::connect_eventually(web.ns(), api_8080, Duration::from_secs(10));
    assert_eq!(c.reply.as_deref(), Some("segmesh"));
    println!("web-1 -> api-1:8080 first echo after {took:?} (handshake included)");
    assert!(
        probe::accepted(&l_api)
            .iter()
            .any(|p| p.ip() == addr(&web.setup))
    );

    // web-1 -> db-1:5432: no route on web-1, so the kernel gets an ICMP
    // "administratively prohibited" at once: EHOSTUNREACH, not a timeout.
    let c = probe::connect(web.ns(), db_5432, Duration::from_secs(5));
    assert!(!c.ok, "{c:?}");
    assert_eq!(c.errno, Some(libc::EHOSTUNREACH), "{c:?}");
    assert!(c.ms < 1000, "refusal should be immediate: {c:?}");
    assert!(web.status().drops.no_route >= 1);

    // The same over IPv6: the allowed path works, the missing one is refused
    // at once (ICMPv6 "administratively prohibited" maps to EACCES).
    let api6_8080 = SocketAddr::new(overlay_v6(&api.setup).into(), 8080);
    let _l_api6 = probe::listen(&lab, &ha, api6_8080);
    let (c, _) = probe::connect_eventually(web.ns(), api6_8080, Duration::from_secs(5));
    assert_eq!(c.reply.as_deref(), Some("segmesh"));
    let c = probe::connect(
        web.ns(),
        SocketAddr::new(overlay_v6(&db.setup).into(), 5432),
        Duration::from_secs(5),
    );
    assert!(!c.ok && c.ms < 1000, "{c:?}");
    assert!(
        matches!(c.errno, Some(libc::EACCES) | Some(libc::EHOSTUNREACH)),
        "{c:?}"
    );

    // ci-1 reaches nothing: every overlay destination is "no route".
    for to in [api_8080, db_5432] {
        let c = probe::connect(ci.ns(), to, Duration::from_secs(5));
        assert_eq!(c.errno, Some(libc::EHOSTUNREACH), "ci-1 -> {to}: {c:?}");
    }
    assert!(ci.status().drops.no_route >= 2);

    // web-1 -> api-1:22 is not in web-1's outbound ports: refused, counted.
    let policy_before = web.status().drops.policy + api.status().drops.policy;
    let c = probe::connect(web.ns(), api_22, Duration::from_secs(2));
    assert!(!c.ok, "{c:?}");
    assert!(probe::accepted(&l_api22).is_empty());
    assert!(web.status().drops.policy + api.status().drops.policy > policy_before);

    // api-1 -> db-1:5432 works.
    let (c, _) = probe::connect_eventually(api.ns(), db_5432, Duration::from_secs(10));
    assert!(c.ok);
    assert!(
        probe::accepted(&l_db)
            .iter()
            .any(|p| p.ip() == addr(&api.setup))
    );

    // db-1 cannot open anything to api-1 (inbound-only peer), on any port.
    for to in [api_8080, api_22] {
        let c = probe::connect(db.ns(), to, Duration::from_secs(2));
        assert!(!c.ok, "db-1 -> {to} must fail: {c:?}");
    }
    assert!(
        !probe::accepted(&l_api)
            .iter()
            .chain(probe::accepted(&l_api22).iter())
            .any(|p| p.ip() == addr(&db.setup)),
        "api-1 accepted a connection from db-1"
    );

    // Status reports the handshakes and bytes of the live tunnels.
    let s = web.status();
    let p = s
        .peers
        .iter()
        .find(|p| p.public_key == api.setup.public_key)
        .expect("api-1 peer");
    assert!(
        p.last_handshake_unix_ms.is_some() && p.rx_bytes > 0 && p.tx_bytes > 0,
        "{p:?}"
    );
    assert_eq!(p.endpoint, Some(api.setup.endpoint()));

    // The human table names the peer and how long ago it shook hands.
    let table = segmesh_e2e::run(
        segmesh_e2e::bin_path("segmesh-node")
            .to_str()
            .expect("utf-8 path"),
        &[
            "status",
            "--socket",
            web.setup.control_socket.to_str().expect("utf-8 path"),
        ],
    );
    let table = String::from_utf8_lossy(&table.stdout);
    println!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api-1 ") && l.contains(" ago ")),
        "{table}"
    );
    assert!(table.contains("drops: unknown_key 0, no_route "), "{table}");

    // The flow log has the allowed web -> api flow.
    let log = std::fs::read_to_string(&web.setup.flow_log).unwrap_or_default();
    let flows: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        flows
            .iter()
            .any(|f| f["dst_port"] == 8080 && f["verdict"] == "allow"),
        "flow log of web-1: {log}"
    );

    // Operators' `wg show` sees the same peers.
    let wg = std::process::Command::new("wg")
        .args(["show", &api.setup.interface])
        .output()
        .expect("wg");
    let text = String::from_utf8_lossy(&wg.stdout);
    assert!(
        text.contains(&format!("peer: {}", web.setup.public_key)),
        "{text}"
    );
    assert!(text.contains("latest handshake"), "{text}");
}
