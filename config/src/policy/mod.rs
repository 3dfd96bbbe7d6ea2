//! The policy language: segments (label selectors), `[[allow]]` and `[[deny]]`
//! rules over them, and `[[test]]` cases. Default deny.
//!
//! Parsing walks the TOML document with spans ([`toml::de::DeTable`]) instead
//! of deriving `Deserialize`, so that every problem in a file (unknown keys,
//! unknown segments, bad ports, ...) is reported at once, each as
//! `FILE:LINE:COL: message`, rather than only the first one serde meets.
//! The reference is docs/policy.md.

mod cases;
mod eval;
mod parse;
mod segments;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::identity::{Labels, NodeName};
use crate::inventory::Inventory;
use crate::ports::{PortSet, PortSpec};

pub use eval::{Membership, Verdict};

/// The name a rule uses for "every node".
pub const EVERY: &str = "*";

/// A parsed, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file the policy came from; every [`Loc`] refers to it.
    pub path: String,
    /// Segments by name.
    pub segments: BTreeMap<String, Segment>,
    /// Allow and deny rules in file order (the order has no effect on the
    /// result: deny beats allow).
    pub rules: Vec<Rule>,
    /// `[[test]]` cases in file order.
    pub tests: Vec<TestCase>,
}

/// A place in the policy file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// A named set of nodes, chosen by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// Every key must match one of its values.
    pub matches: Selector,
    /// A node carrying any one of these pairs is not a member.
    pub exclude: Selector,
    pub loc: Loc,
}

/// Label key -> accepted values (a list in the file means "any of").
pub type Selector = BTreeMap<String, Vec<String>>;

/// Whether a rule opens or closes paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    /// The table name used in the file (`allow` / `deny`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// The `from` or `to` side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Targets {
    /// `"*"`: every node, including nodes in no segment.
    #[serde(serialize_with = "ser_every")]
    Every,
    /// One or more segment names (a node in any of them matches).
    Segments(Vec<String>),
}

fn ser_every<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(EVERY)
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Targets::Every => f.write_str(EVERY),
            Targets::Segments(s) => f.write_str(&s.join(",")),
        }
    }
}

/// One `[[allow]]` or `[[deny]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub from: Targets,
    pub to: Targets,
    /// The ports as written (for display).
    pub specs: Vec<PortSpec>,
    /// The same, as a canonical set (for computation).
    pub ports: PortSet,
    /// Optional free text shown by `explain`.
    pub description: Option<String>,
    pub loc: Loc,
}

/// One side of a `[[test]]` case: an inventory node, or a hypothetical node
/// with these labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Node(NodeName),
    Labels(Labels),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(n) => write!(f, "{n}"),
            Endpoint::Labels(l) => {
                let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{{{}}}", parts.join(","))
            }
        }
    }
}

impl Endpoint {
    /// Parses the CLI form: `key=value,...` is a set of labels, anything
    /// else a node name.
    pub fn parse_cli(s: &str) -> Result<Self, crate::identity::IdentityError> {
        if s.contains('=') {
            crate::identity::parse_labels(s).map(Endpoint::Labels)
        } else {
            NodeName::new(s).map(Endpoint::Node)
        }
    }
}

/// One `[[test]]` case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub name: Option<String>,
    pub from: Endpoint,
    pub to: Endpoint,
    pub port: PortSpec,
    pub expect: Verdict,
    pub loc: Loc,
}

impl TestCase {
    /// How a report names this case: its `name`, or where it is.
    pub fn label(&self, path: &str) -> String {
        match &self.name {
            Some(n) => format!("{n:?} ({path}:{}:{})", self.loc.line, self.loc.col),
            None => format!(
                "{} -> {} {} ({path}:{}:{})",
                self.from, self.to, self.port, self.loc.line, self.loc.col
            ),
        }
    }
}

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyError {
    pub path: String,
    pub loc: Loc,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.loc.line, self.loc.col, self.message
        )
    }
}

/// Every problem found in a policy file, sorted by position; displayed one
/// per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// Parses and validates a policy; `path` is used in messages and locations.
    pub fn parse(path: &str, text: &str) -> Result<Policy, PolicyErrors> {
        parse::parse(path, text, None)
    }

    /// Like [`Policy::parse`], and also checks that every test names nodes
    /// that exist in `inventory`.
    pub fn parse_with_inventory(
        path: &str,
        text: &str,
        inventory: &Inventory,
    ) -> Result<Policy, PolicyErrors> {
        parse::parse(path, text, Some(inventory))
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        let name = path.display().to_string();
        let text = read_file(path, &name)?;
        Self::parse(&name, &text)
    }

    /// Reads and parses a policy file, checking test nodes against `inventory`.
    pub fn load_with_inventory(path: &Path, inventory: &Inventory) -> Result<Policy, PolicyErrors> {
        let name = path.display().to_string();
        let text = read_file(path, &name)?;
        Self::parse_with_inventory(&name, &text, inventory)
    }

    /// An empty policy (everything denied).
    pub fn empty(path: &str) -> Policy {
        Policy {
            path: path.to_string(),
            segments: BTreeMap::new(),
            rules: Vec::new(),
            tests: Vec::new(),
        }
    }

    /// `FILE:LINE` of a location, the form reports use.
    pub fn at(&self, loc: Loc) -> String {
        format!("{}:{}", self.path, loc.line)
    }
}

fn read_file(path: &Path, name: &str) -> Result<String, PolicyErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            path: name.to_string(),
            loc: Loc { line: 1, col: 1 },
            message: format!("cannot read the policy file: {e}"),
        }])
    })
}
