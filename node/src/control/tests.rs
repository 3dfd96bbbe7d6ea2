//! The control client against a real coordinator (TLS on 127.0.0.1:0,
//! SQLite in a temp dir): join, stream, ack, cache, pinning of the CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use segmesh_config::NetMap;
use segmesh_config::client::{HttpsClient, ServerTrust, tls_config};
use segmesh_config::control::EndpointsReport;
use segmesh_coordinator::clock::SystemClock;
use segmesh_coordinator::config::CoordinatorConfig;
use segmesh_coordinator::server::{ADMIN_TOKEN_FILE, Running, spawn};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::join::JoinError;
use super::rotate::public_of;
use super::*;

const POLICY: &str = "[segments.web]\nmatch = { role = \"web\" }\n[segments.db]\nmatch = { role = \"db\" }\n[[allow]]\nfrom = \"web\"\nto = \"db\"\nports = [\"tcp/5432\"]\n";

struct Coord {
    running: Running,
    dir: std::path::PathBuf,
    url: String,
}

async fn coordinator(dir: &Path, addr: &str) -> Coord {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let text = format!("data_dir = {dir:?}\npublic_urls = [\"{url}\"]\nheartbeat_secs = 1\n");
    let cfg = CoordinatorConfig::parse("t.toml", &text).unwrap();
    let running = spawn(&cfg, listener, Arc::new(SystemClock)).await.unwrap();
    Coord {
        running,
        dir: dir.to_path_buf(),
        url,
    }
}

impl Coord {
    /// Waits until the coordinator lists every named node as connected.
    async fn wait_connected(&self, names: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = self.admin("GET", "/v1/admin/nodes", Value::Null).await;
            let up = |name: &str| {
                nodes.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|n| n["name"] == name && n["connected"] == true)
                })
            };
            if names.iter().all(|n| up(n)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not all of {names:?} connected: {nodes}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let ca = self.running.prepared_ctx.ca.cert_der().clone();
        let tls = Arc::new(tls_config(&ServerTrust::Ca(vec![ca]), None).unwrap());
        let token = std::fs::read_to_string(self.dir.join(ADMIN_TOKEN_FILE)).unwrap();
        let c = HttpsClient::new(&self.url, tls).unwrap();
        let body = (!body.is_null()).then(|| serde_json::to_vec(&body).unwrap());
        let r = c
            .request(method, path, Some(token.trim()), body)
            .await
            .unwrap();
        assert!(
            r.status < 300,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        serde_json::from_slice(&r.body).unwrap()
    }

    async fn token(&self, labels: Value) -> String {
        let v = self
            .admin(
                "POST",
                "/v1/admin/tokens",
                json!({ "labels": labels, "ttl_secs": 600, "uses": 1 }),
            )
            .await;
        v["token"].as_str().unwrap().to_string()
    }
}

fn opts(token: &str, name: &str, dir: &Path) -> JoinOptions {
    JoinOptions {
        token: token.into(),
        name: Some(name.parse().unwrap()),
        state_dir: StateDir::new(dir),
        listen_port: 51820,
        advertise: vec!["192.0.2.7".parse().unwrap()],
        force: false,
    }
}

/// A running control client whose "data plane" is a channel.
struct Client {
    rx: mpsc::UnboundedReceiver<PlaneCommand>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    rotate: mpsc::Sender<RotateRequest>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn run_client(dir: &Path) -> Client {
    let (rotate, rotate_rx) = mpsc::channel(1);
    let mut client = ControlClient::load(&StateDir::new(dir), EndpointsReport::default())
        .unwrap()
        .with_idle_timeout(Duration::from_secs(3))
        .with_rotation_requests(rotate_rx);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let apply = |c: PlaneCommand| {
            let tx = tx.clone();
            async move { tx.send(c).map_err(|e| e.to_string()) }
        };
        client
            .run(apply, Some(ev_tx), async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Client {
        rx,
        events,
        rotate,
        stop,
        task,
    }
}

impl Client {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Waits until the stream is open.
    async fn connected(&mut self) {
        wait_connected(&mut self.events).await;
    }

    /// The stream resumed from the node's cached version: it opened, and no
    /// netmap was resent.
    async fn resumed(&mut self) {
        self.connected().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(c) = self.rx.try_recv() {
            panic!("expected a resumed stream, got {c:?}");
        }
    }

    async fn rotate(&self) -> Result<RotateReport, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rotate.send(tx).await.unwrap();
        rx.await.unwrap()
    }
}

async fn wait_connected(events: &mut mpsc::UnboundedReceiver<StreamEvent>) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(e, StreamEvent::Connected(_)) {
            return;
        }
    }
}

