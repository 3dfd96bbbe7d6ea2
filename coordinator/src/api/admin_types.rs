//! The admin API's request and reply bodies (shared with segmeshctl, which
//! decodes the same types), and the policy diff shown by `policy apply`.

use std::collections::BTreeMap;

use segmesh_config::compile::Compiler;
use segmesh_config::{Inventory, Labels, NetMap, NodeName, Peer, PublicKey};
use serde::{Deserialize, Serialize};

use crate::distribute::AckReport;
use crate::store::{NodeRecord, TokenRecord};

/// POST /v1/admin/tokens
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub name_prefix: Option<String>,
    pub ttl_secs: u64,
    pub uses: u32,
}

/// Reply: the join token (shown once) and its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenRecord,
}

/// POST /v1/admin/nodes/{name}/labels
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    #[serde(default)]
    pub set: Labels,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A node in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRecord,
    pub connected: bool,
}

/// Reply to a revoke: how many former peers applied the removal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReport {
    pub node: NodeRecord,
    pub peers: AckReport,
}

/// POST /v1/admin/policy
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPolicy {
    pub text: String,
    /// File name used in error messages.
    #[serde(default = "default_policy_path")]
    pub path: String,
    #[serde(default)]
    pub dry_run: bool,
}

fn default_policy_path() -> String {
    "policy.toml".into()
}

/// Peer changes of one node's netmap, by peer name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Reply to a policy apply (or dry run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyReport {
    pub applied: bool,
    pub version: Option<u64>,
    pub tests: Vec<serde_json::Value>,
    /// Per node, what changes. A dry run lists every node; an apply lists
    /// the first [`APPLY_DIFF_LIMIT`] in name order (`pushed` counts all).
    pub diff: BTreeMap<NodeName, NodeDiff>,
    /// Nodes a new netmap was pushed to.
    pub pushed: usize,
}

/// How many nodes' changes an applied policy's report and audit entry list.
pub const APPLY_DIFF_LIMIT: usize = 100;

/// POST /v1/admin/explain
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub from: String,
    pub to: String,
    pub port: String,
}

/// One node's line in `policy audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAudit {
    pub node: NodeName,
    pub expected_version: u64,
    pub acked_version: u64,
    /// ok | stale (an older netmap is applied) | never_acked | mismatch
    pub status: String,
}

/// Reply to GET /v1/admin/audit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub clean: bool,
    pub nodes: Vec<NodeAudit>,
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

/// Per node, the peers added, removed and changed between two compilers of
/// one inventory (the distributor's current one and the one an apply
/// installs, so nothing is compiled twice). With `limit`, stops after that
/// many changed nodes (in name order) and computes only the netmaps it
/// looks at: a real apply records and returns a sample, so a change to
/// 10,000 netmaps is not held up by listing them (a dry run lists all).
pub fn diff(
    inv: &Inventory,
    old: &Compiler,
    new: &Compiler,
    limit: Option<usize>,
) -> BTreeMap<NodeName, NodeDiff> {
    let names: BTreeMap<_, _> = inv.nodes.iter().map(|n| (n.public_key, &n.name)).collect();
    let label = |k: &PublicKey| {
        names
            .get(k)
            .map_or_else(|| k.to_string(), |n| n.to_string())
    };
    let mut out = BTreeMap::new();
    let mut note = |name: &NodeName, a: Option<&NetMap>, b: Option<&NetMap>| {
        let d = node_diff(
            a.map_or(&[][..], |m| &m.peers),
            b.map_or(&[][..], |m| &m.peers),
            &label,
        );
        if d != NodeDiff::default() {
            out.insert(name.clone(), d);
        }
    };
    match limit {
        None => {
            let (a, b) = (old.netmaps(), new.netmaps());
            for name in old.names() {
                note(name, a.get(name), b.get(name));
            }
        }
        Some(n) => {
            let mut changed = 0;
            for name in old.names() {
                if changed >= n {
                    break;
                }
                let (a, b) = (old.netmap(name), new.netmap(name));
                if a.as_ref().map(|m| &m.peers) != b.as_ref().map(|m| &m.peers) {
                    changed += 1;
                    note(name, a.as_ref(), b.as_ref());
                }
            }
        }
    }
    out
}

fn node_diff(pa: &[Peer], pb: &[Peer], label: &impl Fn(&PublicKey) -> String) -> NodeDiff {
    let mut d = NodeDiff::default();
    for p in pb {
        match pa.iter().find(|q| q.public_key == p.public_key) {
            None => d.added.push(label(&p.public_key)),
            Some(q) if q != p => d.changed.push(label(&p.public_key)),
            Some(_) => {}
        }
    }
    for q in pa
        .iter()
        .filter(|q| !pb.iter().any(|p| p.public_key == q.public_key))
    {
        d.removed.push(label(&q.public_key));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use segmesh_config::Policy;
    use segmesh_config::inventory::InventoryNode;

    fn mesh(port: u16) -> (Inventory, Compiler) {
        let nodes = (0u8..6)
            .map(|i| InventoryNode {
                name: format!("n-{i}").parse().unwrap(),
                labels: [("role".to_string(), "app".to_string())].into(),
                public_key: PublicKey::from_bytes([i + 1; 32]),
                addresses: vec![format!("100.80.0.{}", i + 1).parse().unwrap()],
                endpoints: Vec::new(),
            })
            .collect();
        let inv = Inventory {
            overlay: vec!["100.80.0.0/16".parse().unwrap()],
            nodes,
        };
        let text = format!(
            "[segments.app]\nmatch = {{ role = \"app\" }}\n[[allow]]\nfrom = \"app\"\nto = \"app\"\nports = [\"tcp/{port}\"]\n"
        );
        let c = Compiler::new(&inv, &Policy::parse("p.toml", &text).unwrap());
        (inv, c)
    }

    #[test]
    fn a_limited_diff_is_the_start_of_the_full_one() {
        let (inv, old) = mesh(80);
        let (_, new) = mesh(443);
        let full = diff(&inv, &old, &new, None);
        assert_eq!(full.len(), 6);
        assert!(
            full.values()
                .all(|d| d.changed.len() == 5 && d.added.is_empty())
        );
        let some = diff(&inv, &old, &new, Some(2));
        let first: BTreeMap<_, _> = full.into_iter().take(2).collect();
        assert_eq!(some, first);
        assert!(diff(&inv, &old, &old, Some(2)).is_empty());
    }
}
