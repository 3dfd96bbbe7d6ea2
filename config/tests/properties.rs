//! Property tests over random inventories and policies: the compiler agrees
//! with the plain statement of the semantics, is symmetric, need-to-know,
//! deterministic and incremental; audit accepts exactly what compile makes.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use std::collections::BTreeMap;

use proptest::prelude::*;
use segmesh_config::audit::audit_all;
use segmesh_config::compile::{Compiler, compile};
use segmesh_config::policy::{Action, Membership, Targets};
use segmesh_config::{
    Inventory, InventoryNode, Labels, NetMap, NodeName, Policy, PortSet, PublicKey,
};

const KEYS: [(&str, &[&str]); 3] = [
    ("role", &["web", "api", "db", "ops"]),
    ("env", &["prod", "staging"]),
    ("tier", &["legacy", "new"]),
];
const PORTS: [&str; 9] = [
    "tcp/22",
    "tcp/80",
    "tcp/8000-8100",
    "tcp",
    "udp/53",
    "udp",
    "icmp",
    "any",
    "tcp/443",
];

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::vec(proptest::option::of(0usize..4), 3).prop_map(|picks| {
        picks
            .iter()
            .zip(KEYS)
            .filter_map(|(p, (k, vals))| {
                p.map(|i| (k.to_string(), vals[i % vals.len()].to_string()))
            })
            .collect()
    })
}

