//! The control socket behind `segmesh-node status`.
//!
//! A tiny line protocol on a 0600 unix socket: the client writes one command
//! line (`status` or `rotate-key`), the server answers one JSON line,
//! `{"status": <NodeStatus>}`, `{"rotated": <RotateReport>}` or
//! `{"error": "<message>"}`, and closes. `rotate-key` is served here so that
//! the daemon, which holds the key in use, is the only writer of the key
//! files (see `control::rotate`). JSON
//! rather than a table so that `status --json` prints exactly what the node
//! reported and the human table is formatted by the client.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::control::{RotateReport, RotateRequest};

use crate::status::{NodeStatus, StatusSource};
use crate::unixsock::{PrivateListener, ServeError, bind_private, read_line_timeout, serve_each};

/// The default control socket of a node whose interface is `interface`.
pub fn default_path(interface: &str) -> PathBuf {
    Path::new("/var/run/segmesh").join(format!("{interface}.ctl"))
}

const MAX_LINE: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The one reply line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Status(Box<NodeStatus>),
    Rotated(RotateReport),
    Error(String),
}

/// A rotation waits for the coordinator and, through it, for the peers.
const ROTATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why `fetch_status` failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlClientError {
    #[error("connecting to {path} (is segmesh-node running, and are you root?): {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the node sent an unreadable reply: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: the node answered: {message}")]
    Remote { path: PathBuf, message: String },
}

/// Where `rotate-key` requests go: the control client of an enrolled node,
/// or nowhere (a node run from a static netmap file).
pub type Rotator = Option<mpsc::Sender<RotateRequest>>;

/// Binds `path` (0600) and serves until the future is dropped.
pub async fn serve(
    path: PathBuf,
    source: Arc<dyn StatusSource>,
    rotator: Rotator,
) -> Result<(), ServeError> {
    let listener = bind_private(&path)?;
    tracing::info!(path = %path.display(), "serving control socket");
    run(listener, source, rotator).await
}

/// Serves on an already bound listener.
pub async fn run(
    listener: PrivateListener,
    source: Arc<dyn StatusSource>,
    rotator: Rotator,
) -> Result<(), ServeError> {
    serve_each(listener, move |stream| {
        handle(stream, source.clone(), rotator.clone())
    })
    .await
}

async fn rotate(rotator: Rotator) -> Reply {
    let Some(tx) = rotator else {
        return Reply::Error(
            "this node runs from a static netmap file, not a coordinator; \
             rotate its key with `segmesh-node keygen` and a new netmap"
                .into(),
        );
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return Reply::Error("the coordinator client is not running".into());
    }
    match tokio::time::timeout(ROTATE_TIMEOUT, answer).await {
        Ok(Ok(Ok(report))) => Reply::Rotated(report),
        Ok(Ok(Err(message))) => Reply::Error(message),
        Ok(Err(_)) => Reply::Error("the coordinator client stopped".into()),
        Err(_) => Reply::Error(format!("no result within {ROTATE_TIMEOUT:?}")),
    }
}

async fn handle(
    stream: UnixStream,
    source: Arc<dyn StatusSource>,
    rotator: Rotator,
) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    if !read_line_timeout(&mut rd, &mut line, MAX_LINE, TIMEOUT).await? {
        return Ok(());
    }
    let reply = match String::from_utf8_lossy(&line).trim() {
        "status" => Reply::Status(Box::new(source.status())),
        "rotate-key" => rotate(rotator).await,
        other => Reply::Error(format!(
            "unknown command {other:?} (expected \"status\" or \"rotate-key\")"
        )),
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    wr.write_all(&bytes).await?;
    wr.shutdown().await
}

/// Sends `command` to the node listening on `path` and reads its reply.
/// Blocking (with a timeout), so the CLI can call it with or without a
/// runtime.
fn ask(path: &Path, command: &str, timeout: Duration) -> Result<Reply, CtlClientError> {
    let io_err = |source| CtlClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        CtlClientError::Connect {
            path: path.to_path_buf(),
            source,
        }
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    io::BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    match serde_json::from_str(&line) {
        Ok(Reply::Error(message)) => Err(CtlClientError::Remote {
            path: path.to_path_buf(),
            message,
        }),
        Ok(reply) => Ok(reply),
        Err(source) => Err(CtlClientError::Decode {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn unexpected(path: &Path) -> CtlClientError {
    CtlClientError::Remote {
        path: path.to_path_buf(),
        message: "unexpected reply".into(),
    }
}

/// Asks the node listening on `path` for its status.
pub fn fetch_status(path: &Path) -> Result<NodeStatus, CtlClientError> {
    match ask(path, "status", TIMEOUT)? {
        Reply::Status(s) => Ok(*s),
        _ => Err(unexpected(path)),
    }
}

/// Asks the node listening on `path` to rotate its WireGuard key.
pub fn rotate_key(path: &Path) -> Result<RotateReport, CtlClientError> {
    match ask(path, "rotate-key", ROTATE_TIMEOUT + TIMEOUT)? {
        Reply::Rotated(r) => Ok(r),
        _ => Err(unexpected(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DropCounters, PeerStatus, TunCounters};
    use segmesh_config::PublicKey;
    use tokio::io::AsyncReadExt;

    struct Fixed(NodeStatus);
    impl StatusSource for Fixed {
        fn status(&self) -> NodeStatus {
            self.0.clone()
        }
    }

    fn sample() -> NodeStatus {
        NodeStatus {
            name: Some("db-1".parse().unwrap()),
            interface: "sm0".into(),
            public_key: PublicKey::from_bytes([3; 32]),
            listen_port: 51820,
            addresses: vec!["100.80.0.3".parse().unwrap()],
            netmap_version: 1,
            peers: vec![PeerStatus {
                public_key: PublicKey::from_bytes([4; 32]),
                name: None,
                endpoint: Some("10.9.0.2:51820".parse().unwrap()),
                allowed_ips: vec!["100.80.0.2/32".parse().unwrap()],
                last_handshake_unix_ms: Some(5),
                rx_bytes: 1,
                tx_bytes: 2,
                outbound: vec![],
                inbound: vec!["tcp/5432".into()],
            }],
            drops: DropCounters {
                unknown_key: 7,
                ..DropCounters::default()
            },
            tun: TunCounters {
                reads: 1,
                packets_read: 2,
                writes: 3,
                packets_written: 4,
            },
            threads: Default::default(),
        }
    }

    #[tokio::test]
    async fn client_gets_what_the_source_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl/sm0.ctl");
        let listener = bind_private(&path).unwrap();
        let task = tokio::spawn(run(listener, Arc::new(Fixed(sample())), None));
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || fetch_status(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, sample());

        // Unknown commands get an error line, not a hang.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"reboot\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with(r#"{"error":"unknown command \"reboot\""#),
            "{out}"
        );
        task.abort();
    }

    #[test]
    fn missing_socket_names_the_path() {
        let e = fetch_status(Path::new("/nonexistent/segmesh.ctl")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/segmesh.ctl"), "{msg}");
        assert!(msg.contains("is segmesh-node running"), "{msg}");
    }
}
