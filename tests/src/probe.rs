//! Driving the `probe` helper binary (tests/src/bin/probe.rs) inside
//! namespaces: TCP echo servers and clients with timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::cmd::{Proc, run_in};
use crate::lab::{Host, Lab};
use crate::node::bin_path;
use crate::wait::wait_until;

/// What `probe connect` reported.
#[derive(Debug, Clone, Deserialize)]
pub struct Connect {
    pub ok: bool,
    /// How long the attempt took.
    pub ms: u64,
    pub reply: Option<String>,
    pub error: Option<String>,
    /// `std::io::ErrorKind` debug name, e.g. `HostUnreachable`, `TimedOut`.
    pub kind: Option<String>,
    pub errno: Option<i32>,
}

/// Starts an echo server on `at` inside `host` and waits until it listens.
pub fn listen(lab: &Lab, host: &Host, at: SocketAddr) -> Proc {
    let name = format!("probe-listen-{}-{}", host.name, at.port());
    let p = Proc::spawn(
        &name,
        Some(&host.ns),
        lab.dir(),
        &bin_path("probe"),
        &["listen", &at.to_string()],
    );
    wait_until(Duration::from_secs(5), &format!("{name} ready"), || {
        p.stdout_text().contains("ready").then_some(())
    });
    p
}

/// Peers the echo server accepted so far (from its "accepted ADDR" lines).
pub fn accepted(listener: &Proc) -> Vec<SocketAddr> {
    listener
        .stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix("accepted "))
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Connects from namespace `ns` to `to`, sends a line and waits for its echo.
pub fn connect(ns: &str, to: SocketAddr, timeout: Duration) -> Connect {
    let probe = bin_path("probe");
    let out = run_in(
        ns,
        probe.to_str().expect("utf-8 path"),
        &[
            "connect",
            &to.to_string(),
            "--timeout-ms",
            &timeout.as_millis().to_string(),
            "--message",
            "segmesh",
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe connect printed no result ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Retries [`connect`] until it succeeds (the first packet may wait for a
/// handshake), panicking after `within`; returns the successful attempt and
/// the time until it succeeded.
pub fn connect_eventually(ns: &str, to: SocketAddr, within: Duration) -> (Connect, Duration) {
    #[allow(clippy::disallowed_methods)] // tests measure real time
    let t0 = std::time::Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        let c = connect(ns, to, Duration::from_secs(2));
        if c.ok {
            return (c, t0.elapsed());
        }
        last = Some(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{ns} could not reach {to} within {within:?}; last attempt: {last:?}");
}
