//! The node's sans-IO core: packets and `now` in, datagrams, TUN writes and
//! events out. No sockets, no TUN, no clock, no tokio.
//!
//! Contract (quinn's vocabulary): feed input with [`Node::handle_udp`],
//! [`Node::handle_tun`] and [`Node::handle_timeout`]; after each call drain
//! [`Node::poll_transmit`], [`Node::poll_tun_write`] and [`Node::poll_event`]
//! until `None`, hand drained buffers back with [`Node::recycle`] (so the
//! steady state allocates nothing), and call `handle_timeout` again no later
//! than [`Node::poll_timeout`]. Configuration changes go through
//! [`Node::apply_netmap`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet as WgPacket, Tunn, TunnResult};
use ipnet::IpNet;
use segmesh_config::{NetMap, NetMapError, NodeName, PublicKey};

use crate::filter::{Decision, Filter};
use crate::packet::{self, FlowKey, Packet};
use crate::peers::{PeerDiff, PeerState, PeerTable, Slot};
use crate::status::{Direction, DropCounters, DropReason, FlowRecord, Verdict};
use crate::tunn::{MSG_DATA, Output};

/// How often WireGuard timers run (boringtun's device uses the same).
const TICK: Duration = Duration::from_millis(250);
/// How often the filter is swept and the handshake rate limit reset.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Buffers kept for reuse; beyond this, returned buffers are freed.
const POOL_MAX: usize = 512;
/// Pooled buffers larger than this are freed rather than kept, so one
/// jumbo datagram does not pin memory for good.
const POOL_BUF_MAX: usize = 16 * 1024;
/// WireGuard's data message overhead (header + tag).
const WG_OVERHEAD: usize = 32;
/// Handshake initiation size, the minimum for any output buffer.
const MIN_BUF: usize = 148;
/// WireGuard's REJECT_AFTER_TIME: a session older than this is dead anyway,
/// so a rotation does not wake a peer that last talked longer ago.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// A UDP datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// `dst` is a peer's endpoint (from the netmap or learned from its
    /// authenticated packets), not merely where a datagram came from: the
    /// driver may give it a connected socket.
    pub peer: bool,
}

/// Something the driver may want to log or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new flow and the verdict; `time_unix_ms` is 0 (the driver owns
    /// the wall clock and fills it in).
    Flow(FlowRecord),
    /// A handshake with the peer completed; `first` for the first one since
    /// the peer was added.
    Handshake {
        peer: PublicKey,
        endpoint: SocketAddr,
        first: bool,
    },
    /// The peer's packets now come from a different address (roaming).
    EndpointChanged {
        peer: PublicKey,
        endpoint: SocketAddr,
    },
}

/// Why a netmap was refused; the node keeps the previous one.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("netmap is for key {found}, but this node's key is {expected}")]
    WrongNode {
        expected: PublicKey,
        found: PublicKey,
    },
    #[error(transparent)]
    Invalid(#[from] NetMapError),
}

/// One peer as the core sees it (no wall-clock times).
#[derive(Debug, Clone, PartialEq)]
pub struct CorePeerStatus {
    pub public_key: PublicKey,
    pub name: Option<NodeName>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub since_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub outbound: Vec<String>,
    pub inbound: Vec<String>,
}

/// The core's counters and peers.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreStatus {
    pub name: Option<NodeName>,
    pub public_key: PublicKey,
    pub addresses: Vec<IpAddr>,
    pub netmap_version: u64,
    pub peers: Vec<CorePeerStatus>,
    pub drops: DropCounters,
    pub flows: usize,
}

/// Output queues and counters, kept apart from the peer table so both can be
/// borrowed at once.
#[derive(Debug, Default)]
struct Io {
    transmits: VecDeque<Transmit>,
    tun: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    drops: DropCounters,
    pool: Vec<Vec<u8>>,
}

impl Io {
    /// A buffer of `len` bytes whose contents are unspecified: a recycled
    /// one keeps the bytes of the packet it last held, and only growth past
    /// that is zeroed. Every caller writes what it then sends (boringtun
    /// writes the whole message it returns, and the buffer is cut to it), so
    /// zeroing each 1.4 KB buffer again, as `clear` + `resize` did, was a
    /// memset per packet on the bulk path: two per byte carried.
    fn buf(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        if b.len() < len {
            b.resize(len, 0);
        } else {
            b.truncate(len);
        }
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.pool.len() < POOL_MAX && b.capacity() <= POOL_BUF_MAX {
            self.pool.push(b);
        }
    }

