//! The packet threads' clock: `Instant`s extrapolated from the CPU's time
//! stamp counter between readings of the real clock.
//!
//! Why: the sans-IO core takes `now` with every packet, and on an idle
//! tunnel each packet arrives after the thread slept. The first
//! `clock_gettime` after a sleep is a cold one: the vDSO's code and data
//! pages are out of the TLB and caches, and in a VM a TLB miss is a
//! two-level page walk. Measured after a 10 ms sleep: ~4,900 cycles (1.9 us)
//! on an AMD EPYC host and ~3,000 on an Intel one, against 80-140 warm
//! (docs/benchmarks.md, "Eleventh session"). A round trip paid that three
//! times (node A's two wakeups, node B's one). `rdtsc` touches no memory.
//!
//! How: each thread keeps an anchor (a real `Instant` and the counter at
//! that moment) and the counter's rate, measured between two anchors at
//! least [`SPAN`] apart. Within `SPAN` of the anchor a reading is the anchor
//! plus the elapsed ticks at that rate; beyond it (or when the counter went
//! backwards, or before a rate is known) the real clock is read and becomes
//! the new anchor. So one real reading per second of traffic, and an
//! extrapolation error of at most the rate's error over one `SPAN` (the
//! rate is measured over a span of at least `SPAN`, so microseconds). What
//! the core does with `now` (keepalive and rekey timers in seconds, flow
//! expiry in seconds, the lanes' 10 ms rate window) needs milliseconds.
//!
//! The counter is used only where the kernel itself keeps time with it
//! (its clocksource is `tsc`, which it picks only when the counter is
//! invariant and synchronised across CPUs); anywhere else, and off x86-64,
//! every reading is the real clock.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long an anchor serves: the span over which the rate is measured and
/// after which the real clock is read again.
pub const SPAN: Duration = Duration::from_secs(1);

/// Where the kernel names the clocksource it keeps time with.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// Extrapolates readings of a real clock from a tick counter. Pure logic:
/// the caller passes the counter and a way to read the real clock, so tests
/// drive both.
#[derive(Debug, Default)]
pub struct Extrapolator {
    /// The last real reading and the counter then.
    anchor: Option<(Instant, u64)>,
    /// Nanoseconds per tick between the last two anchors; 0 until known.
    ns_per_tick: f64,
    /// Ticks in [`SPAN`] at that rate.
    span_ticks: u64,
    /// The latest reading returned: readings never go backwards.
    last: Option<Instant>,
}

impl Extrapolator {
    /// The time at counter value `ticks`, reading the real clock (`real`)
    /// only when the anchor is older than [`SPAN`], the counter went
    /// backwards, or no rate is known yet.
    pub fn now(&mut self, ticks: u64, real: impl FnOnce() -> Instant) -> Instant {
        let t = match self.anchor {
            Some((at, from))
                if self.span_ticks > 0 && ticks >= from && ticks - from < self.span_ticks =>
            {
                // Below 2^53 ticks, so the conversion to f64 is exact.
                at + Duration::from_nanos(((ticks - from) as f64 * self.ns_per_tick) as u64)
            }
            _ => self.reanchor(ticks, real()),
        };
        let t = self.last.map_or(t, |last| t.max(last));
        self.last = Some(t);
        t
    }

    /// A real reading `at` taken at counter value `ticks`: the new anchor,
    /// and a new rate when the old anchor is at least `SPAN` back (a shorter
    /// span keeps the old anchor, so the rate is always measured over one).
    fn reanchor(&mut self, ticks: u64, at: Instant) -> Instant {
        match self.anchor {
            Some((a, from)) if ticks > from && at.duration_since(a) >= SPAN => {
                let ns = at.duration_since(a).as_nanos() as f64;
                self.ns_per_tick = ns / (ticks - from) as f64;
                self.span_ticks = (SPAN.as_nanos() as f64 / self.ns_per_tick) as u64;
                self.anchor = Some((at, ticks));
            }
            // The counter went backwards: start over.
            Some((_, from)) if ticks < from => {
                self.ns_per_tick = 0.0;
                self.span_ticks = 0;
                self.anchor = Some((at, ticks));
            }
            Some(_) => {}
            None => self.anchor = Some((at, ticks)),
        }
        at
    }
}

