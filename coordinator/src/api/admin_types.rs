//! The admin API's request and reply bodies (shared with segmeshctl, which
//! decodes the same types), and the policy diff shown by `policy apply`.

use std::collections::BTreeMap;

use segmesh_config::compile::compile;
use segmesh_config::{Inventory, Labels, NodeName, Policy};
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
    pub diff: BTreeMap<NodeName, NodeDiff>,
    /// Nodes a new netmap was pushed to.
    pub pushed: usize,
}

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

/// Per node, the peers added, removed and changed between two compilations.
pub fn diff(inv: &Inventory, old: &Policy, new: &Policy) -> BTreeMap<NodeName, NodeDiff> {
    let names: BTreeMap<_, _> = inv
        .nodes
        .iter()
        .map(|n| (n.public_key, n.name.to_string()))
        .collect();
    let label = |k| names.get(k).cloned().unwrap_or_else(|| k.to_string());
    let (a, b) = (compile(inv, old), compile(inv, new));
    let empty = Vec::new();
    let mut out = BTreeMap::new();
    for name in a.keys().chain(b.keys()) {
        let pa = a.get(name).map_or(&empty, |m| &m.peers);
        let pb = b.get(name).map_or(&empty, |m| &m.peers);
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
        if d != NodeDiff::default() {
            out.insert(name.clone(), d);
        }
    }
    out
}