    fn drop(&mut self, reason: DropReason, what: &'static str) {
        self.drops.count(reason);
        tracing::trace!(reason = reason.as_str(), what, "drop");
    }

    fn flow(
        &mut self,
        key: &FlowKey,
        peer: Option<&PeerState>,
        direction: Direction,
        verdict: Verdict,
        reason: &str,
    ) {
        self.events.push_back(Event::Flow(FlowRecord {
            time_unix_ms: 0,
            proto: key.proto,
            src: key.src,
            src_port: key.src_port,
            dst: key.dst,
            dst_port: key.dst_port,
            peer: peer.map(|p| p.key),
            peer_name: peer.and_then(|p| p.name.clone()),
            direction,
            verdict,
            reason: reason.to_string(),
        }));
    }

    /// Sends `buf` (holding `n` bytes) to the peer. A handshake initiation to
    /// a peer whose endpoint is not yet confirmed goes to every configured
    /// endpoint, so a multi-homed peer is reached on whichever works.
    fn send(&mut self, peer: &PeerState, mut buf: Vec<u8>, n: usize) {
        buf.truncate(n);
        let Some(dst) = peer.endpoint else {
            self.recycle(buf);
            return;
        };
        if buf.first() == Some(&1) && !peer.learned {
            for &extra in peer.configured.iter().filter(|&&e| e != dst) {
                let mut copy = self.buf(0);
                copy.extend_from_slice(&buf);
                self.transmits.push_back(Transmit {
                    dst: extra,
                    payload: copy,
                    peer: false,
                });
            }
        }
        self.transmits.push_back(Transmit {
            dst,
            payload: buf,
            peer: true,
        });
    }
}

/// The node's data plane state machine.
#[derive(Debug)]
pub struct Node {
    peers: PeerTable,
    filter: Filter,
    io: Io,
    name: Option<NodeName>,
    addresses: Vec<IpAddr>,
    netmap_version: u64,
    next_tick: Instant,
    /// Largest TUN frame seen: sizes the buffers that flush queued packets.
    max_frame: usize,
    next_housekeeping: Instant,
}