async fn recv_cmd(rx: &mut mpsc::UnboundedReceiver<PlaneCommand>) -> PlaneCommand {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

/// The next key switch, skipping netmaps before it.
async fn switched_key(rx: &mut mpsc::UnboundedReceiver<PlaneCommand>) -> [u8; 32] {
    loop {
        if let PlaneCommand::RotateKey(k) = recv_cmd(rx).await {
            return *k;
        }
    }
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<PlaneCommand>) -> NetMap {
    match recv_cmd(rx).await {
        PlaneCommand::Apply(m) => m,
        other => panic!("expected a netmap, got {other:?}"),
    }
}

#[tokio::test]
async fn join_stream_cache_and_restart_from_cache() {
    let cdir = tempfile::tempdir().unwrap();
    let (wdir, ddir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = coordinator(cdir.path(), "127.0.0.1:0").await;
    c.admin("POST", "/v1/admin/policy", json!({ "text": POLICY }))
        .await;
    let db = join(opts(
        &c.token(json!({ "role": "db" })).await,
        "db-1",
        ddir.path(),
    ))
    .await
    .unwrap();
    let web = join(opts(
        &c.token(json!({ "role": "web" })).await,
        "web-1",
        wdir.path(),
    ))
    .await
    .unwrap();
    assert_eq!(web.netmap.peers.len(), 1);
    assert_eq!(db.state.name.as_str(), "db-1");
    let mode = |p: std::path::PathBuf| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    let sd = StateDir::new(wdir.path());
    assert_eq!(mode(sd.private_key()), 0o600);
    assert_eq!(mode(sd.tls_key()), 0o600);
    assert_eq!(mode(sd.netmap()), 0o600);
    let cfg = segmesh_config::NodeConfig::load(&sd.node_toml()).unwrap();
    assert_eq!(cfg.netmap_file, sd.netmap());
    assert_eq!(cfg.private_key_file, sd.private_key());
    assert!(super::cli::coordinator_state(&sd.node_toml()).is_some());
    let err = join(opts("smj1.e30", "x", wdir.path())).await.unwrap_err();
    assert!(matches!(err, JoinError::Token(_)), "{err}");

    // The join answer's netmap is in force: the stream resumes from it.
    let mut cl = run_client(wdir.path());
    cl.resumed().await;
    // Label change: web-1 loses db-1 within the second, and the ack lands.
    c.admin(
        "POST",
        "/v1/admin/nodes/web-1/labels",
        json!({ "set": { "role": "ops" } }),
    )
    .await;
    let m = recv(&mut cl.rx).await;
    assert!(m.peers.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let nodes = c.admin("GET", "/v1/admin/nodes", Value::Null).await;
        let w = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "web-1")
            .unwrap()
            .clone();
        if w["acked_version"] == m.version {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack never arrived: {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Coordinator down: the client keeps retrying; the cache has the latest map.
    let url = c.url.clone();
    c.running.stop().await;
    cl.shutdown().await;
    let cached = ControlClient::load(&sd, EndpointsReport::default()).unwrap();
    assert_eq!(cached.current(), Some(&m), "restart from cache");

    // Coordinator back on the same address: state and stream resume.
    let c = coordinator(cdir.path(), &url.replace("https://", "")).await;
    // Nothing changed meanwhile: no netmap is resent, and the next change
    // arrives as a delta on the cached version.
    let mut cl = run_client(wdir.path());
    cl.resumed().await;
    c.admin(
        "POST",
        "/v1/admin/nodes/web-1/labels",
        json!({ "set": { "role": "web" } }),
    )
    .await;
    assert_eq!(recv(&mut cl.rx).await.peers.len(), 1);
    cl.shutdown().await;

    // A tampered cache is refused.
    let text = std::fs::read_to_string(sd.netmap()).unwrap();
    std::fs::write(sd.netmap(), text.replacen("\"version\"", "\"version\" ", 1)).unwrap();
    let err = ControlClient::load(&sd, EndpointsReport::default()).unwrap_err();
    assert!(err.to_string().contains("integrity check"), "{err}");
    c.running.stop().await;
}

#[tokio::test]
async fn impostor_coordinator_is_refused_and_nothing_written() {
    let (d1, d2, nd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let real = coordinator(d1.path(), "127.0.0.1:0").await;
    let impostor = coordinator(d2.path(), "127.0.0.1:0").await;
    let token = real.token(json!({})).await;
    let mut t = segmesh_config::control::JoinToken::parse(&token).unwrap();
    t.urls = vec![impostor.url.clone()];
    let err = join(opts(&t.encode(), "n-1", &nd.path().join("s")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not match the CA fingerprint"),
        "{err}"
    );
    assert!(!nd.path().join("s").exists(), "nothing written");
    real.running.stop().await;
    impostor.running.stop().await;
}

#[tokio::test]
async fn refused_update_then_delta_resyncs_with_a_full_netmap() {
    let cdir = tempfile::tempdir().unwrap();
    let (wdir, ddir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = coordinator(cdir.path(), "127.0.0.1:0").await;
    c.admin("POST", "/v1/admin/policy", json!({ "text": POLICY }))
        .await;
    join(opts(
        &c.token(json!({ "role": "db" })).await,
        "db-1",
        ddir.path(),
    ))
    .await
    .unwrap();
    join(opts(
        &c.token(json!({ "role": "web" })).await,
        "web-1",
        wdir.path(),
    ))
    .await
    .unwrap();

    // A data plane that refuses the second netmap it is given.
    let mut client = ControlClient::load(&StateDir::new(wdir.path()), EndpointsReport::default())
        .unwrap()
        .with_idle_timeout(Duration::from_secs(3));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut calls = 0;
        let apply = move |m: PlaneCommand| {
            calls += 1;
            let tx = tx.clone();
            let n = calls;
            async move {
                if n == 1 {
                    return Err("refused by the test".to_string());
                }
                tx.send(m).map_err(|e| e.to_string())
            }
        };
        client
            .run(apply, Some(ev_tx), async {
                let _ = stop_rx.await;
            })
            .await;
    });
    // The stream resumes from the join answer's netmap (nothing resent).
    wait_connected(&mut events).await;
    // Update 1 (a delta) is refused; update 2 is a delta on a base the node
    // does not hold: it resyncs and ends up with the latest netmap.
    c.admin(
        "POST",
        "/v1/admin/nodes/db-1/labels",
        json!({ "set": { "role": "ops" } }),
    )
    .await;
    c.admin(
        "POST",
        "/v1/admin/nodes/db-1/labels",
        json!({ "set": { "role": "db", "tier": "2" } }),
    )
    .await;
    let m = recv(&mut rx).await;
    assert_eq!(m.peers.len(), 1);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        seen.iter().any(|e| matches!(e, StreamEvent::Refused(_))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, StreamEvent::Disconnected(r) if r.contains("resyncing"))),
        "{seen:?}"
    );
    let _ = stop_tx.send(());
    let _ = task.await;
    c.running.stop().await;
}

/// The node's own mTLS client, built from its state directory (what the
/// control client uses), to act as a node whose reply got lost.
fn node_client(sd: &StateDir, url: &str) -> HttpsClient {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca = CertificateDer::pem_file_iter(sd.ca_cert())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let chain = CertificateDer::pem_file_iter(sd.tls_cert())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(sd.tls_key()).unwrap();
    let tls = tls_config(&ServerTrust::Ca(ca), Some((chain, key))).unwrap();
    HttpsClient::new(url, Arc::new(tls)).unwrap()
}

#[tokio::test]
async fn rotate_key_commits_only_what_the_coordinator_accepted() {
    let cdir = tempfile::tempdir().unwrap();
    let (wdir, ddir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = coordinator(cdir.path(), "127.0.0.1:0").await;
    c.admin("POST", "/v1/admin/policy", json!({ "text": POLICY }))
        .await;
    for (role, name, dir) in [("db", "db-1", &ddir), ("web", "web-1", &wdir)] {
        join(opts(
            &c.token(json!({ "role": role })).await,
            name,
            dir.path(),
        ))
        .await
        .unwrap();
    }
    let sd = StateDir::new(wdir.path());
    let old_secret = sd.load_private_key().unwrap();
    let mut db = run_client(ddir.path());
    let mut web = run_client(wdir.path());
    db.connected().await;
    web.connected().await;
    // The coordinator pushes (and waits for acks) only over streams it has
    // registered, which can trail the client's "connected" on a busy
    // machine: without this, db-1 may not be counted at all (0 of 0).
    c.wait_connected(&["db-1", "web-1"]).await;

    // Accepted: db-1 applied the new key before the reply; web-1's files
    // and data plane switch, in that order, and its next netmap carries it.
    let r = web.rotate().await.unwrap();
    assert_eq!(r.old_key, public_of(&old_secret));
    assert_eq!((r.peers_acked, r.peers_total), (1, 1), "{r:?}");
    // (Netmaps from before the rotation, e.g. after an endpoint report, may
    // still be queued.)
    while recv(&mut db.rx).await.peers[0].public_key != r.new_key {}
    assert_eq!(public_of(&switched_key(&mut web.rx).await), r.new_key);
    assert_eq!(recv(&mut web.rx).await.node.public_key, r.new_key);
    assert_eq!(public_of(&sd.load_private_key().unwrap()), r.new_key);
    assert!(!sd.pending_key().exists());
    let mode = std::fs::metadata(sd.private_key()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    web.shutdown().await;
    let reloaded = ControlClient::load(&sd, EndpointsReport::default()).unwrap();
    assert_eq!(reloaded.current().unwrap().node.public_key, r.new_key);

    // Accepted, but the node crashed before it heard: it restarts on its
    // old key (nothing to finish locally), and the coordinator's first
    // netmap, which carries the pending key, completes the rotation.
    let before = sd.load_private_key().unwrap();
    let pending = super::rotate::pending_or_new(&sd).unwrap();
    let reply = node_client(&sd, &c.url)
        .request(
            "POST",
            "/v1/rotate-key",
            None,
            Some(serde_json::to_vec(&json!({ "public_key": public_of(&pending) })).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(super::rotate::recover(&sd).unwrap(), None);
    assert_eq!(sd.load_private_key().unwrap(), before);
    let mut web = run_client(wdir.path());
    assert_eq!(switched_key(&mut web.rx).await, pending);
    assert_eq!(recv(&mut web.rx).await.node.public_key, public_of(&pending));
    assert_eq!(sd.load_private_key().unwrap(), pending);
    assert!(!sd.pending_key().exists());

    // Refused (web-1 revoked: its certificate no longer counts): the
    // pending key is dropped, the old one stays.
    c.admin("POST", "/v1/admin/nodes/web-1/revoke", Value::Null)
        .await;
    let err = web.rotate().await.unwrap_err();
    assert!(
        err.contains("refused") && err.contains("old key stays"),
        "{err}"
    );
    assert_eq!(sd.load_private_key().unwrap(), pending);
    assert!(!sd.pending_key().exists());

    // Coordinator down: a clear error, the old key stays, nothing written.
    c.running.stop().await;
    let err = web.rotate().await.unwrap_err();
    assert!(
        err.contains("unreachable") && err.contains("nothing changed"),
        "{err}"
    );
    assert_eq!(sd.load_private_key().unwrap(), pending);
    assert!(!sd.pending_key().exists());
    assert!(web.rx.try_recv().is_err(), "the data plane was not touched");
    web.shutdown().await;
    db.shutdown().await;

    // A crash inside the commit (cache sealed under the new key, rename not
    // done): the next start finishes it.
    let next = super::rotate::pending_or_new(&sd).unwrap();
    let mut map = ControlClient::load(&sd, EndpointsReport::default())
        .unwrap()
        .current()
        .unwrap()
        .clone();
    map.node.public_key = public_of(&next);
    NetmapCache::new(sd.clone(), &next).save(&map).unwrap();
    assert_eq!(super::rotate::recover(&sd).unwrap(), Some(public_of(&next)));
    assert_eq!(sd.load_private_key().unwrap(), next);
    let loaded = ControlClient::load(&sd, EndpointsReport::default()).unwrap();
    assert_eq!(loaded.current().unwrap().node.public_key, public_of(&next));
}
