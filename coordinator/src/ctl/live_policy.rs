//! The live forms of `segmeshctl policy apply|explain|audit`: against the
//! coordinator's inventory and policy instead of local files.

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

use super::live::{ConnArgs, Live, block_on};
use super::output::{print_json, table};
use crate::api::admin::{APPLY_DIFF_LIMIT, ApplyReport, AuditReport};

/// Sends a policy file; the coordinator runs its tests first.
pub fn apply(conn: &ConnArgs, file: &Path, dry_run: bool, json: bool) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let live = Live::connect(conn)?;
    let body = json!({ "text": text, "path": file.display().to_string(), "dry_run": dry_run });
    let r: ApplyReport =
        block_on(async move { live.call("POST", "/v1/admin/policy", Some(&body)).await })??;
    if json {
        print_json(&r)?;
        return Ok(true);
    }
    println!(
        "{} test(s) passed against the live inventory",
        r.tests.len()
    );
    if r.diff.is_empty() {
        println!("no netmap changes");
    }
    for (node, d) in &r.diff {
        let mut parts = Vec::new();
        if !d.added.is_empty() {
            parts.push(format!("+{}", d.added.join(" +")));
        }
        if !d.removed.is_empty() {
            parts.push(format!("-{}", d.removed.join(" -")));
        }
        if !d.changed.is_empty() {
            parts.push(format!("~{}", d.changed.join(" ~")));
        }
        println!("  {node}: {}", parts.join(" "));
    }
    if r.applied && r.pushed > r.diff.len() {
        println!(
            "  ... {} more node(s) changed (an apply lists {APPLY_DIFF_LIMIT}; --dry-run lists all)",
            r.pushed - r.diff.len()
        );
    }
    match r.version {
        Some(v) if r.applied => println!(
            "applied as policy version {v}; pushed to {} node(s)",
            r.pushed
        ),
        _ => println!("dry run: nothing applied"),
    }
    Ok(true)
}

/// Explains one flow with the live inventory and policy.
pub fn explain(
    conn: &ConnArgs,
    from: &str,
    to: &str,
    port: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let live = Live::connect(conn)?;
    let body = json!({ "from": from, "to": to, "port": port });
    let r: serde_json::Value =
        block_on(async move { live.call("POST", "/v1/admin/explain", Some(&body)).await })??;
    if json {
        print_json(&r)?;
    } else {
        println!(
            "{}: {}",
            r["verdict"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("")
        );
        for rule in r["rules"].as_array().into_iter().flatten() {
            let s = |k: &str| rule[k].as_str().unwrap_or("").to_string();
            let ports: Vec<&str> = rule["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            println!(
                "  {}: {} {} -> {} {}",
                s("at"),
                s("action"),
                s("from"),
                s("to"),
                ports.join(",")
            );
        }
    }
    Ok(r["verdict"] == "allow")
}

/// Compares every node's last acked netmap with the policy; false when not clean.
pub fn audit(conn: &ConnArgs, json: bool) -> anyhow::Result<bool> {
    let live = Live::connect(conn)?;
    let r: AuditReport = block_on(async move { live.call("GET", "/v1/admin/audit", None).await })??;
    if json {
        print_json(&r)?;
    } else {
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.node.to_string(),
                    n.status.clone(),
                    format!("{}/{}", n.acked_version, n.expected_version),
                ]
            })
            .collect();
        print!("{}", table(&["NODE", "STATUS", "ACKED/EXPECTED"], &rows));
        println!(
            "{}",
            if r.clean {
                "audit clean"
            } else {
                "audit found differences"
            }
        );
    }
    Ok(r.clean)
}