impl Node {
    /// A node holding this private key, with no peers until a netmap is
    /// applied. `index_seed` should be random in production (it picks the
    /// session indices peers see).
    pub fn new(secret: [u8; 32], index_seed: u32, now: Instant) -> Self {
        Self {
            peers: PeerTable::new(secret, index_seed),
            filter: Filter::default(),
            io: Io::default(),
            name: None,
            addresses: Vec::new(),
            netmap_version: 0,
            next_tick: now + TICK,
            max_frame: 1500,
            next_housekeeping: now + HOUSEKEEPING,
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.peers.public_key()
    }

    /// Makes the peers, routes and filter match `map`. Peers whose key
    /// stays keep their sessions; removed peers lose theirs at once, and
    /// tracked flows no longer allowed are forgotten.
    pub fn apply_netmap(&mut self, _now: Instant, map: &NetMap) -> Result<PeerDiff, ApplyError> {
        let me = self.public_key();
        if map.node.public_key != me {
            return Err(ApplyError::WrongNode {
                expected: me,
                found: map.node.public_key,
            });
        }
        map.validate()?;
        let diff = self.peers.apply(map);
        let peers = &self.peers;
        self.filter.revalidate(|key, dir, flow| {
            peers.get(key).is_some_and(|p| match dir {
                Direction::Outbound => {
                    p.owns(flow.dst) && p.outbound.allows(flow.proto, flow.dst_port)
                }
                Direction::Inbound => {
                    p.owns(flow.src) && p.inbound.allows(flow.proto, flow.dst_port)
                }
            })
        });
        self.name = Some(map.node.name.clone());
        self.addresses.clone_from(&map.node.addresses);
        self.netmap_version = map.version;
        Ok(diff)
    }

    /// Replaces the node's WireGuard key once the coordinator accepted the
    /// new one. Sessions made under the old key end (boringtun binds them
    /// to it); every peer that had a live session gets a handshake
    /// initiation at once, so traffic resumes after one round trip. Netmaps
    /// applied from now on must carry the new key in their own entry.
    pub fn rotate_key(&mut self, now: Instant, secret: [u8; 32]) -> PublicKey {
        self.peers.set_secret(secret);
        let (sk, _) = self.peers.secret();
        let sk = sk.clone();
        let limiter = self.peers.limiter_arc();
        for peer in self.peers.iter_mut() {
            let live = peer
                .tunnel
                .since_handshake(now)
                .is_some_and(|d| d < SESSION_LIFETIME);
            let reconnect = live && peer.endpoint.is_some();
            let mut buf = self.io.buf(MIN_BUF);
            match peer.tunnel.set_static_key(
                now,
                sk.clone(),
                Arc::clone(&limiter),
                reconnect,
                &mut buf,
            ) {
                Output::Network(n) => self.io.send(peer, buf, n),
                _ => self.io.recycle(buf),
            }
        }
        self.public_key()
    }

    /// A packet read from the TUN device: route, filter, encrypt.
    pub fn handle_tun(&mut self, now: Instant, frame: &[u8]) {
        let Some(slot) = self.outbound(now, frame) else {
            return;
        };
        let mut buf = self.io.buf((frame.len() + WG_OVERHEAD).max(MIN_BUF));
        let Some(peer) = self.peers.slot_mut(slot) else {
            return self.io.recycle(buf);
        };
        let out = peer.tunnel.encapsulate(now, frame, &mut buf);
        Self::encapsulated(&mut self.io, peer, out, buf);
    }

    /// [`Node::handle_tun`] for a packet read alone (interactive traffic):
    /// when the result is one data message to the peer, it is left in
    /// `out` and returned as (endpoint, length) for the caller to send at
    /// once; anything else is queued as `handle_tun` queues it. A lone
    /// packet then skips the output queues, the buffer pool and the
    /// caller's draining, tens of cache lines that an idle tunnel's packet
    /// finds cold.
    pub fn handle_tun_lone(
        &mut self,
        now: Instant,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(SocketAddr, usize)> {
        let slot = self.outbound(now, frame)?;
        let peer = self.peers.slot_mut(slot)?;
        let need = (frame.len() + WG_OVERHEAD).max(MIN_BUF);
        if out.len() < need {
            out.resize(need, 0);
        }
        match peer.tunnel.encapsulate(now, frame, out) {
            Output::Network(n) if out[0] == MSG_DATA && peer.endpoint.is_some() => {
                peer.endpoint.map(|dst| (dst, n))
            }
            other => {
                let mut buf = self.io.buf(0);
                if let Output::Network(n) = other {
                    buf.extend_from_slice(&out[..n]);
                }
                Self::encapsulated(&mut self.io, peer, other, buf);
                None
            }
        }
    }

    /// Whether the output queues hold anything. After a lone call they
    /// are usually empty, and the driver need not drain them.
    pub fn has_output(&self) -> bool {
        !(self.io.transmits.is_empty() && self.io.tun.is_empty() && self.io.events.is_empty())
    }

    /// Routes and filters a TUN packet: the peer to encrypt it for, or
    /// `None` when it was dropped (counted, and answered with an ICMP
    /// error where that helps the sender).
    fn outbound(&mut self, now: Instant, frame: &[u8]) -> Option<Slot> {
        self.max_frame = self.max_frame.max(frame.len());
        let pkt = match packet::parse(frame) {
            Ok(p) => p,
            Err(_) => {
                self.io.drop(DropReason::BadPacket, "tun frame");
                return None;
            }
        };
        // Router solicitations, MLD and other kernel chatter: not traffic.
        if packet::is_local_noise(pkt.key.dst) {
            return None;
        }
        let Some(slot) = self.peers.route(pkt.key.dst) else {
            self.io.drop(DropReason::NoRoute, "no peer for destination");
            if self.filter.first_refusal(now, &pkt.key) {
                self.io.flow(
                    &pkt.key,
                    None,
                    Direction::Outbound,
                    Verdict::Deny,
                    DropReason::NoRoute.as_str(),
                );
            }
            self.prohibited(frame, &pkt);
            return None;
        };
        let peer = self.peers.slot_mut(slot)?;
        match self
            .filter
            .check(now, &pkt, &peer.key, Direction::Outbound, &peer.outbound)
        {
            Decision::Pass => {}
            Decision::New(Verdict::Allow) => {
                self.io.flow(
                    &pkt.key,
                    Some(peer),
                    Direction::Outbound,
                    Verdict::Allow,
                    "allowed",
                );
            }
            d => {
                if d == Decision::New(Verdict::Deny) {
                    self.io.flow(
                        &pkt.key,
                        Some(peer),
                        Direction::Outbound,
                        Verdict::Deny,
                        DropReason::Policy.as_str(),
                    );
                }
                self.io.drop(DropReason::Policy, "outbound");
                self.prohibited(frame, &pkt);
                return None;
            }
        }
        if peer.endpoint.is_none() {
            // Inbound-only peer that has not contacted us: never initiate.
            self.io.drop(DropReason::NoRoute, "peer endpoint unknown");
            return None;
        }
        Some(slot)
    }

    /// Queues what encrypting a TUN packet into `buf` produced.
    fn encapsulated(io: &mut Io, peer: &PeerState, out: Output, buf: Vec<u8>) {
        match out {
            Output::Network(n) => io.send(peer, buf, n),
            Output::Done => io.recycle(buf), // queued until the handshake completes
            Output::Tunnel(..) => io.recycle(buf),
            Output::Err(e) => {
                tracing::trace!(error = %e, "encapsulate");
                io.recycle(buf);
                io.drop(DropReason::BadPacket, "encapsulate");
            }
        }
    }

    fn prohibited(&mut self, frame: &[u8], pkt: &Packet) {
        let mut out = self.io.buf(0);
        if packet::build_prohibited(frame, pkt, &mut out) {
            self.io.tun.push_back(out);
        } else {
            self.io.recycle(out);
        }
    }

    /// A datagram received on the UDP socket from `from`.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.udp(now, from, datagram, None);
    }

    /// [`Node::handle_udp`] for a datagram read alone (interactive
    /// traffic): when it is a data message whose packet is for the TUN
    /// device, the packet is left in `out` after `headroom` bytes and its
    /// length returned, for the caller to write at once; anything else is
    /// queued as `handle_udp` queues it (see [`Node::handle_tun_lone`] for
    /// why). The headroom is the driver's: room to put its own frame
    /// header (the TUN's virtio header) in front of the packet, so that
    /// header and packet go out in one plain `write`.
    pub fn handle_udp_lone(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<u8>,
        headroom: usize,
    ) -> Option<usize> {
        self.udp(now, from, datagram, Some((out, headroom)))
    }

    fn udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        lone: Option<(&mut Vec<u8>, usize)>,
    ) -> Option<usize> {
        let slot = self.admit(from, datagram)?;
        let peer = self.peers.slot_mut(slot)?;
        let msg_type = datagram[0];
        // A data message means the session is usable now: packets queued
        // while it was being made (the responder's side of a handshake,
        // e.g. right after a peer rotated its key) leave at once.
        let flush_queue = msg_type == MSG_DATA && peer.tunnel.has_queued();
        if let Some((buf, headroom)) = lone
            && msg_type == MSG_DATA
            && !flush_queue
        {
            let need = headroom + datagram.len().max(MIN_BUF);
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let out = &mut buf[headroom..];
            let r = peer.tunnel.decapsulate(now, Some(from.ip()), datagram, out);
            if !matches!(r, Output::Err(_)) {
                Self::authenticated(&mut self.io, peer, from, msg_type);
            }
            return match r {
                Output::Tunnel(n, src) => Self::inbound(
                    &mut self.io,
                    &mut self.filter,
                    &self.addresses,
                    peer,
                    now,
                    &out[..n],
                    src,
                )
                .then_some(n),
                Output::Done => None, // a keepalive
                Output::Network(n) => {
                    let mut buf = self.io.buf(0);
                    buf.extend_from_slice(&out[..n]);
                    self.io.transmits.push_back(Transmit {
                        dst: from,
                        payload: buf,
                        peer: false,
                    });
                    None
                }
                Output::Err(e) => {
                    tracing::trace!(error = %e, "decapsulate");
                    self.io.drop(DropReason::BadPacket, "decapsulate");
                    None
                }
            };
        }
        let mut input = datagram;
        let mut first = true;
        loop {
            let len = if first {
                datagram.len().max(MIN_BUF)
            } else {
                // Room for the largest packet Tunn may have queued.
                self.max_frame + WG_OVERHEAD
            };
            let mut buf = self.io.buf(len);
            let out = peer
                .tunnel
                .decapsulate(now, Some(from.ip()), input, &mut buf);
            if first && !matches!(out, Output::Err(_)) && msg_type != 3 {
                Self::authenticated(&mut self.io, peer, from, msg_type);
            }
            match out {
                Output::Done => {
                    self.io.recycle(buf);
                    if !(first && flush_queue) {
                        break;
                    }
                }
                Output::Network(n) => {
                    if first {
                        // Answers (handshake response, cookie) go where the
                        // question came from.
                        buf.truncate(n);
                        self.io.transmits.push_back(Transmit {
                            dst: from,
                            payload: buf,
                            peer: false,
                        });
                        // A responder cannot send on the new session before
                        // the initiator's first data message (which flushes
                        // the queue, above); flushing now would only start a
                        // second, competing handshake.
                        if msg_type == 1 {
                            break;
                        }
                    } else {
                        self.io.send(peer, buf, n);
                    }
                }
                Output::Tunnel(n, src) => {
                    buf.truncate(n);
                    if Self::inbound(
                        &mut self.io,
                        &mut self.filter,
                        &self.addresses,
                        peer,
                        now,
                        &buf,
                        src,
                    ) {
                        self.io.tun.push_back(buf);
                    } else {
                        self.io.recycle(buf);
                    }
                    if !(first && flush_queue) {
                        break;
                    }
                }
                Output::Err(e) => {
                    tracing::trace!(error = %e, "decapsulate");
                    self.io.recycle(buf);
                    self.io.drop(DropReason::BadPacket, "decapsulate");
                    break;
                }
            }
            input = &[];
            first = false;
        }
        None
    }

