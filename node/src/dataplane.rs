//! The tokio driver: moves bytes between the TUN device, the UDP socket and
//! the sans-IO [`Node`], and time into it. Every decision is the core's.
//!
//! Tasks: TUN reader, UDP reader, timer, event sink (logs, flow log) and
//! netmap watcher (SIGHUP and a 500 ms mtime poll). The core sits behind a
//! `std::sync::Mutex` that is held only while the core runs, never across
//! an `.await`; each task drains the core's outputs while it holds the lock
//! and sends them after releasing it. Buffers go back to the core's pool at
//! the task's next lock, so the steady state does not allocate.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use segmesh_config::{NetMap, NodeConfig};
use tokio::net::UdpSocket;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tun_rs::AsyncDevice;

use crate::control::PlaneCommand;
use crate::core::{ApplyError, Event, Node, Transmit};
use crate::flowlog::{FlowLog, FlowLogLimits};
use crate::status::{NodeStatus, PeerStatus, StatusSource};
use crate::{ctlsock, tundev, uapi, unixsock};

/// How often the netmap file's mtime is checked.
const NETMAP_POLL: Duration = Duration::from_millis(500);
/// Socket buffers sized for a few ms of line rate, like wireguard-go.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// Events waiting for the log/flow-log task; beyond this they are dropped
/// (the flow log is rate-limited anyway).
const EVENT_QUEUE: usize = 4096;
/// Largest datagram or TUN frame read.
const READ_BUF: usize = 65_536;

/// The wall clock, for the flow log and handshake times (the core never
/// sees it).
#[allow(clippy::disallowed_methods)] // the driver owns the clocks
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[allow(clippy::disallowed_methods)] // the driver owns the clocks
fn now() -> Instant {
    Instant::now()
}

/// Everything `run` needs, resolved from `node.toml`.
#[derive(Debug)]
pub struct Settings {
    pub config: NodeConfig,
    pub config_path: PathBuf,
    pub secret: [u8; 32],
    /// Coordinator mode: netmaps arrive here (from `control::stream`)
    /// instead of being watched in `netmap_file`; each is answered once it
    /// is applied, so the control client acks only what is in force.
    pub feed: Option<NetmapFeed>,
    /// Coordinator mode: where the control socket sends `rotate-key`.
    pub rotator: ctlsock::Rotator,
}

/// In-process updates (netmaps, key rotations), each with a channel for the
/// result.
pub type NetmapFeed = mpsc::Receiver<(
    PlaneCommand,
    tokio::sync::oneshot::Sender<Result<(), String>>,
)>;

struct Shared {
    core: Mutex<Node>,
    interface: String,
    listen_port: u16,
    /// One reading of both clocks: monotonic instants are turned into wall
    /// times through it, so a handshake's reported time never jitters
    /// between two `status` calls.
    anchor: (Instant, u64),
    /// Wakes the timer task to send what the core queued outside a packet
    /// or timer turn (the handshakes that follow a key rotation).
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock would be a core bug; the state is
        // still the best we have, so keep going rather than cascade.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StatusSource for Shared {
    fn status(&self) -> NodeStatus {
        let now = now();
        let st = self.lock().status(now);
        let (t0, wall0) = self.anchor;
        let wall_of = |at: Instant| wall0 + at.saturating_duration_since(t0).as_millis() as u64;
        NodeStatus {
            name: st.name,
            interface: self.interface.clone(),
            public_key: st.public_key,
            listen_port: self.listen_port,
            addresses: st.addresses,
            netmap_version: st.netmap_version,
            peers: st
                .peers
                .into_iter()
                .map(|p| PeerStatus {
                    public_key: p.public_key,
                    name: p.name,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips,
                    last_handshake_unix_ms: p.since_handshake.map(|d| wall_of(now - d)),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    outbound: p.outbound,
                    inbound: p.inbound,
                })
                .collect(),
            drops: st.drops,
        }
    }
}

/// Outputs drained from the core under the lock, sent after it.
#[derive(Default)]
struct Batch {
    transmits: Vec<Transmit>,
    tun: Vec<Vec<u8>>,
    /// Buffers already sent, returned to the core at the next lock.
    spent: Vec<Vec<u8>>,
}

