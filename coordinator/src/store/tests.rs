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

/// A revoked node holds its addresses until the maintenance pass deletes
/// it; then they (and its name and key) go to the next enrollment.
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

    let rep = s.maintain(NOW + 999, &KEEP).await.unwrap().unwrap();
    assert!(rep.nodes.is_empty(), "still within the grace period");
    let rep = s.maintain(NOW + 1000, &KEEP).await.unwrap().unwrap();
    assert_eq!(rep.nodes, std::slice::from_ref(&a.name));
    let (c, cert) = s
        .enroll(
            &enroll_req(1, 1, Some(a.name.as_str())),
            &p,
            &sign,
            NOW + 1000,
        )
        .await
        .unwrap();
    assert_eq!((c.addr_v4, c.addr_v6), (a.addr_v4, a.addr_v6));
    assert_eq!((&c.name, c.public_key), (&a.name, a.public_key));
    assert!(!c.revoked && c.revoked_at.is_none());
    assert_ne!(
        cert.serial_hex, a.cert_serial,
        "the old certificate stays invalid"
    );
}

/// One node `<prefix>-1` (key 1) through a fresh single-use token (secret 1).
async fn enroll_one(s: &dyn Store, prefix: &str) -> NodeRecord {
    let admin = Change::new("admin", NOW);
    s.create_token(token(1, Some(prefix), 1), &admin)
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
    n
}

async fn labels_policy_netmaps_audit(s: &dyn Store) {
    let admin = Change::new("admin", NOW);
    let n = enroll_one(s, "web").await;
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

/// Retention of the maintenance checks: tokens 100 s, revoked nodes 1000 s.
const KEEP: Retention = Retention {
    tokens: std::time::Duration::from_secs(100),
    revoked_nodes: std::time::Duration::from_secs(1000),
};

fn token_until(secret: u8, expires_at: UnixTime, uses: u32) -> NewToken {
    NewToken {
        expires_at,
        ..token(secret, Some("n"), uses)
    }
}

fn ids(tokens: &[TokenRecord]) -> Vec<i64> {
    tokens.iter().map(|t| t.id).collect()
}

/// The pass deletes exactly the tokens and revoked nodes whose retention
/// has passed, audits each deletion, and leaves everything else alone.
async fn maintenance_deletes_only_what_is_past_retention(s: &dyn Store) {
    let admin = Change::new("admin", NOW);
    // Expired soon, live, single-use, to be revoked, expiring at NOW+190.
    let mut made = Vec::new();
    for (secret, expires_at, uses) in [
        (1, NOW + 10, 5),
        (2, NOW + 3600, 5),
        (3, NOW + 3600, 1),
        (4, NOW + 3600, 5),
        (5, NOW + 190, 5),
    ] {
        let t = token_until(secret, expires_at, uses);
        made.push(s.create_token(t, &admin).await.unwrap());
    }
    let [expired, live, single, revoked, recent] = <[TokenRecord; 5]>::try_from(made).unwrap();
    let r = s.revoke_token(revoked.id, &admin).await.unwrap();
    assert_eq!(r.ended_at, Some(NOW));
    let again = s
        .revoke_token(revoked.id, &Change::new("admin", NOW + 50))
        .await
        .unwrap();
    assert_eq!(again.ended_at, Some(NOW), "the first end counts");

    let p = Prefixes::default();
    let sign = signer();
    let mut nodes = Vec::new();
    for k in 1..=3u8 {
        let (n, _) = s
            .enroll(&enroll_req(2, k, None), &p, &sign, NOW)
            .await
            .unwrap();
        assert_eq!(n.revoked_at, None);
        nodes.push(n);
    }
    let (used, _) = s
        .enroll(&enroll_req(3, 9, None), &p, &sign, NOW + 150)
        .await
        .unwrap();
    let used_up = s.list_tokens().await.unwrap();
    let used_up = used_up.iter().find(|t| t.id == single.id).unwrap();
    assert_eq!(used_up.ended_at, Some(NOW + 150), "its last use ended it");
    assert_eq!(
        s.list_tokens().await.unwrap()[1].ended_at,
        None,
        "uses left: not ended"
    );

    s.record_netmap(nodes[0].id, 1, "m1").await.unwrap();
    let r1 = s.revoke_node(&nodes[0].name, &admin).await.unwrap();
    assert_eq!(r1.revoked_at, Some(NOW));
    let later = Change::new("admin", NOW + 500);
    s.revoke_node(&nodes[1].name, &later).await.unwrap();
    let r2 = s
        .revoke_node(&nodes[1].name, &Change::new("admin", NOW + 600))
        .await
        .unwrap();
    assert_eq!(
        r2.revoked_at,
        Some(NOW + 500),
        "the first revocation counts"
    );

    // NOW+200: the expired (NOW+10) and revoked (NOW) tokens are past 100 s;
    // the used-up one (NOW+150) and the one expired at NOW+190 are not.
    let log_before = s.audit_log(1000).await.unwrap().len();
    let rep = s.maintain(NOW + 200, &KEEP).await.unwrap().unwrap();
    assert_eq!(rep.tokens, [expired.id, revoked.id]);
    assert!(rep.nodes.is_empty() && !rep.more, "{rep:?}");
    assert_eq!(
        ids(&s.list_tokens().await.unwrap()),
        [live.id, single.id, recent.id]
    );
    let rep = s.maintain(NOW + 250, &KEEP).await.unwrap().unwrap();
    assert_eq!(rep.tokens, [single.id]);

    // NOW+1000: the node revoked at NOW is past 1000 s, the one revoked at
    // NOW+500 is not; the token that expired at NOW+190 goes now.
    let rep = s.maintain(NOW + 1000, &KEEP).await.unwrap().unwrap();
    assert_eq!(rep.tokens, [recent.id]);
    assert_eq!(rep.nodes, [nodes[0].name.clone()]);
    assert_eq!(ids(&s.list_tokens().await.unwrap()), [live.id]);
    let left: Vec<NodeName> = s
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(
        left,
        [
            nodes[1].name.clone(),
            nodes[2].name.clone(),
            used.name.clone()
        ]
    );
    assert!(s.node(&nodes[0].name).await.unwrap().is_none());
    assert_eq!(
        s.latest_netmap(nodes[0].id).await.unwrap(),
        None,
        "netmaps cascade"
    );

    // Audited in the same transactions, as the maintenance actor.
    let log = s.audit_log(1000).await.unwrap();
    let new: Vec<&AuditEntry> = log[log_before..].iter().collect();
    let actions: Vec<&str> = new.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["token.purge", "token.purge", "token.purge", "node.reclaim"]
    );
    assert!(new.iter().all(|e| e.actor == "maintenance"));
    assert_eq!(
        new[0].details["tokens"],
        serde_json::json!([expired.id, revoked.id])
    );
    assert_eq!((new[0].at, new[3].at), (NOW + 200, NOW + 1000));
    assert_eq!(new[3].details["node"], nodes[0].name.as_str());
    assert_eq!(
        new[3].details["addresses"],
        serde_json::json!([nodes[0].addr_v4.to_string(), nodes[0].addr_v6.to_string()])
    );
    assert_eq!(new[3].details["revoked_at"], NOW);

    // Nothing due: the pass runs, deletes and audits nothing.
    let rep = s.maintain(NOW + 1001, &KEEP).await.unwrap().unwrap();
    assert!(rep.is_empty(), "{rep:?}");
    assert_eq!(s.audit_log(1000).await.unwrap().len(), log.len());
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
    maintenance_deletes_only_what_is_past_retention,
);

