//! `check`, `test` and `explain`: questions about one policy file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use segmesh_config::explain::{explain as explain_flow, run_tests};
use segmesh_config::policy::Endpoint;
use segmesh_config::{Inventory, Policy, PolicyErrors, PortSpec};
use serde::Serialize;

use crate::ctl::output::print_json;

/// Reads and checks an inventory file.
pub(super) fn load_inventory(path: &Path) -> anyhow::Result<Inventory> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading inventory {}", path.display()))?;
    Ok(Inventory::from_toml(&path.display().to_string(), &text)?)
}

fn parse_policy(path: &Path, inventory: Option<&Inventory>) -> Result<Policy, PolicyErrors> {
    match inventory {
        Some(inv) => Policy::load_with_inventory(path, inv),
        None => Policy::load(path),
    }
}

/// Loads a policy, or prints its errors (one per line, on stderr) and
/// returns the exit code to use.
pub(super) fn load_policy(path: &Path, inventory: Option<&Inventory>) -> Result<Policy, ExitCode> {
    parse_policy(path, inventory).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct CheckReport {
    file: String,
    ok: bool,
    errors: Vec<CheckError>,
    segments: usize,
    rules: usize,
    tests: usize,
}

#[derive(Serialize)]
struct CheckError {
    line: usize,
    col: usize,
    message: String,
}

pub(super) fn check(file: &Path, inventory: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let inv = inventory.map(load_inventory).transpose()?;
    let result = parse_policy(file, inv.as_ref());
    let mut report = CheckReport {
        file: file.display().to_string(),
        ok: result.is_ok(),
        errors: Vec::new(),
        segments: 0,
        rules: 0,
        tests: 0,
    };
    match &result {
        Ok(p) => {
            report.segments = p.segments.len();
            report.rules = p.rules.len();
            report.tests = p.tests.len();
        }
        Err(errors) => {
            report.errors = errors
                .0
                .iter()
                .map(|e| CheckError {
                    line: e.loc.line,
                    col: e.loc.col,
                    message: e.message.clone(),
                })
                .collect();
        }
    }
    if json {
        print_json(&report)?;
    } else {
        match &result {
            Ok(_) => println!(
                "{}: ok ({} segments, {} rules, {} tests)",
                report.file, report.segments, report.rules, report.tests
            ),
            Err(errors) => eprintln!("{errors}"),
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn test(file: &Path, inventory: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let inv = inventory.map(load_inventory).transpose()?;
    let policy = match load_policy(file, inv.as_ref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let outcomes = run_tests(&policy, inv.as_ref());
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        print_json(&outcomes)?;
    } else {
        for o in &outcomes {
            if o.passed {
                println!("PASS {}", o.test);
                continue;
            }
            match (&o.got, &o.error) {
                (Some(got), _) => println!(
                    "FAIL {}: expected {}, got {}{}",
                    o.test,
                    o.expect,
                    got,
                    if o.rules.is_empty() {
                        " (no rule matched)".to_string()
                    } else {
                        format!(" (rules: {})", o.rules.join(", "))
                    }
                ),
                (None, Some(err)) => println!("FAIL {}: {err}", o.test),
                (None, None) => println!("FAIL {}", o.test),
            }
        }
        println!(
            "{} passed, {failed} failed, {} total",
            outcomes.len() - failed,
            outcomes.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn explain(
    file: &Path,
    inventory: Option<&Path>,
    from: &str,
    to: &str,
    port: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let from = Endpoint::parse_cli(from).context("--from")?;
    let to = Endpoint::parse_cli(to).context("--to")?;
    let port: PortSpec = port.parse().context("--port")?;
    let inv = inventory.map(load_inventory).transpose()?;
    let policy = match load_policy(file, inv.as_ref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let e = explain_flow(inv.as_ref(), &policy, &from, &to, &port)?;
    if json {
        print_json(&e)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: {} -> {} {}", e.verdict, e.from, e.to, e.port);
    println!("  {}", e.reason);
    let segs = |m: &std::collections::BTreeSet<String>| {
        if m.is_empty() {
            "(no segment)".to_string()
        } else {
            m.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    println!("  {} is in: {}", e.from, segs(&e.from_segments));
    println!("  {} is in: {}", e.to, segs(&e.to_segments));
    println!("  {} may open on {}: {}", e.from, e.to, e.allowed);
    for r in &e.rules {
        let desc = r
            .description
            .as_ref()
            .map(|d| format!("  # {d}"))
            .unwrap_or_default();
        println!(
            "  {:<5} {}  from {} to {} ports [{}]{desc}",
            r.action.as_str(),
            r.at,
            r.from,
            r.to,
            r.ports.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
