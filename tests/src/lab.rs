//! A lab: a private hub namespace holding a bridge, and one namespace per
//! host with a veth `eth0` plugged into the bridge and an underlay address
//! 10.77.0.N/24. Dropping the lab kills every process left in its namespaces
//! and deletes them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cmd::run;

/// One test's set of namespaces.
#[derive(Debug)]
pub struct Lab {
    pub tag: String,
    hub: String,
    namespaces: Mutex<Vec<String>>,
    closed: AtomicBool,
    dir: tempfile::TempDir,
}

/// A host (namespace) in the lab.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub underlay: Ipv4Addr,
}

impl Lab {
    /// Creates the hub namespace and its bridge. `label` makes names readable
    /// (`sm-<tag>-<label>-hub`); the tag makes them unique.
    pub fn new(label: &str) -> Lab {
        crate::require_root();
        let tag = crate::unique_tag();
        let hub = format!("sm{tag}-{label}-hub");
        let dir = tempfile::Builder::new()
            .prefix(&format!("segmesh-e2e-{label}-"))
            .tempdir()
            .expect("temp dir");
        let lab = Lab {
            tag,
            hub: hub.clone(),
            namespaces: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            dir,
        };
        lab.add_ns(&hub);
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        lab
    }

    /// The lab's scratch directory (configs, keys, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A machine-unique interface name `sm<tag><suffix>` (at most 15 bytes).
    /// The lab removes leftover WireGuard UAPI sockets of these names.
    pub fn iface(&self, suffix: &str) -> String {
        let name = format!("sm{}{suffix}", self.tag);
        assert!(name.len() <= 15, "interface name {name} too long");
        name
    }

    fn add_ns(&self, ns: &str) {
        // Under the lock, so a concurrent teardown either sees this
        // namespace or runs first and refuses it.
        let mut namespaces = self.namespaces.lock().expect("lab lock");
        assert!(!self.closed.load(Ordering::SeqCst), "the lab was torn down");
        // A namespace of the same name can only be a leftover of a killed
        // run of this very test binary: remove it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", ns]);
        namespaces.push(ns.to_string());
        drop(namespaces);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Adds a host namespace plugged into the bridge; hosts are numbered from
    /// 1 in the order they are added (underlay 10.77.0.N).
    pub fn host(&self, name: &str) -> Host {
        let n = self.namespaces.lock().expect("lab lock").len();
        let ns = format!("sm{}-{}-{name}", self.tag, self.label());
        self.add_ns(&ns);
        let hub_if = format!("h{n}");
        run(
            "ip",
            &[
                "-n", &self.hub, "link", "add", &hub_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        );
        run(
            "ip",
            &["-n", &self.hub, "link", "set", &hub_if, "master", "br0"],
        );
        run("ip", &["-n", &self.hub, "link", "set", &hub_if, "up"]);
        let underlay = Ipv4Addr::new(10, 77, 0, n as u8);
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{underlay}/24"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        Host {
            name: name.to_string(),
            ns,
            underlay,
        }
    }

    fn label(&self) -> &str {
        self.hub
            .strip_prefix(&format!("sm{}-", self.tag))
            .and_then(|s| s.strip_suffix("-hub"))
            .unwrap_or("lab")
    }
}

impl Lab {
    /// Kills every process in the lab's namespaces and deletes them (and the
    /// lab's WireGuard UAPI sockets). Idempotent; [`Drop`] calls it, and a
    /// signal handler may call it from another thread: a second call waits
    /// until the first has finished, and no namespace is added afterwards.
    pub fn teardown(&self) {
        let mut guard = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        let namespaces = std::mem::take(&mut *guard);
        for ns in namespaces.iter().rev() {
            // Processes keep a namespace alive after its name is deleted:
            // kill whatever this test left inside.
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2); the pid lives in a namespace this lab created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
        // UAPI sockets live outside the namespaces, in a shared directory.
        let prefix = format!("sm{}", self.tag);
        if let Ok(dir) = std::fs::read_dir("/var/run/wireguard") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}