/// A revoked node past retention, for the locking tests.
async fn revoked_long_ago(s: &dyn Store) -> NodeRecord {
    let n = enroll_one(s, "n").await;
    s.revoke_node(&n.name, &Change::new("admin", NOW))
        .await
        .unwrap()
}

/// Two coordinators (two pools) on one database: while one holds the
/// maintenance lock, the other's pass returns `None` and deletes nothing;
/// once that transaction ends the pass runs. And the pass waits for the
/// writer lock, like every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_maintenance_runs_once_across_coordinators() {
    let Some((db, a)) = open_pg().await else {
        return;
    };
    let b = PgStore::connect(&db.url).await.unwrap();
    let node = revoked_long_ago(&a).await;
    let due = NOW + 1000;

    let mut holder = a.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(super::postgres::MAINTENANCE_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(b.maintain(due, &KEEP).await.unwrap(), None);
    assert_eq!(a.maintain(due, &KEEP).await.unwrap(), None, "other session");
    assert!(b.node(&node.name).await.unwrap().is_some());
    let audited = b.audit_log(100).await.unwrap().len();
    holder.rollback().await.unwrap();
    let rep = b.maintain(due, &KEEP).await.unwrap().unwrap();
    assert_eq!(rep.nodes, std::slice::from_ref(&node.name));
    assert_eq!(rep.tokens.len(), 1, "its token, used up at NOW");
    assert!(a.node(&node.name).await.unwrap().is_none());
    assert_eq!(a.audit_log(100).await.unwrap().len(), audited + 2);

    // A writer in progress: the pass queues behind it.
    let mut writer = a.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(super::postgres::WRITE_LOCK)
        .execute(&mut *writer)
        .await
        .unwrap();
    let pass = tokio::spawn(async move { b.maintain(due, &KEEP).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!pass.is_finished(), "the pass waits for the writer lock");
    writer.commit().await.unwrap();
    let rep = pass.await.unwrap().unwrap().unwrap();
    assert!(rep.is_empty());
}

/// Rows seeded under migration 1 only, then migration 2 on open: the
/// `revoked_at` / `ended_at` backfill (the SQL is the same text for both
/// backends; `KEYn` stands for a WireGuard key, see [`backfill_seed`]).
const BACKFILL_SEED: &[&str] = &[
    "INSERT INTO nodes (name, labels, public_key, addr_v4, addr_v6, cert_serial, revoked, created_at) \
     VALUES ('old-1', '{}', 'KEY1', '10.0.0.1', 'fd00::1', '01', TRUE, 1)",
    "INSERT INTO nodes (name, labels, public_key, addr_v4, addr_v6, cert_serial, revoked, created_at) \
     VALUES ('old-2', '{}', 'KEY2', '10.0.0.2', 'fd00::2', '02', TRUE, 1)",
    "INSERT INTO nodes (name, labels, public_key, addr_v4, addr_v6, cert_serial, revoked, created_at) \
     VALUES ('live-1', '{}', 'KEY3', '10.0.0.3', 'fd00::3', '03', FALSE, 1)",
    "INSERT INTO tokens (id, secret_sha256, labels, created_at, expires_at, uses_total, uses_left, revoked, created_by) \
     VALUES (1, 'a', '{}', 1, 9999999999, 2, 0, FALSE, 'admin')",
    "INSERT INTO tokens (id, secret_sha256, labels, created_at, expires_at, uses_total, uses_left, revoked, created_by) \
     VALUES (2, 'b', '{}', 1, 9999999999, 2, 2, TRUE, 'admin')",
    "INSERT INTO tokens (id, secret_sha256, labels, created_at, expires_at, uses_total, uses_left, revoked, created_by) \
     VALUES (3, 'c', '{}', 1, 9999999999, 2, 1, FALSE, 'admin')",
    "INSERT INTO tokens (id, secret_sha256, labels, created_at, expires_at, uses_total, uses_left, revoked, created_by) \
     VALUES (4, 'd', '{}', 1, 9999999999, 2, 2, TRUE, 'admin')",
    "INSERT INTO audit_log (at, actor, action, details) VALUES \
     (300, 'token:1', 'node.enroll', '{\"node\":\"x-1\",\"token\":1}'), \
     (400, 'token:1', 'node.enroll', '{\"node\":\"x-2\",\"token\":1}'), \
     (250, 'admin', 'token.revoke', '{\"token\":2}'), \
     (500, 'admin', 'node.revoke', '{\"node\":\"old-1\",\"public_key\":\"k1\"}'), \
     (700, 'admin', 'node.revoke', '{\"node\":\"old-1\",\"public_key\":\"k1\"}'), \
     (800, 'admin', 'policy.apply', '\"not an object\"')",
];

fn backfill_seed() -> Vec<String> {
    BACKFILL_SEED
        .iter()
        .map(|sql| {
            (1..=3u8).fold(sql.to_string(), |sql, k| {
                sql.replace(
                    &format!("KEY{k}"),
                    &PublicKey::from_bytes([k; 32]).to_string(),
                )
            })
        })
        .collect()
}

/// Checks the backfilled store; `started` is before the migration ran.
async fn check_backfill(s: &dyn Store, started: UnixTime) {
    let nodes = s.list_nodes().await.unwrap();
    let at = |n: &str| {
        nodes
            .iter()
            .find(|r| r.name.as_str() == n)
            .unwrap()
            .revoked_at
    };
    assert_eq!(at("old-1"), Some(500), "the first node.revoke");
    assert!(
        at("old-2").unwrap() >= started,
        "no audit row: upgrade time"
    );
    assert_eq!(at("live-1"), None);
    let ended: Vec<Option<UnixTime>> = s
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .map(|t| t.ended_at)
        .collect();
    assert_eq!(ended[..3], [Some(400), Some(250), None]);
    assert!(ended[3].unwrap() >= started);
}

/// Migration 1 only on `$pool`, then the seed rows; closes the pool. (A
/// macro: the two backends' pools share no convenient generic bound.)
macro_rules! seed_before_migration_2 {
    ($pool:expr, $migrations:expr) => {{
        let pool = $pool;
        migrator(&$migrations[..1]).run(&pool).await.unwrap();
        for sql in backfill_seed() {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }};
}

#[tokio::test]
async fn sqlite_migration_backfills_when_rows_ended() {
    use crate::clock::Clock as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let started = crate::clock::SystemClock.now().unix;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    seed_before_migration_2!(
        sqlx::SqlitePool::connect_with(opts).await.unwrap(),
        super::sqlite::MIGRATIONS
    );
    let s = SqliteStore::open(&path).await.unwrap();
    check_backfill(&s, started).await;
}

#[tokio::test]
async fn postgres_migration_backfills_when_rows_ended() {
    use crate::clock::Clock as _;
    let Some(db) = ScratchDb::from_env().await.unwrap() else {
        return;
    };
    let started = crate::clock::SystemClock.now().unix;
    seed_before_migration_2!(
        sqlx::PgPool::connect(&db.url).await.unwrap(),
        super::postgres::MIGRATIONS
    );
    let s = PgStore::connect(&db.url).await.unwrap();
    check_backfill(&s, started).await;
}

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
    let node = enroll_one(stores[0].as_ref(), "n").await;
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

/// `migrate-store`: everything a SQLite deployment holds arrives in
/// PostgreSQL unchanged, ids continue after the copied ones, and a second
/// run into the now non-empty database is refused without writing.
#[tokio::test]
async fn sqlite_state_migrates_to_postgres_unchanged() {
    let Some((_db, pg)) = open_pg().await else {
        return;
    };
    let (_d, lite) = open().await;
    tokens_and_enrollment(&lite).await;
    let web1 = lite.node(&name("web-1")).await.unwrap().unwrap();
    lite.record_netmap(web1.id, 1, "{\"v\":1}").await.unwrap();
    lite.ack_netmap(web1.id, 1, NOW).await.unwrap();
    lite.apply_policy("# p\n", serde_json::json!({}), &Change::new("admin", NOW))
        .await
        .unwrap();

    let report = super::migrate::sqlite_to_postgres(&lite, &pg)
        .await
        .unwrap();
    let counts: std::collections::BTreeMap<_, _> = report.into_iter().collect();
    assert_eq!(
        counts["nodes"],
        lite.list_nodes().await.unwrap().len() as u64
    );
    assert_eq!(counts["netmaps"], 1);
    assert_eq!(
        pg.list_nodes().await.unwrap(),
        lite.list_nodes().await.unwrap()
    );
    assert_eq!(
        pg.list_tokens().await.unwrap(),
        lite.list_tokens().await.unwrap()
    );
    assert_eq!(pg.policy().await.unwrap(), lite.policy().await.unwrap());
    assert_eq!(
        pg.audit_log(1000).await.unwrap(),
        lite.audit_log(1000).await.unwrap()
    );
    assert_eq!(
        pg.acked_netmap(web1.id).await.unwrap(),
        Some((1, "{\"v\":1}".to_string()))
    );

    // Identity sequences continue after the copied ids.
    let admin = Change::new("admin", NOW);
    let max_token = lite
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .max()
        .unwrap();
    let t = pg
        .create_token(token(42, Some("new"), 1), &admin)
        .await
        .unwrap();
    assert!(t.id > max_token);
    let (n, _) = pg
        .enroll(
            &enroll_req(42, 99, None),
            &Prefixes::default(),
            &signer(),
            NOW,
        )
        .await
        .unwrap();
    assert!(
        lite.list_nodes()
            .await
            .unwrap()
            .iter()
            .all(|o| o.id < n.id && o.addr_v4 != n.addr_v4)
    );

    let before = pg.list_nodes().await.unwrap();
    let err = super::migrate::sqlite_to_postgres(&lite, &pg)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(pg.list_nodes().await.unwrap(), before);
}

#[tokio::test]
async fn migrate_store_refuses_wrong_locations_and_a_missing_source() {
    use super::migrate::between;
    let pg: StoreLocation = "postgres://u@127.0.0.1:1/x".parse().unwrap();
    let lite: StoreLocation = "sqlite:///nonexistent/segmesh/state.db".parse().unwrap();
    let err = between(&pg, &pg).await.unwrap_err().to_string();
    assert!(err.contains("--from must be a sqlite://"), "{err}");
    let err = between(&lite, &lite).await.unwrap_err().to_string();
    assert!(err.contains("--to must be a postgres://"), "{err}");
    let err = between(&lite, &pg).await.unwrap_err().to_string();
    assert!(
        err.contains("--from sqlite:///nonexistent") && err.contains("not found"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nonexistent/segmesh").exists());
}
