//! Batched I/O on the WireGuard UDP socket: one `recvmmsg` returns many
//! datagrams, one `sendmmsg` sends many. With UDP GRO the kernel hands over a
//! train of same-sized datagrams from one sender as one buffer (with the
//! segment size in a control message); with UDP GSO (`UDP_SEGMENT`) we hand
//! it such a train to cut up. Per-packet system calls, not crypto, bound a
//! userspace tunnel, so this is where throughput comes from.
//!
//! The socket is non-blocking; the data plane threads wait in epoll sets
//! ([`crate::waitset`]). Scratch space ([`RecvBatch`], [`SendBatch`]) is per
//! thread and reused, so the steady state allocates nothing.
//!
//! Peer sockets: besides the listening socket, each peer endpoint that a
//! lone datagram goes to gets its own socket, bound to the same port
//! (`SO_REUSEPORT`) and connected to the endpoint. An unconnected socket
//! looks the route up on every send; a connected one keeps it, which saves
//! 3-6 us per send on an idle tunnel (docs/benchmarks.md, "A fourth host"
//! and "An Intel host"); behind a dual-stack listener, only if an IPv4
//! endpoint's socket is an IPv4 one (`peer_socket_addrs`). The kernel
//! then delivers that endpoint's datagrams to the connected socket (an
//! exact match wins over the wildcard), so the packet threads wait on and
//! read every socket. Peer sockets are made only for endpoints the core
//! vouches for, at most [`MAX_PEER_SOCKETS`], and live as long as the node:
//! never closing one while a thread may read it keeps descriptor numbers
//! from being reused under a reader.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::waitset::WaitSet;

