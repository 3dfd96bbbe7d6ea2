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
//! One shortcut crosses directions: a packet written to the TUN device is
//! usually answered by the local stack before the write returns (an echo
//! reply, a TCP ACK), so after writing, the UDP thread reads the TUN once
//! itself when the TUN thread is not busy, instead of waking it (a
//! cross-thread wakeup is tens of microseconds in a VM, twice per round
//! trip). The TUN read side is a mutex held from read to send, so TUN
//! packets still leave in the order they were read.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::core::{Event, Node, Transmit};
use crate::dataplane::Shared;
use crate::tunio::{TunIo, TunRead, TunWrite};
use crate::udpio::{RecvBatch, SendBatch, UdpIo};

/// How often a waiting thread checks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);

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
                self.transmits.iter().map(|t| (t.dst, &t.payload[..])),
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
}

/// Scratch space of the TUN -> UDP direction (made by the first reader).
pub(crate) struct TunSide {
    rd: TunRead,
    out: Outputs,
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
        self.stop.load(Ordering::Relaxed)
    }

    /// TUN -> core (route, filter, encrypt) -> UDP.
    fn tun_loop(&self) -> io::Result<()> {
        while !self.stopped() {
            let got = {
                let mut side = self
                    .tun_side
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.tun_once(&mut side)?
            };
            if !got {
                self.tun.wait_readable(STOP_CHECK)?;
            }
        }
        Ok(())
    }

    /// Reads one batch from the TUN device (without waiting) and sends it;
    /// false when nothing was queued. Call with the TUN side locked.
    fn tun_once(&self, side: &mut Option<TunSide>) -> io::Result<bool> {
        let TunSide { rd, out } = side.get_or_insert_with(|| TunSide {
            rd: TunRead::new(&self.tun),
            out: Outputs::default(),
        });
        match self.tun.recv(rd) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::debug!(error = %e, "tun frame dropped");
                return Ok(true);
            }
            Err(e) => return Err(e),
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
        Ok(true)
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

    /// UDP -> core (admit, decrypt, filter) -> TUN.
    fn udp_loop(&self) -> io::Result<()> {
        let mut rb = RecvBatch::new(&self.udp);
        let mut out = Outputs::default();
        while !self.stopped() {
            match self.udp.recv(&mut rb) {
                Ok(0) => {
                    self.udp.wait_readable(STOP_CHECK)?;
                    continue;
                }
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK)) => {
                    return Err(e);
                }
                // ICMP errors from old endpoints surface here; not fatal.
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            }
            {
                let mut core = self.shared.lock();
                let now = now();
                rb.for_each(|from, d| core.handle_udp(now, from, d));
                out.exchange(&mut core, &self.events);
            }
            if out.flush(&self.udp, &self.tun) {
                self.tun_answer();
            }
        }
        Ok(())
    }
}
