//! The store test suite. Each check takes `&dyn Store` and runs against
//! both backends: SQLite in a temp dir, PostgreSQL in a fresh database on
//! the server named by `SEGMESH_TEST_PG` (skipped when unset; see
//! [`super::scratch`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use segmesh_config::identity::parse_labels;
use segmesh_config::{NodeName, PublicKey};

use super::postgres::PgStore;
use super::scratch::ScratchDb;
use super::sqlite::SqliteStore;
use super::*;

const NOW: UnixTime = 1_800_000_000;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn signer() -> impl Fn(&NodeName) -> Result<IssuedCert, String> + Send + Sync {
    let n = AtomicU32::new(0);
    move |name: &NodeName| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        Ok(IssuedCert {
            serial_hex: format!("{i:04x}"),
            cert_pem: format!("cert for {name}"),
        })
    }
}

fn token(secret: u8, prefix: Option<&str>, uses: u32) -> NewToken {
    NewToken {
        secret_sha256: [secret; 32],
        name_prefix: prefix.map(str::to_string),
        labels: parse_labels("role=web,env=prod").unwrap(),
        expires_at: NOW + 3600,
        uses,
    }
}

fn enroll_req(secret: u8, key: u8, name: Option<&str>) -> EnrollRequest {
    EnrollRequest {
        secret_sha256: [secret; 32],
        name: name.map(self::name),
        public_key: PublicKey::from_bytes([key; 32]),
        endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
    }
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db"))
        .await
        .unwrap();
    (dir, store)
}

async fn tokens_and_enrollment(s: &dyn Store) {
    let admin = Change::new("admin", NOW);
    let t = s
        .create_token(token(1, Some("web"), 2), &admin)
        .await
        .unwrap();
    assert_eq!((t.uses_left, t.revoked), (2, false));
    let p = Prefixes::default();
    let sign = signer();

    let (n1, c1) = s
        .enroll(&enroll_req(1, 10, None), &p, &sign, NOW)
        .await
        .unwrap();
    assert_eq!(n1.name.as_str(), "web-1");
    assert_eq!(n1.addr_v4.to_string(), "100.80.0.1");
    assert_eq!(n1.addr_v6.to_string(), "fd5e:6d00::1");
    assert_eq!(n1.labels, parse_labels("role=web,env=prod").unwrap());
    assert_eq!(n1.cert_serial, c1.serial_hex);

    // Wrong prefix, duplicate key: refused and nothing consumed.
    let err = s
        .enroll(&enroll_req(1, 11, Some("db-1")), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = s
        .enroll(&enroll_req(1, 10, None), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(s.list_tokens().await.unwrap()[0].uses_left, 1);

    let (n2, _) = s
        .enroll(&enroll_req(1, 11, Some("web-9")), &p, &sign, NOW)
        .await
        .unwrap();
    assert_eq!(n2.addr_v4.to_string(), "100.80.0.2");
    let err = s
        .enroll(&enroll_req(1, 12, None), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::UsedUp)),
        "{err}"
    );

    // Forged, expired and revoked tokens.
    let err = s
        .enroll(&enroll_req(9, 13, None), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::Unknown)),
        "{err}"
    );
    s.create_token(token(2, Some("db"), 5), &admin)
        .await
        .unwrap();
    let err = s
        .enroll(&enroll_req(2, 13, None), &p, &sign, NOW + 3600)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::Expired)),
        "{err}"
    );
    let t3 = s.create_token(token(3, None, 5), &admin).await.unwrap();
    s.revoke_token(t3.id, &admin).await.unwrap();
    let err = s
        .enroll(&enroll_req(3, 13, Some("x")), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::Revoked)),
        "{err}"
    );
    assert_eq!(s.list_nodes().await.unwrap().len(), 2);

    // A failing signer creates nothing and consumes nothing.
    let fail = |_: &NodeName| -> Result<IssuedCert, String> { Err("no".into()) };
    let err = s
        .enroll(&enroll_req(2, 14, None), &p, &fail, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Sign(_)), "{err}");
    assert_eq!(s.list_nodes().await.unwrap().len(), 2);
    assert_eq!(s.list_tokens().await.unwrap()[1].uses_left, 5);
}

