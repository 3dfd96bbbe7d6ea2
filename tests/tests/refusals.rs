//! What the control plane refuses, run the way a user runs it (real
//! `segmesh-coordinator`, `segmeshctl` and `segmesh-node` binaries in
//! namespaces): no admin token, a wrong one, an expired or forged join
//! token, an impostor coordinator, a tampered netmap cache. Each fails with
//! a message that says what is wrong, and leaves nothing behind.

use std::time::Duration;

use segmesh_config::control::JoinToken;
use segmesh_e2e::coord::{Coordinator, Member};
use segmesh_e2e::{Lab, bin_path, run_in};

fn node_bin() -> String {
    bin_path("segmesh-node").display().to_string()
}

/// `segmesh-node join` of `token` as `name`; must fail with `expect` in
/// stderr and write no state directory.
fn join_refused(lab: &Lab, token: &str, name: &str, expect: &str) {
    let host = lab.host(name);
    let state = lab.path(&format!("{name}-state"));
    let out = run_in(
        &host.ns,
        &node_bin(),
        &[
            "join",
            token,
            "--name",
            name,
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name} joined");
    assert!(err.contains(expect), "{name}: {err}");
    assert!(
        !state.exists(),
        "{name}: a refused join wrote {}",
        state.display()
    );
}

#[test]
fn control_plane_refusals_as_a_user_meets_them() {
    let lab = Lab::new("refuse");
    let coord = Coordinator::configure(&lab, lab.host("coord"));
    let _coord = coord.start(&lab, 1);
    let ctl = bin_path("segmeshctl").display().to_string();
    let ca = coord.data.join("ca.pem").display().to_string();

    // segmeshctl without an admin token says where one comes from.
    let out = run_in(
        &coord.host.ns,
        &ctl,
        &["nodes", "list", "--url", &coord.url, "--ca-file", &ca],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no admin token"), "{err}");
    // A wrong admin token is refused by the coordinator.
    let wrong = lab.path("wrong.token");
    std::fs::write(&wrong, "sma1.not-the-admin-token\n").expect("write");
    let out = run_in(
        &coord.host.ns,
        &ctl,
        &[
            "nodes",
            "list",
            "--url",
            &coord.url,
            "--ca-file",
            &ca,
            "--admin-token-file",
            wrong.to_str().expect("utf-8"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("401") || err.contains("admin token"), "{err}");
    assert!(!err.contains("not-the-admin-token"), "token echoed: {err}");

    // An expired join token.
    let expiring = coord
        .ctl_ok(&[
            "tokens",
            "create",
            "--labels",
            "role=db",
            "--name-prefix",
            "db",
            "--ttl",
            "1s",
        ])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(2_100));
    join_refused(&lab, &expiring, "late-1", "join token has expired");

    // A forged one: a valid token's URL and CA pin with another secret.
    let good = coord.token("role=db", "db", 1);
    let mut forged = JoinToken::parse(&good).expect("token");
    forged.secret = "A".repeat(43); // 32 zero bytes, base64url
    join_refused(
        &lab,
        &forged.encode(),
        "forged-1",
        "join token is not known to this coordinator",
    );

    // An impostor coordinator (its own CA) at the token's address is
    // refused by the CA pin before anything is sent.
    let impostor = Coordinator::configure_as(&lab, lab.host("impostor"), "impostor");
    let _impostor = impostor.start(&lab, 1);
    let mut redirected = JoinToken::parse(&good).expect("token");
    redirected.urls = vec![impostor.url.clone()];
    join_refused(
        &lab,
        &redirected.encode(),
        "victim-1",
        "does not match the CA fingerprint",
    );
    // The real coordinator still accepts the untouched token: nothing was
    // used up by the refusals.
    let mut db = Member::join(&lab, lab.host("db-1"), &good, &lab.iface("n1"))
        .unwrap_or_else(|o| panic!("join: {}", String::from_utf8_lossy(&o.stderr)));

    // A tampered netmap cache stops `run` with a clear error.
    let cache = db.state.join("netmap.json");
    let text = std::fs::read_to_string(&cache).expect("cache");
    std::fs::write(&cache, text.replacen("\"version\"", "\"version\" ", 1)).expect("tamper");
    let config = db.state.join("node.toml");
    let out = run_in(
        &db.host.ns,
        &node_bin(),
        &["run", "--config", config.to_str().expect("utf-8")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("failed its integrity check"), "{err}");
    // Restoring the content makes it start again.
    std::fs::write(&cache, text).expect("restore");
    db.start(&lab);
    db.stop();
}
