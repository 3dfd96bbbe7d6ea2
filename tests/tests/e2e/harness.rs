//! The harness itself: namespaces, the bridge, the probe tool and cleanup.

use std::time::Duration;

use segmesh_e2e::{Lab, Proc, bin_path, run_in, wait_until};

#[test]
fn hosts_reach_each_other_over_the_bridge_and_are_removed_on_drop() {
    let lab = Lab::new("harness");
    let a = lab.host("a");
    let b = lab.host("b");
    let probe = bin_path("probe");
    let listen_at = format!("{}:7000", b.underlay);
    let server = Proc::spawn(
        "listener",
        Some(&b.ns),
        lab.dir(),
        &probe,
        &["listen", &listen_at],
    );
    wait_until(Duration::from_secs(5), "probe listener ready", || {
        server.stdout_text().contains("ready").then_some(())
    });
    let out = run_in(
        &a.ns,
        probe.to_str().expect("utf-8 path"),
        &["connect", &listen_at, "--message", "ping"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("probe json");
    assert_eq!(v["reply"], "ping");
    assert!(
        server
            .stdout_text()
            .contains(&format!("accepted {}:", a.underlay))
    );

    // Nothing listens on 7001: refused at once.
    let out = run_in(
        &a.ns,
        probe.to_str().expect("utf-8 path"),
        &["connect", &format!("{}:7001", b.underlay)],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe json");
    assert_eq!(v["kind"], "ConnectionRefused", "{v}");

    let names = [a.ns.clone(), b.ns.clone()];
    drop(server);
    drop(lab);
    let list = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    for ns in names {
        assert!(!list.contains(&ns), "{ns} left behind: {list}");
    }
}
