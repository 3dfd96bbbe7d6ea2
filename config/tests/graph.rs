//! The policy picture: the SVG is well-formed, self-contained XML holding
//! every segment, member and edge; DOT lists the same edges.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use std::path::PathBuf;

use segmesh_config::compile::Compiler;
use segmesh_config::graph::{Graph, to_svg};
use segmesh_config::{Inventory, Policy};

fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/three-tier")
        .join(file)
}

fn three_tier() -> (Inventory, Policy) {
    let text = std::fs::read_to_string(example("inventory.toml")).unwrap();
    let inv = Inventory::from_toml("inventory.toml", &text).unwrap();
    (inv, Policy::load(&example("policy.toml")).unwrap())
}

#[test]
fn svg_is_well_formed_and_complete() {
    let (inv, policy) = three_tier();
    let c = Compiler::new(&inv, &policy);
    let g = Graph::new(&policy, Some(&c));
    let svg = to_svg(&g, "policy <a & b>.toml");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    // Self-contained: no scripts, no external references.
    for n in doc.descendants() {
        assert_ne!(n.tag_name().name(), "script");
        assert_ne!(n.tag_name().name(), "image");
        for a in n.attributes() {
            assert!(!a.value().contains("http") || a.name() == "xmlns", "{a:?}");
        }
    }
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text())
        .collect();
    assert!(texts.contains(&"policy <a & b>.toml"));
    for seg in [
        "web",
        "api",
        "db",
        "ops",
        "prod",
        "staging",
        "* (every node)",
    ] {
        assert!(texts.contains(&seg), "segment {seg} drawn");
    }
    for node in ["web-1", "api-3", "db-2", "ops-1"] {
        assert!(texts.contains(&node), "member {node} drawn");
    }
    assert!(
        texts.iter().any(|t| t.contains("ci-1")),
        "unsegmented listed"
    );
    let paths = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "path" && n.attribute("marker-end").is_some())
        .count();
    assert_eq!(paths, g.edges.len());
    assert_eq!(g.edges.len(), 9);
    assert!(texts.contains(&"deny tcp/22"));
    assert!(texts.contains(&"tcp/7000-7010"));
}

#[test]
fn dot_lists_every_edge() {
    let (_, policy) = three_tier();
    let g = Graph::new(&policy, None);
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph policy {"));
    assert!(dot.contains(r#""web" -> "api" [label="tcp/8080""#));
    assert!(dot.contains(r#""*" -> "db" [label="deny tcp/22", color=red"#));
    assert_eq!(dot.matches(" -> ").count(), g.edges.len());
    // Without an inventory, boxes carry no member lists.
    assert!(!dot.contains("web-1"));
}

#[test]
fn empty_policy_still_renders() {
    let g = Graph::new(&Policy::empty("empty.toml"), None);
    roxmltree::Document::parse(&to_svg(&g, "empty")).unwrap();
    assert_eq!(g.to_dot().matches(" -> ").count(), 0);
}
