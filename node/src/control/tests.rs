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

/// Runs a control client whose "data plane" is a channel.
fn run_client(
    dir: &Path,
) -> (
    mpsc::UnboundedReceiver<NetMap>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut client = ControlClient::load(&StateDir::new(dir), EndpointsReport::default())
        .unwrap()
        .with_idle_timeout(Duration::from_secs(3));
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let apply = |m: NetMap| {
            let tx = tx.clone();
            async move { tx.send(m).map_err(|e| e.to_string()) }
        };
        client
            .run(apply, None, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    (rx, stop_tx, task)
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<NetMap>) -> NetMap {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
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

    let (mut rx, stop, task) = run_client(wdir.path());
    let first = recv(&mut rx).await;
    assert_eq!(first.version, web.netmap.version);
    // Label change: web-1 loses db-1 within the second, and the ack lands.
    c.admin(
        "POST",
        "/v1/admin/nodes/web-1/labels",
        json!({ "set": { "role": "ops" } }),
    )
    .await;
    let m = recv(&mut rx).await;
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
    let _ = stop.send(());
    let _ = task.await;
    let cached = ControlClient::load(&sd, EndpointsReport::default()).unwrap();
    assert_eq!(cached.current(), Some(&m), "restart from cache");

    // Coordinator back on the same address: state and stream resume.
    let c = coordinator(cdir.path(), &url.replace("https://", "")).await;
    let (mut rx, stop, task) = run_client(wdir.path());
    assert_eq!(recv(&mut rx).await.version, m.version);
    c.admin(
        "POST",
        "/v1/admin/nodes/web-1/labels",
        json!({ "set": { "role": "web" } }),
    )
    .await;
    assert_eq!(recv(&mut rx).await.peers.len(), 1);
    let _ = stop.send(());
    let _ = task.await;

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
        let apply = move |m: NetMap| {
            calls += 1;
            let tx = tx.clone();
            let n = calls;
            async move {
                if n == 2 {
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
    assert_eq!(recv(&mut rx).await.peers.len(), 1);
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
