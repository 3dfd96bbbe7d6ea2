//! Audit: does a node's netmap hold exactly what the policy allows?
//!
//! Compares a netmap (a file on disk, or what a node acknowledged) with the
//! one [`crate::compile`] produces: no extra peer, no extra port, no
//! allowed IP beyond the peer's addresses, no name/labels/endpoints the node
//! does not need. Missing entries are findings too: the node is out of date.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::identity::{NodeName, PublicKey};
use crate::netmap::{NetMap, Peer};
use crate::ports::PortSet;

/// What kind of discrepancy was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// No netmap for a node of the inventory.
    MissingNetmap,
    /// A netmap for a node that is not in the inventory.
    UnknownNode,
    /// The netmap could not be read or breaks the format's invariants.
    Invalid,
    /// The node's own identity (key, addresses) differs.
    WrongSelf,
    /// A peer the policy does not connect the node to.
    ExtraPeer,
    /// A peer the policy connects the node to is absent.
    MissingPeer,
    /// More ports than the policy allows.
    ExtraPort,
    /// Fewer ports than the policy allows.
    MissingPort,
    /// Allowed IPs other than the peer's own addresses.
    WrongAllowedIps,
    /// Name, labels or endpoints of a peer the node never contacts.
    NeedlessInfo,
    /// Name, labels or endpoints differ from the inventory.
    StaleInfo,
}

/// One discrepancy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The node whose netmap is wrong.
    pub node: String,
    pub kind: FindingKind,
    /// The peer concerned (its name from the inventory, else its key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.node)?;
        if let Some(p) = &self.peer {
            write!(f, "peer {p}: ")?;
        }
        f.write_str(&self.detail)
    }
}

/// Compares every expected netmap with the actual ones, by node name.
/// `names` maps keys to inventory names so findings are readable.
pub fn audit_all(
    expected: &BTreeMap<NodeName, NetMap>,
    actual: &BTreeMap<NodeName, NetMap>,
    names: &BTreeMap<PublicKey, NodeName>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (name, want) in expected {
        match actual.get(name) {
            Some(got) => out.extend(audit_netmap(want, got, names)),
            None => out.push(Finding {
                node: name.to_string(),
                kind: FindingKind::MissingNetmap,
                peer: None,
                detail: "no netmap".to_string(),
            }),
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(Finding {
            node: name.to_string(),
            kind: FindingKind::UnknownNode,
            peer: None,
            detail: "netmap for a node that is not in the inventory".to_string(),
        });
    }
    out.sort();
    out
}

/// Compares one node's netmap with what the policy produces.
pub fn audit_netmap(
    expected: &NetMap,
    actual: &NetMap,
    names: &BTreeMap<PublicKey, NodeName>,
) -> Vec<Finding> {
    let node = expected.node.name.to_string();
    let finding = |kind, peer: Option<&PublicKey>, detail: String| Finding {
        node: node.clone(),
        kind,
        peer: peer.map(|k| {
            names
                .get(k)
                .map_or_else(|| k.to_string(), ToString::to_string)
        }),
        detail,
    };
    let mut out = Vec::new();
    if let Err(e) = actual.validate() {
        out.push(finding(FindingKind::Invalid, None, e.to_string()));
    }
    if actual.node.public_key != expected.node.public_key
        || actual.node.addresses != expected.node.addresses
    {
        out.push(finding(
            FindingKind::WrongSelf,
            None,
            "the node's own key or addresses differ from the inventory".to_string(),
        ));
    }
    let want: BTreeMap<PublicKey, &Peer> =
        expected.peers.iter().map(|p| (p.public_key, p)).collect();
    let got: BTreeMap<PublicKey, &Peer> = actual.peers.iter().map(|p| (p.public_key, p)).collect();
    for (key, g) in &got {
        let Some(w) = want.get(key) else {
            out.push(finding(
                FindingKind::ExtraPeer,
                Some(key),
                format!(
                    "peer not allowed by policy (outbound {}, inbound {})",
                    g.outbound, g.inbound
                ),
            ));
            continue;
        };
        for (dir, gs, ws) in [
            ("outbound", &g.outbound, &w.outbound),
            ("inbound", &g.inbound, &w.inbound),
        ] {
            let extra = minus(gs, ws);
            if !extra.is_empty() {
                out.push(finding(
                    FindingKind::ExtraPort,
                    Some(key),
                    format!("{dir} {extra} not allowed by policy"),
                ));
            }
            let missing = minus(ws, gs);
            if !missing.is_empty() {
                out.push(finding(
                    FindingKind::MissingPort,
                    Some(key),
                    format!("{dir} {missing} allowed by policy but absent"),
                ));
            }
        }
        let mut gi = g.allowed_ips.to_vec();
        let mut wi = w.allowed_ips.to_vec();
        gi.sort();
        wi.sort();
        if gi != wi {
            out.push(finding(
                FindingKind::WrongAllowedIps,
                Some(key),
                format!("allowed IPs {gi:?}, expected {wi:?}"),
            ));
        }
        out.extend(info_findings(g, w).map(|(kind, d)| finding(kind, Some(key), d)));
    }
    for key in want.keys().filter(|k| !got.contains_key(*k)) {
        out.push(finding(
            FindingKind::MissingPeer,
            Some(key),
            "peer allowed by policy but absent".to_string(),
        ));
    }
    out
}

fn minus(a: &PortSet, b: &PortSet) -> PortSet {
    let mut d = a.clone();
    d.subtract(b);
    d
}

/// Need-to-know checks of one peer entry's descriptive fields.
fn info_findings(g: &Peer, w: &Peer) -> impl Iterator<Item = (FindingKind, String)> {
    let fields = [
        ("name", g.name.is_some(), g.name != w.name),
        ("labels", g.labels.is_some(), g.labels != w.labels),
        (
            "endpoints",
            g.endpoints.is_some(),
            g.endpoints != w.endpoints,
        ),
    ];
    let needed = !w.outbound.is_empty();
    fields
        .into_iter()
        .filter_map(move |(field, present, differs)| {
            if present && !needed {
                Some((
                    FindingKind::NeedlessInfo,
                    format!("carries {field} but the node never contacts this peer"),
                ))
            } else if differs && needed {
                Some((
                    FindingKind::StaleInfo,
                    format!("{field} differs from the inventory"),
                ))
            } else {
                None
            }
        })
}
