//! Logs are part of the test oracle: a whole simulation logged at TRACE
//! must not contain any node's private key. Its own test binary, so the
//! global subscriber sees every callsite (a scoped one races with other
//! tests over tracing's callsite cache).

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use segmesh_node::craft;
use segmesh_node::packet::TCP_SYN;

/// Collects everything logged at TRACE, to check no secret leaks.
#[derive(Clone, Default)]
struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_never_contain_private_keys() {
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let secrets: Vec<[u8; 32]> = {
        let mut s = Sim::new(&["web", "api", "db", "rogue"], 11, 0.1);
        s.apply(THREE_TIER);
        let (web, api, db) = (
            s.addr("web", false),
            s.addr("api", false),
            s.addr("db", false),
        );
        for seq in 0..5 {
            s.send("web", &craft::echo_request(web, api, 3, seq));
            s.send("web", &craft::tcp(web, 40000, db, 5432, TCP_SYN, &[]));
            s.send("rogue", &craft::tcp(web, 40000, db, 5432, TCP_SYN, &[]));
            s.run(Duration::from_secs(2));
        }
        s.nodes.iter().map(|n| n.secret).collect()
    };
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("drop"), "nothing was logged at TRACE");
    use base64::Engine as _;
    for sk in secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(sk);
        let hex: String = sk.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !text.contains(&b64) && !text.contains(&hex),
            "a private key was logged"
        );
        assert!(
            !text.contains(&format!("{sk:?}")),
            "a private key was logged (Debug)"
        );
    }
}