/// Datagrams (or GRO trains of up to ~45 datagrams) read per `recvmmsg`:
/// enough to amortise the call, few enough that the buffers in flight (and
/// so the node's RSS) stay small. Measured in the shared harness (3 rounds,
/// same run): 4 -> 8 gave +10% single-stream throughput and -10% CPU per
/// byte at +0.5 MiB peak RSS; 16 gave another ~6% at 11.4 MiB, too close
/// to the 12 MiB budget.
const RECV_BATCH: usize = 8;
/// Room for one GRO train: the kernel never coalesces beyond 64 KiB.
const RECV_BUF: usize = 65_536;
/// Datagrams per GSO send; the kernel's UDP_MAX_SEGMENTS is at least 64.
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per GSO send (an IP datagram's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;
/// How long a send waits for socket buffer space before dropping the rest
/// of a batch (WireGuard and TCP above it recover from loss).
const SEND_WAIT: Duration = Duration::from_millis(100);

/// Socket buffers sized for a few ms of line rate, like wireguard-go.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// Peer sockets at most: with the listening socket, 62 members of a wait
/// set whose tokens are below 64 next to the TUN device and an eventfd.
/// Endpoints beyond are served by the listening socket, as before.
pub const MAX_PEER_SOCKETS: usize = 61;

/// Control message space: one `int` (GRO) or one `u16` (GSO), 8-aligned.
type Cmsg = [u64; 4];

/// The WireGuard sockets and what the kernel supports on them.
#[derive(Debug)]
pub struct UdpIo {
    sock: UdpSocket,
    local: SocketAddr,
    /// Dual-stack IPv6 socket: IPv4 peers are addressed as v4-mapped.
    v6: bool,
    gso: AtomicBool,
    /// The kernel takes `UDP_GRO` on these sockets ...
    gro: bool,
    /// ... and it is on now (see [`UdpIo::set_gro`]). Written under the
    /// `peers` lock, with the sockets' option, so that a peer socket made
    /// meanwhile gets the same.
    gro_on: AtomicBool,
    /// Socket `i` (0: the listening one, then the peer sockets) by index,
    /// read without a lock; -1 past the last.
    fds: [AtomicI32; 1 + MAX_PEER_SOCKETS],
    peers: Mutex<PeerSockets>,
    /// Bumped whenever an endpoint leaves its peer socket: invalidates the
    /// per-thread [`SendBatch::last`] caches.
    demotions: AtomicU32,
    /// Where new peer sockets are watched: the sets, and the listening
    /// socket's token (socket `i` is watched as that plus `i`).
    watch: OnceLock<(Vec<Arc<WaitSet>>, u32)>,
}

/// The peer sockets and which endpoint each is connected to.
#[derive(Debug, Default)]
struct PeerSockets {
    /// Endpoint -> socket index; `None`: none could be made (or the limit
    /// was reached), use the listening socket.
    by_dst: HashMap<SocketAddr, Option<usize>>,
    owned: Vec<OwnedFd>,
    /// The limit was reached (and said so, once).
    full: bool,
}

impl UdpIo {
    /// Takes a bound socket, makes it non-blocking and turns on GSO where
    /// the kernel has it; GRO, where the kernel has it, is on while
    /// [`UdpIo::set_gro`] says so (off at first).
    pub fn new(sock: UdpSocket, v6: bool, offload: bool) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let fd = sock.as_raw_fd();
        let gro = offload
            && setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
            && setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, 0).is_ok();
        let gso = offload && getsockopt(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
        tracing::debug!(gro, gso, "udp offloads");
        let fds = std::array::from_fn(|i| AtomicI32::new(if i == 0 { fd } else { -1 }));
        Ok(Self {
            local: sock.local_addr()?,
            sock,
            v6,
            gso: AtomicBool::new(gso),
            gro,
            gro_on: AtomicBool::new(false),
            fds,
            peers: Mutex::default(),
            demotions: AtomicU32::new(0),
            watch: OnceLock::new(),
        })
    }

    /// Has peer sockets watched in `sets`, socket `i` under `token + i`
    /// (the listening socket, `i` = 0, the caller adds itself). Until this
    /// is called no peer socket is made: nothing would read it.
    pub fn watch_in(&self, sets: Vec<Arc<WaitSet>>, token: u32) {
        let _ = self.watch.set((sets, token));
    }

    /// How many sockets there are (the listening one and the peer ones).
    pub fn sockets(&self) -> usize {
        self.fds
            .iter()
            .position(|f| f.load(Ordering::Acquire) < 0)
            .unwrap_or(self.fds.len())
    }

    /// The socket to send a lone datagram to `dst` on: its peer socket,
    /// made now if `peer` (the core vouches for the endpoint) and there is
    /// room; `None` for the listening socket.
    fn peer_fd(&self, dst: SocketAddr, peer: bool) -> Option<RawFd> {
        let mut p = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match p.by_dst.get(&dst) {
            Some(&i) => i,
            // Not vouched for, or not watched yet: nothing to remember.
            None if !peer || self.watch.get().is_none() => return None,
            None => {
                let i = self.add_peer_socket(&mut p, dst);
                p.by_dst.insert(dst, i);
                i
            }
        };
        index.map(|i| self.fds[i].load(Ordering::Acquire))
    }

    fn add_peer_socket(&self, p: &mut PeerSockets, dst: SocketAddr) -> Option<usize> {
        let (sets, token) = self.watch.get()?;
        let i = p.owned.len() + 1;
        if i > MAX_PEER_SOCKETS {
            if !std::mem::replace(&mut p.full, true) {
                tracing::info!(
                    limit = MAX_PEER_SOCKETS,
                    "peer sockets at their limit; further endpoints use the listening socket"
                );
            }
            return None;
        }
        let gro = self.gro_on.load(Ordering::Acquire);
        let made = connected_socket(self.local, dst, gro).and_then(|fd| {
            for set in sets {
                set.add(fd.as_raw_fd(), token + i as u32)?;
            }
            Ok(fd)
        });
        match made {
            Ok(fd) => {
                tracing::debug!(endpoint = %from_v6(dst), socket = i, "peer socket");
                self.fds[i].store(fd.as_raw_fd(), Ordering::Release);
                p.owned.push(fd);
                Some(i)
            }
            Err(e) => {
                // Once per endpoint: it stays on the listening socket.
                tracing::debug!(endpoint = %from_v6(dst), error = %e, "no peer socket");
                None
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Turns GRO on or off on every socket (where the kernel has it).
    ///
    /// Why off at times: a socket with GRO may hold a train of coalesced
    /// datagrams that only `recvmmsg`/`recvmsg` can cut apart (the segment
    /// size comes as control data), while a lone datagram is read for less
    /// with `recvfrom` (about a microsecond less kernel time per call after
    /// an idle gap, twice per round trip). So GRO is on while traffic is
    /// bulk (the batch path) and off while it is interactive (see
    /// [`UdpIo::recv`]). Turning it off does not split a train already
    /// queued, and the kernel then reports no segment size for it: the
    /// caller turns it off only on empty sockets (and on again if they
    /// were not, to read with a batch).
    pub fn set_gro(&self, on: bool) {
        if !self.gro {
            return;
        }
        let p = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if on {
            // First the flag: no lone read from here on ...
            self.gro_on.store(true, Ordering::Release);
        }
        let fds =
            std::iter::once(self.sock.as_raw_fd()).chain(p.owned.iter().map(AsRawFd::as_raw_fd));
        let mut failed = None;
        for fd in fds {
            if let Err(e) = setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on)) {
                failed = Some(e);
            }
        }
        match failed {
            // ... and lone reads again only once no socket coalesces.
            None if !on => self.gro_on.store(false, Ordering::Release),
            None => {}
            // GRO stays (or counts as) on: batch reads, correct either way.
            Some(e) => tracing::debug!(on, error = %e, "udp gro switch"),
        }
    }

    /// (GRO, GSO) as currently in use: GRO when the kernel has it (it is
    /// on while traffic is bulk).
    pub fn offloads(&self) -> (bool, bool) {
        (self.gro, self.gso.load(Ordering::Relaxed))
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads what is queued on socket `index` (without waiting) into `b`;
    /// returns the number of messages, 0 when nothing was queued (or there
    /// is no such socket). With `lone` (interactive traffic expected) and
    /// GRO off, one datagram with a plain `recvfrom`; otherwise a batch.
    pub fn recv(&self, b: &mut RecvBatch, index: usize, lone: bool) -> io::Result<usize> {
        let fd = self
            .fds
            .get(index)
            .map_or(-1, |f| f.load(Ordering::Acquire));
        if fd < 0 {
            return Ok(0);
        }
        b.prepare();
        let n = if lone && !self.gro_on.load(Ordering::Acquire) {
            let mut namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let buf = &mut b.bufs[0];
            // SAFETY: writes at most `buf.len()` bytes into `buf` and at
            // most `namelen` into the address, both alive across the call;
            // `fd` stays open as long as `self`.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut b.names[0] as *mut libc::sockaddr_storage).cast(),
                    &mut namelen,
                )
            };
            if n >= 0 {
                // As `recvmmsg` would leave it: the length, no control data.
                b.hdrs[0].msg_len = n as libc::c_uint;
                b.hdrs[0].msg_hdr.msg_controllen = 0;
            }
            if n >= 0 { 1 } else { -1 }
        } else {
            // SAFETY: every header points into `b`'s buffers, which outlive
            // the call and are not moved during it; `fd` stays open as long
            // as `self` (peer sockets are never closed before).
            unsafe {
                libc::recvmmsg(
                    fd,
                    b.hdrs.as_mut_ptr(),
                    b.hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        b.collect(n as usize);
        Ok(b.got.len())
    }

    /// Sends datagrams in order; each `(dst, payload, peer)` is one
    /// datagram, `peer` when `dst` is an endpoint the core vouches for. Runs
    /// of equal-sized datagrams to one destination go out as one GSO send.
    /// Per-destination errors are logged and skipped.
    pub fn send<'a, I>(&self, b: &mut SendBatch, datagrams: I)
    where
        I: IntoIterator<Item = (SocketAddr, &'a [u8], bool)>,
    {
        b.clear();
        let mut datagrams = datagrams.into_iter();
        let first = datagrams.next();
        let second = datagrams.next();
        if let (Some((dst, payload, peer)), None) = (first, second.as_ref()) {
            return self.send_lone(b, dst, payload, peer);
        }
        for (dst, payload, _) in first.into_iter().chain(second).chain(datagrams) {
            b.dsts.push(if self.v6 { to_v6(dst) } else { dst });
            b.iovs.push(libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            });
        }
        let mut from = 0;
        while from < b.iovs.len() {
            let gso = self.gso.load(Ordering::Relaxed);
            match self.send_from(b, from, gso) {
                Ok(()) => return,
                Err(resume) if gso => {
                    // EIO: the route's device cannot segment; never again.
                    tracing::info!("UDP GSO refused by the kernel; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                    from = resume;
                }
                Err(_) => return,
            }
        }
    }

    /// Sends one datagram (interactive traffic): a plain send, without
    /// building a batch: less code and memory touched on a cold cache; to a
    /// peer endpoint on its connected socket, without a route lookup.
    pub fn send_lone(&self, b: &mut SendBatch, dst: SocketAddr, payload: &[u8], peer: bool) {
        let dst = if self.v6 { to_v6(dst) } else { dst };
        self.send_one(&mut b.last, dst, payload, peer);
    }

    fn send_one(&self, last: &mut LastPeer, dst: SocketAddr, payload: &[u8], peer: bool) {
        // SAFETY: plain old data; all-zero is valid.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let demotions = self.demotions.load(Ordering::Acquire);
        let fd = match *last {
            Some((d, fd, g)) if d == dst && g == demotions => Some(fd),
            _ => {
                let fd = self.peer_fd(dst, peer);
                *last = fd.map(|fd| (dst, fd, demotions));
                fd
            }
        };
        let (fd, namelen) = match fd {
            // Connected: no address, the socket's cached route.
            Some(fd) => (fd, 0),
            None => (self.sock.as_raw_fd(), to_sockaddr(dst, &mut name)),
        };
        let name_ptr = if namelen == 0 {
            std::ptr::null()
        } else {
            (&name as *const libc::sockaddr_storage).cast()
        };
        let mut refused = false;
        loop {
            // SAFETY: the payload and the address live across the call;
            // `fd` stays open as long as `self`.
            let n = unsafe {
                libc::sendto(
                    fd,
                    payload.as_ptr().cast(),
                    payload.len(),
                    libc::MSG_DONTWAIT,
                    name_ptr,
                    namelen,
                )
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            match stall(fd, &e) {
                Stall::Retry => {}
                Stall::Full => {
                    tracing::debug!("udp send buffer full; datagram dropped");
                    return;
                }
                // A peer socket reports an ICMP error that an earlier
                // datagram drew (the peer was down a moment) on the next
                // send, once, and sends nothing: send again.
                Stall::Failed
                    if namelen == 0 && !refused && e.raw_os_error() == Some(libc::ECONNREFUSED) =>
                {
                    refused = true;
                }
                Stall::Failed if namelen == 0 => {
                    // Anything else (the local address it was bound to is
                    // gone, say): this endpoint goes back to the listening
                    // socket, which picks a source address per send.
                    self.demote(dst, &e);
                    return self.send_one(last, dst, payload, false);
                }
                Stall::Failed => {
                    tracing::debug!(endpoint = %from_v6(dst), error = %e, "udp send failed");
                    return;
                }
            }
        }
    }

    /// Stops sending to `dst` on its peer socket (which still receives).
    fn demote(&self, dst: SocketAddr, e: &io::Error) {
        tracing::debug!(endpoint = %from_v6(dst), error = %e, "peer socket failed; using the listening socket");
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_dst
            .insert(dst, None);
        self.demotions.fetch_add(1, Ordering::AcqRel);
    }

    /// Sends datagrams `from..`; on a GSO failure returns the index of the
    /// first datagram not sent.
    fn send_from(&self, b: &mut SendBatch, from: usize, gso: bool) -> Result<(), usize> {
        b.group(from, gso);
        let fd = self.sock.as_raw_fd();
        let mut sent = 0;
        while sent < b.hdrs.len() {
            // SAFETY: the headers point into `b` (names, iovecs, control
            // space) and into the caller's payloads, all alive and unmoved.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    b.hdrs[sent..].as_mut_ptr(),
                    (b.hdrs.len() - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match stall(fd, &e) {
                Stall::Retry => {}
                Stall::Full => {
                    tracing::debug!(
                        dropped = b.hdrs.len() - sent,
                        "udp send buffer full; batch dropped"
                    );
                    return Ok(());
                }
                Stall::Failed
                    if gso && e.raw_os_error() == Some(libc::EIO) && b.segments[sent] > 1 =>
                {
                    return Err(b.first[sent]);
                }
                Stall::Failed => {
                    tracing::debug!(endpoint = %from_v6(b.dsts[b.first[sent]]), error = %e, "udp send failed");
                    sent += 1;
                }
            }
        }
        Ok(())
    }
}

/// What a failed non-blocking send means for the sender.
enum Stall {
    /// Interrupted, or buffer space came free within `SEND_WAIT`.
    Retry,
    /// The socket buffer stayed full: drop the rest (TCP above recovers).
    Full,
    /// Any other error: the caller's to handle.
    Failed,
}

fn stall(fd: RawFd, e: &io::Error) -> Stall {
    match e.kind() {
        io::ErrorKind::Interrupted => Stall::Retry,
        io::ErrorKind::WouldBlock if poll_fd(fd, libc::POLLOUT, SEND_WAIT).unwrap_or(false) => {
            Stall::Retry
        }
        io::ErrorKind::WouldBlock => Stall::Full,
        _ => Stall::Failed,
    }
}

/// Receive scratch space for one thread.
///
/// The message headers are built once and point into the batch's own heap
/// buffers, which are never resized: a lone datagram after an idle gap
/// then costs the header of the one message the kernel filled (reset for
/// the next call), not eight headers rewritten (~20 code and ~15 data
/// cache lines per receive, each a miss on a cold cache).
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    /// Written by the kernel through `hdrs` only; owned here so they live.
    #[expect(dead_code, reason = "read through the headers' raw pointers")]
    cmsgs: Vec<Cmsg>,
    #[expect(dead_code, reason = "read through the headers' raw pointers")]
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Messages the last call filled: their lengths need resetting.
    filled: usize,
    /// Per message read: sender, length, segment size (GRO) or length.
    got: Vec<(SocketAddr, usize, usize)>,
    v6: bool,
}

impl RecvBatch {
    pub fn new(io: &UdpIo) -> Self {
        // Zeroed allocations this large are fresh mappings: only the pages
        // datagrams are written to count towards RSS.
        let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0; RECV_BUF]).collect();
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut names: Vec<libc::sockaddr_storage> =
            vec![unsafe { std::mem::zeroed() }; RECV_BATCH];
        let mut cmsgs: Vec<Cmsg> = vec![[0; 4]; RECV_BATCH];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let hdrs = (0..RECV_BATCH)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; all-zero is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
                h
            })
            .collect();
        let mut b = Self {
            bufs,
            names,
            cmsgs,
            iovs,
            hdrs,
            filled: RECV_BATCH,
            got: Vec::with_capacity(RECV_BATCH),
            v6: io.v6,
        };
        b.prepare();
        b
    }

    /// Resets the in/out lengths of the headers the last call filled (the
    /// kernel leaves the others as they were).
    fn prepare(&mut self) {
        self.got.clear();
        for h in &mut self.hdrs[..self.filled] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = size_of::<Cmsg>();
        }
        self.filled = 0;
    }

    fn collect(&mut self, n: usize) {
        self.filled = n;
        for i in 0..n {
            let h = &self.hdrs[i];
            let len = h.msg_len as usize;
            let Some(from) = from_sockaddr(&self.names[i]) else {
                continue;
            };
            let seg = gro_size(&h.msg_hdr).filter(|&s| s > 0).unwrap_or(len);
            let from = if self.v6 { from_v6(from) } else { from };
            self.got.push((from, len, seg));
        }
    }

    /// How many datagrams the last [`UdpIo::recv`] read (GRO trains
    /// counted by their segments).
    pub fn datagrams(&self) -> usize {
        self.got
            .iter()
            .map(|&(_, len, seg)| len.div_ceil(seg.max(1)))
            .sum()
    }

    /// The datagram of the last [`UdpIo::recv`] when it read exactly one
    /// (not a GRO train), and its sender.
    pub fn lone(&self) -> Option<(SocketAddr, &[u8])> {
        match self.got[..] {
            [(from, len, seg)] if self.filled == 1 && len <= seg => {
                Some((from, &self.bufs[0][..len]))
            }
            _ => None,
        }
    }

    /// Every datagram read by the last [`UdpIo::recv`], in arrival order,
    /// with GRO trains cut back into datagrams.
    pub fn for_each(&self, mut f: impl FnMut(SocketAddr, &[u8])) {
        for (i, &(from, len, seg)) in self.got.iter().enumerate() {
            for d in self.bufs[i][..len].chunks(seg.max(1)) {
                f(from, d);
            }
        }
    }
}

