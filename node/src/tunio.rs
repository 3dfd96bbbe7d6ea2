//! Batched I/O on the TUN device. With offloads on (`IFF_VNET_HDR` and
//! `TUNSETOFFLOAD`, through tun-rs) the kernel hands over TCP (and UDP)
//! super-packets of up to 64 KiB that tun-rs splits into MTU-sized packets,
//! and packets we write are coalesced back into super-packets (GRO) first:
//! one system call per ~45 packets instead of one per packet.
//!
//! The device is non-blocking; the data plane threads wait with `poll(2)`.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::udpio::poll_fd;

/// Room for one super-packet and its virtio header.
const SUPER_PACKET: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Packets written per `send_multiple` (tun-rs's GRO table is sized for it).
const WRITE_BATCH: usize = IDEAL_BATCH_SIZE;

/// The TUN device and whether it carries virtio headers.
pub struct TunIo {
    dev: SyncDevice,
    offload: bool,
    mtu: usize,
}

impl TunIo {
    pub fn new(dev: SyncDevice, mtu: u16) -> io::Result<Self> {
        dev.set_nonblocking(true)?;
        let offload = dev.tcp_gso();
        Ok(Self {
            dev,
            offload,
            mtu: usize::from(mtu),
        })
    }

    /// The device, for address and route changes.
    pub fn device(&self) -> &SyncDevice {
        &self.dev
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_fd(self.dev.as_raw_fd(), libc::POLLIN, timeout)
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

    /// Writes packets, coalescing TCP/UDP runs when offloads are on. Errors
    /// are logged; the packets are dropped (TCP recovers).
    pub fn send<'a>(&self, b: &mut TunWrite, packets: impl IntoIterator<Item = &'a [u8]>) {
        let head = if self.offload { VIRTIO_NET_HDR_LEN } else { 0 };
        let mut packets = packets.into_iter().peekable();
        while packets.peek().is_some() {
            let mut used = 0;
            for p in packets.by_ref().take(WRITE_BATCH) {
                if b.bufs.len() == used {
                    b.bufs.push(Vec::with_capacity(head + self.mtu));
                }
                let buf = &mut b.bufs[used];
                buf.clear();
                // An all-zero virtio header: no segmentation, checksum done.
                buf.resize(head, 0);
                buf.extend_from_slice(p);
                used += 1;
            }
            let r = if used == 1 {
                // Nothing to coalesce: skip the GRO table, which costs
                // about 1 MiB of memory once touched.
                self.dev.send(&b.bufs[0]).map(drop)
            } else {
                let gro = b.gro.get_or_insert_with(GROTable::new);
                self.dev
                    .send_multiple(gro, &mut b.bufs[..used], head)
                    .map(drop)
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "tun write failed");
            }
        }
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

/// Write scratch space for one thread: buffers with room for the virtio
/// header, and tun-rs's coalescing table (made on first use: only the UDP
/// thread writes batches).
#[derive(Default)]
pub struct TunWrite {
    bufs: Vec<Vec<u8>>,
    gro: Option<GROTable>,
}
