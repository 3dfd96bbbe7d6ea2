//! The three-tier example (examples/three-tier): exact peer sets per node,
//! golden netmap JSON, and the policy's own [[test]] cases.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;

use segmesh_config::compile::compile;
use segmesh_config::explain::run_tests;
use segmesh_config::{Inventory, NetMap, NodeName, Policy};

fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/three-tier")
        .join(file)
}

fn load() -> (Inventory, Policy) {
    let inv_path = example("inventory.toml");
    let text = std::fs::read_to_string(&inv_path).unwrap();
    let inv = Inventory::from_toml("inventory.toml", &text).unwrap();
    let policy = Policy::load_with_inventory(&example("policy.toml"), &inv).unwrap();
    (inv, policy)
}

/// (peer name, outbound, inbound, whether the name/labels/endpoints are shown).
type Expected = Vec<(&'static str, &'static str, &'static str, bool)>;

fn peers_by_name(inv: &Inventory, map: &NetMap) -> Expected {
    let mut out: Vec<(&'static str, &'static str, &'static str, bool)> = map
        .peers
        .iter()
        .map(|p| {
            let node = inv
                .nodes
                .iter()
                .find(|n| n.public_key == p.public_key)
                .unwrap();
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            (
                leak(node.name.to_string()),
                leak(p.outbound.to_string()),
                leak(p.inbound.to_string()),
                p.name.is_some(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn exact_peer_sets() {
    let (inv, policy) = load();
    let maps = compile(&inv, &policy);
    assert_eq!(maps.len(), inv.nodes.len(), "every node gets a netmap");
    const NONE: &str = "(none)";
    let ops_in = "tcp/22, icmp";
    let expected: BTreeMap<&str, Expected> = BTreeMap::from([
        (
            "web-1",
            vec![
                ("api-1", "tcp/8080", NONE, true),
                ("api-3", "tcp/8080", NONE, true),
                ("ops-1", NONE, ops_in, false),
            ],
        ),
        (
            "web-2",
            vec![
                ("api-1", "tcp/8080", NONE, true),
                ("api-3", "tcp/8080", NONE, true),
                ("ops-1", NONE, ops_in, false),
            ],
        ),
        (
            "web-3",
            vec![
                ("api-2", "tcp/8080", NONE, true),
                ("ops-1", NONE, ops_in, false),
            ],
        ),
        (
            "api-1",
            vec![
                ("api-3", "tcp/7000-7010", "tcp/7000-7010", true),
                ("db-1", "tcp/5432", NONE, true),
                ("ops-1", NONE, ops_in, false),
                ("web-1", NONE, "tcp/8080", false),
                ("web-2", NONE, "tcp/8080", false),
            ],
        ),
        (
            "api-2",
            vec![
                ("db-2", "tcp/5432", NONE, true),
                ("ops-1", NONE, ops_in, false),
                ("web-3", NONE, "tcp/8080", false),
            ],
        ),
        (
            "api-3",
            vec![
                ("api-1", "tcp/7000-7010", "tcp/7000-7010", true),
                ("db-1", "tcp/5432", NONE, true),
                ("ops-1", NONE, ops_in, false),
                ("web-1", NONE, "tcp/8080", false),
                ("web-2", NONE, "tcp/8080", false),
            ],
        ),
        (
            "db-1",
            vec![
                ("api-1", NONE, "tcp/5432", false),
                ("api-3", NONE, "tcp/5432", false),
                ("ops-1", NONE, "icmp", false),
            ],
        ),
        (
            "db-2",
            vec![
                ("api-2", NONE, "tcp/5432", false),
                ("ops-1", NONE, "icmp", false),
            ],
        ),
        ("db-3", vec![]),
        (
            "ops-1",
            vec![
                ("api-1", ops_in, NONE, true),
                ("api-2", ops_in, NONE, true),
                ("api-3", ops_in, NONE, true),
                ("db-1", "icmp", NONE, true),
                ("db-2", "icmp", NONE, true),
                ("web-1", ops_in, NONE, true),
                ("web-2", ops_in, NONE, true),
                ("web-3", ops_in, NONE, true),
            ],
        ),
        ("ci-1", vec![]),
    ]);
    for (name, want) in &expected {
        let map = &maps[&NodeName::new(*name).unwrap()];
        assert_eq!(&peers_by_name(&inv, map), want, "peers of {name}");
        map.validate().unwrap();
        let keys: Vec<_> = map.peers.iter().map(|p| p.public_key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{name}: peers sorted by key");
    }
    assert_eq!(expected.len(), maps.len());
}

#[test]
fn need_to_know_contents() {
    let (inv, policy) = load();
    let maps = compile(&inv, &policy);
    let web1 = &maps[&NodeName::new("web-1").unwrap()];
    let api1 = inv.node("api-1").unwrap();
    let peer = web1.peer(&api1.public_key).unwrap();
    assert_eq!(peer.name.as_ref(), Some(&api1.name));
    assert_eq!(peer.labels.as_deref(), Some(&api1.labels));
    assert_eq!(peer.endpoints.as_deref(), Some(api1.endpoints.as_slice()));
    let ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["100.80.0.4/32", "fd5e:6d00::4/128"]);
    // api-1 only learns web-1's key and addresses, nothing else.
    let api1_map = &maps[&api1.name];
    let web1_node = inv.node("web-1").unwrap();
    let back = api1_map.peer(&web1_node.public_key).unwrap();
    assert!(back.name.is_none() && back.labels.is_none() && back.endpoints.is_none());
    assert_eq!(back.allowed_ips.len(), 2);
    assert_eq!(api1_map.overlay, inv.overlay);
    assert_eq!(api1_map.version, 0);
}

#[test]
fn golden_netmaps() {
    let (inv, policy) = load();
    let maps = compile(&inv, &policy);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/three-tier");
    if std::env::var_os("SEGMESH_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, map) in &maps {
            std::fs::write(dir.join(format!("{name}.json")), map.to_json_pretty()).unwrap();
        }
    }
    for (name, map) in &maps {
        let path = dir.join(format!("{name}.json"));
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set SEGMESH_UPDATE_GOLDEN=1 to write)",
                path.display()
            )
        });
        assert_eq!(
            map.to_json_pretty(),
            golden,
            "netmap format of {name} changed"
        );
        assert_eq!(&NetMap::from_json(golden.as_bytes()).unwrap(), map);
    }
}

#[test]
fn policy_tests_pass() {
    let (inv, policy) = load();
    let outcomes = run_tests(&policy, Some(&inv));
    assert_eq!(outcomes.len(), 6);
    for o in &outcomes {
        assert!(o.passed, "{o:?}");
    }
    // Without an inventory, tests naming nodes cannot be evaluated.
    let outcomes = run_tests(&policy, None);
    assert!(outcomes.iter().any(|o| !o.passed && o.error.is_some()));
}