impl Batch {
    /// Returns spent buffers and takes new outputs; call with the lock held.
    fn exchange(&mut self, core: &mut Node, events: &mpsc::Sender<Event>) {
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

    async fn flush(&mut self, udp: &UdpSocket, tun: &AsyncDevice, v6_socket: bool) {
        for t in self.transmits.drain(..) {
            let dst = if v6_socket { to_v6(t.dst) } else { t.dst };
            if let Err(e) = udp.send_to(&t.payload, dst).await {
                tracing::debug!(endpoint = %t.dst, error = %e, "udp send failed");
            }
            self.spent.push(t.payload);
        }
        for p in self.tun.drain(..) {
            if let Err(e) = tun.send(&p).await {
                tracing::debug!(error = %e, "tun write failed");
            }
            self.spent.push(p);
        }
    }
}

/// IPv4 peers are addressed as v4-mapped on a dual-stack socket.
fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// ...and reported as plain IPv4, so endpoints compare equal to the netmap's.
fn from_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Reads and validates a netmap file.
pub fn load_netmap(path: &Path) -> anyhow::Result<NetMap> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading netmap {}", path.display()))?;
    // The NetMapError already names its cause; no chain to repeat.
    NetMap::from_json(&bytes).map_err(|e| anyhow::anyhow!("netmap {}: {e}", path.display()))
}

/// Binds the WireGuard UDP socket: the configured address, or dual-stack
/// `[::]` falling back to `0.0.0.0` on hosts without IPv6.
fn bind_udp(
    config: &NodeConfig,
    config_path: &Path,
) -> anyhow::Result<(std::net::UdpSocket, bool)> {
    let port = config.listen_port;
    let candidates: Vec<SocketAddr> = match config.listen_address {
        Some(a) => vec![SocketAddr::new(a, port)],
        None => vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
        ],
    };
    let mut last = None;
    for addr in &candidates {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => return Ok((s, addr.is_ipv6())),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => bail!(
                "UDP port {port} is already in use (listen_port in {}); stop the other process or pick another port",
                config_path.display()
            ),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.context("no address to bind")?;
    Err(e).with_context(|| format!("binding UDP {addr}"))
}

fn setsockopt_int(sock: &std::net::UdpSocket, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Large socket buffers absorb bursts; the FORCE variants (we hold
/// CAP_NET_ADMIN anyway, for the TUN) go past `net.core.rmem_max`.
fn set_buffers(sock: &std::net::UdpSocket) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(sock, force, SOCKET_BUFFER).is_err()
            && let Err(e) = setsockopt_int(sock, plain, SOCKET_BUFFER)
        {
            tracing::debug!(error = %e, "setting socket buffer size");
        }
    }
}

/// Runs the node until SIGINT/SIGTERM.
pub async fn run(s: Settings) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while sockets are being set up
    // must not kill the process with its default action (and leave the
    // socket files behind).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let hup = signal(SignalKind::hangup())?;
    let cfg = &s.config;
    let map = load_netmap(&cfg.netmap_file)?;
    let t0 = now();
    let seed = {
        let mut b = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        u32::from_le_bytes(b)
    };
    let mut node = Node::new(s.secret, seed, t0);
    let me = node.public_key();
    node.apply_netmap(t0, &map)
        .map_err(|e| anyhow::anyhow!("netmap {}: {e}", cfg.netmap_file.display()))?;

    let (std_udp, v6_socket) = bind_udp(cfg, &s.config_path)?;
    set_buffers(&std_udp);
    std_udp.set_nonblocking(true)?;
    let udp = Arc::new(UdpSocket::from_std(std_udp)?);
    let listen_port = udp.local_addr()?.port();
    let tun = Arc::new(tundev::create(cfg, &map)?);

    let shared = Arc::new(Shared {
        core: Mutex::new(node),
        interface: cfg.interface.to_string(),
        listen_port,
        anchor: (t0, wall_ms()),
        wake: tokio::sync::Notify::new(),
    });
    let ctl_path = cfg
        .control_socket
        .clone()
        .unwrap_or_else(|| ctlsock::default_path(cfg.interface.as_str()));
    let ctl = unixsock::bind_private(&ctl_path).context("control socket")?;
    let uapi_path = uapi::socket_path(cfg.interface.as_str());
    let uapi_listener = match unixsock::bind_private(&uapi_path) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "WireGuard UAPI socket unavailable; `wg show` will not work");
            None
        }
    };
    let flowlog = match &cfg.flow_log {
        Some(p) => Some(FlowLog::open(p, FlowLogLimits::default())?),
        None => None,
    };
    tracing::info!(
        node = %map.node.name,
        public_key = %me,
        interface = %cfg.interface,
        listen_port,
        netmap_version = map.version,
        peers = map.peers.len(),
        "segmesh-node running"
    );

    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let mut tasks = tokio::task::JoinSet::new();
    let applier = Applier {
        shared: shared.clone(),
        tun: tun.clone(),
        current: map,
    };
    // Every task's log lines carry the node's name.
    let span = tracing::info_span!("node", node = %applier.current.node.name);
    let wires = Wires {
        shared: shared.clone(),
        udp,
        tun,
        events: ev_tx,
        v6: v6_socket,
    };
    tasks.spawn(tun_task(wires.clone()).instrument(span.clone()));
    tasks.spawn(udp_task(wires.clone()).instrument(span.clone()));
    tasks.spawn(timer_task(wires).instrument(span.clone()));
    tasks.spawn(event_task(ev_rx, flowlog).instrument(span.clone()));
    match s.feed {
        Some(feed) => tasks.spawn(feed_task(applier, feed).instrument(span.clone())),
        None => {
            tasks.spawn(netmap_task(applier, cfg.netmap_file.clone(), hup).instrument(span.clone()))
        }
    };
    let source: Arc<dyn StatusSource> = shared.clone();
    tasks.spawn({
        let source = source.clone();
        let rotator = s.rotator.clone();
        async move {
            ctlsock::run(ctl, source, rotator)
                .await
                .map_err(anyhow::Error::from)
        }
        .instrument(span.clone())
    });
    if let Some(l) = uapi_listener {
        tasks.spawn(
            async move { uapi::run(l, source).await.map_err(anyhow::Error::from) }
                .instrument(span.clone()),
        );
    }

    let result = tokio::select! {
        _ = int.recv() => Ok(()),
        _ = term.recv() => Ok(()),
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("task failed: {e}")),
            _ => Ok(()),
        },
    };
    tracing::info!("shutting down");
    // Dropping the tasks closes the sockets and removes the socket files;
    // dropping the TUN device removes the interface.
    tasks.shutdown().await;
    result
}