/// The time stamp counter, when the kernel keeps time with it.
fn counter() -> Option<u64> {
    static USABLE: OnceLock<bool> = OnceLock::new();
    if !*USABLE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| s.trim() == "tsc")
    }) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` has no preconditions; it reads a register.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[allow(clippy::disallowed_methods)] // the driver owns the clocks
fn real() -> Instant {
    Instant::now()
}

thread_local! {
    static CLOCK: RefCell<Extrapolator> = RefCell::new(Extrapolator::default());
}

/// The current time for the calling thread's packets (see the module doc).
pub fn now() -> Instant {
    match counter() {
        Some(ticks) => CLOCK.with(|c| c.borrow_mut().now(ticks, real)),
        None => real(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A virtual real clock and counter: 3 ticks per nanosecond.
    struct Fake {
        t0: Instant,
        ns: Cell<u64>,
        reads: Cell<u32>,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                t0: real(),
                ns: Cell::new(0),
                reads: Cell::new(0),
            }
        }
        /// A fake and an extrapolator that has read it twice, a span apart,
        /// so it knows the rate (1 s over 3e9 ticks).
        fn with_rate() -> (Self, Extrapolator) {
            let f = Self::new();
            let mut x = Extrapolator::default();
            f.read(&mut x);
            f.advance(SPAN);
            f.read(&mut x);
            (f, x)
        }
        fn advance(&self, d: Duration) {
            self.ns.set(self.ns.get() + d.as_nanos() as u64);
        }
        fn ticks(&self) -> u64 {
            1_000_000 + 3 * self.ns.get()
        }
        fn real(&self) -> Instant {
            self.reads.set(self.reads.get() + 1);
            self.t0 + Duration::from_nanos(self.ns.get())
        }
        fn read(&self, x: &mut Extrapolator) -> Instant {
            x.now(self.ticks(), || self.real())
        }
    }

    #[test]
    fn reads_the_real_clock_until_a_rate_is_measured_over_a_span() {
        let f = Fake::new();
        let mut x = Extrapolator::default();
        // Readings at 0, 0.15, ..., 1.05 s: each one real (the first anchor
        // stays, so the rate is measured over 1.05 s, at the last).
        for i in 1..=8 {
            f.read(&mut x);
            assert_eq!(f.reads.get(), i);
            f.advance(Duration::from_millis(150));
        }
        assert!((x.ns_per_tick - 1.0 / 3.0).abs() < 1e-9);
        f.read(&mut x);
        assert_eq!(f.reads.get(), 8, "from now on, extrapolated");
    }

    #[test]
    fn extrapolates_within_a_span_and_reanchors_after_it() {
        let (f, mut x) = Fake::with_rate();
        let reads = f.reads.get();
        for _ in 0..99 {
            f.advance(Duration::from_millis(10));
            let got = f.read(&mut x);
            let want = f.t0 + Duration::from_nanos(f.ns.get());
            let err = if got > want { got - want } else { want - got };
            assert!(err < Duration::from_micros(1), "off by {err:?}");
        }
        assert_eq!(f.reads.get(), reads, "no real reading within the span");
        f.advance(Duration::from_millis(20));
        f.read(&mut x);
        assert_eq!(f.reads.get(), reads + 1, "past the span: a real reading");
    }

    #[test]
    fn a_counter_that_goes_backwards_falls_back_to_the_real_clock() {
        let (f, mut x) = Fake::with_rate();
        f.advance(Duration::from_millis(5));
        let before = f.reads.get();
        let t = x.now(5, || f.real()); // far below the anchor's ticks
        assert_eq!(f.reads.get(), before + 1);
        assert_eq!(t, f.t0 + Duration::from_nanos(f.ns.get()));
        assert_eq!(x.span_ticks, 0, "the rate is measured again");
    }

    #[test]
    fn readings_never_go_backwards() {
        let (f, mut x) = Fake::with_rate();
        // Just inside the span the extrapolation runs ahead of a real clock
        // that then reads earlier (a rate error): the reading holds.
        let ahead = x.now(f.ticks() + 2_999_999_999, || f.real());
        let next = x.now(f.ticks() + 3_000_000_100, || f.t0);
        assert!(next >= ahead);
    }

    #[test]
    fn the_thread_clock_follows_the_real_one() {
        // Past one span, so that (where the counter is used) the last
        // readings are extrapolated ones.
        let first = now();
        std::thread::sleep(SPAN + Duration::from_millis(50));
        now();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            let (a, n, b) = (real(), now(), real());
            assert!(n >= first);
            let slack = Duration::from_millis(1);
            assert!(a <= n + slack && n <= b + slack, "{a:?} {n:?} {b:?}");
        }
    }
}
