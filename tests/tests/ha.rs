//! Coordinator high availability: one PostgreSQL, two coordinators, four
//! nodes, each in its own namespace. The coordinator two nodes stream from
//! is killed while a policy change is applied through the other: the
//! change reaches every node within 2 s and allowed flows survive. Then
//! PostgreSQL is killed: both coordinators report unhealthy, nodes keep
//! their netmaps and traffic; after its restart service resumes with no
//! manual step, and no state was lost or duplicated.
//!
//! Runs when `SEGMESH_TEST_PG` is set (CI), skipped otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use segmesh_e2e::coord::{Coordinator, Member, v4};
use segmesh_e2e::pg::{self, PgServer};
use segmesh_e2e::{Lab, probe, sh_in, wait_until};
use serde_json::Value;

const POLICY: &str = r#"
[segments.web]
match = { role = "web" }
[segments.api]
match = { role = "api" }
[segments.db]
match = { role = "db" }

[[allow]]
from = "web"
to = "db"
ports = ["tcp/5432"]

[[allow]]
from = "web"
to = "api"
ports = ["tcp/8080"]
"#;

/// The policy change made while a coordinator dies: api may reach db.
const POLICY_2: &str = r#"
[[allow]]
from = "api"
to = "db"
ports = ["tcp/5432"]
"#;

/// `GET /healthz` status code from inside the coordinator's namespace.
fn health(c: &Coordinator) -> String {
    sh_in(
        &c.host.ns,
        &format!(
            "curl -sk -m 5 -o /dev/null -w '%{{http_code}}' {}/healthz || true",
            c.url
        ),
    )
    .trim()
    .to_string()
}

/// What must survive every outage: identity, addresses, labels, state.
fn durable(nodes: &[Value]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            let keep: Vec<&Value> = ["addr_v4", "addr_v6", "public_key", "labels", "revoked"]
                .iter()
                .map(|k| &n[*k])
                .collect();
            (name(n), serde_json::to_string(&keep).expect("json"))
        })
        .collect()
}

/// Every node has acked its latest netmap and streams from one of `cs`.
fn synced(cs: &[&Coordinator]) -> bool {
    let lists: Vec<Vec<Value>> = cs.iter().map(|c| c.nodes()).collect();
    lists[0].iter().all(|n| {
        let connected = lists.iter().any(|l| {
            l.iter()
                .any(|m| m["name"] == n["name"] && m["connected"] == true)
        });
        connected && n["acked_version"] == n["netmap_version"]
    })
}

