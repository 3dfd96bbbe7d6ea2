//! A PostgreSQL server in a lab namespace, for the coordinator HA tests:
//! a throwaway cluster (Debian's `postgresql` package binaries, run as the
//! `postgres` user) listening on the host's underlay address, which the
//! test can stop hard and start again. Removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;
use crate::lab::Host;

/// The environment variable that enables the PostgreSQL tests (the same
/// one the coordinator's store tests use; CI sets it).
pub const TEST_PG_ENV: &str = "SEGMESH_TEST_PG";

/// Whether the PostgreSQL end-to-end tests should run: when the variable
/// is unset they are skipped with a note (they then need the server
/// binaries, and fail without them).
pub fn enabled() -> bool {
    let on = std::env::var_os(TEST_PG_ENV).is_some_and(|v| !v.is_empty());
    if !on {
        eprintln!("{TEST_PG_ENV} is not set: skipping a PostgreSQL end-to-end test");
    }
    on
}

/// A running (or stopped) cluster in one namespace.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    ns: String,
    dir: PathBuf,
    listen: String,
    /// `postgres://postgres@ADDR:5432/postgres` (trust auth inside the lab).
    pub url: String,
}

/// The newest installed server's bin directory.
fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
}

/// Runs `program args` as the postgres user, in `ns` if given.
fn as_postgres(ns: Option<&str>, program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "setpriv"]);
            c
        }
        None => Command::new("setpriv"),
    };
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ])
    .arg(program)
    .args(args)
    .output()
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

impl PgServer {
    /// initdb and start on `host`'s underlay address, port 5432.
    pub fn start(host: &Host) -> PgServer {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("segmesh-e2e-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        run("chown", &["postgres:", dir.to_str().expect("utf-8")]);
        let data = dir.join("data");
        let out = as_postgres(
            None,
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Trust only the lab's underlay (a private bridge in namespaces).
        let hba = data.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        text.push_str("host all all 10.77.0.0/24 trust\n");
        std::fs::write(&hba, text).expect("pg_hba.conf");
        let server = PgServer {
            bin,
            ns: host.ns.clone(),
            listen: host.underlay.to_string(),
            url: format!("postgres://postgres@{}:5432/postgres", host.underlay),
            dir,
        };
        server.resume();
        server
    }

    /// Starts the server (again) on the same data.
    pub fn resume(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let opts = format!(
            "-h {} -p 5432 -k {} -c fsync=off",
            self.listen,
            self.dir.display()
        );
        let out = as_postgres(
            Some(&self.ns),
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server the hard way (`-m immediate`: every backend exits
    /// at once, as in a crash; recovery runs on the next start).
    pub fn kill(&self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            Some(&self.ns),
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