/// What the byte-moving tasks share.
#[derive(Clone)]
struct Wires {
    shared: Arc<Shared>,
    udp: Arc<UdpSocket>,
    tun: Arc<AsyncDevice>,
    events: mpsc::Sender<Event>,
    /// The UDP socket is dual-stack IPv6 (IPv4 peers are v4-mapped).
    v6: bool,
}

impl Wires {
    /// One turn: run `f` on the locked core, take its outputs, unlock, send.
    async fn turn(&self, batch: &mut Batch, f: impl FnOnce(&mut Node)) {
        {
            let mut core = self.shared.lock();
            f(&mut core);
            batch.exchange(&mut core, &self.events);
        }
        batch.flush(&self.udp, &self.tun, self.v6).await;
    }
}

/// Whatever else is ready is read while the lock is held, up to this many.
const READ_BATCH: usize = 32;

async fn tun_task(w: Wires) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut batch = Batch::default();
    let tun = w.tun.clone();
    loop {
        let n = tun.recv(&mut buf).await.context("reading the TUN device")?;
        w.turn(&mut batch, |core| {
            core.handle_tun(now(), &buf[..n]);
            for _ in 1..READ_BATCH {
                match tun.try_recv(&mut buf) {
                    Ok(n) => core.handle_tun(now(), &buf[..n]),
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

async fn udp_task(w: Wires) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    let mut batch = Batch::default();
    let udp = w.udp.clone();
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port unreachable from an old endpoint surfaces here; not fatal.
            Err(e) => {
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        w.turn(&mut batch, |core| {
            core.handle_udp(now(), from_v6(from), &buf[..n]);
            for _ in 1..READ_BATCH {
                match udp.try_recv_from(&mut buf) {
                    Ok((n, from)) => core.handle_udp(now(), from_v6(from), &buf[..n]),
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

async fn timer_task(w: Wires) -> anyhow::Result<()> {
    let mut batch = Batch::default();
    loop {
        let next = w
            .shared
            .lock()
            .poll_timeout()
            .unwrap_or_else(|| now() + Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = w.shared.wake.notified() => {}
        }
        w.turn(&mut batch, |core| core.handle_timeout(now())).await;
    }
}

/// Logs peer events and writes flows to the flow log (wall time added here).
async fn event_task(
    mut rx: mpsc::Receiver<Event>,
    mut flowlog: Option<FlowLog>,
) -> anyhow::Result<()> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Flow(mut rec) => {
                rec.time_unix_ms = wall_ms();
                tracing::debug!(
                    proto = rec.proto,
                    src = %SocketAddr::new(rec.src, rec.src_port),
                    dst = %SocketAddr::new(rec.dst, rec.dst_port),
                    peer = rec.peer.map(|p| p.to_string()),
                    direction = ?rec.direction,
                    verdict = ?rec.verdict,
                    reason = rec.reason,
                    "flow"
                );
                if let Some(f) = flowlog.as_mut() {
                    f.log(now(), &rec);
                }
            }
            Event::Handshake {
                peer,
                endpoint,
                first: true,
            } => {
                tracing::info!(peer = %peer, endpoint = %endpoint, "peer up: first handshake completed");
            }
            Event::Handshake {
                peer,
                endpoint,
                first: false,
            } => {
                tracing::debug!(peer = %peer, endpoint = %endpoint, "handshake completed");
            }
            Event::EndpointChanged { peer, endpoint } => {
                tracing::info!(peer = %peer, endpoint = %endpoint, "peer endpoint changed");
            }
        }
    }
    Ok(())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Applies netmaps to the core and the interface, and logs what changed.
struct Applier {
    shared: Arc<Shared>,
    tun: Arc<AsyncDevice>,
    current: NetMap,
}

impl Applier {
    fn apply(&mut self, map: NetMap) -> Result<(), ApplyError> {
        let diff = self.shared.lock().apply_netmap(now(), &map)?;
        for p in &diff.added {
            tracing::info!(peer = %p, "peer added");
        }
        for p in &diff.removed {
            tracing::info!(peer = %p, "peer removed; sessions torn down");
        }
        for p in &diff.updated {
            tracing::info!(peer = %p, "peer updated");
        }
        tundev::sync(&self.tun, &self.shared.interface, &self.current, &map);
        tracing::info!(
            netmap_version = map.version,
            peers = map.peers.len(),
            "netmap applied"
        );
        self.current = map;
        Ok(())
    }
}

impl Applier {
    /// Switches the core to a new key; the handshakes it queued for live
    /// peers leave at once (the timer task is woken to send them).
    fn rotate_key(&mut self, secret: [u8; 32]) {
        let key = self.shared.lock().rotate_key(now(), secret);
        self.current.node.public_key = key;
        self.shared.wake.notify_one();
        tracing::info!(public_key = %key, "WireGuard key switched; re-handshaking live peers");
    }
}

/// Coordinator mode: applies each netmap or key rotation from the control
/// client and answers with the result.
async fn feed_task(mut applier: Applier, mut feed: NetmapFeed) -> anyhow::Result<()> {
    while let Some((cmd, reply)) = feed.recv().await {
        let answer = match cmd {
            PlaneCommand::Apply(map) => applier.apply(map).map_err(|e| e.to_string()),
            PlaneCommand::RotateKey(secret) => {
                applier.rotate_key(*secret);
                Ok(())
            }
        };
        let _ = reply.send(answer);
    }
    // The control client is gone: keep forwarding with the last netmap.
    std::future::pending::<()>().await;
    Ok(())
}

/// Applies a new netmap on SIGHUP or when the file changes. A netmap that
/// does not parse or validate keeps the old one; the error is logged once
/// per distinct file content.
async fn netmap_task(mut applier: Applier, path: PathBuf, mut hup: Signal) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(NETMAP_POLL);
    let mut seen = mtime(&path);
    let mut last_error: Option<String> = None;
    loop {
        let forced = tokio::select! {
            _ = hup.recv() => true,
            _ = tick.tick() => false,
        };
        let m = mtime(&path);
        if !forced && m == seen {
            continue;
        }
        seen = m;
        let result = load_netmap(&path).and_then(|map| {
            if map == applier.current && !forced {
                return Ok(());
            }
            applier
                .apply(map)
                .map_err(|e| anyhow::anyhow!("netmap {}: {e}", path.display()))
        });
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(&msg) {
                    tracing::error!(path = %path.display(), error = %msg, "netmap rejected; keeping the previous one");
                    last_error = Some(msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_roundtrip() {
        let a: SocketAddr = "10.0.0.1:51820".parse().unwrap();
        assert!(to_v6(a).is_ipv6());
        assert_eq!(from_v6(to_v6(a)), a);
        let b: SocketAddr = "[fd00::1]:1".parse().unwrap();
        assert_eq!(from_v6(b), b);
    }

    fn config(port: u16) -> NodeConfig {
        let text = format!(
            "private_key_file = \"k\"\nnetmap_file = \"n\"\nlisten_port = {port}\nlisten_address = \"127.0.0.1\"\n"
        );
        NodeConfig::parse(&text, Path::new("/etc/segmesh/node.toml")).unwrap()
    }

    #[test]
    fn port_in_use_is_a_clear_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind_udp(&config(port), Path::new("/etc/segmesh/node.toml")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("UDP port {port} is already in use")),
            "{msg}"
        );
        assert!(msg.contains("/etc/segmesh/node.toml"), "{msg}");
        drop(taken);
        let (sock, v6) = bind_udp(&config(0), Path::new("x")).unwrap();
        assert!(!v6 && sock.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn bad_netmaps_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netmap.json");
        std::fs::write(&path, "{\"format\": 1").unwrap();
        let msg = format!("{:#}", load_netmap(&path).unwrap_err());
        assert!(
            msg.starts_with(&format!("netmap {}: ", path.display())),
            "{msg}"
        );
        std::fs::write(&path, r#"{"format": 9, "version": 1, "node": {"name": "a", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "addresses": []}, "peers": []}"#).unwrap();
        let msg = format!("{:#}", load_netmap(&path).unwrap_err());
        assert!(msg.contains("format 9 is not supported"), "{msg}");
        let msg = format!(
            "{:#}",
            load_netmap(&dir.path().join("missing.json")).unwrap_err()
        );
        assert!(msg.contains("missing.json"), "{msg}");
    }
}
