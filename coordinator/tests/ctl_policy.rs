//! `segmeshctl policy ...` as a user runs it: exit codes, outputs, files.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example(file: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/three-tier")
        .join(file)
        .display()
        .to_string()
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segmeshctl"))
        .args(args)
        .env_remove("SEGMESH_INVENTORY")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn check_reports_every_error_and_exits_1() {
    let ok = ctl(&["policy", "check", &example("policy.toml")]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("ok (6 segments, 7 rules, 6 tests)"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[segments.a]\nmatch = { role = \"a\" }\n[[allow]]\nfrom = \"a\"\nto = \"b\"\nports = [\"tcp/99999\"]\n",
    )
    .unwrap();
    let o = ctl(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let b = bad.display();
    assert!(
        err.contains(&format!("{b}:5:6: unknown segment `b`")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{b}:6:10: invalid port \"tcp/99999\"")),
        "{err}"
    );

    let o = ctl(&["policy", "check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    assert_eq!(v["errors"][0]["line"], 5);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ctl(&["policy", "nope"]).status.code(), Some(2));
    assert_eq!(
        ctl(&["policy", "netmap", &example("policy.toml")])
            .status
            .code(),
        Some(2)
    );
    let o = ctl(&[
        "policy",
        "graph",
        &example("policy.toml"),
        "--format",
        "png",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn test_runs_cases_and_names_failures() {
    let inv = example("inventory.toml");
    let o = ctl(&[
        "policy",
        "test",
        &example("policy.toml"),
        "--inventory",
        &inv,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("6 passed, 0 failed"));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    let text = std::fs::read_to_string(example("policy.toml"))
        .unwrap()
        .replace("name = \"web never reaches the database\"\nfrom = \"web-1\"\nto = \"db-1\"\nport = \"tcp/5432\"\nexpect = \"deny\"", "name = \"web never reaches the database\"\nfrom = \"web-1\"\nto = \"db-1\"\nport = \"tcp/5432\"\nexpect = \"allow\"");
    std::fs::write(&p, text).unwrap();
    let o = ctl(&["policy", "test", p.to_str().unwrap(), "-i", &inv]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("FAIL \"web never reaches the database\"")
            && out.contains("expected allow, got deny"),
        "{out}"
    );
    let o = ctl(&["policy", "test", p.to_str().unwrap(), "-i", &inv, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["passed"] == false)
            .count(),
        1
    );
}

#[test]
fn netmap_json_is_the_golden_wire_format() {
    let o = ctl(&[
        "policy",
        "netmap",
        &example("policy.toml"),
        "--inventory",
        &example("inventory.toml"),
        "--node",
        "web-1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures/three-tier/web-1.json");
    assert_eq!(stdout(&o), std::fs::read_to_string(golden).unwrap());
    let o = ctl(&[
        "policy",
        "netmap",
        &example("policy.toml"),
        "-i",
        &example("inventory.toml"),
        "--node",
        "web-1",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("netmap of web-1") && out.contains("(key only)") && out.contains("api-1"),
        "{out}"
    );
    let o = ctl(&[
        "policy",
        "netmap",
        &example("policy.toml"),
        "-i",
        &example("inventory.toml"),
        "--node",
        "nope-1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope-1 is not in the inventory"));
}

#[test]
fn explain_gives_verdict_and_rules() {
    let policy = example("policy.toml");
    let inv = example("inventory.toml");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = vec!["policy", "explain", &policy, "--inventory", &inv];
        args.extend_from_slice(extra);
        ctl(&args)
    };
    let o = run(&[
        "--from", "ops-1", "--to", "db-1", "--port", "tcp/22", "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "deny");
    let at = v["rules"][0]["at"].as_str().unwrap();
    assert!(at.ends_with("policy.toml:61"), "{at}");
    let o = run(&[
        "--from",
        "role=web,env=prod",
        "--to",
        "api-1",
        "--port",
        "tcp/8080",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with("allow: {env=prod,role=web} -> api-1 tcp/8080"),
        "{}",
        stdout(&o)
    );
    let o = run(&["--from", "web-1", "--to", "db-1", "--port", "tcp/5432"]);
    assert!(stdout(&o).contains("no allow rule matches (default deny)"));
}

#[test]
fn diff_audit_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let inv = example("inventory.toml");
    let newp = dir.path().join("new.toml");
    let text = std::fs::read_to_string(example("policy.toml"))
        .unwrap()
        .replace(
            "ports = [\"tcp/5432\"]",
            "ports = [\"tcp/5432\", \"tcp/6432\"]",
        );
    std::fs::write(&newp, text).unwrap();
    let o = ctl(&[
        "policy",
        "diff",
        &example("policy.toml"),
        newp.to_str().unwrap(),
        "-i",
        &inv,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["added"].as_array().unwrap().len(), 3);
    assert_eq!(v["removed"].as_array().unwrap().len(), 0);
    assert_eq!(v["added"][0]["ports"][0], "tcp/6432");

    let maps = dir.path().join("maps");
    let o = ctl(&[
        "policy",
        "netmap",
        &example("policy.toml"),
        "-i",
        &inv,
        "--out-dir",
        maps.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let audit = |policy: &str| {
        ctl(&[
            "policy",
            "audit",
            policy,
            "-i",
            &inv,
            "--netmaps",
            maps.to_str().unwrap(),
        ])
    };
    let o = audit(&example("policy.toml"));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("audit clean: 11 netmaps"));
    // The netmaps predate the new policy: missing ports are findings.
    assert_eq!(audit(newp.to_str().unwrap()).status.code(), Some(1));
    // A netmap that learned a name it does not need is a finding.
    let db1 = maps.join("db-1.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&db1).unwrap()).unwrap();
    m["peers"][0]["name"] = "api-1".into();
    std::fs::write(&db1, m.to_string()).unwrap();
    let o = audit(&example("policy.toml"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("carries name but the node never contacts this peer"),
        "{}",
        stdout(&o)
    );

    let svg = dir.path().join("g.svg");
    let o = ctl(&[
        "policy",
        "graph",
        &example("policy.toml"),
        "-i",
        &inv,
        "--format",
        "svg",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"));
    let o = ctl(&[
        "policy",
        "graph",
        &example("policy.toml"),
        "--format",
        "dot",
    ]);
    assert!(stdout(&o).contains("\"web\" -> \"api\""));
}
