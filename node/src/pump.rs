//! The packet path: two dedicated threads, one reading the TUN device
//! (encrypt, send) and one reading the UDP socket (decrypt, write to the
//! TUN). Each reads a batch, runs the whole batch through the locked core,
//! unlocks, and writes the core's outputs in one batched call.
//!
//! Why threads and not tokio tasks: a blocked thread is woken by the
//! kernel directly, with no reactor hop, which is both lower latency and
//! less CPU; and each direction is one thread, so packets of a flow leave
//! in the order they arrived (TCP throttles on reordering).
//!
//! Two lanes only under load. While traffic is light (pings, interactive
//! sessions, request/response) the UDP thread is parked and the TUN thread
//! serves both the TUN device and the socket, like a single-threaded
//! tunnel: a round trip then wakes one thread per node and leg, always the
//! same one, instead of a different thread (often on another, idle, CPU)
//! for each direction plus the TUN thread of the answering node, woken for
//! nothing when the local stack's reply lands on the TUN. A batch of more
//! than `BULK_BATCH` packets, or many batches in a short time, wakes the
//! UDP thread; after `IDLE_AFTER` without a datagram it parks again.
//!
//! One shortcut crosses directions: a packet written to the TUN device is
//! usually answered by the local stack before the write returns (an echo
//! reply, a TCP ACK), so after writing, the UDP thread reads the TUN once
//! itself when the TUN thread is not busy, instead of waking it (a
//! cross-thread wakeup is tens of microseconds in a VM, twice per round
//! trip). Each side (TUN reading, UDP reading) is a mutex held from read to
//! send, so packets still leave in the order they were read whichever
//! thread moves them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::core::{Event, Node, Transmit};
use crate::courtesy::{Courteous, Published};
use crate::dataplane::Shared;
use crate::packet::may_draw_answer;
use crate::tunio::{TunIo, TunRead, TunWrite};
use crate::udpio::{RecvBatch, SendBatch, UdpIo};
use crate::waitset::{Ready, WaitSet};

/// The longest a packet thread sleeps. Stopping wakes both threads
/// ([`Pump::stop`]), so this only bounds the wait should a wakeup ever be
/// lost; it is long so that an idle node's threads stay asleep (every
/// wakeup of an idle vCPU costs the host, and a short check interval woke
/// the parked UDP thread five times a second).
const STOP_CHECK: Duration = Duration::from_secs(30);
/// A batch of more packets than this is bulk traffic: two lanes.
const BULK_BATCH: usize = 2;
/// More batches than this within [`RATE_WINDOW`] (many small packets, e.g.
/// request/response at a high rate) also means two lanes.
const BUSY_BATCHES: u32 = 64;
const RATE_WINDOW: Duration = Duration::from_millis(10);
/// The UDP thread parks after this long without a datagram.
const IDLE_AFTER: Duration = Duration::from_millis(100);

#[allow(clippy::disallowed_methods)] // the driver owns the clocks
fn now() -> Instant {
    Instant::now()
}

/// Outputs drained from the core under the lock, written after it.
#[derive(Default)]
pub struct Outputs {
    transmits: Vec<Transmit>,
    tun: Vec<Vec<u8>>,
    /// Buffers already written, returned to the core at the next lock.
    spent: Vec<Vec<u8>>,
    send: SendBatch,
    write: TunWrite,
}

// SAFETY: the scratch space holds raw pointers only while a system call
// runs on the owning thread; between calls they are never read.
unsafe impl Send for Outputs {}

impl Outputs {
    /// Returns spent buffers and takes new outputs; call with the lock held.
    pub fn exchange(&mut self, core: &mut Node, events: &mpsc::Sender<Event>) {
        for b in self.spent.drain(..) {
            core.recycle(b);
        }
        while let Some(t) = core.poll_transmit() {
            self.transmits.push(t);
        }
        while let Some(p) = core.poll_tun_write() {
            self.tun.push(p);
        }
        while let Some(e) = core.poll_event() {
            if events.try_send(e).is_err() {
                tracing::trace!("event queue full, event dropped");
            }
        }
    }

