//! A coordinated mesh: the real `segmesh-coordinator` in its own namespace,
//! `segmeshctl` run against it, and nodes enrolled with `segmesh-node join`.
//! Shared by the coordinated end-to-end tests and the live demo.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::cmd::{Proc, run_in};
use crate::lab::{Host, Lab};
use crate::node::bin_path;
use crate::wait::wait_until;

/// A coordinator host: its config, data dir and URL.
#[derive(Debug)]
pub struct Coordinator {
    pub host: Host,
    pub data: PathBuf,
    pub config: PathBuf,
    pub url: String,
}

impl Coordinator {
    /// Writes `coordinator.toml` for a coordinator on `host` (SQLite in
    /// the lab directory, port 8443 on the underlay, 2 s heartbeats).
    pub fn configure(lab: &Lab, host: Host) -> Coordinator {
        Self::configure_as(lab, host, "coord")
    }

    /// Like [`Coordinator::configure`], for a second coordinator in the
    /// same lab (its own data dir, hence its own CA): `{name}-data`,
    /// `{name}.toml`.
    pub fn configure_as(lab: &Lab, host: Host, name: &str) -> Coordinator {
        let data = lab.path(&format!("{name}-data"));
        let config = lab.path(&format!("{name}.toml"));
        let url = format!("https://{}:8443", host.underlay);
        std::fs::write(
            &config,
            format!(
                "listen = \"{}:8443\"\ndata_dir = {data:?}\npublic_urls = [\"{url}\"]\nheartbeat_secs = 2\n",
                host.underlay
            ),
        )
        .expect("write the coordinator config");
        Coordinator {
            host,
            data,
            config,
            url,
        }
    }

    /// A coordinator on its own host `coord`, started, with `policy`
    /// applied.
    pub fn launch(lab: &Lab, policy: &str) -> (Coordinator, Proc) {
        let coord = Coordinator::configure(lab, lab.host("coord"));
        let proc = coord.start(lab, 1);
        std::fs::write(lab.path("policy.toml"), policy).expect("write policy");
        let path = lab.path("policy.toml").display().to_string();
        let applied = coord.ctl_ok(&["policy", "apply", &path]);
        assert!(applied.contains("applied as policy version 1"), "{applied}");
        (coord, proc)
    }

    /// Starts `segmesh-coordinator serve` and waits until it serves; `n`
    /// numbers restarts in the log file names.
    pub fn start(&self, lab: &Lab, n: u32) -> Proc {
        let p = Proc::spawn(
            &format!("coordinator-{n}"),
            Some(&self.host.ns),
            lab.dir(),
            &bin_path("segmesh-coordinator"),
            &["serve", "--config", self.config.to_str().expect("utf-8")],
        );
        wait_until(Duration::from_secs(10), "coordinator serving", || {
            p.stderr_text()
                .contains("coordinator serving")
                .then_some(())
        });
        p
    }

    /// Runs segmeshctl on the coordinator host; returns the output even on failure.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(ToString::to_string).collect();
        for (flag, v) in [
            ("--url", self.url.clone()),
            (
                "--admin-token-file",
                self.data.join("admin.token").display().to_string(),
            ),
            ("--ca-file", self.data.join("ca.pem").display().to_string()),
        ] {
            all.push(flag.into());
            all.push(v);
        }
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_in(
            &self.host.ns,
            bin_path("segmeshctl").to_str().expect("utf-8"),
            &refs,
        )
    }

    /// Like [`Coordinator::ctl`]; panics with the output unless it succeeds,
    /// else returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "segmeshctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `segmeshctl nodes list --json`.
    pub fn nodes(&self) -> Vec<Value> {
        let out = self.ctl_ok(&["nodes", "list", "--json"]);
        serde_json::from_str::<Value>(&out).expect("nodes list --json")["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| serde_json::from_str::<Vec<Value>>(&out).expect("array"))
    }

    /// Creates a join token (`--ttl 10m`) for nodes with `labels`.
    pub fn token(&self, labels: &str, name_prefix: &str, uses: u32) -> String {
        self.ctl_ok(&[
            "tokens",
            "create",
            "--labels",
            labels,
            "--name-prefix",
            name_prefix,
            "--ttl",
            "10m",
            "--uses",
            &uses.to_string(),
        ])
        .trim()
        .to_string()
    }
}

