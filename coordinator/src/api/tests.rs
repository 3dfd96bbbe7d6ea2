//! API tests against a real coordinator: TLS on 127.0.0.1:0, SQLite in a
//! temp dir, real node certificates and streams.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use segmesh_config::client::{HttpsClient, LineStream, ServerTrust, tls_config};
use segmesh_config::control::{EnrollResponse, StreamMessage};
use segmesh_config::{NetMap, PublicKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::clock::{Clock as _, ManualUnixClock, SystemClock};
use crate::config::CoordinatorConfig;
use crate::server::{ADMIN_TOKEN_FILE, prepare};

pub const POLICY: &str = r#"
[segments.web]
match = { role = "web", env = "prod" }
[segments.db]
match = { role = "db" }

[[allow]]
from = "web"
to = "db"
ports = ["tcp/5432"]

[[test]]
from = { role = "web", env = "dev" }
to = { role = "db" }
port = "tcp/5432"
expect = "deny"
"#;

struct Harness {
    url: String,
    admin_token: String,
    ca: Vec<CertificateDer<'static>>,
    clock: Arc<ManualUnixClock>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(dir: &Path) -> Harness {
        Self::start_on(dir, "127.0.0.1:0").await
    }

    async fn start_on(dir: &Path, addr: &str) -> Harness {
        Self::start_cfg(dir, addr, "").await
    }

    /// `extra` is appended to the generated coordinator.toml.
    async fn start_cfg(dir: &Path, addr: &str, extra: &str) -> Harness {
        let listener = TcpListener::bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let text = format!(
            "data_dir = {dir:?}\npublic_urls = [\"https://127.0.0.1:{port}\"]\nheartbeat_secs = 1\n{extra}"
        );
        let cfg = CoordinatorConfig::parse("test.toml", &text).unwrap();
        // Real wall time: TLS checks certificate validity against it.
        let clock = Arc::new(ManualUnixClock::new(SystemClock.now().unix));
        let prepared = prepare(&cfg, clock.clone()).await.unwrap();
        let admin_token = std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_string();
        let ca = vec![prepared.ctx.ca.cert_der().clone()];
        let router = super::router(prepared.ctx.clone());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(super::run(listener, prepared.tls, router, async {
            let _ = rx.await;
        }));
        Harness {
            url: format!("https://127.0.0.1:{port}"),
            admin_token,
            ca,
            clock,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    fn client(&self, identity: Option<segmesh_config::client::Identity>) -> HttpsClient {
        let tls = tls_config(&ServerTrust::Ca(self.ca.clone()), identity).unwrap();
        HttpsClient::new(&self.url, Arc::new(tls)).unwrap()
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let r = self
            .client(None)
            .request(method, path, Some(&self.admin_token), body)
            .await
            .unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    async fn token(&self, labels: Value, prefix: &str, uses: u32) -> String {
        let body =
            json!({ "labels": labels, "name_prefix": prefix, "ttl_secs": 3600, "uses": uses });
        let (status, v) = self.admin("POST", "/v1/admin/tokens", Some(body)).await;
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// POLICY applied, then db-1 (key 2) and web-1 (key 1) enrolled.
    async fn db_and_web(&self) -> (Node, Node) {
        self.admin("POST", "/v1/admin/policy", Some(json!({ "text": POLICY })))
            .await;
        let web_tok = self
            .token(json!({ "role": "web", "env": "prod" }), "web", 1)
            .await;
        let db_tok = self.token(json!({ "role": "db" }), "db", 1).await;
        let db = self.enroll(&db_tok, "db-1", 2).await.unwrap();
        let web = self.enroll(&web_tok, "web-1", 1).await.unwrap();
        (db, web)
    }

    async fn enroll(&self, token: &str, name: &str, key: u8) -> Result<Node, (u16, String)> {
        let t = segmesh_config::control::JoinToken::parse(token).unwrap();
        let tls_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&tls_key)
            .unwrap()
            .pem()
            .unwrap();
        let body = json!({
            "secret": t.secret, "name": name, "public_key": PublicKey::from_bytes([key; 32]),
            "csr_pem": csr, "endpoints": { "addresses": ["192.0.2.10"], "listen_port": 51820 },
        });
        let r = self
            .client(None)
            .request(
                "POST",
                "/v1/enroll",
                None,
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
            .unwrap();
        if r.status != 200 {
            return Err((r.status, String::from_utf8_lossy(&r.body).into_owned()));
        }
        let resp: EnrollResponse = serde_json::from_slice(&r.body).unwrap();
        let cert = CertificateDer::from_pem_slice(resp.cert_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls_key.serialize_der()));
        Ok(Node {
            client: self.client(Some((vec![cert.clone()], key))),
            cert,
            key_der: tls_key.serialize_der(),
            enrolled: resp,
        })
    }
}

struct Node {
    client: HttpsClient,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    enrolled: EnrollResponse,
}

impl Node {
    /// The node's client for another coordinator of the same mesh.
    fn client_for(&self, h: &Harness) -> HttpsClient {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        h.client(Some((vec![self.cert.clone()], key)))
    }

    /// The node's stream from another coordinator of the same mesh.
    async fn stream_from(&self, h: &Harness) -> LineStream {
        let client = self.client_for(h);
        client.stream("/v1/stream").await.unwrap().unwrap()
    }

    async fn stream(&self) -> LineStream {
        self.client.stream("/v1/stream").await.unwrap().unwrap()
    }

    async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .request("POST", path, None, Some(serde_json::to_vec(&body).unwrap()))
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> u16 {
        self.post_json(path, body).await.0
    }
}

/// A node's view of its stream: full netmaps replace, deltas apply to the
/// current one (as `segmesh-node` does).
struct Follower {
    s: LineStream,
    cur: Option<NetMap>,
    rotations: Vec<segmesh_config::control::Rotation>,
}

impl Follower {
    fn new(s: LineStream) -> Self {
        Self {
            s,
            cur: None,
            rotations: Vec::new(),
        }
    }

    /// The next netmap (skipping heartbeats), within `secs`.
    async fn next(&mut self, secs: u64) -> Option<NetMap> {
        let fut = async {
            while let Some(line) = self.s.next_line().await.ok()? {
                match serde_json::from_slice::<StreamMessage>(&line).ok()? {
                    StreamMessage::Netmap { netmap, rotations } => {
                        self.rotations = rotations;
                        self.cur = Some(netmap.clone());
                        return Some(netmap);
                    }
                    StreamMessage::Delta {
                        base_version,
                        version,
                        remove,
                        upsert,
                        rotations,
                    } => {
                        let cur = self.cur.as_ref()?;
                        assert_eq!(cur.version, base_version, "delta on the wrong base");
                        let m =
                            segmesh_config::control::apply_delta(cur, version, &remove, &upsert);
                        m.validate().unwrap();
                        self.rotations = rotations;
                        self.cur = Some(m.clone());
                        return Some(m);
                    }
                    StreamMessage::Heartbeat { .. } => continue,
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(secs), fut)
            .await
            .ok()
            .flatten()
    }
}

fn peer_names(m: &NetMap) -> Vec<String> {
    m.peers
        .iter()
        .map(|p| {
            p.name
                .as_ref()
                .map_or_else(|| p.public_key.to_string(), ToString::to_string)
        })
        .collect()
}

#[tokio::test]
async fn enroll_stream_policy_label_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let (s, v) = h
        .admin("POST", "/v1/admin/policy", Some(json!({ "text": POLICY })))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], 1);

    let web_tok = h
        .token(json!({ "role": "web", "env": "prod" }), "web", 2)
        .await;
    let db_tok = h.token(json!({ "role": "db" }), "db", 1).await;
    let db = h.enroll(&db_tok, "db-1", 2).await.unwrap();
    let web = h.enroll(&web_tok, "web-1", 1).await.unwrap();
    assert_eq!(web.enrolled.addresses.len(), 2);
    assert_eq!(peer_names(&web.enrolled.netmap), ["db-1"]);
    let endpoints = web.enrolled.netmap.peers[0].endpoints.clone().unwrap();
    assert!(
        endpoints.contains(&"192.0.2.10:51820".parse().unwrap()),
        "{endpoints:?}"
    );

    // Streams: the current netmap first; db learns web-1 by key only.
    let mut web_s = Follower::new(web.stream().await);
    let mut db_s = Follower::new(db.stream().await);
    let wm = web_s.next(2).await.unwrap();
    let dm = db_s.next(2).await.unwrap();
    assert_eq!(dm.peers.len(), 1);
    assert!(
        dm.peers[0].name.is_none(),
        "need-to-know: db may not open flows to web"
    );
    assert_eq!(
        web.post("/v1/ack", json!({ "version": wm.version })).await,
        204
    );
    assert_eq!(
        db.post("/v1/ack", json!({ "version": dm.version })).await,
        204
    );
    assert_eq!(web.post("/v1/ack", json!({ "version": 99 })).await, 400);
    let (_, audit) = h.admin("GET", "/v1/admin/audit", None).await;
    assert_eq!(audit["clean"], true, "{audit}");

    // Endpoint report: the observed source (127.0.0.1 is dropped as loopback).
    let st = web
        .post(
            "/v1/endpoints",
            json!({ "addresses": ["198.51.100.4"], "listen_port": 4000 }),
        )
        .await;
    assert_eq!(st, 204);
    let dm2 = db_s.next(1).await;
    assert!(
        dm2.is_none(),
        "db does not receive web's endpoints (need-to-know)"
    );

    // Label change: web-1 leaves the web segment; both sides lose the path.
    let (s, _) = h
        .admin(
            "POST",
            "/v1/admin/nodes/web-1/labels",
            Some(json!({ "set": { "env": "staging" } })),
        )
        .await;
    assert_eq!(s, 200);
    let wm = web_s.next(2).await.unwrap();
    assert!(wm.peers.is_empty());
    assert!(db_s.next(2).await.unwrap().peers.is_empty());
    let (_, audit) = h.admin("GET", "/v1/admin/audit", None).await;
    assert_eq!(audit["clean"], false, "not yet acked: {audit}");

    // Back to prod, then revoke db-1: web-1 acks from a task.
    h.admin(
        "POST",
        "/v1/admin/nodes/web-1/labels",
        Some(json!({ "set": { "env": "prod" } })),
    )
    .await;
    let wm = web_s.next(2).await.unwrap();
    assert_eq!(peer_names(&wm), ["db-1"]);
    let acker = tokio::spawn(async move {
        let m = web_s.next(5).await.unwrap();
        assert_eq!(
            web.post("/v1/ack", json!({ "version": m.version })).await,
            204
        );
        (m, web)
    });
    let (s, rep) = h.admin("POST", "/v1/admin/nodes/db-1/revoke", None).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(
        (
            rep["peers"]["acked"].as_u64(),
            rep["peers"]["total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (m, _web) = acker.await.unwrap();
    assert!(m.peers.is_empty());
    // The revoked node's stream ends and its certificate is refused.
    let drain = async { while let Ok(Some(_)) = db_s.s.next_line().await {} };
    assert!(
        tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_ok(),
        "stream ended"
    );
    assert_eq!(db.post("/v1/ack", json!({ "version": 1 })).await, 403);
    let r = db.client.stream("/v1/stream").await.unwrap().unwrap_err();
    assert_eq!(r.status, 403);

    let (_, log) = h.admin("GET", "/v1/admin/audit-log", None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "policy.apply",
            "token.create",
            "token.create",
            "node.enroll",
            "node.enroll",
            "node.label",
            "node.label",
            "node.revoke"
        ]
    );
    let metrics = h
        .client(None)
        .request("GET", "/metrics", None, None)
        .await
        .unwrap();
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("segmesh_nodes{state=\"revoked\"} 1"),
        "{text}"
    );
    h.stop().await;
}

/// After the maintenance pass deleted a revoked node, its old certificate
/// is still refused: first as not enrolled, then, once a new node enrolled
/// under the same name (and got the freed address), as not that node's.
#[tokio::test]
async fn reclaimed_node_certificate_stays_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fast = "[maintenance]\ninterval_secs = 1\nrevoked_node_retention_secs = 0\n";
    let h = Harness::start_cfg(dir.path(), "127.0.0.1:0", fast).await;
    let tok = h.token(json!({ "role": "db" }), "db", 2).await;
    let old = h.enroll(&tok, "db-1", 2).await.unwrap();
    let report = json!({ "addresses": ["198.51.100.4"], "listen_port": 4000 });
    assert_eq!(old.post("/v1/endpoints", report.clone()).await, 204);
    let (s, v) = h.admin("POST", "/v1/admin/nodes/db-1/revoke", None).await;
    assert_eq!(s, 200, "{v}");

    let gone = async {
        loop {
            let (_, nodes) = h.admin("GET", "/v1/admin/nodes", None).await;
            if nodes.as_array().is_some_and(|n| n.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .is_ok(),
        "the maintenance task deleted the revoked node"
    );
    assert_eq!(old.post("/v1/endpoints", report.clone()).await, 401);

    let new = h.enroll(&tok, "db-1", 2).await.unwrap();
    assert_eq!(new.enrolled.addresses, old.enrolled.addresses);
    assert_eq!(old.post("/v1/endpoints", report.clone()).await, 403);
    assert_eq!(new.post("/v1/endpoints", report).await, 204);
    let (_, log) = h.admin("GET", "/v1/admin/audit-log", None).await;
    let reclaim = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "node.reclaim")
        .expect("audited");
    assert_eq!(reclaim["details"]["node"], "db-1");
    h.stop().await;
}

#[tokio::test]
async fn refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let once = h.token(json!({ "role": "web" }), "web", 1).await;
    h.enroll(&once, "web-1", 1).await.unwrap();
    let (st, msg) = h.enroll(&once, "web-2", 2).await.err().unwrap();
    assert_eq!(st, 403);
    assert!(msg.contains("no uses left"), "{msg}");

    let short = h.token(json!({}), "tmp", 5).await;
    h.clock.advance(3601);
    let (st, msg) = h.enroll(&short, "tmp-1", 3).await.err().unwrap();
    assert_eq!(st, 403);
    assert!(msg.contains("expired"), "{msg}");

    let mut forged = segmesh_config::control::JoinToken::parse(&short).unwrap();
    forged.secret = segmesh_config::control::JoinToken::new(vec![], &[9; 32], String::new()).secret;
    let (st, msg) = h.enroll(&forged.encode(), "tmp-1", 3).await.err().unwrap();
    assert_eq!(st, 401);
    assert!(msg.contains("not known"), "{msg}");

    let (_, log_before) = h.admin("GET", "/v1/admin/audit-log", None).await;
    let c = h.client(None);
    for (path, body) in [
        ("/v1/enroll", "{"),
        ("/v1/enroll", r#"{"secret":"x"}"#),
        ("/v1/admin/tokens", r#"{"ttl_secs":"soon","uses":1}"#),
        (
            "/v1/admin/tokens",
            r#"{"ttl_secs":60,"uses":1,"labels":{"role":"a b"}}"#,
        ),
        (
            "/v1/admin/policy",
            r#"{"text":"[segments.x]\nmatch = 3\n"}"#,
        ),
        (
            "/v1/admin/nodes/web-1/labels",
            r#"{"set":{"env":"prod"},"extra":1}"#,
        ),
    ] {
        let r = c
            .request(
                "POST",
                path,
                Some(&h.admin_token),
                Some(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 400, "{path} {body}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    let (s, v) = h
        .admin(
            "POST",
            "/v1/admin/policy",
            Some(json!({ "text": "[segments.x]\nmatch = 3\n", "path": "p.toml" })),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("p.toml:2:"), "{v}");

    // Failing [[test]] cases refuse the policy; dry runs change nothing.
    let failing = POLICY.replace("expect = \"deny\"", "expect = \"allow\"");
    let (s, v) = h
        .admin("POST", "/v1/admin/policy", Some(json!({ "text": failing })))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("1 of 1 tests failed"),
        "{v}"
    );
    let (s, v) = h
        .admin(
            "POST",
            "/v1/admin/policy",
            Some(json!({ "text": POLICY, "dry_run": true })),
        )
        .await;
    assert_eq!((s, v["applied"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(h.admin("GET", "/v1/admin/policy", None).await.0, 404);
    let (_, log_after) = h.admin("GET", "/v1/admin/audit-log", None).await;
    assert_eq!(log_before, log_after);

    // Admin token: missing or wrong.
    for tok in [None, Some("sma1.wrong")] {
        let r = c
            .request("GET", "/v1/admin/nodes", tok, None)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    }
    // Node routes without a client certificate.
    let r = c
        .request("POST", "/v1/ack", None, Some(b"{\"version\":1}".to_vec()))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let (_, nodes) = h.admin("GET", "/v1/admin/nodes", None).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn impostor_coordinator_is_refused_by_the_pin() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let real = Harness::start(d1.path()).await;
    let impostor = Harness::start(d2.path()).await;
    let token = real.token(json!({}), "n", 1).await;
    let pin = segmesh_config::control::JoinToken::parse(&token)
        .unwrap()
        .ca_sha256;
    let tls = Arc::new(tls_config(&ServerTrust::PinnedSha256(pin.clone()), None).unwrap());
    let ok = HttpsClient::new(&real.url, tls.clone()).unwrap();
    assert_eq!(
        ok.request("GET", "/metrics", None, None)
            .await
            .unwrap()
            .status,
        200
    );
    let bad = HttpsClient::new(&impostor.url, tls).unwrap();
    let err = bad
        .request("GET", "/metrics", None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the CA fingerprint"), "{err}");
    real.stop().await;
    impostor.stop().await;
}

#[tokio::test]
async fn restart_keeps_state_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.admin("POST", "/v1/admin/policy", Some(json!({ "text": POLICY })))
        .await;
    let tok = h
        .token(json!({ "role": "web", "env": "prod" }), "web", 1)
        .await;
    let node = h.enroll(&tok, "web-1", 1).await.unwrap();
    let v1 = node.enrolled.netmap.version;
    let ca = h.ca.clone();
    let url = h.url.clone();
    h.stop().await;
    assert!(
        node.client
            .request("GET", "/metrics", None, None)
            .await
            .is_err(),
        "coordinator is down"
    );

    let h = Harness::start_on(dir.path(), &url.replace("https://", "")).await;
    assert_eq!(h.ca, ca, "same CA after restart");
    let (_, nodes) = h.admin("GET", "/v1/admin/nodes", None).await;
    assert_eq!(nodes[0]["name"], "web-1");
    // The node's client certificate still works against the new process.
    let mut s = Follower::new(node.client.stream("/v1/stream").await.unwrap().unwrap());
    let m = s.next(2).await.unwrap();
    assert_eq!(
        m.version, v1,
        "unchanged netmap keeps its version across restarts"
    );
    h.stop().await;
}

#[tokio::test]
async fn key_rotation_reaches_peers_marked_as_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let (db, web) = h.db_and_web().await;
    let mut db_s = Follower::new(db.stream().await);
    let first = db_s.next(2).await.unwrap();
    assert_eq!(first.peers[0].public_key, PublicKey::from_bytes([1; 32]));

    let new = PublicKey::from_bytes([42; 32]);
    // db-1 acks from a task: the reply waits for it.
    let acker = tokio::spawn(async move {
        let m = db_s.next(5).await.unwrap();
        assert_eq!(
            db.post("/v1/ack", json!({ "version": m.version })).await,
            204
        );
        (m, db_s)
    });
    let (status, reply) = web
        .post_json("/v1/rotate-key", json!({ "public_key": new }))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["peers_acked"].as_u64(), reply["peers_total"].as_u64()),
        (Some(1), Some(1)),
        "{reply}"
    );
    // The peer sees the new key, marked as a rotation of the old one.
    let (m, mut db_s) = acker.await.unwrap();
    let line = (m, db_s.rotations.clone());
    assert_eq!(line.0.peers[0].public_key, new);
    assert_eq!(line.1.len(), 1);
    assert_eq!(
        (line.1[0].old, line.1[0].new),
        (PublicKey::from_bytes([1; 32]), new)
    );
    // Asking again for the key in force (a retry after a lost reply) is
    // answered without a new push.
    let (status, again) = web
        .post_json("/v1/rotate-key", json!({ "public_key": new }))
        .await;
    assert_eq!(
        (status, again["version"].clone()),
        (200, reply["version"].clone())
    );
    assert!(db_s.next(1).await.is_none(), "no second push");
    // A key another node holds is refused.
    assert_eq!(
        web.post(
            "/v1/rotate-key",
            json!({ "public_key": PublicKey::from_bytes([2; 32]) })
        )
        .await,
        409
    );
    let (_, log) = h.admin("GET", "/v1/admin/audit-log", None).await;
    assert!(log.to_string().contains("node.rotate_key"));
    h.stop().await;
}

/// Collects every log line of the test's thread (all tasks run on it: the
/// test runtime is single-threaded).
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Set in the child process that runs [`no_secret_reaches_the_logs`] alone.
const LOG_TEST_CHILD: &str = "SEGMESH_LOG_TEST_CHILD";

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    // A thread-local subscriber missed events when other tests in this
    // binary ran at the same time (tracing caches per-callsite interest
    // process-wide), so the test re-runs itself alone in a child process.
    if std::env::var_os(LOG_TEST_CHILD).is_none() {
        let name = "api::tests::no_secret_reaches_the_logs";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(LOG_TEST_CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the child did not run {name}: {text}"
        );
        return;
    }
    let logs = LogBuf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    h.admin("POST", "/v1/admin/policy", Some(json!({ "text": POLICY })))
        .await;
    let token = h.token(json!({ "role": "db" }), "db", 1).await;
    let node = h.enroll(&token, "db-1", 2).await.unwrap();
    let mut s = Follower::new(node.stream().await);
    let m = s.next(2).await.unwrap();
    assert_eq!(
        node.post("/v1/ack", json!({ "version": m.version })).await,
        204
    );
    // Failed attempts log too: a wrong admin token, a reused join token.
    let c = h.client(None);
    c.request("GET", "/v1/admin/nodes", Some("sma1.not-the-token"), None)
        .await
        .unwrap();
    assert!(h.enroll(&token, "db-2", 3).await.is_err());
    h.admin("POST", "/v1/admin/nodes/db-1/revoke", None).await;
    let admin_token = h.admin_token.clone();
    h.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("node enrolled") && text.contains("node revoked"),
        "{text}"
    );
    let secret = segmesh_config::control::JoinToken::parse(&token)
        .unwrap()
        .secret;
    for needle in [
        admin_token.as_str(),
        token.as_str(),
        secret.as_str(),
        "PRIVATE KEY",
        "sma1.not-the-token",
    ] {
        assert!(
            !text.contains(needle),
            "a secret reached the logs: {needle}"
        );
    }
}

mod shared;

#[tokio::test]
async fn session_carries_netmaps_acks_and_endpoints_on_one_connection() {
    use segmesh_config::control::{EndpointsReport, NodeMessage};
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let (db, web) = h.db_and_web().await;

    // Without the upgrade headers the route refuses, saying what it needs.
    let plain = db
        .client
        .request("GET", "/v1/session", None, None)
        .await
        .unwrap();
    assert_eq!(plain.status, 400);
    assert!(
        String::from_utf8_lossy(&plain.body).contains("Upgrade: segmesh-session/1"),
        "{plain:?}"
    );

    let (s, mut sink) = db.client.session("/v1/session").await.unwrap().unwrap();
    let mut s = Follower::new(s);
    let first = s.next(2).await.unwrap();
    assert_eq!(first.peers.len(), 1);
    // A line the coordinator cannot read is skipped; the session goes on.
    sink.send(&json!({ "type": "bogus" })).await.unwrap();
    sink.send(&NodeMessage::Ack {
        version: first.version,
    })
    .await
    .unwrap();
    // Endpoints reported on the session reach web-1's netmap.
    let report = EndpointsReport {
        addresses: vec!["192.0.2.44".parse().unwrap()],
        listen_port: 51999,
    };
    sink.send(&NodeMessage::Endpoints { endpoints: report })
        .await
        .unwrap();
    let mut web_s = Follower::new(web.stream().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = web_s.next(5).await.unwrap();
        let eps = m.peers[0].endpoints.clone().unwrap_or_default();
        if eps.iter().any(|e| e.to_string() == "192.0.2.44:51999") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{eps:?}");
    }
    // The ack is recorded (the audit reads the store).
    let (_, audit) = h.admin("GET", "/v1/admin/audit", None).await;
    let db_line = audit["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "db-1")
        .unwrap()
        .clone();
    assert_eq!(db_line["acked_version"], first.version, "{audit}");

    // Resuming with the current version: no netmap is resent (that counts
    // as an ack); a label change then arrives on the resumed session.
    drop((s, sink));
    let path = format!("/v1/session?since={}", first.version);
    let (s, _sink) = db.client.session(&path).await.unwrap().unwrap();
    let mut s = Follower {
        cur: Some(first.clone()),
        ..Follower::new(s)
    };
    assert!(s.next(1).await.is_none(), "nothing resent on resume");
    h.admin(
        "POST",
        "/v1/admin/nodes/db-1/labels",
        Some(json!({ "set": { "role": "ops" } })),
    )
    .await;
    let m = s.next(5).await.unwrap();
    assert!(m.peers.is_empty() && m.version > first.version, "{m:?}");
    h.stop().await;
}
