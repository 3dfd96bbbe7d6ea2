//! `segmesh-demo`: a live segmesh mesh on this machine. A coordinator on
//! SQLite and four nodes (web, api, db and an intruder in no segment), each
//! in its own network namespace, enrolled with join tokens; the three-tier
//! example policy is applied, every node tries every service over the mesh,
//! and each result is checked against the rule `policy explain` names.
//! Then a policy change and a revocation, timed. Exits 1 when any measured
//! flow disagrees with the policy. Run it through `sudo ./scripts/demo`,
//! which builds the workspace first.

mod interrupt;
mod matrix;

use std::collections::BTreeSet;
use std::io::{BufRead as _, IsTerminal as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use segmesh_config::{Inventory, InventoryNode};
use segmesh_e2e::coord::{Coordinator, Member, all_synced, v4};
use segmesh_e2e::{Lab, Proc, probe, wait_until};
use serde_json::Value;

use matrix::{Cell, Service};

/// A live segmesh mesh in network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(name = "segmesh-demo")]
struct Args {
    /// Run straight through and tear down at the end, without waiting for
    /// Enter (the default when stdin is not a terminal).
    #[arg(long)]
    non_interactive: bool,
    /// The policy to apply.
    #[arg(long, default_value = "examples/three-tier/policy.toml")]
    policy: PathBuf,
    /// Where to write the SVG graph and the policies that were applied.
    #[arg(long, default_value = "target/demo")]
    out: PathBuf,
}

/// The nodes: name, labels of their join token, and the service they run.
const NODES: [(&str, &str, Option<u16>); 4] = [
    ("web-1", "role=web,env=prod", Some(8080)),
    ("api-1", "role=api,env=prod", Some(8080)),
    ("db-1", "role=db,env=prod", Some(5432)),
    ("intruder", "role=laptop", None),
];

/// The policy change: a rule appended to the applied policy.
const CHANGE: &str = r#"
[[allow]]
description = "demo change: the API may call back into web"
from = "api"
to = "web"
ports = ["tcp/8080"]
"#;

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "segmesh-demo needs root (network namespaces, TUN devices): run `sudo ./scripts/demo`"
        );
        return ExitCode::from(1);
    }
    if let Err(e) = interrupt::install() {
        eprintln!("segmesh-demo: cannot install signal handling: {e}");
        return ExitCode::from(1);
    }
    // The harness reports problems by panicking; say it once, plainly.
    std::panic::set_hook(Box::new(|info| {
        if !interrupt::INTERRUPTED.load(Ordering::SeqCst) {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            eprintln!("\nsegmesh-demo failed: {msg}");
        }
    }));
    let interactive = !args.non_interactive && std::io::stdin().is_terminal();
    let Ok(lab) = std::panic::catch_unwind(|| Arc::new(Lab::new("demo"))) else {
        return ExitCode::from(1);
    };
    interrupt::guard(&lab);
    let result = std::panic::catch_unwind(|| demo(&args, &lab, interactive));
    if interrupt::INTERRUPTED.load(Ordering::SeqCst) {
        // The signal thread is tearing the lab down and ends the process.
        loop {
            std::thread::park();
        }
    }
    // Explicitly, while the Arc is still held: a signal arriving now finds
    // the lab and waits for this teardown instead of exiting halfway.
    lab.teardown();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) | Err(_) => ExitCode::from(1),
    }
}

/// Prints a step heading: `[n/6] what  detail`.
fn step(n: u32, what: &str, detail: &str) {
    println!("\n[{n}/6] {what:<14}{detail}");
}

