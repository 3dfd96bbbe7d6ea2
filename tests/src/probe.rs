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

/// Wall-clock now, Unix ms (what `probe stream` prints per echo).
pub fn unix_ms() -> u128 {
    #[allow(clippy::disallowed_methods)] // compared with the probe's wall clock
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// A TCP stream from namespace `ns` to `to`, one echo every 20 ms for
/// `duration_ms`. A 1.5 s read timeout, so a loaded CI machine does not
/// break a healthy stream; gaps are measured between echoes, not from the
/// timeout.
pub fn stream(lab: &Lab, name: &str, ns: &str, to: SocketAddr, duration_ms: u64) -> Proc {
    Proc::spawn(
        name,
        Some(ns),
        lab.dir(),
        &bin_path("probe"),
        &[
            "stream",
            &to.to_string(),
            "--interval-ms",
            "20",
            "--duration-ms",
            &duration_ms.to_string(),
            "--read-timeout-ms",
            "1500",
        ],
    )
}

/// Wall-clock times (Unix ms) of the echoes a stream received, and the time
/// it gave up, if it did.
pub fn echoes(p: &Proc) -> (Vec<u128>, Option<u128>) {
    let text = p.stdout_text();
    let oks = text
        .lines()
        .filter_map(|l| l.strip_prefix("ok ").and_then(|t| t.parse().ok()))
        .collect();
    let fail = text.lines().find_map(|l| {
        l.strip_prefix("fail ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    (oks, fail)
}

/// The longest pause between two consecutive echoes of a stream.
pub fn max_gap(oks: &[u128]) -> Duration {
    let ms = oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
