//! `segmesh-node rotate-key`: replace the node's WireGuard key through the
//! coordinator while the node runs.
//!
//! The running daemon does the whole rotation (the CLI only asks it over the
//! control socket), so the key on disk, the key in the data plane and the
//! key the coordinator publishes change in one place, in one order:
//!
//! 1. a new key is generated here and written to `private.key.pending`
//!    (0600, atomically); it never leaves the machine, only its public half;
//! 2. POST /v1/rotate-key; the coordinator pushes the new key to the peers,
//!    marked as a rotation, and answers once they acked it;
//! 3. the data plane switches keys and re-handshakes its live peers (first,
//!    because the peers already hold the new key);
//! 4. commit: the netmap cache is re-sealed under the new key (with the new
//!    key in its own entry), then `private.key.pending` is renamed over
//!    `private.key`.
//!
//! A crash between steps leaves a state that the next start resolves
//! without guessing: a pending key under which the cache verifies was
//! accepted (step 4 starts only after the coordinator's yes), so the rename
//! is finished; otherwise the node starts on its old key, and the first
//! netmap from the coordinator tells: if it carries the pending key, the
//! rotation is committed then (see `ControlClient::accept`).

use std::time::Duration;

use segmesh_config::PublicKey;
use segmesh_config::client::{ClientError, HttpsClient};
use segmesh_config::control::{ErrorBody, RotateKeyRequest, RotateKeyResponse};
use serde::{Deserialize, Serialize};

use super::cache::{CacheError, NetmapCache};
use super::files::{FileError, StateDir, load_key, rename_durable, write_key};

/// How long one coordinator may take to answer (it waits up to its ack
/// timeout, 5 s by default, for the peers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a rotation did, as `segmesh-node rotate-key` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateReport {
    pub old_key: PublicKey,
    pub new_key: PublicKey,
    /// The node's netmap version that carries the new key.
    pub netmap_version: u64,
    /// Peers that applied the new key before the coordinator answered.
    pub peers_acked: usize,
    pub peers_total: usize,
    /// From the coordinator's push to its last peer ack.
    pub peers_ms: u64,
}

/// Why a rotation did not happen (or its outcome is not known).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("coordinator unreachable ({0}); the old key stays in use, nothing changed")]
    Unreachable(String),
    #[error("the coordinator refused the new key ({status}): {message}; the old key stays in use")]
    Refused { status: u16, message: String },
    #[error(
        "no clear answer from the coordinator ({0}); the old key stays in use, the new one waits in \
         private.key.pending: the node switches to it if the coordinator's next netmap carries it, \
         and `rotate-key` retries with it"
    )]
    Unknown(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the data plane did not take the new key: {0}")]
    DataPlane(String),
}

/// The public key of a private key.
pub fn public_of(secret: &[u8; 32]) -> PublicKey {
    PublicKey::from_bytes(
        boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(*secret))
            .to_bytes(),
    )
}

/// The pending key, if there is one.
pub fn pending(dir: &StateDir) -> Result<Option<[u8; 32]>, FileError> {
    if dir.pending_key().exists() {
        load_key(&dir.pending_key()).map(Some)
    } else {
        Ok(None)
    }
}

/// The key to rotate to: the pending one of an earlier attempt whose
/// outcome is unknown (the coordinator treats a repeat as a no-op), else a
/// new one, written before anything is sent.
pub fn pending_or_new(dir: &StateDir) -> Result<[u8; 32], FileError> {
    if let Some(k) = pending(dir)? {
        return Ok(k);
    }
    let secret = boringtun::x25519::StaticSecret::random_from_rng(rand_core::OsRng).to_bytes();
    write_key(&dir.pending_key(), &secret)?;
    Ok(secret)
}

/// Forgets a pending key the coordinator refused or never received.
pub fn discard_pending(dir: &StateDir) {
    if let Err(e) = std::fs::remove_file(dir.pending_key())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.pending_key().display(), error = %e, "cannot remove the pending key");
    }
}

/// Makes `secret` the node's key on disk: the cache is re-sealed under it
/// first, then the pending file replaces `private.key` (see the module doc
/// for why this order is recoverable).
pub fn commit(
    dir: &StateDir,
    secret: &[u8; 32],
    current: Option<&mut segmesh_config::NetMap>,
) -> Result<NetmapCache, RotateError> {
    let cache = NetmapCache::new(dir.clone(), secret);
    if let Some(map) = current {
        map.node.public_key = public_of(secret);
        cache.save(map)?;
    }
    rename_durable(&dir.pending_key(), &dir.private_key())?;
    Ok(cache)
}

/// At start, before the data plane reads `private.key`: finishes a commit
/// that a crash interrupted. Returns the key now in force when it changed.
pub fn recover(dir: &StateDir) -> Result<Option<PublicKey>, FileError> {
    let Some(secret) = pending(dir)? else {
        return Ok(None);
    };
    if NetmapCache::new(dir.clone(), &secret)
        .load()
        .is_ok_and(|m| m.is_some())
    {
        rename_durable(&dir.pending_key(), &dir.private_key())?;
        let key = public_of(&secret);
        tracing::info!(public_key = %key, "finished a key rotation interrupted by a restart");
        return Ok(Some(key));
    }
    Ok(None)
}

/// Asks the coordinators, in order, to publish `new`. Only a refusal or a
/// connection that was never made is a clear "no"; anything after the
/// request may have left is reported as unknown.
pub async fn request(
    clients: &[HttpsClient],
    new: PublicKey,
) -> Result<RotateKeyResponse, RotateError> {
    let body = serde_json::to_vec(&RotateKeyRequest { public_key: new })
        .map_err(|e| RotateError::Unknown(e.to_string()))?;
    let mut unreachable = Vec::new();
    let mut unknown = None;
    for client in clients {
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.request("POST", "/v1/rotate-key", None, Some(body.clone())),
        )
        .await;
        match sent {
            Ok(Ok(r)) if r.status == 200 => {
                return serde_json::from_slice(&r.body)
                    .map_err(|e| RotateError::Unknown(format!("unreadable reply: {e}")));
            }
            Ok(Ok(r)) if (400..500).contains(&r.status) => {
                let message = serde_json::from_slice::<ErrorBody>(&r.body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
                return Err(RotateError::Refused {
                    status: r.status,
                    message,
                });
            }
            Ok(Ok(r)) => unknown = Some(format!("{}: HTTP {}", client.url(), r.status)),
            Ok(Err(e @ ClientError::Connect { .. })) => unreachable.push(e.to_string()),
            Ok(Err(e)) => unknown = Some(format!("{}: {e}", client.url())),
            Err(_) => {
                unknown = Some(format!(
                    "{}: no answer in {REQUEST_TIMEOUT:?}",
                    client.url()
                ))
            }
        }
    }
    Err(match unknown {
        Some(u) => RotateError::Unknown(u),
        None => RotateError::Unreachable(unreachable.join("; ")),
    })
}
