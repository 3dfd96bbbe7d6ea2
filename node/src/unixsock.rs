//! Private unix-socket listeners for the node's local servers (the read-only
//! WireGuard UAPI socket and the `status` control socket), and a bounded line
//! reader for their tiny text protocols.
//!
//! Binding follows wireguard-go: a stale socket left by a dead process is
//! removed, but a socket that still accepts connections is never stolen.
//! Sockets are chmod 0600 right after bind (connecting needs write permission,
//! so with the usual umask nobody else can connect during that instant), and
//! directories we create are 0700: only root talks to the node.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::{UnixListener, UnixStream};

/// Mode of the socket file: owner read/write only.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of a socket directory this process creates.
pub const DIR_MODE: u32 = 0o700;

/// Why a local socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("creating socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotSocket { path: PathBuf },
    #[error("{path} is in use by another running process")]
    InUse { path: PathBuf },
    #[error("binding unix socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Why a local socket server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("accepting on {path}: {source}")]
    Accept { path: PathBuf, source: io::Error },
}

/// Accepts connections until the future is dropped, running `handle` on each
/// in its own task; a failing connection is logged at debug and forgotten.
pub async fn serve_each<F, Fut>(listener: PrivateListener, handle: F) -> Result<(), ServeError>
where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let (stream, _) =
            listener
                .listener
                .accept()
                .await
                .map_err(|source| ServeError::Accept {
                    path: listener.path.clone(),
                    source,
                })?;
        let conn = handle(stream);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "local socket client error");
            }
        });
    }
}

/// [`read_line_limited`] with a deadline, so a client that stalls mid-request
/// does not hold its task forever.
pub async fn read_line_timeout<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
) -> io::Result<bool> {
    tokio::time::timeout(timeout, read_line_limited(reader, buf, max))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// A bound listener that removes its socket file when dropped (unless another
/// process replaced it meanwhile).
#[derive(Debug)]
pub struct PrivateListener {
    listener: UnixListener,
    path: PathBuf,
    ident: (u64, u64),
}

impl PrivateListener {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokio listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for PrivateListener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.ident
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a unix stream socket at `path` with mode 0600, creating the parent
/// directory (0700) if needed and removing a stale socket. Must be called
/// inside a tokio runtime.
pub fn bind_private(path: &Path) -> Result<PrivateListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| BindError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let bind_err = |source| BindError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let std_listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotSocket {
                    path: path.to_path_buf(),
                });
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_path_buf(),
                });
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(bind_err)?;
            std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?
        }
        Err(e) => return Err(bind_err(e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
    Ok(PrivateListener {
        listener,
        path: path.to_path_buf(),
        ident: (meta.dev(), meta.ino()),
    })
}

/// Reads one `\n`-terminated line of at most `max` bytes into `buf` (without
/// the newline). Returns `Ok(false)` at end of stream before any byte. A
/// longer line is an `InvalidData` error, so a client cannot make the node
/// buffer without bound.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    buf.clear();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            ));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if buf.len() > max + 1 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        if done {
            buf.pop();
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_0600_replaces_stale_refuses_live_and_removes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.sock");
        let l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        // A live socket is not stolen.
        assert!(matches!(bind_private(&path), Err(BindError::InUse { .. })));
        drop(l);
        assert!(!path.exists(), "socket removed on drop");

        // A stale socket (no listener behind it) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _l = bind_private(&path).unwrap();

        // A regular file is never deleted.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_private(&file),
            Err(BindError::NotSocket { .. })
        ));
        assert!(file.exists());
    }

    #[tokio::test]
    async fn line_reader_bounds_lines() {
        let mut r = tokio::io::BufReader::new(&b"get=1\n\nabc"[..]);
        let mut buf = Vec::new();
        assert!(read_line_limited(&mut r, &mut buf, 16).await.unwrap());
        assert_eq!(buf, b"get=1");
        assert!(read_line_limited(&mut r, &mut buf, 16).await.unwrap());
        assert!(buf.is_empty());
        assert!(read_line_limited(&mut r, &mut buf, 16).await.is_err());
        let mut r = tokio::io::BufReader::new(&b""[..]);
        assert!(!read_line_limited(&mut r, &mut buf, 16).await.unwrap());
        let long = [b'a'; 100];
        let mut r = tokio::io::BufReader::new(&long[..]);
        let e = read_line_limited(&mut r, &mut buf, 16).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
