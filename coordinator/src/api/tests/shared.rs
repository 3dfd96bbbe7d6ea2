//! Two coordinators on one PostgreSQL database: a change made through
//! either reaches nodes streaming from the other, with the same versions.
//! Skipped when `SEGMESH_TEST_PG` is unset (see `store::scratch`).

use segmesh_config::PublicKey;
use segmesh_config::control::StreamMessage;
use serde_json::json;

use super::{Follower, Harness, POLICY, peer_names};
use crate::store::scratch::ScratchDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_through_one_coordinator_reaches_nodes_streaming_from_the_other() {
    let Some(db) = ScratchDb::from_env().await.unwrap() else {
        return;
    };
    // One data dir: both coordinators use the same CA and admin token.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("store = {:?}\n", db.url);
    let a = Harness::start_cfg(dir.path(), "127.0.0.1:0", &store).await;
    let b = Harness::start_cfg(dir.path(), "127.0.0.1:0", &store).await;

    let (s, v) = a
        .admin("POST", "/v1/admin/policy", Some(json!({ "text": POLICY })))
        .await;
    assert_eq!(s, 200, "{v}");
    let db_tok = b.token(json!({ "role": "db" }), "db", 1).await;
    let web_tok = a
        .token(json!({ "role": "web", "env": "prod" }), "web", 1)
        .await;
    let dbn = a.enroll(&db_tok, "db-1", 2).await.unwrap();
    let web = b.enroll(&web_tok, "web-1", 1).await.unwrap();

    // Each node streams from the coordinator it did not enroll with.
    let mut db_on_b = Follower::new(dbn.stream_from(&b).await);
    let mut web_on_a = Follower::new(web.stream_from(&a).await);
    // db-1 knows web-1 by key only (the policy shows it no name).
    let web_key = PublicKey::from_bytes([1; 32]).to_string();
    let first = db_on_b.next(5).await.unwrap();
    assert_eq!(peer_names(&first), std::slice::from_ref(&web_key));
    assert_eq!(peer_names(&web_on_a.next(5).await.unwrap()), ["db-1"]);

    // A label change through A cuts web-1 off; db-1 hears it through B.
    let (s, v) = a
        .admin(
            "POST",
            "/v1/admin/nodes/web-1/labels",
            Some(json!({ "set": { "env": "dev" } })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let cut = db_on_b
        .next(2)
        .await
        .expect("change through A reached B within 2 s");
    assert!(cut.peers.is_empty(), "{:?}", peer_names(&cut));
    assert!(cut.version > first.version);

    // Undo through B; web-1 (on A) hears it; versions match the store's.
    let (s, v) = b
        .admin(
            "POST",
            "/v1/admin/nodes/web-1/labels",
            Some(json!({ "set": { "env": "prod" } })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let back = db_on_b.next(2).await.unwrap();
    assert_eq!(peer_names(&back), [web_key]);
    let mut web_map = web_on_a.next(2).await.unwrap();
    while web_map.peers.is_empty() {
        web_map = web_on_a.next(2).await.unwrap();
    }
    assert_eq!(peer_names(&web_map), ["db-1"]);
    let (s, nodes) = a.admin("GET", "/v1/admin/nodes", None).await;
    assert_eq!(s, 200);
    let stored = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["netmap_version"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(stored("db-1"), back.version);
    assert_eq!(stored("web-1"), web_map.version);

    // db-1 fails over to A holding the current version: no resync, the
    // stream starts with a heartbeat; an older version gets the full map.
    let resumed = dbn
        .client_for(&a)
        .stream(&format!("/v1/stream?since={}", back.version))
        .await
        .unwrap()
        .unwrap();
    let mut resumed = Follower::new(resumed);
    let line = resumed.s.next_line().await.unwrap().unwrap();
    let msg: StreamMessage = serde_json::from_slice(&line).unwrap();
    assert!(matches!(msg, StreamMessage::Heartbeat { .. }), "{msg:?}");
    let stale = dbn
        .client_for(&a)
        .stream(&format!("/v1/stream?since={}", first.version))
        .await
        .unwrap()
        .unwrap();
    let full = Follower::new(stale).next(2).await.unwrap();
    assert_eq!(full.version, back.version);
    let bad = dbn
        .client_for(&a)
        .stream("/v1/stream?since=soon")
        .await
        .unwrap();
    assert_eq!(bad.err().map(|r| r.status), Some(400));

    // Revoke db-1 through B: web-1 acks to A, and B's ack report counts
    // it through the shared store.
    let web_to_a = web.client_for(&a);
    let acker = tokio::spawn(async move {
        let m = web_on_a.next(5).await.unwrap();
        let body = serde_json::to_vec(&json!({ "version": m.version })).unwrap();
        let r = web_to_a
            .request("POST", "/v1/ack", None, Some(body))
            .await
            .unwrap();
        assert_eq!(r.status, 204);
        m
    });
    let (s, rep) = b.admin("POST", "/v1/admin/nodes/db-1/revoke", None).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(
        (
            rep["peers"]["acked"].as_u64(),
            rep["peers"]["total"].as_u64()
        ),
        (Some(1), Some(1)),
        "{rep}"
    );
    assert!(acker.await.unwrap().peers.is_empty());

    // Health: both answer while PostgreSQL is up.
    for h in [&a, &b] {
        let r = h
            .client(None)
            .request("GET", "/healthz", None, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    b.stop().await;

    // The database goes away: the coordinator reports unhealthy.
    drop(db);
    let r = a
        .client(None)
        .request("GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    a.stop().await;
}