    /// Writes what `exchange` took; call without the lock. Returns whether
    /// anything went to the TUN device.
    pub fn flush(&mut self, udp: &UdpIo, tun: &TunIo) -> bool {
        if !self.transmits.is_empty() {
            udp.send(
                &mut self.send,
                self.transmits
                    .iter()
                    .map(|t| (t.dst, &t.payload[..], t.peer)),
            );
            self.spent
                .extend(self.transmits.drain(..).map(|t| t.payload));
        }
        let wrote = !self.tun.is_empty();
        if wrote {
            tun.send(&mut self.write, &mut self.tun);
            self.spent.append(&mut self.tun);
        }
        wrote
    }
}

/// A started packet thread and the channel on which it reports its end.
pub(crate) type Running = (JoinHandle<()>, oneshot::Receiver<io::Result<()>>);

/// What both threads share.
#[derive(Clone)]
pub(crate) struct Pump {
    pub(crate) shared: Arc<Shared>,
    pub(crate) udp: Arc<UdpIo>,
    pub(crate) tun: Arc<TunIo>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) stop: Arc<AtomicBool>,
    /// The TUN read side: held from a read until its packets are sent.
    pub(crate) tun_side: Arc<Mutex<Option<TunSide>>>,
    /// The UDP read side, likewise (the TUN thread reads UDP while idle).
    pub(crate) udp_side: Arc<Mutex<Option<UdpSide>>>,
    pub(crate) lanes: Arc<Lanes>,
    /// node.toml `polite_wakeups` (see [`crate::courtesy`]).
    pub(crate) polite: bool,
    /// Each thread's policy for `status`: the TUN thread's, the UDP thread's.
    pub(crate) policies: [Published; 2],
}

/// Scratch space of the TUN -> UDP direction (made by the first reader).
pub(crate) struct TunSide {
    rd: TunRead,
    out: Outputs,
    /// A lone packet's datagram (see [`Node::handle_tun_lone`]).
    lone: Vec<u8>,
}

/// Scratch space of the UDP -> TUN direction (made by the first reader).
pub(crate) struct UdpSide {
    rb: RecvBatch,
    out: Outputs,
    /// A lone datagram's packet (see [`Node::handle_udp_lone`]).
    lone: Vec<u8>,
}

// SAFETY: the receive batch's raw pointers point into its own heap
// buffers (never resized) and are only used by `recvmmsg`, under the UDP
// side's lock.
unsafe impl Send for UdpSide {}

/// Whether the UDP socket has its own thread (busy) or is served by the
/// TUN thread (idle), and the means to switch.
pub(crate) struct Lanes {
    busy: AtomicBool,
    /// The UDP thread waits here while idle.
    park: Mutex<()>,
    unpark: Condvar,
    /// An eventfd in the TUN thread's wait sets: "watch the socket too now".
    kick: OwnedFd,
    /// What the TUN thread waits on while idle: TUN, kick and sockets ...
    idle_set: Arc<WaitSet>,
    /// ... and while busy: TUN and kick.
    busy_set: WaitSet,
    /// What the UDP thread waits on while busy: the sockets.
    udp_set: Arc<WaitSet>,
}

/// Tokens of the wait sets; UDP socket `i` (0: the listening one, then
/// the peer sockets, see [`crate::udpio`]) is `UDP + i`.
const TUN: u32 = 0;
const KICK: u32 = 1;
const UDP: u32 = 2;

