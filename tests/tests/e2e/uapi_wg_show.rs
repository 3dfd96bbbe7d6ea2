//! The read-only UAPI socket, read by the real wg(8) binary.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use segmesh_config::PublicKey;
use segmesh_e2e::{require_root, unique_tag, wait_until};
use segmesh_node::status::{DropCounters, NodeStatus, PeerStatus, StatusSource, TunCounters};
use segmesh_node::uapi;

struct Fixed(NodeStatus);

impl StatusSource for Fixed {
    fn status(&self) -> NodeStatus {
        self.0.clone()
    }
}

#[allow(clippy::disallowed_methods)] // the fixture's handshake is "now - 7 s"
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn fixture(interface: &str) -> NodeStatus {
    NodeStatus {
        name: Some("api-1".parse().expect("name")),
        interface: interface.to_string(),
        public_key: PublicKey::from_bytes([1; 32]),
        listen_port: 51820,
        addresses: vec!["100.80.0.2".parse().expect("addr")],
        netmap_version: 2,
        peers: vec![
            PeerStatus {
                public_key: PublicKey::from_bytes([0xab; 32]),
                name: Some("web-1".parse().expect("name")),
                endpoint: Some("10.77.0.1:51820".parse().expect("endpoint")),
                allowed_ips: vec![
                    "100.80.0.1/32".parse().expect("net"),
                    "fd5e:6d00::1/128".parse().expect("net"),
                ],
                last_handshake_unix_ms: Some(unix_ms_now() - 7_000),
                rx_bytes: 123_456,
                tx_bytes: 654_321,
                outbound: vec![],
                inbound: vec!["tcp/8080".into()],
            },
            PeerStatus {
                public_key: PublicKey::from_bytes([0xcd; 32]),
                name: None,
                endpoint: None,
                allowed_ips: vec!["100.80.0.3/32".parse().expect("net")],
                last_handshake_unix_ms: None,
                rx_bytes: 0,
                tx_bytes: 0,
                outbound: vec!["tcp/5432".into()],
                inbound: vec![],
            },
        ],
        drops: DropCounters::default(),
        tun: TunCounters::default(),
        threads: Default::default(),
    }
}

fn wg(args: &[&str]) -> std::process::Output {
    Command::new("wg")
        .args(args)
        .output()
        .expect("run wg (apt-get install --no-install-recommends wireguard-tools)")
}

#[test]
fn wg_show_reads_the_uapi_socket_and_wg_set_is_refused() {
    require_root();
    let iface = format!("smu{}", unique_tag());
    let path = uapi::socket_path(&iface);
    let status = fixture(&iface);
    let web_key = status.peers[0].public_key.to_string();
    let db_key = status.peers[1].public_key.to_string();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.spawn(uapi::serve(path.clone(), Arc::new(Fixed(status))));
    // Stops the server (which removes the socket) even if an assertion
    // below fails; the runtime is dropped after the task is aborted.
    struct Cleanup {
        server: tokio::task::JoinHandle<Result<(), segmesh_node::unixsock::ServeError>>,
        _rt: tokio::runtime::Runtime,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            self.server.abort();
        }
    }
    let guard = Cleanup { server, _rt: rt };
    wait_until(Duration::from_secs(5), "the UAPI socket", || {
        path.exists().then_some(())
    });

    let out = wg(&["show", &iface]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wg show failed: {out:?}");
    assert!(text.contains(&format!("interface: {iface}")), "{text}");
    assert!(text.contains("listening port: 51820"), "{text}");
    assert!(!text.contains("private key"), "{text}");
    assert!(text.contains(&format!("peer: {web_key}")), "{text}");
    assert!(text.contains("endpoint: 10.77.0.1:51820"), "{text}");
    assert!(
        text.contains("allowed ips: 100.80.0.1/32, fd5e:6d00::1/128"),
        "{text}"
    );
    assert!(
        text.contains("latest handshake: 7 seconds ago")
            || text.contains("latest handshake: 8 seconds ago"),
        "{text}"
    );
    assert!(
        text.contains("transfer: 120.56 KiB received, 638.99 KiB sent"),
        "{text}"
    );
    assert!(text.contains(&format!("peer: {db_key}")), "{text}");

    // The machine-readable dump: one line per peer, the handshake in seconds.
    let dump = String::from_utf8_lossy(&wg(&["show", &iface, "dump"]).stdout).into_owned();
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 3, "{dump}");
    assert!(lines[0].starts_with("(none)\t(none)\t51820\t"), "{dump}");
    let cols: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(cols[0], web_key);
    assert_eq!(cols[2], "10.77.0.1:51820");
    assert_eq!(cols[5..7], ["123456", "654321"]);
    let cols: Vec<&str> = lines[2].split('\t').collect();
    assert_eq!((cols[2], cols[4]), ("(none)", "0"), "{dump}");

    // `wg show` without an interface name finds it among all sockets.
    let all = String::from_utf8_lossy(&wg(&["show", "interfaces"]).stdout).into_owned();
    assert!(all.split_whitespace().any(|i| i == iface), "{all}");

    // wg set is refused: EPERM, and nothing changes.
    let set = wg(&["set", &iface, "listen-port", "1234"]);
    assert!(!set.status.success());
    let err = String::from_utf8_lossy(&set.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    let again = String::from_utf8_lossy(&wg(&["show", &iface, "listen-port"]).stdout).into_owned();
    assert_eq!(again.trim(), "51820");

    drop(guard);
    assert!(!path.exists(), "socket removed when the server stops");
}
