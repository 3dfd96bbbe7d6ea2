//! The flow log: one JSON line per new flow, appended to a file.
//!
//! A port scan opens thousands of flows a second, so lines are admitted by a
//! token bucket (default 100 lines/s, bursts of 200). Records refused by the
//! bucket are counted, and the first line written after a suppressed stretch
//! is a summary `{"time_unix_ms":…,"suppressed":N}`, so the log says what it
//! left out. Under a sustained scan a summary is written at most once a
//! second (the count carries over), so summaries cannot double the rate. A failing write (disk full, file removed under a read-only
//! mount) is logged once, with the path, and never stops the node; the next
//! successful write is logged too.
//!
//! Sans-IO in time: `now` is an argument, which is what makes the rate limit
//! testable with a virtual clock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::status::FlowRecord;

/// How fast lines may be written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowLogLimits {
    /// Sustained lines per second.
    pub per_sec: f64,
    /// Lines that may be written at once after a quiet period.
    pub burst: u32,
}

impl Default for FlowLogLimits {
    fn default() -> Self {
        Self {
            per_sec: 100.0,
            burst: 200,
        }
    }
}

/// Why the flow log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening flow log {path}: {source}")]
pub struct FlowLogError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// A classic token bucket with a caller-supplied clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limits: FlowLogLimits,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limits: FlowLogLimits) -> Self {
        Self {
            limits,
            tokens: f64::from(limits.burst),
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens =
                (self.tokens + dt * self.limits.per_sec).min(f64::from(self.limits.burst));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Summaries are written at most this often.
const SUMMARY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The line written when logging resumes after records were suppressed.
#[derive(Serialize)]
struct Summary {
    time_unix_ms: u64,
    suppressed: u64,
}

/// An append-only, rate-limited JSON-lines flow log.
#[derive(Debug)]
pub struct FlowLog {
    path: PathBuf,
    file: File,
    bucket: TokenBucket,
    suppressed: u64,
    last_summary: Option<Instant>,
    failing: bool,
    lost: u64,
}

impl FlowLog {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path, limits: FlowLogLimits) -> Result<Self, FlowLogError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|source| FlowLogError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            bucket: TokenBucket::new(limits),
            suppressed: 0,
            last_summary: None,
            failing: false,
            lost: 0,
        })
    }

    /// Records refused by the rate limit since the last line written.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Records lost to write errors so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Logs one flow, unless the rate limit refuses it.
    pub fn log(&mut self, now: Instant, rec: &FlowRecord) {
        if !self.bucket.take(now) {
            self.suppressed += 1;
            return;
        }
        let mut buf = Vec::with_capacity(256);
        let summarise = self.suppressed > 0
            && self
                .last_summary
                .is_none_or(|t| now.saturating_duration_since(t) >= SUMMARY_INTERVAL);
        if summarise {
            let summary = Summary {
                time_unix_ms: rec.time_unix_ms,
                suppressed: self.suppressed,
            };
            // Serialising plain structs to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut buf, &summary);
            buf.push(b'\n');
        }
        let _ = serde_json::to_writer(&mut buf, rec);
        buf.push(b'\n');
        // One write per call: with O_APPEND, lines from concurrent writers
        // never interleave.
        match self.file.write_all(&buf) {
            Ok(()) => {
                if summarise {
                    self.suppressed = 0;
                    self.last_summary = Some(now);
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %self.path.display(), lost = self.lost, "flow log writable again");
                }
            }
            Err(e) => {
                self.lost += 1;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "writing the flow log failed; flows are not logged until a write succeeds"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Direction, Verdict};
    use std::time::Duration;

    /// Any instant serves as the origin of the virtual clock.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn rec(i: u16) -> FlowRecord {
        FlowRecord {
            time_unix_ms: 1_700_000_000_000 + u64::from(i),
            proto: 6,
            src: "100.80.0.1".parse().unwrap(),
            src_port: 40000 + i,
            dst: "100.80.0.3".parse().unwrap(),
            dst_port: i,
            peer: None,
            peer_name: Some("web-1".parse().unwrap()),
            direction: Direction::Inbound,
            verdict: Verdict::Deny,
            reason: "policy".into(),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writes_json_lines_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let t0 = epoch();
        {
            let mut log = FlowLog::open(&path, FlowLogLimits::default()).unwrap();
            log.log(t0, &rec(1));
        }
        let mut log = FlowLog::open(&path, FlowLogLimits::default()).unwrap();
        log.log(t0, &rec(2));
        let got = lines(&path);
        assert_eq!(got.len(), 2);
        let back: FlowRecord = serde_json::from_value(got[1].clone()).unwrap();
        assert_eq!(back, rec(2));
        assert_eq!(got[0]["direction"], "inbound");
        assert_eq!(got[0]["verdict"], "deny");
    }

    #[test]
    fn a_scan_is_rate_limited_and_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let limits = FlowLogLimits {
            per_sec: 100.0,
            burst: 200,
        };
        let mut log = FlowLog::open(&path, limits).unwrap();
        let t0 = epoch();
        // 10 000 flows within one virtual millisecond: only the burst passes.
        for i in 0..10_000u16 {
            log.log(t0 + Duration::from_micros(u64::from(i) / 10), &rec(i));
        }
        assert_eq!(lines(&path).len(), 200);
        assert_eq!(log.suppressed(), 9_800);
        // 50 ms later there are 5 tokens again: the first line written is the
        // summary, followed by the record.
        log.log(t0 + Duration::from_millis(51), &rec(1));
        let got = lines(&path);
        assert_eq!(got.len(), 202);
        assert_eq!(got[200]["suppressed"], 9_800);
        assert_eq!(got[201]["dst_port"], 1);
        assert_eq!(log.suppressed(), 0);
        // Sustained: over 10 virtual seconds at 1000 flows/s, about 100
        // records/s pass, plus at most one summary a second.
        let before = lines(&path).len();
        for i in 0..10_000u32 {
            let t = t0 + Duration::from_secs(2) + Duration::from_millis(u64::from(i));
            log.log(t, &rec(2));
        }
        let new = &lines(&path)[before..];
        let summaries: Vec<u64> = new
            .iter()
            .filter_map(|l| l.get("suppressed").and_then(|v| v.as_u64()))
            .collect();
        let records = new.len() - summaries.len();
        assert!((1000..=1200).contains(&records), "{records}");
        assert!(summaries.len() <= 11, "{}", summaries.len());
        // Nothing vanishes: written + summarised + pending = offered.
        let summarised: u64 = summaries.iter().sum();
        assert_eq!(records as u64 + summarised + log.suppressed(), 10_000);
    }

    #[test]
    fn bucket_refills_but_not_beyond_burst() {
        let mut b = TokenBucket::new(FlowLogLimits {
            per_sec: 10.0,
            burst: 3,
        });
        let t0 = epoch();
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn disk_full_is_not_fatal() {
        // /dev/full accepts opens and fails every write with ENOSPC.
        let mut log = FlowLog::open(Path::new("/dev/full"), FlowLogLimits::default()).unwrap();
        let t0 = epoch();
        for i in 0..5 {
            log.log(t0, &rec(i));
        }
        assert_eq!(log.lost(), 5);
    }

    #[test]
    fn open_error_names_the_path() {
        let e = FlowLog::open(
            Path::new("/nonexistent/dir/flows"),
            FlowLogLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/flows"), "{e}");
    }
}
