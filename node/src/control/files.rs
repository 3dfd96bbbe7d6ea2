//! The node's state directory: paths, secret files (0600), control state.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use segmesh_config::NodeName;
use serde::{Deserialize, Serialize};

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: secret file is readable by group or others; chmod 600 it")]
    Mode(PathBuf),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically (temp file + rename) with the given mode, so a
/// crash never leaves a half-written key or netmap.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, FileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(FileError::Mode(path.to_path_buf()));
    }
    fs::read(path).map_err(io(path))
}

/// What `join` learned and `run` needs to reach the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlState {
    pub name: NodeName,
    pub urls: Vec<String>,
    pub ca_sha256: String,
    pub addresses: Vec<IpAddr>,
}

/// The state directory layout.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.join("private.key")
    }
    /// A new WireGuard key whose rotation the coordinator has not (yet)
    /// confirmed; see `control::rotate`.
    pub fn pending_key(&self) -> PathBuf {
        self.dir.join("private.key.pending")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.pem")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.json")
    }
    pub fn netmap(&self) -> PathBuf {
        self.dir.join("netmap.json")
    }
    pub fn netmap_mac(&self) -> PathBuf {
        self.dir.join("netmap.json.mac")
    }
    pub fn node_toml(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    /// Creates the directory (0700).
    pub fn create(&self) -> Result<(), FileError> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))
    }

    /// Whether this directory already holds an enrolled node.
    pub fn is_enrolled(&self) -> bool {
        self.control().exists()
    }

    pub fn load_control(&self) -> Result<ControlState, FileError> {
        let path = self.control();
        let bytes = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| FileError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// The WireGuard private key (base64 file, as `wg genkey` writes it).
    pub fn load_private_key(&self) -> Result<[u8; 32], FileError> {
        load_key(&self.private_key())
    }
}

/// Writes a WireGuard private key file (base64, 0600, atomically).
pub fn write_key(path: &Path, secret: &[u8; 32]) -> Result<(), FileError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    write_atomic(path, format!("{b64}\n").as_bytes(), 0o600)
}

/// Reads a WireGuard private key file written by [`write_key`] or `wg genkey`.
pub fn load_key(path: &Path) -> Result<[u8; 32], FileError> {
    use base64::Engine as _;
    let text = read_secret(path)?;
    let invalid = |message: &str| FileError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&text).trim())
        .map_err(|_| invalid("not base64"))?;
    raw.try_into().map_err(|_| invalid("not a 32-byte key"))
}

/// Renames `from` over `to` and syncs the directory, so the rename itself
/// survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).map_err(io(to))?;
    if let Some(dir) = to.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}
