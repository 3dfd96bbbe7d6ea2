//! The packet path: two dedicated threads, one reading the TUN device
//! (encrypt, send) and one reading the UDP socket (decrypt, write to the
//! TUN). Each reads a batch, runs the whole batch through the locked core,
//! unlocks, and writes the core's outputs in one batched call.
//!
//! Why threads and not tokio tasks: a blocked thread is woken by the
//! kernel directly, with no reactor hop, which is both lower latency and
//! less CPU; and each direction is one thread, so packets of a flow leave
//! in the order they arrived (TCP throttles on reordering).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

    /// Writes what `exchange` took; call without the lock.
    pub fn flush(&mut self, udp: &UdpIo, tun: &TunIo) {
        if !self.transmits.is_empty() {
            udp.send(
                &mut self.send,
                self.transmits.iter().map(|t| (t.dst, &t.payload[..])),
            );
            self.spent
                .extend(self.transmits.drain(..).map(|t| t.payload));
        }
        if !self.tun.is_empty() {
            tun.send(&mut self.write, self.tun.iter().map(|p| &p[..]));
            self.spent.append(&mut self.tun);
        }
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
        let mut rd = TunRead::new(&self.tun);
        let mut out = Outputs::default();
        while !self.stopped() {
            match self.tun.recv(&mut rd) {
                Ok(0) => {
                    self.tun.wait_readable(STOP_CHECK)?;
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::debug!(error = %e, "tun frame dropped");
                    continue;
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
        }
        Ok(())
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
            out.flush(&self.udp, &self.tun);
        }
        Ok(())
    }
}
