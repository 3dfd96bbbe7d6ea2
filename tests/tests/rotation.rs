//! Key rotation in a coordinated mesh (real coordinator and nodes in
//! namespaces): `segmesh-node rotate-key` under a running TCP flow costs
//! about a handshake, the peer holds the new key, the old key is refused;
//! then an open flow survives the coordinator's SIGKILL, and the rotated
//! node restarts from its re-sealed cache with the coordinator down.
//!
//! Its own test binary: it measures pauses of a 20 ms flow, and its load
//! would disturb the timing-sensitive tests of the `e2e` binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use segmesh_e2e::coord::{Coordinator, Member, all_synced, v4};
use segmesh_e2e::{Lab, Proc, probe, wait_until};
use serde_json::Value;

const POLICY: &str = r#"
[segments.web]
match = { role = "web", env = "prod" }
[segments.db]
match = { role = "db" }

[[allow]]
from = "web"
to = "db"
ports = ["tcp/5432"]
"#;

/// Reads a public key field of a JSON value.
fn key_of(v: &Value) -> String {
    v.as_str().expect("key string").to_string()
}

/// Waits for a `probe stream` to finish; returns its echoes.
fn finished(stream: &mut Proc, within: Duration) -> Vec<u128> {
    wait_until(within, "stream finished", || stream.try_exit());
    let (oks, fail) = probe::echoes(stream);
    assert!(fail.is_none(), "stream broke: {}", stream.stdout_text());
    assert!(oks.len() > 20, "{}", stream.stdout_text());
    oks
}

#[test]
#[allow(clippy::disallowed_methods)] // the test measures real time
fn key_rotation_and_coordinator_loss_keep_an_open_flow_going() {
    let lab = Lab::new("rot");
    let (coord, mut coord_proc) = Coordinator::launch(&lab, POLICY);
    let join = |name: &str, labels: &str, i: usize| {
        let token = coord.token(labels, &name[..name.find('-').expect("dash")], 1);
        Member::join(&lab, lab.host(name), &token, &lab.iface(&format!("n{i}")))
            .unwrap_or_else(|out| panic!("join {name}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let mut web = join("web-1", "role=web,env=prod", 0);
    let mut db = join("db-1", "role=db", 1);
    web.start(&lab);
    db.start(&lab);
    wait_until(Duration::from_secs(10), "both nodes synced", || {
        all_synced(&coord.nodes()).then_some(())
    });
    let db_5432 = SocketAddr::new(v4(&coord.nodes(), "db-1"), 5432);
    let _listener = probe::listen(&lab, &db.host, db_5432);
    probe::connect_eventually(&web.host.ns, db_5432, Duration::from_secs(10));
    // What a node still holding the old key would have.
    std::fs::copy(
        web.state.join("netmap.json"),
        lab.path("web-1-before-rotation.json"),
    )
    .expect("copy netmap");
    let old_secret = std::fs::read(web.state.join("private.key")).expect("key");
    let old_key = key_of(&web.status()["public_key"]);

    // Rotation while a TCP echo runs every 20 ms from web-1 to db-1.
    let mut stream = probe::stream(&lab, "stream-rotate", &web.host.ns, db_5432, 6_000);
    wait_until(Duration::from_secs(5), "stream flowing", || {
        (probe::echoes(&stream).0.len() >= 20).then_some(())
    });
    let t0 = Instant::now();
    let report = web.ask("rotate-key").expect("rotate-key");
    let took = t0.elapsed();
    let new_key = key_of(&report["new_key"]);
    assert_eq!(key_of(&report["old_key"]), old_key);
    assert_ne!(new_key, old_key);
    assert_eq!(
        (
            report["peers_acked"].as_u64(),
            report["peers_total"].as_u64()
        ),
        (Some(1), Some(1)),
        "{report}"
    );
    // The peer already holds the new key (it acked before the reply) and
    // not the old one; so do web-1 itself, its key file and the coordinator.
    let db_peers: Vec<String> = db.status()["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| key_of(&p["public_key"]))
        .collect();
    assert_eq!(db_peers, vec![new_key.clone()]);
    assert_eq!(key_of(&web.status()["public_key"]), new_key);
    assert_ne!(
        std::fs::read(web.state.join("private.key")).expect("key"),
        old_secret
    );
    assert!(!web.state.join("private.key.pending").exists());
    let listed = coord.nodes();
    let entry = listed.iter().find(|n| n["name"] == "web-1").expect("web-1");
    assert_eq!(key_of(&entry["public_key"]), new_key);
    let oks = finished(&mut stream, Duration::from_secs(20));
    let gap = probe::max_gap(&oks);
    println!(
        "key rotation: rotate-key answered in {took:?} (peer acked in {} ms); \
         longest pause of a 20 ms TCP echo across it: {gap:?}",
        report["peers_ms"]
    );
    assert!(gap < Duration::from_secs(1), "{gap:?}");

    // A node holding the old key is refused: db-1 answers no handshake.
    let stale = segmesh_e2e::NodeSetup::new(&lab, &lab.host("stale"), "stale");
    std::fs::write(&stale.key_path, &old_secret).expect("stale key");
    std::fs::copy(lab.path("web-1-before-rotation.json"), &stale.netmap_path)
        .expect("stale netmap");
    let before = db.status()["drops"]["unknown_key"].as_u64().expect("drops");
    let stale = stale.start(&lab);
    let c = probe::connect(stale.ns(), db_5432, Duration::from_secs(2));
    assert!(!c.ok, "old key reached db-1: {c:?}");
    let after = db.status()["drops"]["unknown_key"].as_u64().expect("drops");
    assert!(after > before, "{before} -> {after}");
    drop(stale);

    // SIGKILL the coordinator in the middle of an open flow: it goes on.
    let mut stream = probe::stream(&lab, "stream-kill", &web.host.ns, db_5432, 4_000);
    wait_until(Duration::from_secs(5), "stream flowing", || {
        (probe::echoes(&stream).0.len() >= 20).then_some(())
    });
    coord_proc.signal(libc::SIGKILL);
    let oks = finished(&mut stream, Duration::from_secs(20));
    let gap = probe::max_gap(&oks);
    println!("coordinator SIGKILLed: longest pause of the open flow {gap:?}");
    assert!(gap < Duration::from_secs(1), "{gap:?}");
    coord_proc.kill();

    // web-1 restarts with the coordinator down, from the cache sealed
    // under its rotated key, and carries traffic at once.
    web.stop();
    web.start(&lab);
    assert_eq!(key_of(&web.status()["public_key"]), new_key);
    let (_, took) = probe::connect_eventually(&web.host.ns, db_5432, Duration::from_secs(10));
    println!("web-1 restarted from its cache (coordinator down): db-1 reached after {took:?}");
    let mut stream = probe::stream(&lab, "stream-cached", &web.host.ns, db_5432, 2_000);
    finished(&mut stream, Duration::from_secs(20));
}