/// An enrolled node: its host, state dir and (while running) its process.
#[derive(Debug)]
pub struct Member {
    pub host: Host,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub iface: String,
    pub proc: Option<Proc>,
}

impl Member {
    /// `segmesh-node join TOKEN --name NAME` on `host`, then points the
    /// written node.toml at a machine-unique interface and a lab socket.
    /// Returns the failed join's output as the error.
    pub fn join(lab: &Lab, host: Host, token: &str, iface: &str) -> Result<Member, Output> {
        let name = host.name.clone();
        let state = lab.path(&format!("{name}-state"));
        let out = run_in(
            &host.ns,
            bin_path("segmesh-node").to_str().expect("utf-8"),
            &[
                "join",
                token,
                "--name",
                &name,
                "--state-dir",
                state.to_str().expect("utf-8"),
            ],
        );
        if !out.status.success() {
            return Err(out);
        }
        let socket = lab.path(&format!("{name}.sock"));
        let mut toml = std::fs::read_to_string(state.join("node.toml")).expect("node.toml");
        toml.push_str(&format!(
            "interface = \"{iface}\"\ncontrol_socket = {socket:?}\n"
        ));
        std::fs::write(state.join("node.toml"), toml).expect("node.toml");
        Ok(Member {
            host,
            state,
            socket,
            iface: iface.to_string(),
            proc: None,
        })
    }

    /// Starts `segmesh-node run` and waits until its interface and control
    /// socket exist.
    pub fn start(&mut self, lab: &Lab) {
        let config = self.state.join("node.toml");
        let mut p = Proc::spawn(
            &format!(
                "{}-{}",
                self.host.name,
                lab.dir().read_dir().map_or(0, Iterator::count)
            ),
            Some(&self.host.ns),
            lab.dir(),
            &bin_path("segmesh-node"),
            &["run", "--config", config.to_str().expect("utf-8")],
        );
        let (ns, iface) = (self.host.ns.clone(), self.iface.clone());
        wait_until(
            Duration::from_secs(10),
            &format!("{} up", self.host.name),
            || {
                if let Some(status) = p.try_exit() {
                    panic!(
                        "{} exited during startup ({status}): {}",
                        self.host.name,
                        p.stderr_text()
                    );
                }
                let up = std::process::Command::new("ip")
                    .args(["-n", &ns, "link", "show", &iface])
                    .output()
                    .is_ok_and(|o| o.status.success());
                (up && self.socket.exists()).then_some(())
            },
        );
        self.proc = Some(p);
    }

    /// Runs `segmesh-node SUBCOMMAND --socket <ours> --json` in the node's
    /// namespace (`status`, `rotate-key`); the parsed output, or stderr.
    pub fn ask(&self, subcommand: &str) -> Result<Value, String> {
        let out = run_in(
            &self.host.ns,
            bin_path("segmesh-node").to_str().expect("utf-8"),
            &[
                subcommand,
                "--socket",
                self.socket.to_str().expect("utf-8"),
                "--json",
            ],
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// `segmesh-node status --json`.
    pub fn status(&self) -> Value {
        self.ask("status").expect("status --json")
    }

    /// Stops the node (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// The overlay IPv4 address of `name` in a `nodes list --json` answer.
pub fn v4(nodes: &[Value], name: &str) -> IpAddr {
    let n = nodes
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed"));
    n["addr_v4"].as_str().expect("addr_v4").parse().expect("ip")
}

/// Whether every node that is not revoked is connected and has acked its
/// latest netmap.
pub fn all_synced(nodes: &[Value]) -> bool {
    nodes
        .iter()
        .filter(|n| n["revoked"] == false)
        .all(|n| n["connected"] == true && n["acked_version"] == n["netmap_version"])
}