impl Lanes {
    /// Lanes for a TUN device and a socket, which must stay open while
    /// these are used.
    pub(crate) fn new(tun: RawFd, udp: RawFd) -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let kick = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = |members: &[(RawFd, u32)]| -> io::Result<WaitSet> {
            let s = WaitSet::new()?;
            for &(fd, token) in members {
                s.add(fd, token)?;
            }
            Ok(s)
        };
        let k = kick.as_raw_fd();
        Ok(Self {
            busy: AtomicBool::new(false),
            park: Mutex::new(()),
            unpark: Condvar::new(),
            idle_set: Arc::new(set(&[(tun, TUN), (k, KICK), (udp, UDP)])?),
            busy_set: set(&[(tun, TUN), (k, KICK)])?,
            udp_set: Arc::new(set(&[(udp, UDP)])?),
            kick,
        })
    }

    /// Has `udp`'s peer sockets, as it makes them, watched where the
    /// listening socket is.
    pub(crate) fn watch_peer_sockets(&self, udp: &UdpIo) {
        udp.watch_in(vec![self.idle_set.clone(), self.udp_set.clone()], UDP);
    }

    pub(crate) fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    fn to_busy(&self) {
        if !self.busy.swap(true, Ordering::AcqRel) {
            tracing::trace!("packet path: two lanes");
            // Taking the lock orders this after a parking thread's check.
            let _g = self.park.lock().unwrap_or_else(PoisonError::into_inner);
            self.unpark.notify_one();
        }
    }

    fn to_idle(&self) {
        if self.busy.swap(false, Ordering::AcqRel) {
            tracing::trace!("packet path: one lane");
            self.kick();
        }
    }

    /// Waits (at most `timeout`) until busy or stopping; `stop` is read
    /// under the lock that [`Lanes::wake_all`] takes, so no wakeup is lost.
    fn park(&self, timeout: Duration, stop: &AtomicBool) {
        let g = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.busy() && !stop.load(Ordering::Acquire) {
            let _ = self.unpark.wait_timeout(g, timeout);
        }
    }

    /// Wakes both threads wherever they wait (after the stop flag is set).
    fn wake_all(&self) {
        {
            let _g = self.park.lock().unwrap_or_else(PoisonError::into_inner);
            self.unpark.notify_all();
        }
        self.kick();
    }

    /// Makes the TUN thread's wait sets readable until it drains the kick.
    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full
        // counter (EAGAIN) still leaves it readable: nothing lost.
        unsafe { libc::write(self.kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn drain_kick(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer.
        unsafe { libc::read(self.kick.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
    }
}

/// Counts batches per window while idle: many small ones mean busy.
#[derive(Default)]
struct Rate {
    since: Option<Instant>,
    batches: u32,
}

impl Rate {
    /// Records a batch at `at`; true when the window's budget is exceeded.
    fn batch(&mut self, at: Instant) -> bool {
        match self.since {
            Some(t) if at.saturating_duration_since(t) < RATE_WINDOW => self.batches += 1,
            _ => {
                self.since = Some(at);
                self.batches = 1;
            }
        }
        self.batches > BUSY_BATCHES
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pump {
    /// Starts both threads. Each reports how it ended on its channel (an
    /// error only for a dead device or socket).
    pub fn start(&self) -> io::Result<Vec<Running>> {
        let mut out = Vec::new();
        for (name, f) in [
            ("segmesh-tun", Pump::tun_loop as fn(&Pump) -> io::Result<()>),
            ("segmesh-udp", Pump::udp_loop),
        ] {
            let (tx, rx) = oneshot::channel();
            let p = self.clone();
            let span = tracing::Span::current();
            let h = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let _g = span.enter();
                    let _ = tx.send(f(&p));
                })?;
            out.push((h, rx));
        }
        Ok(out)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Tells both threads to end and wakes them: the TUN thread and a
    /// parked UDP thread return at once, a busy UDP thread (which waits on
    /// the socket alone) within [`IDLE_AFTER`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.lanes.wake_all();
    }

    /// TUN -> core (route, filter, encrypt) -> UDP; while idle also
    /// UDP -> core -> TUN.
    fn tun_loop(&self) -> io::Result<()> {
        let mut rate = Rate::default();
        let mut courtesy = Courteous::new(self.polite, self.policies[0].clone());
        let mut moved = false;
        let (mut tun_ready, mut udp_ready) = (true, Ready::ALL);
        while !self.stopped() {
            let busy = self.lanes.busy();
            let from_tun = if tun_ready {
                self.tun_once(&mut lock(&self.tun_side))?
            } else {
                0
            };
            let (from_udp, wrote) = if !busy && !udp_ready.is_empty() {
                self.udp_once(&mut lock(&self.udp_side), false, udp_ready)?
            } else {
                (0, false)
            };
            if busy {
                // Drain the device; wait only once it is empty.
                tun_ready = from_tun > 0;
            } else {
                if from_tun > BULK_BATCH
                    || from_udp > BULK_BATCH
                    || (from_tun + from_udp > 0 && rate.batch(now()))
                {
                    // GRO first: the UDP thread reads batches.
                    self.udp.set_gro(true);
                    self.lanes.to_busy();
                }
                // Light traffic: one packet per wakeup is the rule, so wait
                // again at once instead of reading until EAGAIN (two system
                // calls saved per pass), except for the local stack's answer
                // to what was just written to the TUN.
                tun_ready = wrote;
            }
            udp_ready = Ready::default();
            // The scheduling policy: while busy after every batch (the
            // device may not run dry for minutes); while idle just before
            // waiting, never between a write and the read of its answer.
            moved |= from_tun + from_udp > 0;
            if moved && (busy || !tun_ready) {
                courtesy.after_work(now());
                moved = false;
            }
            if !tun_ready {
                (tun_ready, udp_ready) = self.tun_wait(self.lanes.busy())?;
            }
        }
        Ok(())
    }

    /// Waits until the TUN device (and, while idle, a socket) is readable
    /// or the lanes change; whether the TUN is, and which sockets are.
    fn tun_wait(&self, busy: bool) -> io::Result<(bool, Ready)> {
        let set = if busy {
            &self.lanes.busy_set
        } else {
            &self.lanes.idle_set
        };
        let ready = set.wait(STOP_CHECK)?;
        let kicked = ready.has(KICK);
        if kicked {
            self.lanes.drain_kick();
        }
        // After a kick (the lanes changed), look at everything.
        Ok(if kicked {
            (true, Ready::ALL)
        } else {
            (ready.has(TUN), ready.from_token(UDP))
        })
    }

    /// Reads one batch from the TUN device (without waiting) and sends it;
    /// the number of packets, 0 when nothing was queued. Call with the TUN
    /// side locked.
    fn tun_once(&self, side: &mut Option<TunSide>) -> io::Result<usize> {
        let TunSide { rd, out, lone } = side.get_or_insert_with(|| TunSide {
            rd: TunRead::new(&self.tun),
            out: Outputs::default(),
            lone: Vec::new(),
        });
        let n = match self.tun.recv(rd) {
            Ok(0) => return Ok(0),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::debug!(error = %e, "tun frame dropped");
                return Ok(1);
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = rd.lone() {
            // Interactive traffic: the datagram straight from the core to
            // the socket; the queues only when the core used them.
            let (sent, more) = {
                let mut core = self.shared.lock();
                let sent = core.handle_tun_lone(now(), p, lone);
                let more = core.has_output();
                if more {
                    out.exchange(&mut core, &self.events);
                }
                (sent, more)
            };
            if let Some((dst, len)) = sent {
                self.udp.send_lone(&mut out.send, dst, &lone[..len], true);
            }
            if more {
                out.flush(&self.udp, &self.tun);
            }
            return Ok(n);
        }
        {
            let mut core = self.shared.lock();
            let now = now();
            for p in rd.packets() {
                core.handle_tun(now, p);
            }
            out.exchange(&mut core, &self.events);
        }
        out.flush(&self.udp, &self.tun);
        Ok(n)
    }

    /// After a TUN write: read the local stack's answer now, unless the TUN
    /// thread is at it (then it has been woken anyway).
    fn tun_answer(&self) {
        let mut side = match self.tun_side.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Err(e) = self.tun_once(&mut side) {
            // The TUN thread meets the same error and ends the node.
            tracing::debug!(error = %e, "tun read after write");
        }
    }

    /// Reads one batch from each socket in `ready` (without waiting) and
    /// writes what they yield to the TUN; the number of datagrams (0 when
    /// nothing was queued) and whether the TUN may now hold the local
    /// stack's answer (something went to it; for a lone packet, one that
    /// may draw an answer). With `answer`, reads the TUN's answer after
    /// each such write (the TUN thread, which reads it next anyway, passes
    /// false). Without it the reads are lone ones (see [`UdpIo::recv`]):
    /// the TUN thread serves the sockets only while traffic is light. Call
    /// with the UDP side locked.
    fn udp_once(
        &self,
        side: &mut Option<UdpSide>,
        answer: bool,
        ready: Ready,
    ) -> io::Result<(usize, bool)> {
        let UdpSide { rb, out, lone } = side.get_or_insert_with(|| UdpSide {
            rb: RecvBatch::new(&self.udp),
            out: Outputs::default(),
            lone: Vec::new(),
        });
        let (mut datagrams, mut wrote) = (0, false);
        for i in (0..self.udp.sockets()).filter(|&i| ready.has(UDP + i as u32)) {
            match self.udp.recv(rb, i, !answer) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK)) => {
                    return Err(e);
                }
                // ICMP errors from old endpoints surface here; not fatal.
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    datagrams += 1;
                    continue;
                }
            }
            let w = if let Some((from, d)) = rb.lone() {
                // Interactive traffic: the packet straight from the core to
                // the TUN device; the queues only when the core used them.
                let (got, more) = {
                    let mut core = self.shared.lock();
                    let got = core.handle_udp_lone(now(), from, d, lone, TunIo::HEADROOM);
                    let more = core.has_output();
                    if more {
                        out.exchange(&mut core, &self.events);
                    }
                    (got, more)
                };
                if let Some(len) = got {
                    self.tun.send_lone(&mut lone[..TunIo::HEADROOM + len]);
                }
                // Whether to read the local stack's answer at once: not
                // after an echo reply or a UDP datagram (see
                // `packet::may_draw_answer`).
                let answerable = got.is_some_and(|len| {
                    may_draw_answer(&lone[TunIo::HEADROOM..TunIo::HEADROOM + len])
                });
                (more && out.flush(&self.udp, &self.tun)) || answerable
            } else {
                {
                    let mut core = self.shared.lock();
                    let now = now();
                    rb.for_each(|from, d| core.handle_udp(now, from, d));
                    out.exchange(&mut core, &self.events);
                }
                out.flush(&self.udp, &self.tun)
            };
            if w && answer {
                self.tun_answer();
            }
            datagrams += rb.datagrams();
            wrote |= w;
        }
        Ok((datagrams, wrote))
    }

    /// Before going idle, where the TUN thread reads datagrams one by one
    /// without control data: turns GRO off, true if the sockets are still
    /// empty then. Else GRO goes back on and the lanes stay busy: what
    /// came may be a train the kernel coalesced, which only a batch read
    /// with GRO on can cut apart (with GRO off the kernel reports no
    /// segment size). Trains arriving after the switch are split by the
    /// kernel as they are queued.
    fn quiet_without_gro(&self) -> io::Result<bool> {
        self.udp.set_gro(false);
        if self.lanes.udp_set.wait(Duration::ZERO)?.is_empty() {
            return Ok(true);
        }
        self.udp.set_gro(true);
        Ok(false)
    }

    /// UDP -> core (admit, decrypt, filter) -> TUN, while busy.
    fn udp_loop(&self) -> io::Result<()> {
        let mut ready = Ready::ALL;
        let mut courtesy = Courteous::new(self.polite, self.policies[1].clone());
        while !self.stopped() {
            if !self.lanes.busy() {
                self.lanes.park(STOP_CHECK, &self.stop);
                ready = Ready::ALL;
                continue;
            }
            let (n, _) = self.udp_once(&mut lock(&self.udp_side), true, ready)?;
            if n > 0 {
                courtesy.after_work(now());
            }
            // Which sockets have more: at once while datagrams flow (every
            // ready socket gets its turn), else after waiting.
            ready = self
                .lanes
                .udp_set
                .wait(if n > 0 { Duration::ZERO } else { IDLE_AFTER })?;
            if n == 0 && ready.is_empty() && self.quiet_without_gro()? {
                self.lanes.to_idle();
                ready = Ready::ALL;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_batches_in_one_window_mean_busy_a_steady_trickle_does_not() {
        let t0 = now();
        let mut r = Rate::default();
        // One batch every 0.5 ms (2,000/s, a busy interactive session):
        // at most 21 per 10 ms window.
        assert!((0..1000).all(|i| !r.batch(t0 + Duration::from_micros(500 * i))));
        let mut r = Rate::default();
        let burst: Vec<bool> = (0..=BUSY_BATCHES)
            .map(|i| r.batch(t0 + Duration::from_micros(10 * u64::from(i))))
            .collect();
        assert_eq!(
            burst.iter().filter(|&&b| b).count(),
            1,
            "the batch over budget"
        );
        assert!(burst[BUSY_BATCHES as usize]);
    }

    #[test]
    fn lanes_switch_once_each_way_and_the_kick_is_drained() {
        let (tun, udp) = (pipe(), pipe());
        let l = Lanes::new(tun.0.as_raw_fd(), udp.0.as_raw_fd()).unwrap();
        assert!(!l.busy());
        l.to_busy();
        l.to_busy();
        assert!(l.busy());
        // Parking while busy returns at once.
        l.park(Duration::from_secs(5), &AtomicBool::new(false));
        l.to_idle();
        l.to_idle();
        assert!(!l.busy());
        assert!(l.busy_set.wait(Duration::ZERO).unwrap().has(KICK));
        assert!(l.idle_set.wait(Duration::ZERO).unwrap().has(KICK));
        l.drain_kick();
        assert!(l.idle_set.wait(Duration::ZERO).unwrap().is_empty());
        assert!(l.udp_set.wait(Duration::ZERO).unwrap().is_empty());
    }

    #[test]
    fn stopping_wakes_a_parked_thread_and_the_tun_wait() {
        let (tun, udp) = (pipe(), pipe());
        let l = Arc::new(Lanes::new(tun.0.as_raw_fd(), udp.0.as_raw_fd()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (l, stop) = (l.clone(), stop.clone());
            move || {
                l.park(Duration::from_secs(3600), &stop);
                let _ = tx.send(());
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "parked until told");
        stop.store(true, Ordering::Release);
        l.wake_all();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the parked thread woke for the stop");
        assert!(l.idle_set.wait(Duration::ZERO).unwrap().has(KICK));
        assert!(l.busy_set.wait(Duration::ZERO).unwrap().has(KICK));
        // Set before parking: parking returns at once.
        l.park(Duration::from_secs(3600), &stop);
    }

    /// A pipe (read end, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors; checked below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn each_wait_set_watches_its_own_descriptors() {
        let (tun, udp) = (pipe(), pipe());
        let l = Lanes::new(tun.0.as_raw_fd(), udp.0.as_raw_fd()).unwrap();
        // SAFETY: one byte from a live buffer into our pipe.
        assert_eq!(
            unsafe { libc::write(udp.1.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        assert!(l.idle_set.wait(Duration::ZERO).unwrap().has(UDP));
        assert!(l.udp_set.wait(Duration::ZERO).unwrap().has(UDP));
        assert!(
            l.busy_set.wait(Duration::ZERO).unwrap().is_empty(),
            "busy: the TUN thread leaves the socket alone"
        );
        // SAFETY: likewise.
        assert_eq!(
            unsafe { libc::write(tun.1.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        assert!(l.busy_set.wait(Duration::ZERO).unwrap().has(TUN));
    }
}
