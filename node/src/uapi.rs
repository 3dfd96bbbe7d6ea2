//! A read-only WireGuard UAPI server, so operators can run `wg show`.
//!
//! The cross-platform userspace protocol (wireguard.com/xplatform) is a text
//! protocol on `/var/run/wireguard/<interface>.sock`: the client writes
//! `get=1\n\n` or `set=1\n<key=value lines>\n\n`, the server answers
//! `key=value` lines ended by `errno=N\n\n`.
//!
//! Two deliberate departures from a full implementation:
//! - `get` never sends `private_key`. wg(8) derives the interface's public key
//!   from the private key (there is no device-level `public_key` in the
//!   protocol: that key starts a peer), so `wg show` prints no "public key"
//!   line for the interface; `segmesh-node status` shows it. Handing the
//!   private key to any local reader of a socket is not worth one line of
//!   output.
//! - `set` is refused with EPERM: the netmap is the only source of peers, so
//!   `wg set` must not add keys behind the policy's back. On the wire that is
//!   `errno=-1`: like wireguard-go (whose `IpcError*` codes are negated
//!   errnos), because wg(8) reads the set reply as a negative error and
//!   prints "Unable to modify interface: Operation not permitted".

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::status::{NodeStatus, StatusSource};
use crate::unixsock::{PrivateListener, ServeError, bind_private, read_line_timeout, serve_each};

/// Where wg(8) looks for the socket of `interface`.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{interface}.sock"))
}

/// errno line value answered to `set`: -EPERM (see the module doc).
pub const SET_REFUSED_ERRNO: i32 = -libc::EPERM;
/// errno line value answered to an operation other than get/set: -EINVAL.
const INVALID_ERRNO: i32 = -libc::EINVAL;
/// Longest request line accepted (a `set` line with a key is ~80 bytes).
const MAX_LINE: usize = 4096;
/// A client that stops mid-request is dropped after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket at `path` and answers requests until the future is
/// dropped (the socket file is removed then). Bind errors are returned at once.
pub async fn serve(path: PathBuf, source: Arc<dyn StatusSource>) -> Result<(), ServeError> {
    let listener = bind_private(&path)?;
    tracing::info!(path = %path.display(), "serving read-only WireGuard UAPI");
    run(listener, source).await
}

/// Answers requests on an already bound listener (see [`bind_private`]), so a
/// caller can report bind errors before spawning the loop.
pub async fn run(
    listener: PrivateListener,
    source: Arc<dyn StatusSource>,
) -> Result<(), ServeError> {
    serve_each(listener, move |stream| handle(stream, source.clone())).await
}

/// One connection: any number of requests, each answered in turn.
async fn handle(stream: UnixStream, source: Arc<dyn StatusSource>) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        if !read_line_timeout(&mut rd, &mut line, MAX_LINE, REQUEST_TIMEOUT).await? {
            return Ok(());
        }
        let op = std::mem::take(&mut line);
        // Consume the rest of the request, up to the blank line.
        let mut body_lines = 0usize;
        loop {
            if !read_line_timeout(&mut rd, &mut line, MAX_LINE, REQUEST_TIMEOUT).await? {
                return Ok(());
            }
            if line.is_empty() {
                break;
            }
            body_lines += 1;
        }
        let reply = match op.as_slice() {
            b"get=1" => format_get(&source.status()),
            b"set=1" => {
                tracing::warn!(
                    lines = body_lines,
                    "refused a UAPI set (wg set): the netmap is the only source of peers"
                );
                format!("errno={SET_REFUSED_ERRNO}\n\n")
            }
            _ => {
                wr.write_all(format!("errno={INVALID_ERRNO}\n\n").as_bytes())
                    .await?;
                return Ok(());
            }
        };
        wr.write_all(reply.as_bytes()).await?;
    }
}

/// The answer to `get=1` for this status: device fields, then one block per
/// peer, then `errno=0` and the blank line that ends the response.
pub fn format_get(status: &NodeStatus) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "listen_port={}", status.listen_port);
    for p in &status.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = match p.last_handshake_unix_ms {
            Some(ms) => (ms / 1000, (ms % 1000) * 1_000_000),
            None => (0, 0),
        };
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval=0");
        for net in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
        let _ = writeln!(out, "protocol_version=1");
    }
    out.push_str("errno=0\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DropCounters, PeerStatus, TunCounters};
    use segmesh_config::PublicKey;
    use tokio::io::AsyncReadExt;

    pub(crate) fn sample() -> NodeStatus {
        NodeStatus {
            name: Some("api-1".parse().unwrap()),
            interface: "sm0".into(),
            public_key: PublicKey::from_bytes([1; 32]),
            listen_port: 51820,
            addresses: vec!["100.80.0.2".parse().unwrap()],
            netmap_version: 4,
            peers: vec![
                PeerStatus {
                    public_key: PublicKey::from_bytes([0xab; 32]),
                    name: Some("web-1".parse().unwrap()),
                    endpoint: Some("10.9.0.1:51820".parse().unwrap()),
                    allowed_ips: vec![
                        "100.80.0.1/32".parse().unwrap(),
                        "fd5e:6d00::1/128".parse().unwrap(),
                    ],
                    last_handshake_unix_ms: Some(1_700_000_000_250),
                    rx_bytes: 1000,
                    tx_bytes: 2000,
                    outbound: vec![],
                    inbound: vec!["tcp/8080".into()],
                },
                PeerStatus {
                    public_key: PublicKey::from_bytes([2; 32]),
                    name: None,
                    endpoint: None,
                    allowed_ips: vec!["100.80.0.3/32".parse().unwrap()],
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

    struct Fixed(NodeStatus);
    impl StatusSource for Fixed {
        fn status(&self) -> NodeStatus {
            self.0.clone()
        }
    }

    #[test]
    fn get_response_is_exact() {
        let want = format!(
            "listen_port=51820\n\
             public_key={ab}\n\
             endpoint=10.9.0.1:51820\n\
             last_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=250000000\n\
             tx_bytes=2000\n\
             rx_bytes=1000\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=100.80.0.1/32\n\
             allowed_ip=fd5e:6d00::1/128\n\
             protocol_version=1\n\
             public_key={two}\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=100.80.0.3/32\n\
             protocol_version=1\n\
             errno=0\n\n",
            ab = "ab".repeat(32),
            two = "02".repeat(32),
        );
        assert_eq!(format_get(&sample()), want);
    }

    #[test]
    fn private_key_is_never_sent() {
        let s = format_get(&sample());
        assert!(!s.contains("private_key"));
        assert!(!s.contains(&"01".repeat(32)), "not even our public key");
    }

    async fn roundtrip(path: &Path, req: &[u8]) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_get_refuses_set_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm0.sock");
        let task = tokio::spawn(serve(path.clone(), Arc::new(Fixed(sample()))));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let get = roundtrip(&path, b"get=1\n\n").await;
        assert_eq!(get, format_get(&sample()));
        let set = roundtrip(
            &path,
            format!(
                "set=1\npublic_key={}\nallowed_ip=0.0.0.0/0\n\n",
                "cd".repeat(32)
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(set, "errno=-1\n\n");
        // Two requests on one connection are both answered.
        let two = roundtrip(&path, b"set=1\n\nget=1\n\n").await;
        assert_eq!(two, format!("errno=-1\n\n{}", format_get(&sample())));
        assert_eq!(roundtrip(&path, b"hello\n\n").await, "errno=-22\n\n");
        task.abort();
        let _ = task.await;
        assert!(!path.exists(), "socket removed when the server stops");
    }
}
