//! A picture of a policy: segments as boxes (with their member nodes when
//! an inventory is given) and rules as arrows labelled with ports. Rendered
//! as Graphviz DOT or as a self-contained SVG laid out here, so that no
//! graphviz install is needed to look at a policy.

mod svg;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::compile::Compiler;
use crate::identity::NodeName;
use crate::policy::{Action, EVERY, Policy, Targets};
use crate::ports::PortSet;

pub use svg::to_svg;

/// One box: a segment, or `*` (every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Box {
    pub name: String,
    /// Member nodes (empty without an inventory).
    pub members: Vec<NodeName>,
}

/// One arrow: the merged rules of one action between two boxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub action: Action,
    pub ports: PortSet,
    /// `FILE:LINE` of the rules merged into this arrow.
    pub rules: Vec<String>,
}

/// The whole picture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Graph {
    pub boxes: Vec<Box>,
    pub edges: Vec<Edge>,
    /// Inventory nodes in no segment (they only appear via `*` rules).
    pub unsegmented: Vec<NodeName>,
    /// Whether members were filled in from an inventory.
    pub with_inventory: bool,
}

impl Graph {
    /// Builds the picture; `compiler` supplies segment members when an
    /// inventory is known.
    pub fn new(policy: &Policy, compiler: Option<&Compiler>) -> Graph {
        let mut members: BTreeMap<String, Vec<NodeName>> = policy
            .segments
            .keys()
            .map(|s| (s.clone(), Vec::new()))
            .collect();
        let mut unsegmented = Vec::new();
        if let Some(c) = compiler {
            for name in c.names() {
                let m = c.membership(name).unwrap_or_default();
                if m.is_empty() {
                    unsegmented.push(name.clone());
                }
                for s in m {
                    members.entry(s).or_default().push(name.clone());
                }
            }
        }
        let mut merged: BTreeMap<(String, String, Action), (PortSet, Vec<String>)> =
            BTreeMap::new();
        let mut uses_every = false;
        for r in &policy.rules {
            let sides = |t: &Targets| match t {
                Targets::Every => vec![EVERY.to_string()],
                Targets::Segments(s) => s.clone(),
            };
            uses_every |= matches!(r.from, Targets::Every) || matches!(r.to, Targets::Every);
            for f in sides(&r.from) {
                for t in sides(&r.to) {
                    let e = merged.entry((f.clone(), t, r.action)).or_default();
                    e.0.union_with(&r.ports);
                    e.1.push(policy.at(r.loc));
                }
            }
        }
        let mut boxes: Vec<Box> = members
            .into_iter()
            .map(|(name, members)| Box { name, members })
            .collect();
        if uses_every {
            let all = compiler
                .map(|c| c.names().cloned().collect())
                .unwrap_or_default();
            boxes.insert(
                0,
                Box {
                    name: EVERY.to_string(),
                    members: all,
                },
            );
        }
        let edges = merged
            .into_iter()
            .map(|((from, to, action), (ports, rules))| Edge {
                from,
                to,
                action,
                ports,
                rules,
            })
            .collect();
        Graph {
            boxes,
            edges,
            unsegmented,
            with_inventory: compiler.is_some(),
        }
    }

    /// Graphviz DOT text.
    pub fn to_dot(&self) -> String {
        let mut s = String::from(
            "digraph policy {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n",
        );
        for b in &self.boxes {
            let mut label = if b.name == EVERY {
                "* (every node)".to_string()
            } else {
                b.name.clone()
            };
            if self.with_inventory && b.name == EVERY {
                label = format!("{label}\\n\\nall {} nodes", b.members.len());
            } else if self.with_inventory {
                let names: Vec<&str> = b.members.iter().map(NodeName::as_str).collect();
                let list = if names.is_empty() {
                    "(no nodes)".to_string()
                } else {
                    names.join("\\n")
                };
                label = format!("{label}\\n\\n{list}");
            }
            let _ = writeln!(s, "  {} [label={}];", dot_id(&b.name), dot_str(&label));
        }
        if !self.unsegmented.is_empty() {
            let names: Vec<&str> = self.unsegmented.iter().map(NodeName::as_str).collect();
            let label = format!("in no segment\\n\\n{}", names.join("\\n"));
            let _ = writeln!(
                s,
                "  \"(unsegmented)\" [label={}, style=\"rounded,dashed\"];",
                dot_str(&label)
            );
        }
        for e in &self.edges {
            let (color, style, prefix) = match e.action {
                Action::Allow => ("black", "solid", ""),
                Action::Deny => ("red", "dashed", "deny "),
            };
            let _ = writeln!(
                s,
                "  {} -> {} [label={}, color={color}, fontcolor={color}, style={style}];",
                dot_id(&e.from),
                dot_id(&e.to),
                dot_str(&format!("{prefix}{}", e.ports))
            );
        }
        s.push_str("}\n");
        s
    }
}

fn dot_id(name: &str) -> String {
    dot_str(name)
}

/// A DOT string literal. Label escapes (`\n`) written by the caller stay.
fn dot_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Segments used by at least one edge (the rest are drawn apart).
pub(crate) fn connected(g: &Graph) -> BTreeSet<&str> {
    g.edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect()
}
