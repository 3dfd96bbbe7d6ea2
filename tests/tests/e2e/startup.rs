//! Startup errors an operator can make, each refused with a clear message.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use segmesh_e2e::mesh::{addr, netmap};
use segmesh_e2e::{Lab, NodeSetup, Proc, WG_PORT, bin_path, wait_until};

/// Runs the node and waits for it to exit; returns its stderr.
fn run_to_exit(lab: &Lab, node: &NodeSetup) -> String {
    let mut p = node.spawn(lab);
    let status = wait_until(Duration::from_secs(10), "the node to exit", || p.try_exit());
    assert!(!status.success(), "the node should have refused to start");
    p.stderr_text()
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let lab = Lab::new("keyperm");
    let h = lab.host("n-1");
    let n = NodeSetup::new(&lab, &h, "n-1");
    n.write_netmap(&netmap(&n, &[addr(&n)], vec![]));
    std::fs::set_permissions(&n.key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = run_to_exit(&lab, &n);
    assert!(err.contains(&n.key_path.display().to_string()), "{err}");
    assert!(
        err.to_lowercase().contains("permission") || err.contains("0644") || err.contains("644"),
        "{err}"
    );
}

#[test]
fn a_port_already_in_use_is_a_clear_error() {
    let lab = Lab::new("portuse");
    let h = lab.host("n-1");
    let n = NodeSetup::new(&lab, &h, "n-1");
    n.write_netmap(&netmap(&n, &[addr(&n)], vec![]));
    let holder = Proc::spawn(
        "udp-holder",
        Some(&h.ns),
        lab.dir(),
        &bin_path("probe"),
        &["udp-hold", &format!("0.0.0.0:{WG_PORT}")],
    );
    wait_until(Duration::from_secs(5), "the port holder", || {
        holder.stdout_text().contains("ready").then_some(())
    });
    let err = run_to_exit(&lab, &n);
    assert!(err.contains(&WG_PORT.to_string()), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

#[test]
fn sigterm_stops_the_node_and_removes_its_sockets_and_interface() {
    let lab = Lab::new("term");
    let h = lab.host("n-1");
    let n = NodeSetup::new(&lab, &h, "n-1");
    n.write_netmap(&netmap(&n, &[addr(&n)], vec![]));
    let mut node = n.start(&lab);
    let uapi = segmesh_node::uapi::socket_path(&node.setup.interface);
    assert!(uapi.exists(), "no UAPI socket at {}", uapi.display());

    node.proc.signal(libc::SIGTERM);
    let status = wait_until(
        Duration::from_secs(5),
        "the node to exit on SIGTERM",
        || node.proc.try_exit(),
    );
    assert!(
        status.success(),
        "exit status {status}: {}",
        node.proc.stderr_text()
    );
    assert!(!uapi.exists(), "UAPI socket left behind");
    assert!(
        !node.setup.control_socket.exists(),
        "control socket left behind"
    );
    let link = std::process::Command::new("ip")
        .args(["-n", &h.ns, "link", "show", &node.setup.interface])
        .output()
        .expect("ip");
    assert!(!link.status.success(), "interface left behind");
}
