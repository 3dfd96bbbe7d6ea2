//! Whether a packet thread may preempt the task that woke it.
//!
//! A program's packet reaches the TUN thread by a wakeup, and Linux's
//! scheduler (EEVDF) often lets the woken thread preempt the sender on the
//! spot, right after its `send` and before the sender goes back to sleep.
//! On a machine with an idle CPU that costs more than it saves. While the
//! preempted sender is still runnable on that CPU, the next wakeup the node
//! makes (a peer's thread on the same machine, the program that gets the
//! answer) finds two tasks there, and the scheduler sends it to the idle
//! CPU instead, which in a VM is a halted vCPU: 60-90 us before it runs,
//! against ~15 on the CPU that woke it. Traced on a 2-vCPU guest, that was
//! half of all pings between two nodes on one machine, for segmesh and
//! boringtun-cli alike (docs/benchmarks.md, thirteenth session).
//!
//! So while the machine has CPU to spare, the packet threads run as
//! `SCHED_BATCH`: the same share of CPU, only no wakeup preemption. The
//! sender finishes its call and sleeps, and the thread runs next, on the
//! same CPU. When the CPUs are busy, not preempting would leave a woken
//! thread waiting for the running task's slice to end (a tick, 4 ms at
//! 250 Hz), so the threads go back to `SCHED_OTHER`. The machine's idle
//! time in `/proc/stat` decides, sampled by each thread for itself at most
//! once a second, and only when it has just moved packets: an idle node is
//! never woken to look.
//!
//! [`Courtesy`] is the decision (sans-IO: idle time and `now` in, a policy
//! out); [`Courteous`] reads `/proc/stat` and applies it to the calling
//! thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a packet thread is scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// `SCHED_OTHER`, the default: a woken thread may preempt.
    #[default]
    Preempt,
    /// `SCHED_BATCH`: a woken thread waits for the running task to sleep
    /// or use up its slice.
    Defer,
}

impl Policy {
    /// The kernel's name for it, as `chrt -p` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Preempt => "SCHED_OTHER",
            Policy::Defer => "SCHED_BATCH",
        }
    }
}

/// A thread's policy as `status` reads it (true: deferring).
pub type Published = Arc<AtomicBool>;

/// Reads a [`Published`] policy.
pub fn published(p: &Published) -> Policy {
    if p.load(Ordering::Relaxed) {
        Policy::Defer
    } else {
        Policy::Preempt
    }
}

/// Samples at most this often.
pub const EVERY: Duration = Duration::from_secs(1);
/// Defer once at least this many CPUs were idle on average since the last
/// sample: then a sender that does not sleep at once leaves its woken
/// thread a free CPU to go to.
const DEFER_AT: f64 = 0.5;
/// Preempt again below this many; between the two the policy stays, so
/// that a load near one threshold does not flip it every second.
const PREEMPT_BELOW: f64 = 0.25;

/// The decision for one thread.
#[derive(Debug)]
pub struct Courtesy {
    policy: Policy,
    last: Option<(Instant, Duration)>,
}

impl Default for Courtesy {
    fn default() -> Self {
        Self::new()
    }
}

impl Courtesy {
    /// Starts at the kernel's default, [`Policy::Preempt`].
    pub fn new() -> Self {
        Courtesy {
            policy: Policy::Preempt,
            last: None,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether a new sample is wanted at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= EVERY)
    }

    /// `idle`: the machine's idle CPU time so far, all CPUs together (a
    /// counter). The new policy, if it changes.
    pub fn sample(&mut self, now: Instant, idle: Duration) -> Option<Policy> {
        let (at, before) = self.last.replace((now, idle))?;
        let elapsed = now.saturating_duration_since(at);
        if elapsed.is_zero() {
            return None;
        }
        // CPUs idle on average over the window (a counter that went
        // backwards, which it should not, reads as none idle).
        let spare = idle.saturating_sub(before).as_secs_f64() / elapsed.as_secs_f64();
        let want = match self.policy {
            Policy::Preempt if spare >= DEFER_AT => Policy::Defer,
            Policy::Defer if spare < PREEMPT_BELOW => Policy::Preempt,
            p => p,
        };
        (want != self.policy).then(|| {
            self.policy = want;
            want
        })
    }
}

