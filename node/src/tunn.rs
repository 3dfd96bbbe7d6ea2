//! The one adapter around boringtun's `noise::Tunn`.
//!
//! `Tunn` reads the clock itself. This wrapper is the only place that knows:
//! the rest of the core passes `now` and sees handshake times measured on
//! that clock. Handshake retransmission is also driven from `now` (in
//! addition to boringtun's own timer, which runs on the same clock in
//! production), so a simulation with a virtual clock recovers from a lost
//! handshake exactly as the real node does. `WireGuardError`, which has no
//! `Display`, is wrapped in [`TunnelError`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// WireGuard's REKEY_TIMEOUT: resend an unanswered handshake initiation.
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// WireGuard's REKEY_ATTEMPT_TIME: give up on an unanswered handshake.
const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);

const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
pub(crate) const MSG_DATA: u8 = 4;

/// A boringtun error, made printable.
#[derive(Debug)]
pub struct TunnelError(pub WireGuardError);

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wireguard: {:?}", self.0)
    }
}

impl std::error::Error for TunnelError {}

/// What one call produced; the slices point into the caller's buffer,
/// always starting at offset 0.
#[derive(Debug)]
pub enum Output {
    Done,
    /// Send this many bytes of the buffer as a UDP datagram.
    Network(usize),
    /// Write this many bytes to the TUN device; the inner source address,
    /// which the caller must check against the peer's allowed IPs.
    Tunnel(usize, IpAddr),
    Err(TunnelError),
}

/// One peer's WireGuard state machine.
pub struct Tunnel {
    tunn: Tunn,
    /// Set while an initiation we sent is unanswered: (first sent, last sent).
    pending_init: Option<(Instant, Instant)>,
    last_handshake: Option<Instant>,
    /// Packets may wait in boringtun's queue (sent before a session
    /// existed); cleared when a flush comes back empty.
    queued: bool,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("pending_init", &self.pending_init)
            .field("last_handshake", &self.last_handshake)
            .finish_non_exhaustive()
    }
}

fn output(r: TunnResult<'_>) -> Output {
    match r {
        TunnResult::Done => Output::Done,
        TunnResult::Err(e) => Output::Err(TunnelError(e)),
        TunnResult::WriteToNetwork(p) => Output::Network(p.len()),
        TunnResult::WriteToTunnelV4(p, a) => Output::Tunnel(p.len(), IpAddr::V4(a)),
        TunnResult::WriteToTunnelV6(p, a) => Output::Tunnel(p.len(), IpAddr::V6(a)),
    }
}

