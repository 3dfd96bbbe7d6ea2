//! Prometheus text metrics: nodes, connected streams, pushes, apply latency.
//!
//! Plain atomics and a fixed-bucket histogram: the coordinator exports a
//! handful of series, which does not justify a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the apply-latency histogram buckets.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Counters shared by the API and the distributor.
#[derive(Debug, Default)]
pub struct Metrics {
    pub pushes: AtomicU64,
    pub enrollments: AtomicU64,
    pub acks: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// Values read from other components at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub nodes: usize,
    pub revoked_nodes: usize,
    pub streams: usize,
}

impl Metrics {
    /// Records the time from pushing a netmap to the node's ack.
    pub fn observe_apply(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, g: Gauges) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(s, "# HELP segmesh_nodes Enrolled nodes by state.");
        let _ = writeln!(s, "# TYPE segmesh_nodes gauge");
        let _ = writeln!(s, "segmesh_nodes{{state=\"active\"}} {}", g.nodes);
        let _ = writeln!(s, "segmesh_nodes{{state=\"revoked\"}} {}", g.revoked_nodes);
        let _ = writeln!(s, "# HELP segmesh_streams Connected netmap streams.");
        let _ = writeln!(s, "# TYPE segmesh_streams gauge");
        let _ = writeln!(s, "segmesh_streams {}", g.streams);
        for (name, help, v) in [
            (
                "segmesh_netmap_pushes_total",
                "Netmaps pushed to connected nodes.",
                &self.pushes,
            ),
            (
                "segmesh_netmap_acks_total",
                "Netmap versions acked by nodes.",
                &self.acks,
            ),
            (
                "segmesh_enrollments_total",
                "Successful enrollments.",
                &self.enrollments,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", get(v));
        }
        let h = "segmesh_netmap_apply_seconds";
        let _ = writeln!(
            s,
            "# HELP {h} Time from pushing a netmap to the node's ack."
        );
        let _ = writeln!(s, "# TYPE {h} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(s, "{h}_bucket{{le=\"{b}\"}} {}", get(&self.buckets[i]));
        }
        let count = get(&self.latency_count);
        let _ = writeln!(s, "{h}_bucket{{le=\"+Inf\"}} {count}");
        let sum = Duration::from_micros(get(&self.latency_sum_us)).as_secs_f64();
        let _ = writeln!(s, "{h}_sum {sum}");
        let _ = writeln!(s, "{h}_count {count}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram() {
        let m = Metrics::default();
        m.observe_apply(Duration::from_millis(30));
        m.pushes.fetch_add(2, Ordering::Relaxed);
        let text = m.render(Gauges {
            nodes: 3,
            revoked_nodes: 1,
            streams: 2,
        });
        assert!(text.contains("segmesh_nodes{state=\"active\"} 3\n"));
        assert!(text.contains("segmesh_netmap_pushes_total 2\n"));
        assert!(text.contains("segmesh_netmap_apply_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("segmesh_netmap_apply_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("segmesh_netmap_apply_seconds_count 1\n"));
    }
}