async fn addresses_not_reused_while_held(s: &dyn Store) {
    let admin = Change::new("admin", NOW);
    s.create_token(token(1, Some("n"), 10), &admin)
        .await
        .unwrap();
    let p = Prefixes {
        v4: "10.1.0.0/30".parse().unwrap(),
        v6: "fd00::/64".parse().unwrap(),
    };
    let sign = signer();
    let (a, _) = s
        .enroll(&enroll_req(1, 1, None), &p, &sign, NOW)
        .await
        .unwrap();
    s.revoke_node(&a.name, &admin).await.unwrap();
    let (b, _) = s
        .enroll(&enroll_req(1, 2, None), &p, &sign, NOW)
        .await
        .unwrap();
    assert_ne!(
        a.addr_v4, b.addr_v4,
        "a revoked node still holds its address"
    );
    let err = s
        .enroll(&enroll_req(1, 3, None), &p, &sign, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Exhausted(_)), "{err}");
}

async fn labels_policy_netmaps_audit(s: &dyn Store) {
    let admin = Change::new("admin", NOW);
    s.create_token(token(1, Some("web"), 1), &admin)
        .await
        .unwrap();
    let (n, _) = s
        .enroll(
            &enroll_req(1, 1, None),
            &Prefixes::default(),
            &signer(),
            NOW,
        )
        .await
        .unwrap();
    let set = parse_labels("env=staging,tier=1").unwrap();
    let l = s
        .label_node(&n.name, &set, &["role".into()], &admin)
        .await
        .unwrap();
    assert_eq!(l.labels, parse_labels("env=staging,tier=1").unwrap());
    assert!(matches!(
        s.label_node(&name("nope"), &set, &[], &admin).await,
        Err(StoreError::NotFound(_))
    ));

    assert!(s.policy().await.unwrap().is_none());
    let p1 = s
        .apply_policy("a", serde_json::json!({}), &admin)
        .await
        .unwrap();
    let p2 = s
        .apply_policy("b", serde_json::json!({}), &admin)
        .await
        .unwrap();
    assert_eq!((p1.version, p2.version), (1, 2));
    assert_eq!(s.policy().await.unwrap().unwrap().text, "b");

    s.record_netmap(n.id, 1, "m1").await.unwrap();
    s.record_netmap(n.id, 2, "m2").await.unwrap();
    assert!(matches!(
        s.record_netmap(n.id, 2, "again").await,
        Err(StoreError::Conflict(_))
    ));
    let rec = |v: u64, body: &str| NetmapRecord {
        node_id: n.id,
        version: v,
        body: body.into(),
    };
    let err = s.record_netmaps(&[rec(3, "m3"), rec(3, "dup")]).await;
    assert!(
        matches!(err, Err(StoreError::Conflict(_))),
        "a batch is all or nothing"
    );
    assert_eq!(s.latest_netmap(n.id).await.unwrap(), Some((2, "m2".into())));
    assert!(s.acked_netmap(n.id).await.unwrap().is_none());
    assert!(s.ack_netmap(n.id, 3, NOW).await.is_err(), "never sent");
    s.ack_netmap(n.id, 1, NOW).await.unwrap();
    assert_eq!(s.acked_netmap(n.id).await.unwrap(), Some((1, "m1".into())));
    assert_eq!(s.latest_netmap(n.id).await.unwrap(), Some((2, "m2".into())));
    s.ack_netmap(n.id, 2, NOW).await.unwrap();
    assert!(
        s.ack_netmap(n.id, 1, NOW).await.is_err(),
        "acks never go back"
    );
    let rec = s.node(&n.name).await.unwrap().unwrap();
    assert_eq!((rec.netmap_version, rec.acked_version), (2, 2));

    let eps: Vec<std::net::SocketAddr> = vec!["198.51.100.7:4000".parse().unwrap()];
    assert!(s.set_endpoints(&n.name, &eps).await.unwrap());
    assert!(!s.set_endpoints(&n.name, &eps).await.unwrap(), "unchanged");

    let (old, rotated) = s
        .rotate_key(&n.name, &PublicKey::from_bytes([77; 32]), &admin)
        .await
        .unwrap();
    assert_eq!(old, PublicKey::from_bytes([1; 32]));
    assert_eq!(rotated.public_key, PublicKey::from_bytes([77; 32]));
    let log = s.audit_log(100).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "token.create",
            "node.enroll",
            "node.label",
            "policy.apply",
            "policy.apply",
            "node.rotate_key"
        ]
    );
    assert_eq!(log[1].actor, "token:1");
    assert_eq!(log[4].details["policy_version"], 2);
    assert_eq!(s.audit_log(1).await.unwrap()[0].id, log[5].id);
}

