//! `netmap`, `diff`, `audit` and `graph`: commands that compile a policy
//! against an inventory and read or write files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use segmesh_config::audit::{Finding, FindingKind, audit_all};
use segmesh_config::compile::Compiler;
use segmesh_config::diff::diff_paths;
use segmesh_config::graph::{Graph, to_svg};
use segmesh_config::{NetMap, NodeName, PublicKey};

use super::GraphFormat;
use super::inspect::{load_inventory, load_policy};
use crate::ctl::output::{print_json, table};

/// Loads policy and inventory and builds a compiler, or reports the
/// policy's errors.
fn compiler(file: &Path, inventory: &Path) -> anyhow::Result<Result<Compiler, ExitCode>> {
    let inv = load_inventory(inventory)?;
    Ok(load_policy(file, Some(&inv)).map(|p| Compiler::new(&inv, &p)))
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() || s == "(none)" {
        "-".to_string()
    } else {
        s
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human form of a netmap: the node, then one row per peer.
fn render_netmap(m: &NetMap) -> String {
    let mut s = format!(
        "netmap of {} (format {}, version {})\n  key        {}\n  addresses  {}\n  overlay    {}\n\n",
        m.node.name,
        m.format,
        m.version,
        m.node.public_key,
        join(&m.node.addresses),
        join(&m.overlay)
    );
    let rows: Vec<Vec<String>> = m
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name
                    .as_ref()
                    .map_or_else(|| "(key only)".to_string(), ToString::to_string),
                p.public_key.to_string(),
                join(&p.allowed_ips),
                dash_if_empty(p.outbound.to_string()),
                dash_if_empty(p.inbound.to_string()),
                dash_if_empty(p.endpoints.as_deref().map(join).unwrap_or_default()),
            ]
        })
        .collect();
    if rows.is_empty() {
        s.push_str("no peers: the policy connects this node to nothing\n");
    } else {
        s.push_str(&table(
            &[
                "PEER",
                "KEY",
                "ALLOWED IPS",
                "OUTBOUND",
                "INBOUND",
                "ENDPOINTS",
            ],
            &rows,
        ));
    }
    s
}

pub(super) fn netmap(
    file: &Path,
    inventory: &Path,
    node: Option<&str>,
    out_dir: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let c = match compiler(file, inventory)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let maps = c.netmaps();
        for (name, m) in &maps {
            let path = dir.join(format!("{name}.json"));
            std::fs::write(&path, m.to_json_pretty())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("wrote {} netmaps to {}", maps.len(), dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let name = node.context("--node or --out-dir is required")?;
    let name = NodeName::new(name)?;
    let Some(m) = c.netmap(&name) else {
        anyhow::bail!(
            "node {name} is not in the inventory {}",
            inventory.display()
        );
    };
    if json {
        print!("{}", m.to_json_pretty());
    } else {
        print!("{}", render_netmap(&m));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn diff(
    old: &Path,
    new: &Path,
    inventory: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let inv = load_inventory(inventory)?;
    let (old_p, new_p) = match (load_policy(old, Some(&inv)), load_policy(new, Some(&inv))) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Ok(ExitCode::from(1)),
    };
    let d = diff_paths(
        &Compiler::new(&inv, &old_p).paths(),
        &Compiler::new(&inv, &new_p).paths(),
    );
    if json {
        print_json(&d)?;
    } else if d.is_empty() {
        println!("no changes: both policies allow the same paths");
    } else {
        for a in &d.added {
            println!("+ {a}");
        }
        for r in &d.removed {
            println!("- {r}");
        }
        println!("{} added, {} removed", d.added.len(), d.removed.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads every `*.json` netmap in `dir`, keyed by the node it names.
/// Unreadable files become findings rather than errors, so one bad file
/// does not hide the rest of the audit.
fn read_netmaps(dir: &Path) -> anyhow::Result<(BTreeMap<NodeName, NetMap>, Vec<Finding>)> {
    let mut maps = BTreeMap::new();
    let mut findings = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let node = path.display().to_string();
        match serde_json::from_slice::<NetMap>(&text) {
            Ok(m) => {
                if let Some(prev) = maps.insert(m.node.name.clone(), m) {
                    findings.push(Finding {
                        node,
                        kind: FindingKind::Invalid,
                        peer: None,
                        detail: format!("a second netmap for {}", prev.node.name),
                    });
                }
            }
            Err(e) => findings.push(Finding {
                node,
                kind: FindingKind::Invalid,
                peer: None,
                detail: format!("not a netmap: {e}"),
            }),
        }
    }
    Ok((maps, findings))
}

pub(super) fn audit(
    file: &Path,
    inventory: &Path,
    dir: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let c = match compiler(file, inventory)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let expected = c.netmaps();
    let names: BTreeMap<PublicKey, NodeName> = c
        .inventory()
        .nodes
        .into_iter()
        .map(|n| (n.public_key, n.name))
        .collect();
    let (actual, mut findings) = read_netmaps(dir)?;
    findings.extend(audit_all(&expected, &actual, &names));
    if json {
        print_json(&findings)?;
    } else if findings.is_empty() {
        println!(
            "audit clean: {} netmaps hold exactly what {} allows",
            actual.len(),
            file.display()
        );
    } else {
        for f in &findings {
            println!("{f}");
        }
        println!("{} findings", findings.len());
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn graph(
    file: &Path,
    inventory: Option<&Path>,
    format: GraphFormat,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let inv = inventory.map(load_inventory).transpose()?;
    let policy = match load_policy(file, inv.as_ref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let c = inv.as_ref().map(|i| Compiler::new(i, &policy));
    let g = Graph::new(&policy, c.as_ref());
    let text = match format {
        GraphFormat::Dot => g.to_dot(),
        GraphFormat::Svg => to_svg(&g, &format!("segmesh policy {}", file.display())),
        GraphFormat::Json => {
            let mut s = serde_json::to_string_pretty(&g)?;
            s.push('\n');
            s
        }
    };
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