#[allow(clippy::disallowed_methods)] // the demo measures real time
fn demo(args: &Args, lab: &Lab, interactive: bool) -> bool {
    std::fs::create_dir_all(&args.out).expect("create the output directory");
    let policy_text = std::fs::read_to_string(&args.policy)
        .unwrap_or_else(|e| panic!("reading {}: {e}", args.policy.display()));
    println!(
        "segmesh live demo: a coordinator and {} nodes, each in its own network namespace",
        NODES.len()
    );
    let coord = Coordinator::configure(lab, lab.host("coord"));
    let _coord_proc = coord.start(lab, 1);
    step(
        1,
        "coordinator",
        &format!(
            "{} in namespace {}, SQLite {}",
            coord.url,
            coord.host.ns,
            coord.data.join("state.db").display()
        ),
    );

    let mut members = Vec::new();
    for (i, (name, labels, _)) in NODES.iter().enumerate() {
        let token = coord.token(labels, name, 1);
        let iface = lab.iface(&format!("n{i}"));
        let mut m = Member::join(lab, lab.host(name), &token, &iface).unwrap_or_else(|out| {
            panic!(
                "{name} could not join: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        m.start(lab);
        members.push(m);
    }
    wait_until(Duration::from_secs(15), "all nodes connected", || {
        all_synced(&coord.nodes()).then_some(())
    });
    let nodes = coord.nodes();
    let listing: Vec<String> = NODES
        .iter()
        .map(|(n, l, _)| format!("{n} {} ({l})", v4(&nodes, n)))
        .collect();
    step(2, "nodes joined", "one single-use join token each");
    for l in listing {
        println!("      {l}");
    }

    let policy_v1 = args.out.join("policy.toml");
    std::fs::write(&policy_v1, &policy_text).expect("write the policy copy");
    let applied = coord.ctl_ok(&["policy", "apply", &policy_v1.display().to_string()]);
    step(3, "policy", &args.policy.display().to_string());
    for l in applied.lines().filter(|l| !l.starts_with("  ")) {
        println!("      {l}");
    }
    wait_until(
        Duration::from_secs(10),
        "all nodes acked the policy",
        || all_synced(&coord.nodes()).then_some(()),
    );
    let services: Vec<Service> = NODES
        .iter()
        .filter_map(|(n, _, port)| {
            port.map(|port| Service {
                node: n.to_string(),
                port,
                addr: v4(&nodes, n),
            })
        })
        .collect();
    let _listeners: Vec<Proc> = services
        .iter()
        .map(|s| {
            let host = &members[NODES.iter().position(|n| n.0 == s.node).unwrap_or(0)].host;
            probe::listen(lab, host, SocketAddr::new(s.addr, s.port))
        })
        .collect();
    let svc: Vec<String> = services
        .iter()
        .map(|s| format!("{} tcp/{}", s.node, s.port))
        .collect();
    println!("      services: {} (TCP echo servers)", svc.join(", "));
    println!("      netmaps:  {}", peer_counts(&members).join(", "));

    let sources: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.host.name.clone(), m.host.ns.clone()))
        .collect();
    let mut revoked = BTreeSet::new();
    step(
        4,
        "connectivity",
        "every node tries every service with a real TCP connection",
    );
    let round1 = matrix::measure(&coord, &revoked, &sources, &services);
    for l in matrix::render(&round1) {
        println!("{l}");
    }
    let svg = args.out.join("segments.svg");
    write_graph(&coord, lab, &policy_v1, &svg);
    println!("      segment graph: {}", svg.display());

    // A policy change: one rule more; timed until the new flow opens.
    let policy_v2 = args.out.join("policy-v2.toml");
    std::fs::write(&policy_v2, format!("{policy_text}{CHANGE}")).expect("write policy v2");
    step(
        5,
        "policy change",
        &format!("{} adds: allow api -> web tcp/8080", policy_v2.display()),
    );
    let (web, api) = (&members[0], &members[1]);
    let web_svc = SocketAddr::new(v4(&nodes, "web-1"), 8080);
    let t0 = Instant::now();
    let applied = coord.ctl_ok(&["policy", "apply", &policy_v2.display().to_string()]);
    let apply_ms = t0.elapsed().as_millis();
    let opened = time_until(t0, || {
        probe::connect(&api.host.ns, web_svc, Duration::from_millis(500)).ok
    });
    let acked = time_until(t0, || all_synced(&coord.nodes()));
    for l in applied.lines().filter(|l| l.starts_with("applied")) {
        println!("      {l} ({apply_ms} ms)");
    }
    println!(
        "      api-1 -> web-1 tcp/8080 open {} after the apply started; every node acked within {}",
        ms(opened),
        ms(acked)
    );
    let round2 = matrix::measure(&coord, &revoked, &sources, &services);
    print_changes(&round1, &round2);

    // A revocation: api-1 leaves every netmap; timed until web-1 loses it.
    step(6, "revocation", "segmeshctl nodes revoke api-1");
    let api_svc = SocketAddr::new(v4(&nodes, "api-1"), 8080);
    let t0 = Instant::now();
    let out = coord.ctl_ok(&["nodes", "revoke", "api-1"]);
    let cut = time_until_blocked(t0, &web.host.ns, api_svc);
    println!("      {}", out.trim());
    println!(
        "      web-1 -> api-1 tcp/8080 blocked {} after the revoke started",
        ms(cut)
    );
    revoked.insert("api-1".to_string());
    let round3 = matrix::measure(&coord, &revoked, &sources, &services);
    print_changes(&round2, &round3);

    let all: Vec<&Cell> = round1.iter().chain(&round2).chain(&round3).collect();
    let bad: Vec<&&Cell> = all.iter().filter(|c| !c.matches()).collect();
    let ok = bad.is_empty() && opened.is_some() && cut.is_some();
    if ok {
        println!(
            "\nresult: all {} measured flows (3 rounds) matched the policy",
            all.len()
        );
    } else {
        println!(
            "\nresult: FAILED: {} of {} measured flows disagree with the policy{}",
            bad.len(),
            all.len(),
            if opened.is_none() || cut.is_none() {
                "; a change did not take effect within 10 s"
            } else {
                ""
            }
        );
        for c in bad {
            println!(
                "  {} -> {} tcp/{}: policy says {}, connection {}",
                c.from,
                c.to,
                c.port,
                if c.policy.allow { "allow" } else { "deny" },
                if c.open { "opened" } else { "failed" }
            );
        }
    }
    if interactive {
        pause(&coord, &members);
    }
    println!("stopping the mesh and removing its namespaces");
    ok
}

/// Peers in each node's applied netmap (`segmesh-node status`).
fn peer_counts(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .map(|m| {
            let out = segmesh_e2e::run(
                segmesh_e2e::bin_path("segmesh-node")
                    .to_str()
                    .expect("utf-8"),
                &[
                    "status",
                    "--json",
                    "--socket",
                    m.socket.to_str().expect("utf-8"),
                ],
            );
            let st: Value = serde_json::from_slice(&out.stdout).expect("status --json");
            let n = st["peers"].as_array().map_or(0, Vec::len);
            format!("{} {n} peer{}", m.host.name, if n == 1 { "" } else { "s" })
        })
        .collect()
}

/// Writes the segment graph with the live nodes as members.
fn write_graph(coord: &Coordinator, lab: &Lab, policy: &Path, svg: &Path) {
    let nodes = coord
        .nodes()
        .iter()
        .filter(|n| n["revoked"] == false)
        .map(|n| {
            serde_json::from_value::<InventoryNode>(serde_json::json!({
                "name": n["name"],
                "labels": n["labels"],
                "public_key": n["public_key"],
                "addresses": [n["addr_v4"], n["addr_v6"]],
            }))
            .expect("a listed node is an inventory node")
        })
        .collect();
    let inventory = Inventory {
        nodes,
        ..Inventory::default()
    };
    let inv_path = lab.path("inventory.toml");
    std::fs::write(
        &inv_path,
        toml::to_string(&inventory).expect("inventory as TOML"),
    )
    .expect("write inventory");
    coord.ctl_ok(&[
        "policy",
        "graph",
        &policy.display().to_string(),
        "--inventory",
        &inv_path.display().to_string(),
        "-o",
        &svg.display().to_string(),
    ]);
}

/// Polls `cond` every 20 ms for up to 10 s; the time from `t0` until it held.
#[allow(clippy::disallowed_methods)] // the demo measures real time
fn time_until(t0: Instant, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    while t0.elapsed() < Duration::from_secs(10) {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Like [`time_until`] for a flow being cut: the time from `t0` to the start
/// of the first attempt that failed (a failing attempt lasts its whole
/// timeout, which says nothing about when the flow was cut).
#[allow(clippy::disallowed_methods)] // the demo measures real time
fn time_until_blocked(t0: Instant, ns: &str, to: SocketAddr) -> Option<Duration> {
    while t0.elapsed() < Duration::from_secs(10) {
        let started = t0.elapsed();
        if !probe::connect(ns, to, Duration::from_millis(300)).ok {
            return Some(started);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("not within 10 s".into(), |d| {
        format!("{} ms", d.as_millis())
    })
}

fn print_changes(before: &[Cell], after: &[Cell]) {
    let changed = matrix::render_changes(before, after);
    let same = after.len() - changed.len();
    println!(
        "      all {} flows measured again; these changed:",
        after.len()
    );
    for l in changed {
        println!("{l}");
    }
    let bad = after.iter().filter(|c| !c.matches()).count();
    println!(
        "      the other {same} are unchanged; {}",
        if bad == 0 {
            "every flow matches the policy".to_string()
        } else {
            format!("{bad} flow(s) DISAGREE with the policy")
        }
    );
}

/// Interactive mode: keep the mesh up until Enter, showing how to look at it.
fn pause(coord: &Coordinator, members: &[Member]) {
    println!("\nThe mesh is still running. Try, in another terminal:");
    println!(
        "  sudo ip netns exec {} target/debug/segmeshctl --url {} --ca-file {} --admin-token-file {} nodes list",
        coord.host.ns,
        coord.url,
        coord.data.join("ca.pem").display(),
        coord.data.join("admin.token").display()
    );
    if let Some(m) = members.first() {
        println!(
            "  sudo target/debug/segmesh-node status --socket {}",
            m.socket.display()
        );
    }
    println!("Press Enter (or Ctrl-C) to stop the mesh.");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}