/// A PostgreSQL store on a fresh database, or `None` when no test server
/// is configured.
async fn open_pg() -> Option<(ScratchDb, PgStore)> {
    let db = ScratchDb::from_env().await.unwrap()?;
    let store = PgStore::connect(&db.url).await.unwrap();
    Some((db, store))
}

/// Runs one suite function against SQLite and against PostgreSQL.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $check() {
                    let (_d, s) = super::open().await;
                    super::$check(&s).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $check() {
                    if let Some((_db, s)) = super::open_pg().await {
                        super::$check(&s).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    tokens_and_enrollment,
    addresses_not_reused_while_held,
    labels_policy_netmaps_audit,
);

/// Enrollments through several handles at once get distinct names and
/// addresses and consume exactly one token use each.
async fn concurrent_enrollment_is_unique(stores: &[Arc<dyn Store>]) {
    let admin = Change::new("admin", NOW);
    stores[0]
        .create_token(token(1, Some("n"), 50), &admin)
        .await
        .unwrap();
    let p = Prefixes::default();
    let mut tasks = Vec::new();
    for k in 0..20u8 {
        let s = Arc::clone(&stores[usize::from(k) % stores.len()]);
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            s.enroll(&enroll_req(1, k + 1, None), &p, &signer(), NOW)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let nodes = stores[1 % stores.len()].list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 20);
    let v4: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.addr_v4).collect();
    let v6: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.addr_v6).collect();
    let names: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!((v4.len(), v6.len(), names.len()), (20, 20, 20));
    assert_eq!(stores[0].list_tokens().await.unwrap()[0].uses_left, 30);
}

/// Concurrent admin changes through several handles: label edits of one
/// node (a read-modify-write of its label set) and policy applies. None
/// may be lost, and policy versions stay dense.
async fn concurrent_admin_changes_are_not_lost(stores: &[Arc<dyn Store>]) {
    let admin = Change::new("admin", NOW);
    stores[0]
        .create_token(token(1, Some("n"), 1), &admin)
        .await
        .unwrap();
    let (node, _) = stores[0]
        .enroll(
            &enroll_req(1, 1, None),
            &Prefixes::default(),
            &signer(),
            NOW,
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16usize {
        let s = Arc::clone(&stores[i % stores.len()]);
        let name = node.name.clone();
        tasks.push(tokio::spawn(async move {
            let who = Change::new(format!("admin{i}"), NOW);
            let set = parse_labels(&format!("k{i}=v")).unwrap();
            s.label_node(&name, &set, &[], &who).await.unwrap();
            s.apply_policy(&format!("# {i}\n"), serde_json::json!({}), &who)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = stores[1 % stores.len()]
        .node(&node.name)
        .await
        .unwrap()
        .unwrap();
    for i in 0..16 {
        assert!(
            after.labels.contains_key(&format!("k{i}")),
            "lost k{i}: {:?}",
            after.labels
        );
    }
    assert_eq!(stores[0].policy().await.unwrap().unwrap().version, 16);
    let applies = stores[0]
        .audit_log(100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "policy.apply")
        .count();
    assert_eq!(applies, 16);
}

#[tokio::test]
async fn sqlite_state_survives_reopen_and_concurrent_enrollment_is_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        concurrent_enrollment_is_unique(&[Arc::new(s)]).await;
    }
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.list_nodes().await.unwrap().len(), 20);
}

#[tokio::test]
async fn sqlite_concurrent_admin_changes_are_not_lost() {
    let (_d, s) = open().await;
    concurrent_admin_changes_are_not_lost(&[Arc::new(s)]).await;
}

/// Two coordinators (two pools on one database) race enrollments and
/// admin changes: a multi-threaded runtime so both really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_writers_race_without_double_allocation_or_lost_update() {
    let Some(db) = ScratchDb::from_env().await.unwrap() else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url).await.unwrap());
    concurrent_enrollment_is_unique(&[Arc::clone(&a), Arc::clone(&b)]).await;
    let db2 = ScratchDb::from_env().await.unwrap().unwrap();
    let a: Arc<dyn Store> = Arc::new(PgStore::connect(&db2.url).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::connect(&db2.url).await.unwrap());
    concurrent_admin_changes_are_not_lost(&[a, b]).await;
}

#[tokio::test]
async fn postgres_state_survives_reconnect() {
    let Some((db, s)) = open_pg().await else {
        return;
    };
    tokens_and_enrollment(&s).await;
    let before = s.list_nodes().await.unwrap();
    drop(s);
    let s = PgStore::connect(&db.url).await.unwrap();
    assert_eq!(s.list_nodes().await.unwrap(), before);
}