/// Send scratch space for one thread.
#[derive(Default)]
pub struct SendBatch {
    dsts: Vec<SocketAddr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per message: index of its first datagram, and how many it carries.
    first: Vec<usize>,
    segments: Vec<usize>,
    /// The last lone datagram's peer socket, see [`LastPeer`].
    last: LastPeer,
}

/// The endpoint a thread last sent a lone datagram to on a peer socket,
/// that socket, and [`UdpIo`]'s demotion count then. Interactive traffic
/// goes to one endpoint over and over: this skips the locked map lookup
/// (SipHash on a cold cache: ~35 code lines per send) while the count is
/// unchanged.
type LastPeer = Option<(SocketAddr, RawFd, u32)>;

impl SendBatch {
    fn clear(&mut self) {
        self.dsts.clear();
        self.iovs.clear();
    }

    /// Builds one message per GSO run (or per datagram without GSO),
    /// starting at datagram `from`. A run is datagrams to one destination
    /// of one size, optionally ended by one shorter datagram.
    fn group(&mut self, from: usize, gso: bool) {
        self.hdrs.clear();
        self.first.clear();
        self.segments.clear();
        let n = self.iovs.len();
        let mut i = from;
        while i < n {
            let size = self.iovs[i].iov_len;
            let mut j = i + 1;
            let mut bytes = size;
            if gso {
                while j < n
                    && j - i < GSO_MAX_SEGMENTS
                    && self.dsts[j] == self.dsts[i]
                    && self.iovs[j].iov_len <= size
                    && bytes + self.iovs[j].iov_len <= GSO_MAX_BYTES
                {
                    bytes += self.iovs[j].iov_len;
                    j += 1;
                    if self.iovs[j - 1].iov_len < size {
                        break;
                    }
                }
            }
            self.first.push(i);
            self.segments.push(j - i);
            i = j;
        }
        let m = self.first.len();
        if self.names.len() < m {
            // SAFETY: plain old data; all-zero is valid.
            self.names.resize(m, unsafe { std::mem::zeroed() });
            self.cmsgs.resize(m, [0; 4]);
        }
        for k in 0..m {
            let (i, segs) = (self.first[k], self.segments[k]);
            let namelen = to_sockaddr(self.dsts[i], &mut self.names[k]);
            // SAFETY: plain old data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = segs;
            if segs > 1 {
                let space = set_gso_cmsg(&mut self.cmsgs[k], self.iovs[i].iov_len as u16);
                h.msg_hdr.msg_control = self.cmsgs[k].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space;
            }
            self.hdrs.push(h);
        }
    }
}