/// [`Courtesy`] for the calling thread, with its input and output: one per
/// packet thread, each applying the policy to itself.
#[derive(Debug)]
pub struct Courteous {
    decide: Courtesy,
    /// `/proc/stat`, kept open; `None` when courtesy is off or failed.
    stat: Option<File>,
    /// `USER_HZ`, the unit of `/proc/stat`.
    hz: u64,
    /// Where `status` reads the policy in force.
    publish: Published,
}

impl Courteous {
    /// With `enabled` false (node.toml `polite_wakeups = false`) the thread
    /// keeps the kernel's default and [`Courteous::after_work`] does nothing.
    pub fn new(enabled: bool, publish: Published) -> Self {
        let stat = enabled.then(|| File::open("/proc/stat")).and_then(|r| {
            r.map_err(|e| tracing::info!(error = %e, "/proc/stat: packet threads keep preempting"))
                .ok()
        });
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Courteous {
            decide: Courtesy::new(),
            stat,
            hz: u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100),
            publish,
        }
    }

    pub fn policy(&self) -> Policy {
        self.decide.policy()
    }

    /// Call when the thread has moved packets and is about to wait: samples
    /// if due and applies a change. A failure turns courtesy off for this
    /// thread (back to the default policy), logged once.
    pub fn after_work(&mut self, now: Instant) {
        let Some(stat) = &self.stat else { return };
        if !self.decide.due(now) {
            return;
        }
        let change = match read_idle(stat, self.hz) {
            Ok(idle) => self.decide.sample(now, idle),
            Err(e) => {
                tracing::info!(error = %e, "/proc/stat: packet threads keep preempting");
                self.off();
                return;
            }
        };
        if let Some(p) = change {
            match apply(p) {
                Ok(()) => {
                    self.publish.store(p == Policy::Defer, Ordering::Relaxed);
                    tracing::debug!(policy = p.as_str(), "packet thread scheduling");
                }
                Err(e) => {
                    tracing::info!(error = %e, policy = p.as_str(), "sched_setscheduler: packet threads keep preempting");
                    self.off();
                }
            }
        }
    }

    fn off(&mut self) {
        self.stat = None;
        if self.decide.policy() != Policy::Preempt {
            let _ = apply(Policy::Preempt);
        }
        self.publish.store(false, Ordering::Relaxed);
        self.decide = Courtesy::new();
    }
}

/// The machine's idle CPU time so far (idle plus I/O wait, all CPUs).
fn read_idle(stat: &File, hz: u64) -> io::Result<Duration> {
    // Only the first line is wanted; the kernel builds the whole file
    // either way, and restarts it for a read at offset 0.
    let mut buf = [0u8; 256];
    let n = stat.read_at(&mut buf, 0)?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let ticks = idle_ticks(text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no \"cpu\" line with idle and iowait",
        )
    })?;
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos(ticks % hz * 1_000_000_000 / hz))
}

/// Idle plus iowait ticks from `/proc/stat`'s first line
/// (`cpu user nice system idle iowait ...`).
fn idle_ticks(text: &str) -> Option<u64> {
    let mut f = text.lines().next()?.split_ascii_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(5).map(str::parse).collect::<Result<_, _>>().ok()?;
    v.get(3)?.checked_add(*v.get(4)?)
}