impl Tunnel {
    /// `index` is the 24-bit local index; incoming packets carry it as
    /// `receiver_index >> 8`.
    pub fn new(
        secret: StaticSecret,
        peer: PublicKey,
        index: u32,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            tunn: Tunn::new(secret, peer, None, None, index, Some(limiter)),
            pending_init: None,
            last_handshake: None,
            queued: false,
        }
    }

    fn note_sent(&mut self, now: Instant, out: &Output, buf: &[u8]) {
        if let Output::Network(n) = out
            && *n > 0
            && buf[0] == MSG_INIT
        {
            let first = self.pending_init.map_or(now, |(first, _)| first);
            self.pending_init = Some((first, now));
        }
    }

    /// Encrypts an IP packet. Without a session the packet is queued and a
    /// handshake initiation may be returned instead. `dst` must hold at least
    /// `packet.len() + 32` and 148 bytes.
    pub fn encapsulate(&mut self, now: Instant, packet: &[u8], dst: &mut [u8]) -> Output {
        let out = output(self.tunn.encapsulate(packet, dst));
        if !matches!(out, Output::Network(n) if n > 0 && dst[0] == MSG_DATA) {
            self.queued = true;
        }
        self.note_sent(now, &out, dst);
        out
    }

    /// Processes a datagram from the peer; with an empty datagram, flushes
    /// packets queued during a handshake (call until `Done`).
    pub fn decapsulate(
        &mut self,
        now: Instant,
        from: Option<IpAddr>,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Output {
        let out = output(self.tunn.decapsulate(from, datagram, dst));
        if datagram.is_empty() && matches!(out, Output::Done) {
            self.queued = false;
        }
        if !matches!(out, Output::Err(_)) {
            match datagram.first() {
                Some(&MSG_RESPONSE) => {
                    self.pending_init = None;
                    self.last_handshake = Some(now);
                }
                Some(&MSG_INIT) if matches!(out, Output::Network(_)) => {
                    self.last_handshake = Some(now);
                }
                Some(&MSG_DATA) => self.pending_init = None,
                _ => {}
            }
        }
        self.note_sent(now, &out, dst);
        out
    }

    /// Runs WireGuard's timers (rekey, keepalive, expiry); call about every
    /// 250 ms. Returns at most one datagram to send.
    pub fn update_timers(&mut self, now: Instant, dst: &mut [u8]) -> Output {
        let out = output(self.tunn.update_timers(dst));
        match out {
            Output::Err(TunnelError(WireGuardError::ConnectionExpired)) => {
                self.pending_init = None;
                out
            }
            Output::Done => match self.pending_init {
                Some((first, _)) if now.saturating_duration_since(first) >= REKEY_ATTEMPT_TIME => {
                    self.pending_init = None;
                    Output::Done
                }
                Some((_, last)) if now.saturating_duration_since(last) >= REKEY_TIMEOUT => {
                    let out = output(self.tunn.format_handshake_initiation(dst, true));
                    self.note_sent(now, &out, dst);
                    out
                }
                _ => Output::Done,
            },
            out => {
                self.note_sent(now, &out, dst);
                out
            }
        }
    }

    /// Replaces this node's static key (a key rotation). boringtun drops
    /// every session made under the old key, so traffic needs a new
    /// handshake; with `reconnect` one is initiated at once (into `dst`)
    /// instead of at the next packet, so a peer that only receives does not
    /// wait for its own rekey timer.
    pub fn set_static_key(
        &mut self,
        now: Instant,
        secret: StaticSecret,
        limiter: Arc<RateLimiter>,
        reconnect: bool,
        dst: &mut [u8],
    ) -> Output {
        let public = PublicKey::from(&secret);
        self.tunn.set_static_private(secret, public, Some(limiter));
        self.pending_init = None;
        if !reconnect {
            return Output::Done;
        }
        let out = output(self.tunn.format_handshake_initiation(dst, true));
        self.note_sent(now, &out, dst);
        out
    }

    /// Time since the last completed handshake, on the caller's clock.
    pub fn since_handshake(&self, now: Instant) -> Option<Duration> {
        self.last_handshake
            .map(|t| now.saturating_duration_since(t))
    }

    /// Whether packets may be waiting for a session. boringtun flushes its
    /// queue only on a repeated `decapsulate` with an empty datagram; the
    /// core makes that call after a data message when this is set, so a
    /// responder's queued packets leave as soon as the session is usable.
    pub fn has_queued(&self) -> bool {
        self.queued
    }

    /// Whether an initiation we sent is still unanswered.
    pub fn handshake_pending(&self) -> bool {
        self.pending_init.is_some()
    }

    /// (tx, rx) payload bytes, as WireGuard counts them.
    pub fn bytes(&self) -> (u64, u64) {
        let (_, tx, rx, _, _) = self.tunn.stats();
        (tx as u64, rx as u64)
    }
}

#[cfg(test)]
// Tests need one real origin instant; all later times are offsets from it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn pair() -> (Tunnel, Tunnel) {
        let (a, b) = (
            StaticSecret::random_from_rng(OsRng),
            StaticSecret::random_from_rng(OsRng),
        );
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        let la = Arc::new(RateLimiter::new(&pa, 100));
        let lb = Arc::new(RateLimiter::new(&pb, 100));
        (Tunnel::new(a, pb, 1, la), Tunnel::new(b, pa, 2, lb))
    }

    #[test]
    fn handshake_on_virtual_clock_with_retransmit() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair();
        let mut buf = vec![0u8; 2048];
        let mut buf2 = vec![0u8; 2048];
        let ping = crate::craft::echo_request(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            7,
            1,
        );
        // First initiation is "lost".
        assert!(matches!(
            a.encapsulate(t0, &ping, &mut buf),
            Output::Network(148)
        ));
        assert!(a.handshake_pending());
        assert!(matches!(
            a.update_timers(t0 + Duration::from_secs(1), &mut buf),
            Output::Done
        ));
        // After REKEY_TIMEOUT on the virtual clock, the adapter resends.
        let Output::Network(n) = a.update_timers(t0 + Duration::from_secs(6), &mut buf) else {
            panic!("no retransmission");
        };
        let Output::Network(m) = b.decapsulate(t0, None, &buf[..n], &mut buf2) else {
            panic!("no response");
        };
        let Output::Network(k) = a.decapsulate(t0, None, &buf2[..m], &mut buf) else {
            panic!("no keepalive");
        };
        assert!(!a.handshake_pending());
        assert_eq!(
            a.since_handshake(t0 + Duration::from_secs(7)),
            Some(Duration::from_secs(7))
        );
        assert!(matches!(
            b.decapsulate(t0, None, &buf[..k], &mut buf2),
            Output::Done
        ));
        // The queued ping comes out of the repeated empty call.
        let Output::Network(k) = a.decapsulate(t0, None, &[], &mut buf) else {
            panic!("queued packet not flushed");
        };
        let Output::Tunnel(len, src) = b.decapsulate(t0, None, &buf[..k], &mut buf2) else {
            panic!("not delivered");
        };
        assert_eq!(&buf2[..len], &ping[..]);
        assert_eq!(src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(format!("{}", TunnelError(WireGuardError::InvalidMac)).contains("InvalidMac"));
    }
}
