//! Paths added and removed between two compiled states (two policies, or a
//! policy before and after an inventory change): what `policy diff` and
//! `policy apply` show before anything changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::identity::NodeName;
use crate::ports::PortSet;

/// What the first node may open to the second.
pub type Paths = BTreeMap<(NodeName, NodeName), PortSet>;

/// One directed path and the ports that appeared or disappeared on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathChange {
    pub from: NodeName,
    pub to: NodeName,
    pub ports: PortSet,
}

impl std::fmt::Display for PathChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.from, self.to, self.ports)
    }
}

/// Ports newly allowed and no longer allowed, per directed node pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PathDiff {
    pub added: Vec<PathChange>,
    pub removed: Vec<PathChange>,
}

impl PathDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Compares two path tables.
pub fn diff_paths(old: &Paths, new: &Paths) -> PathDiff {
    let empty = PortSet::empty();
    let pairs: BTreeSet<&(NodeName, NodeName)> = old.keys().chain(new.keys()).collect();
    let mut diff = PathDiff::default();
    for pair in pairs {
        let o = old.get(pair).unwrap_or(&empty);
        let n = new.get(pair).unwrap_or(&empty);
        if o == n {
            continue;
        }
        for (a, b, list) in [(n, o, &mut diff.added), (o, n, &mut diff.removed)] {
            let mut d = a.clone();
            d.subtract(b);
            if !d.is_empty() {
                list.push(PathChange {
                    from: pair.0.clone(),
                    to: pair.1.clone(),
                    ports: d,
                });
            }
        }
    }
    diff
}