/// Sets the calling thread's policy.
fn apply(p: Policy) -> io::Result<()> {
    let policy = match p {
        Policy::Preempt => libc::SCHED_OTHER,
        Policy::Defer => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[allow(clippy::disallowed_methods)] // a test is its own driver
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn spare_cpu_defers_busy_cpus_preempt_with_a_band_between() {
        let t0 = t0();
        let mut c = Courtesy::new();
        assert!(c.due(t0));
        // The first sample only starts the window.
        assert_eq!(c.sample(t0, 100 * S), None);
        assert!(!c.due(t0 + S / 2) && c.due(t0 + S));
        // 1.9 of 2 CPUs idle: defer.
        assert_eq!(c.sample(t0 + S, 100 * S + S * 19 / 10), Some(Policy::Defer));
        // 0.3 idle: inside the band, stays.
        let idle = 100 * S + S * 22 / 10;
        assert_eq!(c.sample(t0 + 2 * S, idle), None);
        assert_eq!(c.policy(), Policy::Defer);
        // 0.1 idle: preempt; 0.4 is not enough to defer again.
        assert_eq!(c.sample(t0 + 3 * S, idle + S / 10), Some(Policy::Preempt));
        let idle = idle + S / 10;
        assert_eq!(c.sample(t0 + 4 * S, idle + S * 4 / 10), None);
        assert_eq!(c.policy(), Policy::Preempt);
        // Averaged over a long window (a thread that slept ten seconds).
        let idle = idle + S * 4 / 10;
        assert_eq!(c.sample(t0 + 14 * S, idle + 8 * S), Some(Policy::Defer));
    }

    #[test]
    fn a_counter_going_backwards_or_no_time_passing_is_harmless() {
        let t0 = t0();
        let mut c = Courtesy::new();
        c.sample(t0, 10 * S);
        assert_eq!(c.sample(t0 + S, 12 * S), Some(Policy::Defer));
        // Same instant: no decision.
        assert_eq!(c.sample(t0 + S, 13 * S), None);
        // Backwards: counts as no idle time.
        assert_eq!(c.sample(t0 + 2 * S, S), Some(Policy::Preempt));
    }

    #[test]
    fn idle_and_iowait_from_the_first_line() {
        let text = "cpu  199906 0 45621 421380 1138 0 7020 233 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(idle_ticks(text), Some(421380 + 1138));
        assert_eq!(idle_ticks("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(idle_ticks("cpu  1 2 3\n"), None);
        assert_eq!(idle_ticks("cpu  1 2 3 x 5\n"), None);
        assert_eq!(idle_ticks(""), None);
    }

    #[test]
    fn the_machines_idle_time_grows_and_the_policy_lands_on_the_thread() {
        let f = File::open("/proc/stat").unwrap();
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let a = read_idle(&f, hz).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Read again through the same descriptor: from the start.
        let b = read_idle(&f, hz).unwrap();
        assert!(a > Duration::ZERO && b >= a);
        // A thread of its own, so the test runner's keep their policy.
        std::thread::spawn(|| {
            let get = || unsafe { libc::sched_getscheduler(0) };
            apply(Policy::Defer).unwrap();
            assert_eq!(get(), libc::SCHED_BATCH);
            apply(Policy::Preempt).unwrap();
            assert_eq!(get(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_thread_runs_under_the_policy_it_decided() {
        std::thread::spawn(|| {
            let t0 = t0();
            let seen = Published::default();
            let mut c = Courteous::new(true, seen.clone());
            for i in 0..3 {
                c.after_work(t0 + i * S);
                assert_eq!(published(&seen), c.policy());
                let want = match c.policy() {
                    Policy::Preempt => libc::SCHED_OTHER,
                    Policy::Defer => libc::SCHED_BATCH,
                };
                assert_eq!(unsafe { libc::sched_getscheduler(0) }, want);
                assert!(c.stat.is_some());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn off_does_nothing() {
        let mut c = Courteous::new(false, Published::default());
        c.after_work(t0());
        c.after_work(t0() + 2 * S);
        assert_eq!(c.policy(), Policy::Preempt);
        assert!(c.stat.is_none());
    }
}
