//! The driver: moves bytes between the TUN device, the UDP socket and the
//! sans-IO [`Node`], and time into it. Every decision is the core's.
//!
//! Packets move on two dedicated threads ([`crate::pump`]); tokio runs the
//! timer, the event sink (logs, flow log), the netmap watcher (SIGHUP and a
//! 500 ms mtime poll) and the control sockets. The core sits behind a
//! `std::sync::Mutex` that is held only while the core runs, never across
//! an `.await` or a system call; each holder drains the core's outputs under
//! the lock and writes them after releasing it. Buffers go back to the
//! core's pool at the holder's next lock, so the steady state does not
//! allocate.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use segmesh_config::{NetMap, NodeConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::control::PlaneCommand;
use crate::core::{ApplyError, Event, Node};
use crate::courtesy::{Published, published};
use crate::flowlog::{FlowLog, FlowLogLimits};
use crate::pump::{Lanes, Outputs, Pump};
use crate::status::{NodeStatus, PeerStatus, StatusSource, ThreadPolicies};
use crate::tunio::TunIo;
use crate::udpio::{self, UdpIo};
use crate::{ctlsock, tundev, uapi, unixsock};

/// How often the netmap file's mtime is checked.
const NETMAP_POLL: Duration = Duration::from_millis(500);
/// Events waiting for the log/flow-log task; beyond this they are dropped
/// (the flow log is rate-limited anyway).
const EVENT_QUEUE: usize = 4096;

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

pub(crate) struct Shared {
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
    tun: Arc<TunIo>,
    /// The packet threads' scheduling policies (TUN, UDP).
    policies: [Published; 2],
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Node> {
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
            tun: self.tun.counters(),
            threads: ThreadPolicies {
                tun: published(&self.policies[0]),
                udp: published(&self.policies[1]),
            },
        }
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
        // A plain bind first: it fails while another process holds the
        // port, which the shared bind below (SO_REUSEPORT, for the peer
        // sockets) would not. Then the port it got, shared.
        match std::net::UdpSocket::bind(addr).and_then(|probe| {
            let got = probe.local_addr()?;
            drop(probe);
            udpio::bind_shared(got)
        }) {
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
    let udp = Arc::new(UdpIo::new(std_udp, v6_socket, cfg.offload)?);
    let listen_port = udp.local_addr()?.port();
    let tun = Arc::new(TunIo::new(tundev::create(cfg, &map)?, cfg.mtu)?);
    let (gro, gso) = udp.offloads();
    tracing::info!(
        tun_offload = tun.offload(),
        udp_gro = gro,
        udp_gso = gso,
        "data path offloads"
    );

    let shared = Arc::new(Shared {
        core: Mutex::new(node),
        interface: cfg.interface.to_string(),
        listen_port,
        anchor: (t0, wall_ms()),
        wake: tokio::sync::Notify::new(),
        tun: tun.clone(),
        policies: Default::default(),
    });
    // The UAPI socket first: the control socket appearing is what tools
    // (and the tests) take as "the node is up", so it comes last.
    let uapi_path = uapi::socket_path(cfg.interface.as_str());
    let uapi_listener = match unixsock::bind_private(&uapi_path) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "WireGuard UAPI socket unavailable; `wg show` will not work");
            None
        }
    };
    let ctl_path = cfg
        .control_socket
        .clone()
        .unwrap_or_else(|| ctlsock::default_path(cfg.interface.as_str()));
    let ctl = unixsock::bind_private(&ctl_path).context("control socket")?;
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
    let lanes =
        Lanes::new(tun.fd(), udp.fd()).context("eventfd and epoll for the packet threads")?;
    lanes.watch_peer_sockets(&udp);
    let pump = Pump {
        shared: shared.clone(),
        udp,
        tun,
        events: ev_tx,
        stop: Arc::new(AtomicBool::new(false)),
        tun_side: Arc::default(),
        udp_side: Arc::default(),
        lanes: Arc::new(lanes),
        polite: cfg.polite_wakeups,
        policies: shared.policies.clone(),
    };
    let mut threads = Vec::new();
    for (handle, done) in span
        .in_scope(|| pump.start())
        .context("starting the packet threads")?
    {
        threads.push(handle);
        tasks.spawn(async move {
            match done.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("packet thread failed")),
                Err(_) => Err(anyhow::anyhow!("packet thread panicked")),
            }
        });
    }
    tasks.spawn(timer_task(pump.clone()).instrument(span.clone()));
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
    // the packet threads are woken to see the stop flag, and the last
    // reference to the TUN device removes the interface.
    pump.stop();
    tasks.shutdown().await;
    drop(pump);
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    result
}

/// WireGuard timers (handshakes, keepalives) and filter housekeeping. The
/// few datagrams they produce are sent from here; a full socket buffer
/// blocks this task at most `udpio::SEND_WAIT`.
async fn timer_task(p: Pump) -> anyhow::Result<()> {
    let mut out = Outputs::default();
    loop {
        let next = p
            .shared
            .lock()
            .poll_timeout()
            .unwrap_or_else(|| now() + Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = p.shared.wake.notified() => {}
        }
        {
            let mut core = p.shared.lock();
            core.handle_timeout(now());
            out.exchange(&mut core, &p.events);
        }
        out.flush(&p.udp, &p.tun);
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
    tun: Arc<TunIo>,
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
        tundev::sync(
            self.tun.device(),
            &self.shared.interface,
            &self.current,
            &map,
        );
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
        let port = sock.local_addr().unwrap().port();
        assert!(!v6 && port != 0);
        // Our socket shares its port (SO_REUSEPORT, for the peer sockets),
        // yet a second node on the same port still gets the clear error.
        let err = bind_udp(&config(port), Path::new("/etc/segmesh/node.toml")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("UDP port {port} is already in use")),
            "{msg}"
        );
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
