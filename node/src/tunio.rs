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

use tun_rs::{IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN, VirtioNetHdr, gso_split};

use crate::coalesce::{
    Coalescer, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
};
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
        b.frame = Frame::Split(0);
        // SAFETY: reads at most `original.len()` bytes into a live buffer.
        let len = unsafe {
            libc::read(
                self.dev.as_raw_fd(),
                b.original.as_mut_ptr().cast(),
                b.original.len(),
            )
        };
        if len < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Self::count(&self.counters.reads, 1);
        let frame = &mut b.original[..len as usize];
        b.frame = if self.offload {
            split_frame(frame, &mut b.bufs, &mut b.sizes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        } else {
            Frame::Single(0..frame.len())
        };
        let n = b.frame.packets();
        Self::count(&self.counters.packets_read, n);
        Ok(n)
    }

    /// Writes packets, TCP runs of one flow coalesced into super-packets
    /// when offloads are on (see [`crate::coalesce`]; head packets are
    /// patched in place). Errors are logged; the packets are dropped (TCP
    /// recovers).
    pub fn send(&self, b: &mut TunWrite, packets: &mut [Vec<u8>]) {
        if let [p] = packets {
            return self.send_single(p);
        }
        if !self.offload {
            for p in packets.iter() {
                self.send_plain(p);
            }
            return;
        }
        let fd = self.dev.as_raw_fd();
        let TunWrite { plan, iovs } = b;
        plan.plan(packets);
        for w in plan.writes() {
            iovs.clear();
            iovs.push(iovec(&w.vnet));
            iovs.extend(plan.parts(w, packets).map(iovec));
            // SAFETY: the iovecs point into `w` and `packets`, both alive
            // and unchanged for the duration of the call.
            let n = unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as libc::c_int) };
            self.wrote(n, w.segments);
        }
    }

    /// Room to leave in front of a packet given to [`TunIo::send_lone`].
    pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

    /// Writes one packet (interactive traffic): no planning, no batch.
    /// `frame` is [`TunIo::HEADROOM`] spare bytes followed by the packet:
    /// with offloads its virtio header is computed into them (a TCP
    /// packet's checksum may be patched in place, hence `&mut`), and header
    /// and packet go out in one plain `write`. Why not `writev` of the two:
    /// after an idle gap every extra stretch of kernel code is cold, and
    /// the vector's (importing the iovec array) was ~0.5 us per call when
    /// traced (within the call's noise), on the round trip's critical path
    /// twice; the simplest call is never the slower one.
    pub fn send_lone(&self, frame: &mut [u8]) {
        let (head, p) = frame.split_at_mut(Self::HEADROOM);
        if !self.offload {
            return self.send_plain(p);
        }
        head.copy_from_slice(&crate::coalesce::lone(p));
        // SAFETY: writes from a live buffer of the given length.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        self.wrote(n, 1);
    }

    /// One packet without headroom: its virtio header from the stack.
    fn send_single(&self, p: &mut [u8]) {
        if !self.offload {
            return self.send_plain(p);
        }
        let vnet = crate::coalesce::lone(p);
        let iovs = [iovec(&vnet), iovec(p)];
        // SAFETY: the iovecs point into `vnet` and `p`, both alive and
        // unchanged for the duration of the call.
        let n = unsafe { libc::writev(self.dev.as_raw_fd(), iovs.as_ptr(), 2) };
        self.wrote(n, 1);
    }

    fn send_plain(&self, p: &[u8]) {
        match self.dev.send(p) {
            Ok(_) => {
                Self::count(&self.counters.writes, 1);
                Self::count(&self.counters.packets_written, 1);
            }
            Err(e) => self.write_failed(&e, 1),
        }
    }

    /// Counts a write of `segments` packets that returned `n`.
    fn wrote(&self, n: isize, segments: usize) {
        if n < 0 {
            self.write_failed(&io::Error::last_os_error(), segments);
        } else {
            Self::count(&self.counters.writes, 1);
            Self::count(&self.counters.packets_written, segments);
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
    /// The frame as read (with offloads: virtio header first).
    original: Vec<u8>,
    /// Segments of a split super-packet.
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    frame: Frame,
}

/// Where the packets of the last read are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One packet, this range of the read buffer: no copy.
    Single(std::ops::Range<usize>),
    /// A super-packet split into this many segment buffers.
    Split(usize),
}

impl Frame {
    fn packets(&self) -> usize {
        match self {
            Frame::Single(_) => 1,
            Frame::Split(n) => *n,
        }
    }
}

impl TunRead {
    pub fn new(io: &TunIo) -> Self {
        // Segments never exceed the MTU; a little slack for safety.
        let seg = io.mtu.max(1280) + 64;
        Self {
            original: vec![0; SUPER_PACKET],
            bufs: (0..IDEAL_BATCH_SIZE).map(|_| vec![0; seg]).collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
            frame: Frame::Split(0),
        }
    }

