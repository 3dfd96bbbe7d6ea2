//! Batched I/O on the TUN device. With offloads on (`IFF_VNET_HDR` and
//! `TUNSETOFFLOAD`, through tun-rs) the kernel hands over TCP (and UDP)
//! super-packets of up to 64 KiB that tun-rs splits into MTU-sized packets,
//! and packets we write are coalesced back into super-packets first
//! ([`crate::coalesce`]), each written with one `writev`: one system call
//! per ~45 packets instead of one per packet.
//!
//! The device is non-blocking; the data plane threads wait with `poll(2)`.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tun_rs::{IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::coalesce::Coalescer;
use crate::status::TunCounters;

/// Room for one super-packet and its virtio header.
const SUPER_PACKET: usize = VIRTIO_NET_HDR_LEN + 65_535;
// The coalescer writes the header tun-rs negotiated with the kernel.
const _: () = assert!(crate::coalesce::VNET_HDR_LEN == VIRTIO_NET_HDR_LEN);

/// The TUN device and whether it carries virtio headers.
pub struct TunIo {
    dev: SyncDevice,
    offload: bool,
    mtu: usize,
    counters: Counters,
    /// Whether a write already failed: the first failure is a warning
    /// (a kernel refusing our super-packets would stall every TCP flow),
    /// the rest are debug lines.
    write_failed: AtomicBool,
}

/// [`TunCounters`], updated by the packet threads (relaxed: they are
/// statistics, read by `status`).
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    packets_read: AtomicU64,
    writes: AtomicU64,
    packets_written: AtomicU64,
}

impl TunIo {
    pub fn new(dev: SyncDevice, mtu: u16) -> io::Result<Self> {
        dev.set_nonblocking(true)?;
        let offload = dev.tcp_gso();
        Ok(Self {
            dev,
            offload,
            mtu: usize::from(mtu),
            counters: Counters::default(),
            write_failed: AtomicBool::new(false),
        })
    }

    /// I/O since start, for `status`.
    pub fn counters(&self) -> TunCounters {
        let c = &self.counters;
        TunCounters {
            reads: c.reads.load(Ordering::Relaxed),
            packets_read: c.packets_read.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            packets_written: c.packets_written.load(Ordering::Relaxed),
        }
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn write_failed(&self, e: &io::Error, segments: usize) {
        if self.write_failed.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, segments, "tun write failed");
        } else {
            tracing::warn!(
                error = %e,
                segments,
                "tun write failed: packets dropped (later failures at debug level)"
            );
        }
    }

    /// The device, for address and route changes.
    pub fn device(&self) -> &SyncDevice {
        &self.dev
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.dev.as_raw_fd()
    }

    /// Reads one frame (with offloads: one super-packet, split) without
    /// waiting; returns the number of packets, 0 when nothing was queued.
    /// A malformed super-packet is an `InvalidData` error; the device stays
    /// usable.
    pub fn recv(&self, b: &mut TunRead) -> io::Result<usize> {
        b.n = 0;
        let r = self
            .dev
            .recv_multiple(&mut b.original, &mut b.bufs, &mut b.sizes, 0);
        match r {
            Ok(n) => {
                b.n = n;
                Self::count(&self.counters.reads, 1);
                Self::count(&self.counters.packets_read, n);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) if e.raw_os_error().is_none() => {
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes packets, TCP runs of one flow coalesced into super-packets
    /// when offloads are on (see [`crate::coalesce`]; head packets are
    /// patched in place). Errors are logged; the packets are dropped (TCP
    /// recovers).
    pub fn send(&self, b: &mut TunWrite, packets: &mut [Vec<u8>]) {
        if !self.offload {
            for p in packets.iter() {
                match self.dev.send(p) {
                    Ok(_) => {
                        Self::count(&self.counters.writes, 1);
                        Self::count(&self.counters.packets_written, 1);
                    }
                    Err(e) => self.write_failed(&e, 1),
                }
            }
            return;
        }
        let TunWrite { plan, iovs } = b;
        let fd = self.dev.as_raw_fd();
        plan.plan(packets);
        for w in plan.writes() {
            iovs.clear();
            iovs.push(iovec(&w.vnet));
            iovs.extend(plan.parts(w, packets).map(iovec));
            // SAFETY: the iovecs point into `w` and `packets`, both alive
            // and unchanged for the duration of the call.
            let n = unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as libc::c_int) };
            if n < 0 {
                self.write_failed(&io::Error::last_os_error(), w.segments);
            } else {
                Self::count(&self.counters.writes, 1);
                Self::count(&self.counters.packets_written, w.segments);
            }
        }
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Read scratch space for one thread.
pub struct TunRead {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    n: usize,
}

impl TunRead {
    pub fn new(io: &TunIo) -> Self {
        // Segments never exceed the MTU; a little slack for safety.
        let seg = io.mtu.max(1280) + 64;
        Self {
            original: vec![0; SUPER_PACKET],
            bufs: (0..IDEAL_BATCH_SIZE).map(|_| vec![0; seg]).collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
            n: 0,
        }
    }

    /// The packets of the last [`TunIo::recv`], in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.n]
            .iter()
            .zip(&self.sizes)
            .map(|(b, &n)| &b[..n])
    }
}

/// Write scratch space for one thread: the coalescing plan and the
/// `writev` vector.
#[derive(Default)]
pub struct TunWrite {
    plan: Coalescer,
    iovs: Vec<libc::iovec>,
}
