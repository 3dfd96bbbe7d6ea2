//! The store test suite. Each check takes `&dyn Store`, so a PostgreSQL
//! backend can run the same functions (issue 7).

use std::sync::atomic::{AtomicU32, Ordering};

use segmesh_config::identity::parse_labels;
use segmesh_config::{NodeName, PublicKey};

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

#[tokio::test]
async fn sqlite_tokens_and_enrollment() {
    let (_d, s) = open().await;
    tokens_and_enrollment(&s).await;
}

#[tokio::test]
async fn sqlite_addresses_not_reused_while_held() {
    let (_d, s) = open().await;
    addresses_not_reused_while_held(&s).await;
}

#[tokio::test]
async fn sqlite_labels_policy_netmaps_audit() {
    let (_d, s) = open().await;
    labels_policy_netmaps_audit(&s).await;
}

#[tokio::test]
async fn sqlite_state_survives_reopen_and_concurrent_enrollment_is_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        let admin = Change::new("admin", NOW);
        s.create_token(token(1, Some("n"), 50), &admin)
            .await
            .unwrap();
        let p = Prefixes::default();
        let mut tasks = Vec::new();
        for k in 0..20u8 {
            let s = s.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                s.enroll(&enroll_req(1, k + 1, None), &p, &signer(), NOW)
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let s = SqliteStore::open(&path).await.unwrap();
    let nodes = s.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 20);
    let v4: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.addr_v4).collect();
    assert_eq!(v4.len(), 20);
    assert_eq!(s.list_tokens().await.unwrap()[0].uses_left, 30);
}