fn node(i: usize, labels: Labels) -> InventoryNode {
    let mut key = [0u8; 32];
    key[0] = i as u8 + 1;
    key[1] = (i >> 8) as u8;
    InventoryNode {
        name: NodeName::new(format!("n{i}")).unwrap(),
        labels,
        public_key: PublicKey::from_bytes(key),
        addresses: vec![
            format!("100.80.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
        ],
        endpoints: vec![format!("10.0.0.{}:51820", i % 250 + 1).parse().unwrap()],
    }
}

fn inventory() -> impl Strategy<Value = Inventory> {
    proptest::collection::vec(labels(), 1..12).prop_map(|ls| Inventory {
        overlay: vec!["100.80.0.0/16".parse().unwrap()],
        nodes: ls
            .into_iter()
            .enumerate()
            .map(|(i, l)| node(i, l))
            .collect(),
    })
}

/// A random policy, written as TOML and parsed (so the parser is exercised too).
fn policy_text() -> impl Strategy<Value = String> {
    let selector = proptest::collection::vec(
        (0usize..3, proptest::collection::vec(0usize..4, 1..3)),
        0..3,
    );
    let segment = (
        selector.clone(),
        proptest::collection::vec((0usize..3, 0usize..4), 0..2),
    );
    let side = prop_oneof![1 => Just(None), 6 => proptest::collection::vec(0usize..5, 1..3).prop_map(Some)];
    let rule = (
        prop::bool::weighted(0.7),
        side.clone(),
        side,
        proptest::collection::vec(0usize..PORTS.len(), 1..3),
    );
    (
        proptest::collection::vec(segment, 5),
        proptest::collection::vec(rule, 0..9),
    )
        .prop_map(|(segs, rules)| {
            let mut t = String::new();
            for (i, (matches, exclude)) in segs.iter().enumerate() {
                t.push_str(&format!("[segments.s{i}]\nmatch = {{"));
                let mut seen = Vec::new();
                let parts: Vec<String> = matches
                    .iter()
                    .filter(|(k, _)| {
                        let fresh = !seen.contains(k);
                        seen.push(*k);
                        fresh
                    })
                    .map(|(k, vals)| {
                        let (key, all) = KEYS[*k];
                        let vs: Vec<String> = vals
                            .iter()
                            .map(|v| format!("{:?}", all[v % all.len()]))
                            .collect();
                        format!("{key} = [{}]", vs.join(", "))
                    })
                    .collect();
                t.push_str(&parts.join(", "));
                t.push_str("}\n");
                if let Some((k, v)) = exclude.first() {
                    let (key, all) = KEYS[*k];
                    t.push_str(&format!(
                        "exclude = {{ {key} = {:?} }}\n",
                        all[v % all.len()]
                    ));
                }
            }
            for (allow, from, to, ports) in rules {
                let side = |s: &Option<Vec<usize>>| match s {
                    None => "\"*\"".to_string(),
                    Some(v) => format!(
                        "[{}]",
                        v.iter()
                            .map(|i| format!("\"s{i}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let ps: Vec<String> = ports.iter().map(|p| format!("{:?}", PORTS[*p])).collect();
                t.push_str(&format!(
                    "[[{}]]\nfrom = {}\nto = {}\nports = [{}]\n",
                    if allow { "allow" } else { "deny" },
                    side(&from),
                    side(&to),
                    ps.join(", ")
                ));
            }
            t
        })
}

fn case() -> impl Strategy<Value = (Inventory, Policy)> {
    (inventory(), policy_text()).prop_map(|(inv, text)| {
        let p = Policy::parse("gen.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        (inv, p)
    })
}

fn memberships(inv: &Inventory, p: &Policy) -> BTreeMap<NodeName, Membership> {
    inv.nodes
        .iter()
        .map(|n| (n.name.clone(), p.membership(&n.labels)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every peer, and each of its ports, is exactly what the semantics
    /// say: allows minus denies, both directions.
    #[test]
    fn compile_matches_the_semantics((inv, p) in case()) {
        let maps = compile(&inv, &p);
        let mem = memberships(&inv, &p);
        prop_assert_eq!(maps.len(), inv.nodes.len());
        for a in &inv.nodes {
            let m = &maps[&a.name];
            let mut want = BTreeMap::new();
            for b in inv.nodes.iter().filter(|b| b.name != a.name) {
                let out = p.ports_between(&mem[&a.name], &mem[&b.name]);
                let inb = p.ports_between(&mem[&b.name], &mem[&a.name]);
                if !out.is_empty() || !inb.is_empty() {
                    want.insert(b.public_key, (out, inb));
                }
            }
            let got: BTreeMap<PublicKey, (PortSet, PortSet)> = m.peers.iter()
                .map(|q| (q.public_key, (q.outbound.clone(), q.inbound.clone()))).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Every outbound port is covered by an applying allow and by no applying deny.
    #[test]
    fn every_peer_is_justified((inv, p) in case()) {
        let maps = compile(&inv, &p);
        let mem = memberships(&inv, &p);
        let by_key: BTreeMap<PublicKey, &InventoryNode> = inv.nodes.iter().map(|n| (n.public_key, n)).collect();
        for a in &inv.nodes {
            for q in &maps[&a.name].peers {
                let b = by_key[&q.public_key];
                for (src, dst, ports) in [(a, b, &q.outbound), (b, a, &q.inbound)] {
                    let (mut allow, mut deny) = (PortSet::empty(), PortSet::empty());
                    for r in p.rules_between(&mem[&src.name], &mem[&dst.name]) {
                        match r.action {
                            Action::Allow => allow.union_with(&r.ports),
                            Action::Deny => deny.union_with(&r.ports),
                        }
                    }
                    prop_assert!(ports.is_subset(&allow));
                    let mut overlap = ports.clone();
                    overlap.subtract(&deny);
                    prop_assert_eq!(&overlap, ports, "a denied port leaked");
                }
                prop_assert!(!q.outbound.is_empty() || !q.inbound.is_empty(), "peer without any path");
            }
        }
    }

    /// Both ends of every path hold each other's key, with mirrored ports;
    /// names and endpoints only where the node opens flows.
    #[test]
    fn symmetric_and_need_to_know((inv, p) in case()) {
        let maps = compile(&inv, &p);
        let by_key: BTreeMap<PublicKey, &InventoryNode> = inv.nodes.iter().map(|n| (n.public_key, n)).collect();
        for a in &inv.nodes {
            let m = &maps[&a.name];
            prop_assert!(m.validate().is_ok());
            for q in &m.peers {
                let b = by_key[&q.public_key];
                let back = maps[&b.name].peer(&a.public_key);
                prop_assert!(back.is_some(), "{} holds {} but not the reverse", a.name, b.name);
                let back = back.unwrap();
                prop_assert_eq!(&back.outbound, &q.inbound);
                prop_assert_eq!(&back.inbound, &q.outbound);
                let reveal = !q.outbound.is_empty();
                prop_assert_eq!(q.name.is_some(), reveal);
                prop_assert_eq!(q.labels.is_some(), reveal);
                prop_assert_eq!(q.endpoints.is_some(), reveal);
                if reveal {
                    prop_assert_eq!(q.name.as_ref(), Some(&b.name));
                    prop_assert_eq!(q.endpoints.as_deref(), Some(b.endpoints.as_slice()));
                }
            }
        }
    }

    /// Same input, same output, whatever the order of the inventory.
    #[test]
    fn deterministic((inv, p) in case(), seed in any::<u64>()) {
        let a = compile(&inv, &p);
        let mut shuffled = inv.clone();
        let n = shuffled.nodes.len();
        for i in 0..n {
            let j = (seed as usize).wrapping_mul(i + 7) % n;
            shuffled.nodes.swap(i, j);
        }
        prop_assert_eq!(&a, &compile(&shuffled, &p));
        let json: Vec<String> = a.values().map(NetMap::to_json_pretty).collect();
        let again: Vec<String> = compile(&inv, &p).values().map(NetMap::to_json_pretty).collect();
        prop_assert_eq!(json, again);
    }

    /// A node in no segment gets an empty netmap unless a "*" rule reaches it.
    #[test]
    fn unsegmented_nodes_are_alone((inv, p) in case()) {
        let maps = compile(&inv, &p);
        let wildcard = p.rules.iter().any(|r| r.action == Action::Allow
            && (matches!(r.from, Targets::Every) || matches!(r.to, Targets::Every)));
        for n in &inv.nodes {
            if p.membership(&n.labels).is_empty() && !wildcard {
                prop_assert!(maps[&n.name].peers.is_empty());
            }
        }
    }

    /// Audit accepts compile's output and rejects one extra peer or port.
    #[test]
    fn audit_accepts_exactly_compile((inv, p) in case(), pick in any::<prop::sample::Index>(), port in 0usize..PORTS.len()) {
        let maps = compile(&inv, &p);
        let names: BTreeMap<PublicKey, NodeName> = inv.nodes.iter().map(|n| (n.public_key, n.name.clone())).collect();
        prop_assert!(audit_all(&maps, &maps, &names).is_empty());
        let victim = pick.get(&inv.nodes).name.clone();
        // One extra peer.
        let mut extra = maps.clone();
        let m = extra.get_mut(&victim).unwrap();
        let mut stranger = m.node.clone();
        stranger.public_key = PublicKey::from_bytes([0xEE; 32]);
        m.peers.push(segmesh_config::Peer {
            public_key: stranger.public_key,
            allowed_ips: vec!["100.99.0.1/32".parse().unwrap()].into(),
            outbound: PortSet::empty(),
            inbound: PortSet::any(),
            name: None, labels: None, endpoints: None,
        });
        prop_assert!(!audit_all(&maps, &extra, &names).is_empty());
        // One extra port on an existing peer.
        let mut wider = maps.clone();
        let m = wider.get_mut(&victim).unwrap();
        if let Some(q) = m.peers.first_mut() {
            let add = PortSet::from_specs(&[PORTS[port].parse().unwrap()]);
            if !add.is_subset(&q.inbound) {
                q.inbound.union_with(&add);
                prop_assert!(!audit_all(&maps, &wider, &names).is_empty());
            }
        }
    }

    /// The whole-mesh compile (built class by class) equals building each
    /// node's netmap on its own.
    #[test]
    fn netmaps_equal_single_netmaps((inv, p) in case()) {
        let c = Compiler::new(&inv, &p);
        let maps = c.netmaps();
        prop_assert_eq!(maps.len(), inv.nodes.len());
        for n in &inv.nodes {
            let single = c.netmap(&n.name);
            prop_assert_eq!(maps.get(&n.name), single.as_ref());
        }
    }

    /// Incremental updates (labels, keys, removals, new nodes), folded into
    /// cached netmaps, equal a full compile of the final inventory.
    #[test]
    fn incremental_equals_full((inv, p) in case(), ops in proptest::collection::vec((0usize..14, labels(), 0u8..4), 1..8)) {
        let mut c = Compiler::new(&inv, &p);
        let mut cached = c.netmaps();
        let mut current = inv.clone();
        for (i, l, op) in ops {
            let changes = if op == 0 {
                let name = NodeName::new(format!("n{i}")).unwrap();
                current.nodes.retain(|n| n.name != name);
                c.remove_node(&name)
            } else {
                let mut n = node(i, l);
                if op == 1 {
                    n.public_key = PublicKey::from_bytes([i as u8 + 100; 32]);
                }
                current.nodes.retain(|x| x.name != n.name);
                current.nodes.push(n.clone());
                c.upsert_node(n)
            };
            changes.apply(&mut cached);
            prop_assert_eq!(&cached, &compile(&current, &p));
        }
    }
}