#[test]
#[allow(clippy::disallowed_methods)] // the test measures real time
fn two_coordinators_on_postgres_survive_losing_a_coordinator_and_the_database() {
    if !pg::enabled() {
        return;
    }
    let lab = Lab::new("ha");
    let pg = PgServer::start(&lab.host("pg"));
    let (h1, h2) = (lab.host("c1"), lab.host("c2"));
    let url = |h: &segmesh_e2e::Host| format!("https://{}:8443", h.underlay);
    let store =
        |peer: &segmesh_e2e::Host| format!("store = {:?}\npeer_urls = [{:?}]\n", pg.url, url(peer));
    let c1 = Coordinator::configure_with(&lab, h1.clone(), "c1", &store(&h2));
    let c2 = Coordinator::configure_with(&lab, h2, "c2", &store(&h1));
    let p1 = c1.start(&lab, 1);
    // The second coordinator shares the first one's CA and admin token.
    std::fs::create_dir_all(&c2.data).expect("c2 data dir");
    run_chmod(&c2.data, "700");
    for f in ["ca.pem", "ca.key", "admin.token", "admin.token.sha256"] {
        std::fs::copy(c1.data.join(f), c2.data.join(f)).expect("copy CA material");
    }
    let _p2 = c2.start(&lab, 2);
    assert_eq!((health(&c1), health(&c2)), ("200".into(), "200".into()));

    std::fs::write(lab.path("policy.toml"), POLICY).expect("write policy");
    c1.ctl_ok(&[
        "policy",
        "apply",
        lab.path("policy.toml").to_str().expect("utf-8"),
    ]);
    // web nodes join (and so first stream) through c2, api and db through c1.
    let web_tok = c2.token("role=web", "web", 2);
    let api_tok = c1.token("role=api", "api", 1);
    let db_tok = c1.token("role=db", "db", 1);
    let mut members = BTreeMap::new();
    for (i, (name, tok)) in [
        ("web-1", &web_tok),
        ("web-2", &web_tok),
        ("api-1", &api_tok),
        ("db-1", &db_tok),
    ]
    .into_iter()
    .enumerate()
    {
        let iface = lab.iface(&format!("n{i}"));
        let mut m = Member::join(&lab, lab.host(name), tok, &iface)
            .unwrap_or_else(|o| panic!("join {name}: {}", String::from_utf8_lossy(&o.stderr)));
        m.start(&lab);
        members.insert(name, m);
    }
    wait_until(Duration::from_secs(15), "all nodes synced", || {
        synced(&[&c1, &c2]).then_some(())
    });
    let nodes = c1.nodes();
    let before = durable(&nodes);
    assert_eq!(
        before,
        durable(&c2.nodes()),
        "both coordinators see one state"
    );
    let addr = |n: &str| v4(&nodes, n);
    let db = SocketAddr::new(addr("db-1"), 5432);
    let api = SocketAddr::new(addr("api-1"), 8080);
    let _listeners = [
        probe::listen(&lab, &members["db-1"].host, db),
        probe::listen(&lab, &members["api-1"].host, api),
    ];
    let ns = |n: &str| members[n].host.ns.clone();
    probe::connect_eventually(&ns("web-1"), db, Duration::from_secs(10));
    probe::connect_eventually(&ns("web-2"), api, Duration::from_secs(10));
    assert!(!probe::connect(&ns("api-1"), db, Duration::from_secs(2)).ok);

    // Kill c1 (api-1 and db-1 stream from it) and change the policy
    // through c2 at the same moment.
    let c1_versions: BTreeMap<String, u64> = nodes
        .iter()
        .map(|n| (name(n), n["netmap_version"].as_u64().unwrap_or(0)))
        .collect();
    std::fs::write(lab.path("policy2.toml"), format!("{POLICY}{POLICY_2}")).expect("policy 2");
    let t0 = Instant::now();
    p1.signal(libc::SIGKILL);
    c2.ctl_ok(&[
        "policy",
        "apply",
        lab.path("policy2.toml").to_str().expect("utf-8"),
    ]);
    wait_until(
        Duration::from_secs(5),
        "every node acked the change via c2",
        || synced(&[&c2]).then_some(()),
    );
    let acked = t0.elapsed();
    // A new peer pair also needs a WireGuard handshake (retried every 5 s
    // when the first initiation meets a peer that has not applied yet).
    wait_until(Duration::from_secs(15), "api-1 reaches db-1", || {
        probe::connect(&ns("api-1"), db, Duration::from_millis(300))
            .ok
            .then_some(())
    });
    let reached = t0.elapsed();
    println!(
        "policy change with c1 killed: every node acked after {acked:?}, api-1 -> db-1 open after {reached:?}"
    );
    assert!(acked < Duration::from_secs(2), "{acked:?}");
    let after = c2.nodes();
    for n in ["api-1", "db-1"] {
        let v = after.iter().find(|m| m["name"] == n).expect("listed")["netmap_version"].as_u64();
        assert!(v > c1_versions.get(n).copied(), "{n} got a new netmap");
    }
    probe::connect_eventually(&ns("web-1"), db, Duration::from_secs(2));
    probe::connect_eventually(&ns("web-2"), api, Duration::from_secs(2));
    drop(p1);
    // c1 comes back on the same store: healthy, nothing to resync by hand.
    let _p1 = c1.start(&lab, 3);
    wait_until(
        Duration::from_secs(15),
        "c1 healthy after its restart",
        || (health(&c1) == "200").then_some(()),
    );

    // PostgreSQL dies: both coordinators report unhealthy, nodes keep
    // their traffic.
    pg.kill();
    for c in [&c1, &c2] {
        wait_until(Duration::from_secs(10), "coordinator unhealthy", || {
            (health(c) == "503").then_some(())
        });
    }
    probe::connect_eventually(&ns("web-1"), db, Duration::from_secs(2));
    probe::connect_eventually(&ns("api-1"), db, Duration::from_secs(2));

    // Back: both healthy again without a restart, a change through c1
    // reaches a node streaming from c2, nothing lost.
    pg.resume();
    for c in [&c1, &c2] {
        wait_until(Duration::from_secs(15), "coordinator healthy again", || {
            (health(c) == "200").then_some(())
        });
    }
    c1.ctl_ok(&["nodes", "label", "web-2", "role=ci"]);
    wait_until(Duration::from_secs(10), "web-2 cut off from api-1", || {
        (!probe::connect(&ns("web-2"), api, Duration::from_millis(300)).ok).then_some(())
    });
    c1.ctl_ok(&["nodes", "label", "web-2", "role=web"]);
    probe::connect_eventually(&ns("web-2"), api, Duration::from_secs(10));
    wait_until(Duration::from_secs(15), "all nodes synced again", || {
        synced(&[&c1, &c2]).then_some(())
    });
    assert_eq!(durable(&c1.nodes()), before, "state after the outages");
    assert_eq!(durable(&c2.nodes()), before);
}

fn name(n: &Value) -> String {
    n["name"].as_str().unwrap_or_default().to_string()
}

fn run_chmod(path: &std::path::Path, mode: &str) {
    segmesh_e2e::run("chmod", &[mode, path.to_str().expect("utf-8")]);
}
