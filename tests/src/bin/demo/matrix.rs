//! The connectivity matrix: every node tries every service over the mesh
//! with real TCP connections, and each result is compared with what the
//! coordinator's live policy says about that flow (`segmeshctl policy
//! explain`), so the demo fails when the mesh and the policy disagree.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use segmesh_e2e::coord::Coordinator;
use segmesh_e2e::probe;
use serde_json::Value;

/// A TCP service one node offers on its overlay address.
#[derive(Debug, Clone)]
pub struct Service {
    pub node: String,
    pub port: u16,
    pub addr: IpAddr,
}

/// What the policy says about one flow, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// The deciding rule (`FILE:LINE "description"`) or the reason.
    pub why: String,
}

/// One measured flow.
#[derive(Debug, Clone)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub policy: Verdict,
    pub open: bool,
}

impl Cell {
    /// Whether the connection attempt agreed with the policy.
    pub fn matches(&self) -> bool {
        self.open == self.policy.allow
    }

    fn result(&self) -> &'static str {
        if self.open { "open" } else { "blocked" }
    }
}

/// Asks the live coordinator about `from -> to` on `tcp/port`. A revoked
/// node is no longer in the inventory: nothing may reach it or leave it.
pub fn policy_verdict(
    coord: &Coordinator,
    revoked: &BTreeSet<String>,
    from: &str,
    to: &str,
    port: u16,
) -> Verdict {
    if let Some(r) = [from, to].into_iter().find(|n| revoked.contains(*n)) {
        return Verdict {
            allow: false,
            why: format!("{r} is revoked"),
        };
    }
    let out = coord.ctl_ok(&[
        "policy",
        "explain",
        "--from",
        from,
        "--to",
        to,
        "--port",
        &format!("tcp/{port}"),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("policy explain --json");
    let allow = v["verdict"] == "allow";
    let why = match v["rules"].as_array().and_then(|r| r.first()) {
        Some(rule) => {
            let at = rule["at"].as_str().unwrap_or("?");
            let at = at.rsplit('/').next().unwrap_or(at);
            match rule["description"].as_str() {
                Some(d) => format!("{at} \"{d}\""),
                None => at.to_string(),
            }
        }
        None => v["reason"].as_str().unwrap_or("").to_string(),
    };
    Verdict { allow, why }
}

/// Tries one connection (up to three attempts of a second each: the first
/// packet of a flow may wait for a WireGuard handshake).
pub fn try_connect(ns: &str, to: SocketAddr) -> bool {
    (0..3).any(|_| probe::connect(ns, to, Duration::from_secs(1)).ok)
}

/// Measures every (source node, service) pair except a node's own service,
/// in parallel. `ns_of` gives a node's namespace.
pub fn measure(
    coord: &Coordinator,
    revoked: &BTreeSet<String>,
    sources: &[(String, String)],
    services: &[Service],
) -> Vec<Cell> {
    let pairs: Vec<(&(String, String), &Service)> = sources
        .iter()
        .flat_map(|src| services.iter().map(move |s| (src, s)))
        .filter(|((from, _), s)| *from != s.node)
        .collect();
    let opens: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|((_, ns), s)| {
                scope.spawn(move || try_connect(ns, SocketAddr::new(s.addr, s.port)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    pairs
        .iter()
        .zip(opens)
        .map(|(((from, _), s), open)| Cell {
            from: from.clone(),
            to: s.node.clone(),
            port: s.port,
            policy: policy_verdict(coord, revoked, from, &s.node, s.port),
            open,
        })
        .collect()
}

fn row(c: &Cell, result: &str) -> String {
    let verdict = if c.policy.allow { "allow" } else { "deny" };
    let flag = if c.matches() { "" } else { "   <-- MISMATCH" };
    format!(
        "  {:<9} -> {:<9} tcp/{:<5} {result:<8} {verdict:<6}{}{flag}",
        c.from, c.to, c.port, c.policy.why
    )
}

/// The whole matrix as lines of text.
pub fn render(cells: &[Cell]) -> Vec<String> {
    let mut out = vec![format!(
        "  {:<9}    {:<9} {:<9} {:<8} {}",
        "FROM", "TO", "PORT", "RESULT", "POLICY (the rule that decided)"
    )];
    out.extend(cells.iter().map(|c| row(c, c.result())));
    out
}

/// Only the cells whose result changed since `before`, as `was -> now`.
pub fn render_changes(before: &[Cell], after: &[Cell]) -> Vec<String> {
    after
        .iter()
        .filter_map(|c| {
            let old = before
                .iter()
                .find(|b| b.from == c.from && b.to == c.to && b.port == c.port)?;
            (old.open != c.open).then(|| row(c, &format!("{} -> {}", old.result(), c.result())))
        })
        .collect()
}
