//! Compiler benchmarks: a full compile of 10,000 nodes, 200 segments and
//! 1,000 rules (target < 1 s), and the incremental recompute after one
//! node's labels change (target < 10 ms). Results: docs/benchmarks.md.
//!
//! The layout: 50 roles x 4 environments x 5 zones; each segment selects one
//! role in one environment (every 10th takes two environments, every 7th
//! excludes a zone), about 50 nodes each. Rules connect random segment
//! pairs (deterministic LCG) with random ports; 15% are denies, a few deny
//! from "*". Each node ends up with a few hundred peers.
//!
//! Times are the benchmark thread's CPU time (see `support/cpu_time.rs`),
//! so that a busy build machine does not distort them.

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is the report

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;
use segmesh_config::compile::Compiler;
use segmesh_config::{Inventory, InventoryNode, Labels, NodeName, Policy, PublicKey};

const NODES: usize = 10_000;
const SEGMENTS: usize = 200;
const RULES: usize = 1_000;
const PORTS: [&str; 8] = [
    "tcp/443",
    "tcp/5432",
    "tcp/8000-8100",
    "udp/53",
    "icmp",
    "tcp/22",
    "tcp/9090",
    "udp/4789",
];

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn labels(i: usize, env_shift: usize) -> Labels {
    Labels::from([
        ("role".to_string(), format!("r{}", i % 50)),
        ("env".to_string(), format!("e{}", (i / 50 + env_shift) % 4)),
        ("zone".to_string(), format!("z{}", (i / 200) % 5)),
    ])
}

fn node(i: usize) -> InventoryNode {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    key[31] = 0x5e;
    InventoryNode {
        name: NodeName::new(format!("node-{i}")).unwrap(),
        labels: labels(i, 0),
        public_key: PublicKey::from_bytes(key),
        addresses: vec![
            format!("100.80.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
            format!("fd5e:6d00::{:x}", i + 1).parse().unwrap(),
        ],
        endpoints: vec![
            format!("10.{}.{}.{}:51820", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap(),
        ],
    }
}

fn inventory() -> Inventory {
    Inventory {
        overlay: vec![
            "100.80.0.0/16".parse().unwrap(),
            "fd5e:6d00::/64".parse().unwrap(),
        ],
        nodes: (0..NODES).map(node).collect(),
    }
}

fn policy() -> Policy {
    let mut t = String::new();
    for k in 0..SEGMENTS {
        let env = if k % 10 == 0 {
            format!("[\"e{}\", \"e{}\"]", k / 50, (k / 50 + 1) % 4)
        } else {
            format!("\"e{}\"", k / 50)
        };
        t.push_str(&format!(
            "[segments.s{k}]\nmatch = {{ role = \"r{}\", env = {env} }}\n",
            k % 50
        ));
        if k % 7 == 0 {
            t.push_str(&format!("exclude = {{ zone = \"z{}\" }}\n", k % 5));
        }
    }
    let mut rng = Lcg(42);
    for r in 0..RULES {
        let deny = rng.next(100) < 15;
        let from = if deny && r % 40 == 0 {
            "\"*\"".to_string()
        } else {
            format!("\"s{}\"", rng.next(SEGMENTS))
        };
        let to = format!("\"s{}\"", rng.next(SEGMENTS));
        let ports: Vec<String> = (0..1 + rng.next(3))
            .map(|_| format!("\"{}\"", PORTS[rng.next(PORTS.len())]))
            .collect();
        t.push_str(&format!(
            "[[{}]]\nfrom = {from}\nto = {to}\nports = [{}]\n",
            if deny { "deny" } else { "allow" },
            ports.join(", ")
        ));
    }
    Policy::parse("bench.toml", &t).unwrap()
}

fn benches(c: &mut Criterion<CpuTime>) {
    let inv = inventory();
    let pol = policy();
    let compiler = Compiler::new(&inv, &pol);
    let maps = compiler.netmaps();
    let peers: usize = maps.values().map(|m| m.peers.len()).sum();
    eprintln!(
        "layout: {} nodes, {} segments, {} rules, {peers} peer entries ({:.0} per node)",
        maps.len(),
        pol.segments.len(),
        pol.rules.len(),
        peers as f64 / maps.len() as f64
    );

    let mut g = c.benchmark_group("compile");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("full_10k_nodes_200_segments_1000_rules", |b| {
        // Freeing 10,000 netmaps is the consumer's cost, not the compiler's.
        b.iter_with_large_drop(|| Compiler::new(&inv, &pol).netmaps())
    });
    g.bench_function("index_only_10k_nodes_200_segments_1000_rules", |b| {
        b.iter_with_large_drop(|| Compiler::new(&inv, &pol))
    });
    g.finish();

    // One node moves between environments and back, alternately.
    let mut inc = compiler.clone();
    let mut cached = maps;
    let mut flip = 0usize;
    let target = 4321;
    let mut g = c.benchmark_group("recompute");
    g.sample_size(50);
    g.bench_function("one_node_labels_change", |b| {
        b.iter(|| {
            flip += 1;
            let mut n = node(target);
            n.labels = labels(target, flip % 2);
            black_box(inc.upsert_node(n))
        })
    });
    g.bench_function("one_node_labels_change_and_apply", |b| {
        b.iter(|| {
            flip += 1;
            let mut n = node(target);
            n.labels = labels(target, flip % 2);
            let changes = inc.upsert_node(n);
            changes.apply(&mut cached);
            black_box(changes.len())
        })
    });
    g.finish();
    let (mut a, mut b) = (node(target), node(target));
    a.labels = labels(target, 0);
    b.labels = labels(target, 1);
    inc.upsert_node(a);
    eprintln!("one relabel touches {} netmaps", inc.upsert_node(b).len());
}

criterion_group! {
    name = compile;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(compile);
