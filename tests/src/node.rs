//! Running the real `segmesh-node` binary: keys, netmaps, node.toml, the
//! daemon itself, and reading its status the way an operator does
//! (`segmesh-node status --json`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use segmesh_config::{NetMap, PublicKey};
use segmesh_node::status::NodeStatus;

use crate::cmd::{Proc, run};
use crate::lab::{Host, Lab};
use crate::wait::wait_until;

/// The UDP port every node listens on (each node has its own namespace).
pub const WG_PORT: u16 = 51820;

/// The path of a binary built from this workspace (`segmesh-node`,
/// `segmeshctl`, `probe`): cargo puts workspace binaries in the target
/// directory that holds the test executable (`target/debug/deps/..`) or the
/// demo (`target/debug/segmesh-demo`).
/// `SEGMESH_NODE_BIN` overrides the `segmesh-node` binary (e.g. to test a
/// release build).
pub fn bin_path(name: &str) -> PathBuf {
    if name == "segmesh-node"
        && let Some(p) = std::env::var_os("SEGMESH_NODE_BIN")
    {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in target/<profile>/deps, the demo binary in
    // target/<profile> itself.
    let dir = exe
        .parent()
        .map(|d| match d.file_name() {
            Some(n) if n == "deps" => d.parent().unwrap_or(d),
            _ => d,
        })
        .expect("executable in target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the workspace binaries first \
         (`cargo build --workspace`; `cargo test --workspace` builds them too)",
        path.display()
    );
    if name == "segmesh-node" {
        warn_if_stale(&path);
    }
    path
}

/// `cargo test -p segmesh-e2e` does not rebuild `segmesh-node`; say so when
/// the binary is older than the node's sources (a warning only: cargo
/// fingerprints by content, so an older binary can still be current).
fn warn_if_stale(bin: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src");
    let newest_src = std::fs::read_dir(&src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    if let (Some(src_t), Some(bin_t)) = (newest_src, built)
        && src_t > bin_t
    {
        eprintln!(
            "warning: {} is older than node/src; run `cargo build -p segmesh-node` \
             (or `cargo test --workspace`) to test the current code",
            bin.display()
        );
    }
}

/// Everything one node needs on disk, before it runs.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub name: String,
    pub host: Host,
    /// Unique across the machine: the UAPI socket directory is shared.
    pub interface: String,
    pub key_path: PathBuf,
    pub public_key: PublicKey,
    pub netmap_path: PathBuf,
    pub config_path: PathBuf,
    pub control_socket: PathBuf,
    pub flow_log: PathBuf,
}

impl NodeSetup {
    /// Generates the node's key with `segmesh-node keygen` and picks paths.
    pub fn new(lab: &Lab, host: &Host, name: &str) -> NodeSetup {
        let key_path = lab.path(&format!("{name}.key"));
        let out = run(
            bin_path("segmesh-node").to_str().expect("utf-8 path"),
            &["keygen", "--out", key_path.to_str().expect("utf-8 path")],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let public_key: PublicKey = text
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("keygen printed no public key: {text:?}"));
        let index = host.underlay.octets()[3];
        NodeSetup {
            name: name.to_string(),
            host: host.clone(),
            interface: lab.iface(&format!("n{index}")),
            key_path,
            public_key,
            netmap_path: lab.path(&format!("{name}.netmap.json")),
            config_path: lab.path(&format!("{name}.toml")),
            control_socket: lab.path(&format!("{name}.ctl")),
            flow_log: lab.path(&format!("{name}.flows.jsonl")),
        }
    }

    /// The node's WireGuard endpoint on the underlay.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.host.underlay), WG_PORT)
    }

    /// Writes the netmap file (pretty JSON, as `segmeshctl` writes it).
    pub fn write_netmap(&self, map: &NetMap) {
        std::fs::write(&self.netmap_path, map.to_json_pretty()).expect("write netmap");
    }

    /// Writes node.toml.
    pub fn write_config(&self) {
        let toml = format!(
            "interface = \"{}\"\n\
             private_key_file = \"{}\"\n\
             netmap_file = \"{}\"\n\
             listen_port = {WG_PORT}\n\
             control_socket = \"{}\"\n\
             flow_log = \"{}\"\n",
            self.interface,
            self.key_path.display(),
            self.netmap_path.display(),
            self.control_socket.display(),
            self.flow_log.display(),
        );
        std::fs::write(&self.config_path, toml).expect("write node.toml");
    }

    /// Starts `segmesh-node run` in the node's namespace without waiting.
    pub fn spawn(&self, lab: &Lab) -> Proc {
        self.write_config();
        Proc::spawn(
            &self.name,
            Some(&self.host.ns),
            lab.dir(),
            &bin_path("segmesh-node"),
            &[
                "run",
                "--config",
                self.config_path.to_str().expect("utf-8 path"),
            ],
        )
    }

    /// Starts the node and waits until its interface and control socket exist.
    pub fn start(self, lab: &Lab) -> NodeHandle {
        let mut proc = self.spawn(lab);
        let ns = self.host.ns.clone();
        let iface = self.interface.clone();
        wait_until(
            Duration::from_secs(10),
            &format!("{} to come up", self.name),
            || {
                if let Some(status) = proc.try_exit() {
                    panic!(
                        "{} exited during startup ({status}): {}",
                        self.name,
                        proc.stderr_text()
                    );
                }
                let up = std::process::Command::new("ip")
                    .args(["-n", &ns, "link", "show", &iface])
                    .output()
                    .is_ok_and(|o| o.status.success());
                (up && self.control_socket.exists()).then_some(())
            },
        );
        NodeHandle { setup: self, proc }
    }
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub setup: NodeSetup,
    pub proc: Proc,
}

impl NodeHandle {
    /// `segmesh-node status --json`, parsed.
    pub fn status(&self) -> NodeStatus {
        let out = run(
            bin_path("segmesh-node").to_str().expect("utf-8 path"),
            &[
                "status",
                "--json",
                "--socket",
                self.setup.control_socket.to_str().expect("utf-8 path"),
            ],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json of {} is not a NodeStatus: {e}: {}",
                self.setup.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Asks the node to re-read its netmap.
    pub fn reload(&self) {
        self.proc.signal(libc::SIGHUP);
    }

    /// The namespace the node runs in.
    pub fn ns(&self) -> &str {
        &self.setup.host.ns
    }
}