    /// Identifies the peer a datagram belongs to. Handshake initiations are
    /// checked for a valid MAC (cheap) and load (cookie reply) before the
    /// sender's key is decrypted and looked up: an unknown key gets nothing.
    fn admit(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<Slot> {
        let receiver = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                self.io.drop(DropReason::BadPacket, "not wireguard");
                return None;
            }
            Ok(WgPacket::HandshakeInit(_)) => None,
            Ok(WgPacket::HandshakeResponse(p)) => Some(p.receiver_idx),
            Ok(WgPacket::PacketCookieReply(p)) => Some(p.receiver_idx),
            Ok(WgPacket::PacketData(p)) => Some(p.receiver_idx),
        };
        if let Some(idx) = receiver {
            let slot = self.peers.by_receiver(idx);
            if slot.is_none() {
                self.io
                    .drop(DropReason::UnknownKey, "unknown receiver index");
            }
            return slot;
        }
        let mut cookie = self.io.buf(MIN_BUF);
        let verified = self
            .peers
            .limiter()
            .verify_packet(Some(from.ip()), datagram, &mut cookie);
        let init = match verified {
            Ok(WgPacket::HandshakeInit(init)) => init,
            Err(TunnResult::WriteToNetwork(c)) => {
                let n = c.len();
                cookie.truncate(n);
                self.io.transmits.push_back(Transmit {
                    dst: from,
                    payload: cookie,
                    peer: false,
                });
                return None;
            }
            _ => {
                self.io.recycle(cookie);
                self.io.drop(DropReason::BadPacket, "handshake mac");
                return None;
            }
        };
        self.io.recycle(cookie);
        let (sk, pk) = self.peers.secret();
        let Ok(half) = parse_handshake_anon(sk, pk, &init) else {
            self.io.drop(DropReason::BadPacket, "handshake not for us");
            return None;
        };
        let key = PublicKey::from_bytes(half.peer_static_public);
        let slot = self.peers.find(&key);
        if slot.is_none() {
            tracing::debug!(peer = %key, endpoint = %from, "handshake from a key not in the netmap ignored");
            self.io
                .drop(DropReason::UnknownKey, "handshake from unknown key");
        }
        slot
    }

    fn authenticated(io: &mut Io, peer: &mut PeerState, from: SocketAddr, msg_type: u8) {
        if peer.endpoint != Some(from) {
            let known = peer.endpoint.is_some();
            peer.endpoint = Some(from);
            if known {
                io.events.push_back(Event::EndpointChanged {
                    peer: peer.key,
                    endpoint: from,
                });
            }
        }
        peer.learned = true;
        if msg_type == 1 || msg_type == 2 {
            let first = peer.handshakes == 0;
            peer.handshakes += 1;
            io.events.push_back(Event::Handshake {
                peer: peer.key,
                endpoint: from,
                first,
            });
        }
    }

    /// A decrypted packet: anti-spoofing, then the filter; true when it
    /// goes to the TUN device.
    fn inbound(
        io: &mut Io,
        filter: &mut Filter,
        local: &[IpAddr],
        peer: &PeerState,
        now: Instant,
        buf: &[u8],
        src: IpAddr,
    ) -> bool {
        if !peer.owns(src) {
            io.drop(
                DropReason::SpoofedSource,
                "inner source outside allowed ips",
            );
            if let Ok(p) = packet::parse(buf)
                && filter.first_refusal(now, &p.key)
            {
                io.flow(
                    &p.key,
                    Some(peer),
                    Direction::Inbound,
                    Verdict::Deny,
                    DropReason::SpoofedSource.as_str(),
                );
            }
            return false;
        }
        let pkt = match packet::parse(buf) {
            Ok(p) => p,
            Err(_) => {
                io.drop(DropReason::BadPacket, "inner packet");
                return false;
            }
        };
        // We are an endpoint, not a router: only our own addresses.
        let for_us = local.contains(&pkt.key.dst);
        let decision = if for_us {
            filter.check(now, &pkt, &peer.key, Direction::Inbound, &peer.inbound)
        } else if filter.first_refusal(now, &pkt.key) {
            Decision::New(Verdict::Deny)
        } else {
            Decision::Drop
        };
        match decision {
            Decision::Pass => true,
            Decision::New(Verdict::Allow) => {
                io.flow(
                    &pkt.key,
                    Some(peer),
                    Direction::Inbound,
                    Verdict::Allow,
                    "allowed",
                );
                true
            }
            d => {
                if d == Decision::New(Verdict::Deny) {
                    io.flow(
                        &pkt.key,
                        Some(peer),
                        Direction::Inbound,
                        Verdict::Deny,
                        DropReason::Policy.as_str(),
                    );
                }
                io.drop(DropReason::Policy, "inbound");
                false
            }
        }
    }

    /// Runs timers: WireGuard handshakes/keepalives every 250 ms, filter
    /// expiry and the handshake rate limit every second.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            for peer in self.peers.iter_mut() {
                let mut buf = self.io.buf(MIN_BUF);
                match peer.tunnel.update_timers(now, &mut buf) {
                    Output::Network(n) => self.io.send(peer, buf, n),
                    Output::Err(e) => {
                        tracing::trace!(peer = %peer.key, error = %e, "timers");
                        self.io.recycle(buf);
                    }
                    _ => self.io.recycle(buf),
                }
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.peers.limiter().reset_count();
            self.filter.sweep(now);
        }
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick.min(self.next_housekeeping))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    /// The next packet to write to the TUN device.
    pub fn poll_tun_write(&mut self) -> Option<Vec<u8>> {
        self.io.tun.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// Returns a buffer obtained from `poll_transmit`/`poll_tun_write` for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.io.recycle(buf);
    }

    /// Counters and per-peer state, with durations measured from `now`.
    pub fn status(&self, now: Instant) -> CoreStatus {
        let peers = self
            .peers
            .iter()
            .map(|p| {
                let (tx, rx) = p.tunnel.bytes();
                CorePeerStatus {
                    public_key: p.key,
                    name: p.name.clone(),
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.to_vec(),
                    since_handshake: p.tunnel.since_handshake(now),
                    rx_bytes: rx,
                    tx_bytes: tx,
                    outbound: p
                        .outbound
                        .to_specs()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    inbound: p
                        .inbound
                        .to_specs()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                }
            })
            .collect();
        CoreStatus {
            name: self.name.clone(),
            public_key: self.public_key(),
            addresses: self.addresses.clone(),
            netmap_version: self.netmap_version,
            peers,
            drops: self.io.drops,
            flows: self.filter.len(),
        }
    }
}
