//! Policy semantics, stated directly: which segments a set of labels belongs
//! to, and which ports one node may open to another.
//!
//! This is the reference the compiler's indexed version is tested against,
//! and what `explain` and `[[test]]` cases use.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Action, Policy, Rule, Segment, Selector, Targets};
use crate::identity::Labels;
use crate::ports::PortSet;

/// The result of a test or an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of the segments a node belongs to.
pub type Membership = BTreeSet<String>;

/// Every key of the selector is present with one of its values.
fn matches_all(sel: &Selector, labels: &Labels) -> bool {
    sel.iter()
        .all(|(k, vals)| labels.get(k).is_some_and(|v| vals.contains(v)))
}

/// At least one key of the selector is present with one of its values.
fn matches_any(sel: &Selector, labels: &Labels) -> bool {
    sel.iter()
        .any(|(k, vals)| labels.get(k).is_some_and(|v| vals.contains(v)))
}

impl Segment {
    /// Membership: every `match` key matches and no `exclude` pair does.
    pub fn contains(&self, labels: &Labels) -> bool {
        matches_all(&self.matches, labels) && !matches_any(&self.exclude, labels)
    }
}

impl Targets {
    /// True when a node with this membership is on this side of a rule.
    pub fn matches(&self, member_of: &Membership) -> bool {
        match self {
            Targets::Every => true,
            Targets::Segments(s) => s.iter().any(|n| member_of.contains(n)),
        }
    }
}

impl Rule {
    /// True when the rule applies to flows from `from` to `to`.
    pub fn applies(&self, from: &Membership, to: &Membership) -> bool {
        self.from.matches(from) && self.to.matches(to)
    }
}

impl Policy {
    /// The segments a node with these labels belongs to.
    pub fn membership(&self, labels: &Labels) -> Membership {
        self.segments
            .values()
            .filter(|s| s.contains(labels))
            .map(|s| s.name.clone())
            .collect()
    }

    /// The rules that apply to flows from `from` to `to`, in file order.
    pub fn rules_between<'a>(
        &'a self,
        from: &'a Membership,
        to: &'a Membership,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.applies(from, to))
    }

    /// What a node with membership `from` may open to a different node with
    /// membership `to`: the union of matching allows minus the union of
    /// matching denies.
    pub fn ports_between(&self, from: &Membership, to: &Membership) -> PortSet {
        let mut allow = PortSet::empty();
        let mut deny = PortSet::empty();
        for r in self.rules_between(from, to) {
            match r.action {
                Action::Allow => allow.union_with(&r.ports),
                Action::Deny => deny.union_with(&r.ports),
            }
        }
        allow.subtract(&deny);
        allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_and_ports() {
        let p = Policy::parse(
            "p.toml",
            r#"
[segments.web]
match = { role = "web", env = "prod" }
[segments.db]
match = { role = "db", env = ["prod", "staging"] }
exclude = { tier = "legacy" }

[[allow]]
from = "web"
to = "db"
ports = ["tcp/5432", "tcp/22"]

[[deny]]
from = "*"
to = "db"
ports = ["tcp/22"]
"#,
        )
        .unwrap();
        let web = p.membership(&labels(&[("role", "web"), ("env", "prod")]));
        assert_eq!(web, Membership::from(["web".to_string()]));
        assert!(p.membership(&labels(&[("role", "web")])).is_empty());
        let db = p.membership(&labels(&[("role", "db"), ("env", "staging")]));
        assert_eq!(db, Membership::from(["db".to_string()]));
        let legacy = labels(&[("role", "db"), ("env", "prod"), ("tier", "legacy")]);
        assert!(p.membership(&legacy).is_empty());
        assert_eq!(p.ports_between(&web, &db).to_string(), "tcp/5432");
        assert!(p.ports_between(&db, &web).is_empty());
        assert!(p.ports_between(&web, &web).is_empty());
    }
}
