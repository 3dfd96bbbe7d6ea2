//! `completions` and `man` of the three binaries: generated from their clap
//! definitions, for every shell, one man page per subcommand. (No network
//! here; this crate is the one that can run all three binaries.)

use std::process::Command;

use segmesh_e2e::bin_path;

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check(name: &str, subcommands: &[&str], pages: &[&str]) {
    let bin = bin_path(name);
    let bin = bin.to_str().expect("ok");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = String::from_utf8(run(bin, &["completions", shell]).stdout).expect("ok");
        assert!(out.contains(name), "{shell} completion of {name}: {out}");
        for sub in subcommands {
            assert!(
                out.contains(sub),
                "{shell} completion of {name} lacks {sub}"
            );
        }
    }
    let bad = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .expect("ok");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'tcsh'"));

    let dir = tempfile::tempdir().expect("ok");
    let out = dir.path().join("man1");
    run(bin, &["man", "--out", out.to_str().expect("ok")]);
    let page = std::fs::read_to_string(out.join(format!("{name}.1"))).expect("ok");
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH"), "{page}");
    for sub in pages {
        let sub_page = out.join(format!("{name}-{sub}.1"));
        assert!(sub_page.exists(), "{} missing", sub_page.display());
    }
    // `man` is for packagers: not in --help.
    let help = String::from_utf8(run(bin, &["--help"]).stdout).expect("ok");
    assert!(
        help.contains("completions") && !help.contains("\n  man "),
        "{help}"
    );
}

#[test]
fn segmeshctl_completions_and_man_pages() {
    check(
        "segmeshctl",
        &["policy", "nodes", "tokens", "audit-log"],
        &["policy", "policy-apply", "nodes-revoke", "completions"],
    );
}

#[test]
fn segmesh_coordinator_completions_and_man_pages() {
    check("segmesh-coordinator", &["serve"], &["serve"]);
}

#[test]
fn segmesh_node_completions_and_man_pages() {
    check(
        "segmesh-node",
        &["join", "run", "status", "keygen"],
        &["join", "run", "status"],
    );
}
