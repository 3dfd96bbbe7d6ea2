//! Why a flow is allowed or denied: the verdict and the rules that decided
//! it, with their places in the policy file. Used by `segmeshctl policy
//! explain` (offline and live) and by `[[test]]` cases.

use serde::Serialize;

use crate::identity::{Labels, NodeName};
use crate::inventory::Inventory;
use crate::policy::{Action, Endpoint, Membership, Policy, Rule, TestCase, Verdict};
use crate::ports::{PortSet, PortSpec};

/// Why an endpoint could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown node `{0}`: not in the inventory")]
    UnknownNode(NodeName),
    #[error("node `{0}` can only be resolved with an inventory (--inventory)")]
    NeedsInventory(NodeName),
}

/// One rule that took part in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub action: Action,
    /// `FILE:LINE` of the rule.
    pub at: String,
    pub from: String,
    pub to: String,
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl RuleRef {
    fn new(policy: &Policy, r: &Rule) -> Self {
        RuleRef {
            action: r.action,
            at: policy.at(r.loc),
            from: r.from.to_string(),
            to: r.to.to_string(),
            ports: r.specs.iter().map(ToString::to_string).collect(),
            description: r.description.clone(),
        }
    }
}

/// The answer to "may FROM open PORT on TO?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    /// The rules that decided: the matching denies when one blocks the
    /// flow, else the matching allows; empty for the default deny.
    pub rules: Vec<RuleRef>,
    /// One sentence saying why.
    pub reason: String,
    pub from: String,
    pub to: String,
    pub port: String,
    pub from_segments: Membership,
    pub to_segments: Membership,
    /// Everything FROM may open on TO.
    pub allowed: PortSet,
}

fn resolve(inventory: Option<&Inventory>, e: &Endpoint) -> Result<Labels, ExplainError> {
    match e {
        Endpoint::Labels(l) => Ok(l.clone()),
        Endpoint::Node(n) => match inventory {
            None => Err(ExplainError::NeedsInventory(n.clone())),
            Some(inv) => inv
                .node(n.as_str())
                .map(|node| node.labels.clone())
                .ok_or_else(|| ExplainError::UnknownNode(n.clone())),
        },
    }
}

/// Decides one flow and says why.
pub fn explain(
    inventory: Option<&Inventory>,
    policy: &Policy,
    from: &Endpoint,
    to: &Endpoint,
    port: &PortSpec,
) -> Result<Explanation, ExplainError> {
    let from_segments = policy.membership(&resolve(inventory, from)?);
    let to_segments = policy.membership(&resolve(inventory, to)?);
    let probe = PortSet::from_specs([port]);
    let same_node = matches!((from, to), (Endpoint::Node(a), Endpoint::Node(b)) if a == b);
    let allowed = if same_node {
        PortSet::empty()
    } else {
        policy.ports_between(&from_segments, &to_segments)
    };
    let touches = |r: &&Rule| {
        let mut overlap = probe.clone();
        overlap.subtract(&r.ports);
        overlap != probe
    };
    let matching: Vec<&Rule> = policy
        .rules_between(&from_segments, &to_segments)
        .filter(touches)
        .collect();
    let denies: Vec<&Rule> = matching
        .iter()
        .copied()
        .filter(|r| r.action == Action::Deny)
        .collect();
    let allows: Vec<&Rule> = matching
        .iter()
        .copied()
        .filter(|r| r.action == Action::Allow)
        .collect();
    let verdict = if !same_node && probe.is_subset(&allowed) {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    let (rules, reason) = if same_node {
        (
            Vec::new(),
            "a node does not reach itself through the mesh".to_string(),
        )
    } else if verdict == Verdict::Allow {
        let reason = format!("allowed by {} rule(s)", allows.len());
        (allows, reason)
    } else if !denies.is_empty() {
        (
            denies,
            "denied by a deny rule (deny beats allow)".to_string(),
        )
    } else if !allows.is_empty() {
        (
            allows,
            "allow rules match only part of the requested ports".to_string(),
        )
    } else {
        (
            Vec::new(),
            "no allow rule matches (default deny)".to_string(),
        )
    };
    Ok(Explanation {
        verdict,
        rules: rules.into_iter().map(|r| RuleRef::new(policy, r)).collect(),
        reason,
        from: from.to_string(),
        to: to.to_string(),
        port: port.to_string(),
        from_segments,
        to_segments,
        allowed,
    })
}

/// The result of one `[[test]]` case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestOutcome {
    /// How the case is named in reports.
    pub test: String,
    pub expect: Verdict,
    /// The verdict, when the case could be evaluated.
    pub got: Option<Verdict>,
    /// Why the case could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub passed: bool,
    /// The deciding rules (`FILE:LINE`).
    pub rules: Vec<String>,
}

/// Runs every `[[test]]` case of the policy.
pub fn run_tests(policy: &Policy, inventory: Option<&Inventory>) -> Vec<TestOutcome> {
    policy
        .tests
        .iter()
        .map(|t| run_test(policy, inventory, t))
        .collect()
}

fn run_test(policy: &Policy, inventory: Option<&Inventory>, t: &TestCase) -> TestOutcome {
    let test = t.label(&policy.path);
    match explain(inventory, policy, &t.from, &t.to, &t.port) {
        Ok(e) => TestOutcome {
            test,
            expect: t.expect,
            passed: e.verdict == t.expect,
            got: Some(e.verdict),
            error: None,
            rules: e.rules.into_iter().map(|r| r.at).collect(),
        },
        Err(err) => TestOutcome {
            test,
            expect: t.expect,
            got: None,
            error: Some(err.to_string()),
            passed: false,
            rules: Vec::new(),
        },
    }
}
