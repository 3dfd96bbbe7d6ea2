//! The live demo (`scripts/demo` runs the `segmesh-demo` binary): it must
//! run clean non-interactively, write the graph, and leave no namespace or
//! process behind, also when interrupted with Ctrl-C. Needs root. One demo
//! at a time (`ONE_AT_A_TIME`): two meshes at once on a 2-core machine would
//! only test the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use segmesh_e2e::{require_root, wait_until};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn demo() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut c = Command::new(env!("CARGO_BIN_EXE_segmesh-demo"));
    c.current_dir(root).arg("--non-interactive");
    c
}

/// The namespace and lab directory named in the demo's first step.
fn lab_of(stdout: &str) -> (String, PathBuf) {
    let line = stdout
        .lines()
        .find(|l| l.contains("[1/6] coordinator"))
        .unwrap_or_else(|| panic!("no coordinator line in: {stdout}"));
    let word_after = |w: &str| {
        line.split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .unwrap_or_else(|| panic!("no {w} in {line}"))
            .trim_end_matches(',')
            .to_string()
    };
    let db = PathBuf::from(word_after("SQLite"));
    let dir = db
        .ancestors()
        .nth(2)
        .expect("lab dir holds coord-data/state.db")
        .to_path_buf();
    (word_after("namespace"), dir)
}

/// No namespace of the lab is left, and no process runs from its directory.
fn assert_cleaned_up(ns: &str, dir: &Path) {
    let lab_prefix = ns.trim_end_matches("-coord");
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.lines().any(|l| l.starts_with(lab_prefix)),
        "namespaces left behind: {list}"
    );
    let dir = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&dir),
            "a process of the demo is still running: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
}

#[test]
fn demo_matrix_matches_the_policy_and_it_cleans_up() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = demo()
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("run segmesh-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("measured flows (3 rounds) matched the policy"),
        "{stdout}"
    );
    assert!(stdout.contains("removed from 2/2 peers"), "{stdout}");
    let svg = std::fs::read_to_string(out_dir.path().join("segments.svg")).expect("SVG written");
    assert!(svg.contains("<svg") && svg.contains("web-1"), "{svg}");
    let (ns, dir) = lab_of(&stdout);
    assert_cleaned_up(&ns, &dir);
}

#[test]
fn demo_interrupted_with_ctrl_c_removes_namespaces_and_processes() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = tempfile::tempdir().expect("temp dir");
    let log = out_dir.path().join("stdout");
    let mut child = demo()
        .arg("--out")
        .arg(out_dir.path())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start segmesh-demo");
    // Interrupt once the mesh is up and being measured.
    let text = wait_until(Duration::from_secs(60), "the demo measuring", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("[4/6]").then_some(t)
    });
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_until(Duration::from_secs(20), "the demo to exit", || {
        child.try_wait().expect("wait")
    });
    assert_eq!(status.code(), Some(130), "exit status {status}");
    let (ns, dir) = lab_of(&text);
    assert_cleaned_up(&ns, &dir);
    assert!(!dir.exists(), "lab directory {} left behind", dir.display());
}