    /// The packet of the last [`TunIo::recv`] when it read exactly one
    /// plain packet (in place, no copy).
    pub fn lone(&self) -> Option<&[u8]> {
        match &self.frame {
            Frame::Single(r) => Some(&self.original[r.clone()]),
            Frame::Split(_) => None,
        }
    }

    /// The packets of the last [`TunIo::recv`], in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        let (single, n) = match &self.frame {
            Frame::Single(r) => (Some(&self.original[r.clone()]), 0),
            Frame::Split(n) => (None, *n),
        };
        single.into_iter().chain(
            self.bufs[..n]
                .iter()
                .zip(&self.sizes)
                .map(|(b, &n)| &b[..n]),
        )
    }
}

/// Finds the packets in a frame read with a virtio header: a plain packet
/// stays where it is (its checksum completed when the kernel left it
/// partial), a super-packet is validated and split by tun-rs into `bufs`.
///
/// Why not tun-rs's `recv_multiple`: it copies even a single packet and
/// first walks every segment buffer (128 of them) to check an offset, which
/// on an idle tunnel, where every packet finds a cold cache, cost more than
/// the read itself.
pub fn split_frame(
    frame: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> Result<Frame, String> {
    if frame.len() <= VIRTIO_NET_HDR_LEN {
        return Err(format!("a {}-byte frame has no packet", frame.len()));
    }
    let mut hdr = VirtioNetHdr::decode(frame).map_err(|e| e.to_string())?;
    let total = frame.len();
    let packet = &mut frame[VIRTIO_NET_HDR_LEN..];
    let start = usize::from(hdr.csum_start);
    let csum_at = start + usize::from(hdr.csum_offset);
    let needs_csum = hdr.flags & F_NEEDS_CSUM != 0;
    if (needs_csum || hdr.gso_type != GSO_NONE) && csum_at + 2 > packet.len() {
        return Err("checksum field beyond the packet".into());
    }
    if hdr.gso_type == GSO_NONE {
        if needs_csum {
            // The field holds the pseudo-header sum; the sum over the
            // transport header and data with it in place, complemented, is
            // the checksum (0 sent as 0xffff, as the kernel does).
            let sum = match crate::packet::checksum(&packet[start..]) {
                0 => 0xffff,
                c => c,
            };
            packet[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        return Ok(Frame::Single(VIRTIO_NET_HDR_LEN..total));
    }
    let v6 = match packet[0] >> 4 {
        4 => false,
        6 => true,
        v => return Err(format!("super-packet of IP version {v}")),
    };
    let ecn = hdr.gso_type & GSO_ECN != 0;
    let l4 = match (hdr.gso_type & !GSO_ECN, v6) {
        (GSO_TCPV4, false) | (GSO_TCPV6, true) => {
            let off = *packet
                .get(start + 12)
                .ok_or("super-packet shorter than its TCP header")?;
            let len = usize::from(off >> 4) * 4;
            if !(20..=60).contains(&len) {
                return Err(format!("TCP header length {len}"));
            }
            len
        }
        (GSO_UDP_L4, _) if !ecn => 8,
        (t, _) => {
            return Err(format!(
                "GSO type {t} on an IPv{} packet",
                if v6 { 6 } else { 4 }
            ));
        }
    };
    // The kernel's hdr_len can be the whole first packet on a forwarding
    // path: recomputed from the transport header instead.
    let hdr_len = start + l4;
    if hdr_len > packet.len() || hdr.gso_size == 0 {
        return Err("inconsistent virtio header".into());
    }
    hdr.hdr_len = u16::try_from(hdr_len).map_err(|_| "header too long")?;
    gso_split(packet, hdr, bufs, sizes, 0, v6)
        .map(Frame::Split)
        .map_err(|e| e.to_string())
}

/// Write scratch space for one thread: the coalescing plan and the
/// `writev` vector.
#[derive(Default)]
pub struct TunWrite {
    plan: Coalescer,
    iovs: Vec<libc::iovec>,
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::craft;
    use crate::packet::{fold, sum16};

    const A: &str = "10.232.0.1";
    const B: &str = "10.232.0.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vnet(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> Vec<u8> {
        let h = VirtioNetHdr {
            flags,
            gso_type,
            hdr_len: 0,
            gso_size,
            csum_start: start,
            csum_offset: offset,
        };
        let mut b = vec![0; VIRTIO_NET_HDR_LEN];
        h.encode(&mut b).unwrap();
        b
    }

    /// An IPv4 packet as the kernel hands it over with checksum offload:
    /// the pseudo-header sum in the transport checksum field (at
    /// `csum_offset` past the IP header), behind a virtio header.
    fn partial(good: &[u8], gso_type: u8, gso_size: u16, csum_offset: u16) -> Vec<u8> {
        let mut p = good.to_vec();
        let pseudo = sum16(0, &p[12..20]) + u32::from(p[9]) + (p.len() - 20) as u32;
        let at = 20 + usize::from(csum_offset);
        p[at..at + 2].copy_from_slice(&(!fold(pseudo)).to_be_bytes());
        let h = vnet(F_NEEDS_CSUM, gso_type, gso_size, 20, csum_offset);
        [h, p].concat()
    }

    fn scratch() -> (Vec<Vec<u8>>, Vec<usize>) {
        (vec![vec![0; 1500]; 64], vec![0; 64])
    }

    /// Whether an IPv4 TCP/UDP packet's transport checksum verifies.
    fn l4_checksum_ok(p: &[u8]) -> bool {
        let len = p.len() - 20;
        let pseudo = sum16(0, &p[12..20]) + u32::from(p[9]) + len as u32;
        fold(sum16(pseudo, &p[20..])) == 0
    }

    #[test]
    fn a_plain_packet_is_found_in_place_untouched() {
        let pkt = craft::echo_request(ip(A), ip(B), 7, 1);
        let mut frame = vnet(0, GSO_NONE, 0, 0, 0);
        frame.extend_from_slice(&pkt);
        let (mut bufs, mut sizes) = scratch();
        let f = split_frame(&mut frame, &mut bufs, &mut sizes).unwrap();
        assert_eq!(f, Frame::Single(VIRTIO_NET_HDR_LEN..frame.len()));
        assert_eq!(&frame[VIRTIO_NET_HDR_LEN..], &pkt[..]);
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        for payload in [&b"odd"[..], b"even", b""] {
            let good = craft::udp(ip(A), 5000, ip(B), 53, payload);
            let mut frame = partial(&good, GSO_NONE, 0, 6);
            let (mut bufs, mut sizes) = scratch();
            split_frame(&mut frame, &mut bufs, &mut sizes).unwrap();
            let done = &frame[VIRTIO_NET_HDR_LEN..];
            assert!(l4_checksum_ok(done), "payload {payload:?}");
            let (got, want) = (&done[26..28], &good[26..28]);
            // 0 and 0xffff are the same sum; UDP sends the latter.
            assert!(got == want || (want == [0, 0] && got == [0xff, 0xff]));
        }
    }

    #[test]
    fn a_tcp_super_packet_is_split_into_valid_segments() {
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let sp = craft::tcp(ip(A), 40000, ip(B), 5201, 0x18, &data);
        let mut frame = partial(&sp, GSO_TCPV4, 1000, 16);
        let (mut bufs, mut sizes) = scratch();
        let f = split_frame(&mut frame, &mut bufs, &mut sizes).unwrap();
        assert_eq!(f, Frame::Split(3));
        let mut joined = Vec::new();
        for (b, &n) in bufs.iter().zip(&sizes).take(3) {
            let seg = &b[..n];
            assert_eq!(n, 20 + 20 + 1000);
            assert_eq!(
                crate::packet::checksum(&seg[..20]),
                0,
                "IPv4 header checksum"
            );
            assert!(l4_checksum_ok(seg), "TCP checksum");
            joined.extend_from_slice(&seg[40..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let (mut bufs, mut sizes) = scratch();
        let mut split = |mut frame: Vec<u8>| split_frame(&mut frame, &mut bufs, &mut sizes);
        assert!(split(vec![0; VIRTIO_NET_HDR_LEN]).is_err(), "no packet");
        let tcp = craft::tcp(ip(A), 1, ip(B), 2, 0x10, &[0; 100]);
        let with = |h: Vec<u8>| [h, tcp.clone()].concat();
        // An IPv6 GSO type on an IPv4 packet.
        let e = split(with(vnet(1, GSO_TCPV6, 50, 20, 16))).unwrap_err();
        assert!(e.contains("GSO type"), "{e}");
        // A checksum field past the end.
        let e = split(with(vnet(1, GSO_NONE, 0, 200, 16))).unwrap_err();
        assert!(e.contains("beyond"), "{e}");
        assert!(
            split(with(vnet(1, GSO_TCPV4, 0, 20, 16))).is_err(),
            "gso_size 0"
        );
        assert!(split(with(vnet(1, GSO_UDP_L4 | GSO_ECN, 50, 20, 6))).is_err());
        let mut v5 = with(vnet(1, GSO_TCPV4, 50, 20, 16));
        v5[VIRTIO_NET_HDR_LEN] = 0x55;
        assert!(split(v5).is_err(), "IP version 5");
    }
}