/// Writes a `UDP_SEGMENT` control message; returns its space.
fn set_gso_cmsg(buf: &mut Cmsg, size: u16) -> usize {
    // SAFETY: `buf` is 32 bytes, 8-aligned: room for CMSG_SPACE(2) (24);
    // the header pointer comes from CMSG_FIRSTHDR on a msghdr describing it.
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_control = buf.as_mut_ptr().cast();
        m.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        space
    }
}

/// The GRO segment size in a received message's control data, if any.
fn gro_size(m: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control data the kernel wrote, within
    // msg_controllen, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

fn to_sockaddr(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for either.
    unsafe {
        match a {
            SocketAddr::V4(v4) => {
                let p = (s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                *p = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                let p = (s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                *p = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which layout the kernel wrote.
    unsafe {
        match i32::from(s.ss_family) {
            libc::AF_INET => {
                let a = &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// IPv4 peers are addressed as v4-mapped on a dual-stack socket.
pub fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// ...and reported as plain IPv4, so endpoints compare equal to the netmap's.
pub fn from_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Binds a UDP socket to `addr` with `SO_REUSEPORT`, so that peer sockets
/// can share its port. The caller checks first, with a plain bind, that
/// no other process holds the port: once it is ours, such a bind fails.
pub fn bind_shared(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = new_socket(addr)?;
    bind_fd(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

/// A non-blocking UDP socket for `addr`'s family (dual-stack for IPv6)
/// with `SO_REUSEPORT` and large buffers.
fn new_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain system call; the result is checked.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if addr.is_ipv6() {
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    set_buffers(raw);
    Ok(fd)
}

fn bind_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    with_sockaddr(fd, addr, libc::bind)
}

/// Calls `f` (`bind` or `connect`) on `fd` with `addr`.
fn with_sockaddr(
    fd: &OwnedFd,
    addr: SocketAddr,
    f: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> io::Result<()> {
    // SAFETY: plain old data; all-zero is valid.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = to_sockaddr(addr, &mut name);
    // SAFETY: a valid descriptor and an address of `len` bytes.
    let rc = unsafe {
        f(
            fd.as_raw_fd(),
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A peer socket: bound to `local` (the listening socket's address and
/// port) and connected to `dst`, with GRO if `gro` (as the other sockets
/// have it now).
///
/// An IPv4 endpoint of a dual-stack listener (`[::]`) gets an IPv4 socket
/// on `0.0.0.0` and the same port: a dual-stack socket connected to a
/// v4-mapped address keeps no route, since the kernel hands each of its
/// sends to the IPv4 code with the address filled in, as if unconnected
/// (perf on an idle tunnel: a route lookup and a local-address check in
/// every `sendto`, which the IPv4 socket does not make).
fn connected_socket(local: SocketAddr, dst: SocketAddr, gro: bool) -> io::Result<OwnedFd> {
    let (local, dst) = peer_socket_addrs(local, dst);
    let fd = new_socket(local)?;
    bind_fd(&fd, local)?;
    with_sockaddr(&fd, dst, libc::connect)?;
    if gro {
        setsockopt(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)?;
    }
    Ok(fd)
}

/// The (local, remote) addresses of `dst`'s peer socket: the listening
/// socket's, except that an IPv4 endpoint (plain or v4-mapped) of a
/// wildcard IPv6 listener is reached from the IPv4 wildcard.
fn peer_socket_addrs(local: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (local, from_v6(dst)) {
        (SocketAddr::V6(l), SocketAddr::V4(d)) if l.ip().is_unspecified() => (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), l.port()),
            SocketAddr::V4(d),
        ),
        _ => (local, dst),
    }
}

/// Large socket buffers absorb bursts; the FORCE variants (we hold
/// CAP_NET_ADMIN anyway, for the TUN) go past `net.core.rmem_max`.
pub fn set_buffers(fd: RawFd) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err()
            && let Err(e) = setsockopt(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER)
        {
            tracing::debug!(error = %e, "setting socket buffer size");
        }
    }
}

/// Waits for `events` on `fd`; false on timeout or a signal (callers
/// loop or give up anyway).
pub fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc >= 0 {
        return Ok(rc > 0);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(false)
    } else {
        Err(e)
    }
}

pub fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and a c_int-sized out buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waitset::Ready;

    #[test]
    fn mapped_addresses_roundtrip() {
        let a: SocketAddr = "10.0.0.1:51820".parse().unwrap();
        assert!(to_v6(a).is_ipv6());
        assert_eq!(from_v6(to_v6(a)), a);
        let b: SocketAddr = "[fd00::1]:1".parse().unwrap();
        assert_eq!(from_v6(b), b);
    }

    /// A listening socket on loopback, as the node binds it.
    /// A loopback socket whose peer sockets are watched (so made).
    fn watched_io() -> UdpIo {
        let a = loopback_io();
        a.watch_in(vec![Arc::new(WaitSet::new().unwrap())], 2);
        a
    }

    fn loopback_io() -> UdpIo {
        UdpIo::new(
            bind_shared("127.0.0.1:0".parse().unwrap()).unwrap(),
            false,
            true,
        )
        .unwrap()
    }

    /// A lone datagram to a peer endpoint leaves on a socket connected to
    /// it, from the listening socket's port; that endpoint's answers arrive
    /// on it, anyone else's on the listening socket, and an address the
    /// core does not vouch for gets no socket.
    #[test]
    fn peer_endpoints_get_a_connected_socket_that_receives_their_answers() {
        let a = loopback_io();
        let a_addr = a.local_addr().unwrap();
        let set = Arc::new(WaitSet::new().unwrap());
        set.add(a.fd(), 2).unwrap();
        let mut batch = SendBatch::default();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        // Not watched yet: nothing would read a peer socket, so none is made.
        a.send(&mut batch, [(peer_addr, &b"early"[..], true)]);
        assert_eq!(a.sockets(), 1);
        a.watch_in(vec![set.clone()], 2);
        a.send(&mut batch, [(peer_addr, &b"hello"[..], true)]);
        a.send(&mut batch, [(peer_addr, &b"again"[..], true)]);
        assert_eq!(a.sockets(), 2, "one socket per endpoint");
        let mut buf = [0u8; 64];
        for want in [&b"early"[..], b"hello", b"again"] {
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (want, a_addr), "same source port");
        }
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"answer", a_addr).unwrap();
        stranger.send_to(b"other", a_addr).unwrap();
        let mut ready = Ready::default();
        for _ in 0..50 {
            ready = set.wait(Duration::from_millis(100)).unwrap();
            if ready.has(2) && ready.has(3) {
                break;
            }
        }
        assert!(
            ready.has(2) && ready.has(3),
            "both sockets readable: {ready:?}"
        );
        let mut rb = RecvBatch::new(&a);
        let mut got = Vec::new();
        for index in [1, 0] {
            assert_eq!(a.recv(&mut rb, index, false).unwrap(), 1);
            rb.for_each(|from, d| got.push((index, from, d.to_vec())));
        }
        let stranger_addr = stranger.local_addr().unwrap();
        assert_eq!(
            got,
            vec![
                (1, peer_addr, b"answer".to_vec()),
                (0, stranger_addr, b"other".to_vec())
            ]
        );
        a.send(&mut batch, [(stranger_addr, &b"reply"[..], false)]);
        assert_eq!(a.sockets(), 2, "no socket for an address not vouched for");
        assert_eq!(a.recv(&mut rb, 7, false).unwrap(), 0, "no such socket");
    }

    /// Behind a dual-stack listener (`[::]`, the node's default), an IPv4
    /// endpoint's peer socket is an IPv4 one (a v4-mapped connection would
    /// keep no route), on the listener's port, and its answers arrive on
    /// it with the plain IPv4 address; an IPv6 endpoint's stays IPv6.
    #[test]
    fn a_dual_stack_listener_reaches_ipv4_endpoints_from_an_ipv4_socket() {
        let a = UdpIo::new(bind_shared("[::]:0".parse().unwrap()).unwrap(), true, true).unwrap();
        let port = a.local_addr().unwrap().port();
        let set = Arc::new(WaitSet::new().unwrap());
        set.add(a.fd(), 2).unwrap();
        a.watch_in(vec![set.clone()], 2);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut batch = SendBatch::default();
        a.send_lone(&mut batch, peer_addr, b"hello", true);
        assert_eq!(a.sockets(), 2);
        let fd = a.fds[1].load(Ordering::Acquire);
        assert_eq!(
            getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap(),
            libc::AF_INET
        );
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from.port()),
            (&b"hello"[..], port),
            "the listener's port"
        );
        peer.send_to(b"answer", ("127.0.0.1", port)).unwrap();
        let mut ready = Ready::default();
        for _ in 0..50 {
            ready = set.wait(Duration::from_millis(100)).unwrap();
            if ready.has(3) {
                break;
            }
        }
        assert!(
            ready.has(3) && !ready.has(2),
            "on the peer socket: {ready:?}"
        );
        let mut rb = RecvBatch::new(&a);
        assert_eq!(a.recv(&mut rb, 1, false).unwrap(), 1);
        assert_eq!(
            rb.lone().map(|(f, d)| (f, d.to_vec())),
            Some((peer_addr, b"answer".to_vec()))
        );
        let (local, dst) =
            peer_socket_addrs(a.local_addr().unwrap(), "[fd00::1]:7".parse().unwrap());
        assert_eq!(
            (local, dst.to_string()),
            (a.local_addr().unwrap(), "[fd00::1]:7".into())
        );
    }

    /// Past the limit an endpoint is served by the listening socket, and
    /// its datagrams still arrive.
    #[test]
    fn endpoints_beyond_the_limit_use_the_listening_socket() {
        let a = watched_io();
        let mut batch = SendBatch::default();
        // One endpoint per socket the limit allows.
        let ports: Vec<UdpSocket> = (0..MAX_PEER_SOCKETS)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for p in &ports {
            a.send(&mut batch, [(p.local_addr().unwrap(), &b"x"[..], true)]);
        }
        assert_eq!(a.sockets(), 1 + MAX_PEER_SOCKETS);
        let last = UdpSocket::bind("127.0.0.1:0").unwrap();
        last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let last_addr = last.local_addr().unwrap();
        a.send(&mut batch, [(last_addr, &b"beyond"[..], true)]);
        assert_eq!(a.sockets(), 1 + MAX_PEER_SOCKETS);
        let mut buf = [0u8; 16];
        let (n, from) = last.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"beyond"[..], a.local_addr().unwrap()));
        let p = a.peers.lock().unwrap();
        assert!(p.full && p.by_dst.get(&last_addr) == Some(&None));
    }

    /// A peer that was down drew an ICMP error, which its connected socket
    /// reports on the next send: that datagram is sent again, and the
    /// endpoint keeps its socket.
    #[test]
    fn a_refused_endpoint_keeps_its_socket_and_loses_no_datagram() {
        let a = watched_io();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = closed.local_addr().unwrap();
        drop(closed);
        let mut batch = SendBatch::default();
        a.send(&mut batch, [(dst, &b"into the void"[..], true)]);
        // The port unreachable comes back at once on loopback.
        std::thread::sleep(Duration::from_millis(50));
        let back = UdpSocket::bind(dst).unwrap();
        back.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.send(&mut batch, [(dst, &b"after the error"[..], true)]);
        let mut buf = [0u8; 64];
        let n = back.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after the error");
        let p = a.peers.lock().unwrap();
        assert_eq!(
            p.by_dst.get(&dst),
            Some(&Some(1)),
            "still on its peer socket"
        );
    }

    #[test]
    fn a_demoted_endpoint_leaves_the_cached_peer_socket() {
        let a = watched_io();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = peer.local_addr().unwrap();
        let mut batch = SendBatch::default();
        a.send(&mut batch, [(dst, &b"one"[..], true)]);
        let fd = a.fds[1].load(Ordering::Acquire);
        assert_eq!(batch.last, Some((dst, fd, 0)), "remembered");
        a.send(&mut batch, [(dst, &b"two"[..], true)]);
        a.demote(dst, &io::Error::from_raw_os_error(libc::ENETUNREACH));
        a.send(&mut batch, [(dst, &b"three"[..], true)]);
        assert_eq!(batch.last, None, "the listening socket is not cached");
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"two", b"three"] {
            let n = peer.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }

    #[test]
    fn reused_receive_headers_still_take_a_gro_train_after_a_lone_datagram() {
        let rx = loopback_io();
        rx.set_gro(true);
        let (gro, _) = rx.offloads();
        let to = rx.local_addr().unwrap();
        let tx = UdpIo::new(UdpSocket::bind("127.0.0.1:0").unwrap(), false, true).unwrap();
        let mut batch = SendBatch::default();
        let mut rb = RecvBatch::new(&rx);
        let wait = |rb: &mut RecvBatch| {
            for _ in 0..500 {
                if rx.recv(rb, 0, false).unwrap() > 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("nothing received");
        };
        let mut got = Vec::new();
        // A lone datagram carries no control message: the kernel sets the
        // header's control length to 0, which must not stick.
        tx.send(&mut batch, [(to, &b"lone"[..], false)]);
        wait(&mut rb);
        rb.for_each(|_, d| got.push(d.to_vec()));
        let train: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        tx.send(&mut batch, train.iter().map(|p| (to, &p[..], false)));
        while got.len() < 6 {
            wait(&mut rb);
            rb.for_each(|_, d| got.push(d.to_vec()));
        }
        let mut want = vec![b"lone".to_vec()];
        want.extend(train);
        assert_eq!(got, want, "GRO (on: {gro}) trains cut back into datagrams");
    }

    fn gro_of(fd: RawFd) -> libc::c_int {
        getsockopt(fd, libc::SOL_UDP, libc::UDP_GRO).unwrap()
    }

    /// Lone reads take one whole datagram per call while GRO is off; a
    /// train the socket coalesced while GRO was on is cut apart by a batch
    /// read once GRO is back on; every socket, peer sockets made in either
    /// state included, follows the switch.
    #[test]
    fn lone_reads_while_gro_is_off_and_a_train_from_before_needs_gro_back() {
        let rx = watched_io();
        let (gro, _) = rx.offloads();
        let to = rx.local_addr().unwrap();
        let tx = UdpIo::new(UdpSocket::bind("127.0.0.1:0").unwrap(), false, true).unwrap();
        let mut batch = SendBatch::default();
        let mut rb = RecvBatch::new(&rx);
        // `lone` reads `want` datagrams; `single`: one per call.
        let read = |rb: &mut RecvBatch, lone: bool, single: bool, want: usize| {
            let mut got = Vec::new();
            for _ in 0..500 {
                if rx.recv(rb, 0, lone).unwrap() > 0 {
                    assert!(!single || rb.lone().is_some(), "one datagram per read");
                    rb.for_each(|_, d| got.push(d.to_vec()));
                    if got.len() >= want {
                        return got;
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            panic!("received {} of {want}", got.len());
        };
        let train: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        // Off at first, on every socket (a peer socket made now too).
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.send_lone(&mut batch, peer.local_addr().unwrap(), b"hi", true);
        let peer_fd = rx.fds[1].load(Ordering::Acquire);
        assert!(peer_fd >= 0, "a peer socket");
        assert_eq!((gro_of(rx.fd()), gro_of(peer_fd)), (0, 0));
        rx.set_gro(true);
        if gro {
            assert_eq!((gro_of(rx.fd()), gro_of(peer_fd)), (1, 1));
        }
        // Queued while on (one coalesced train on loopback) ...
        tx.send(&mut batch, train.iter().map(|p| (to, &p[..], false)));
        std::thread::sleep(Duration::from_millis(50));
        rx.set_gro(false);
        assert_eq!((gro_of(rx.fd()), gro_of(peer_fd)), (0, 0));
        // ... comes out as datagrams from a batch read with GRO back on
        // (the pump's rule when the sockets are not empty at the switch).
        rx.set_gro(true);
        assert_eq!(read(&mut rb, false, false, 5), train);
        rx.set_gro(false);
        // Off: lone reads, a train sent now arrives as datagrams.
        tx.send(&mut batch, [(to, &b"lone"[..], false)]);
        tx.send(&mut batch, train.iter().map(|p| (to, &p[..], false)));
        let mut want = vec![b"lone".to_vec()];
        want.extend(train.iter().cloned());
        assert_eq!(read(&mut rb, true, true, 6), want);
        // A lone read with GRO on is a batch read: the train comes whole.
        rx.set_gro(true);
        tx.send(&mut batch, train.iter().map(|p| (to, &p[..], false)));
        assert_eq!(read(&mut rb, true, false, 5), train);
    }

    /// A lone datagram takes the plain `sendto` path, a batch the `sendmmsg`
    /// path (GSO on loopback); both arrive whole and in order.
    #[test]
    fn single_datagrams_and_batches_arrive_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = rx.local_addr().unwrap();
        let tx = UdpIo::new(UdpSocket::bind("127.0.0.1:0").unwrap(), false, true).unwrap();
        let mut batch = SendBatch::default();
        tx.send(&mut batch, [(dst, &b"one"[..], false)]);
        let many: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        tx.send(&mut batch, many.iter().map(|p| (dst, &p[..], true)));
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        for want in &many {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &want[..]);
        }
    }
}
