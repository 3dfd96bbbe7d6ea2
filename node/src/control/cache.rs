//! The netmap cache: the last applied netmap, 0600, with an HMAC-SHA256 over
//! its bytes keyed from the node's WireGuard private key. A node restarting
//! while the coordinator is down starts from it; a cache that was edited,
//! truncated or swapped is refused (whoever can forge the MAC can already
//! read the private key, so it adds no new trust).

use hmac::{Hmac, Mac as _};
use segmesh_config::{NetMap, NetMapError};
use sha2::{Digest as _, Sha256};

use super::files::{FileError, StateDir, read_secret, write_atomic};

type HmacSha256 = Hmac<Sha256>;

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("netmap cache {0} failed its integrity check (tampered or corrupt); refusing it")]
    Tampered(String),
    #[error("netmap cache: {0}")]
    Invalid(#[from] NetMapError),
}

/// Reads and writes the cache of one state directory.
#[derive(Debug, Clone)]
pub struct NetmapCache {
    dir: StateDir,
    key: [u8; 32],
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl NetmapCache {
    /// `wg_secret` is the node's WireGuard private key.
    pub fn new(dir: StateDir, wg_secret: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"segmesh netmap cache v1\0");
        h.update(wg_secret);
        Self {
            dir,
            key: h.finalize().into(),
        }
    }

    fn mac(&self, bytes: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        m.update(bytes);
        m
    }

    /// Stores a netmap (atomically: netmap first, then its MAC; a crash in
    /// between leaves a mismatch, which is refused rather than trusted).
    pub fn save(&self, map: &NetMap) -> Result<(), CacheError> {
        let bytes = map.to_json_pretty();
        let tag = self.mac(bytes.as_bytes()).finalize().into_bytes();
        write_atomic(&self.dir.netmap(), bytes.as_bytes(), 0o600)?;
        write_atomic(&self.dir.netmap_mac(), hex(&tag).as_bytes(), 0o600)?;
        Ok(())
    }

    /// Loads and verifies the cache; `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<NetMap>, CacheError> {
        if !self.dir.netmap().exists() {
            return Ok(None);
        }
        let bytes = read_secret(&self.dir.netmap())?;
        let path = self.dir.netmap().display().to_string();
        let tag =
            read_secret(&self.dir.netmap_mac()).map_err(|_| CacheError::Tampered(path.clone()))?;
        let tag = String::from_utf8_lossy(&tag);
        let raw: Vec<u8> = (0..tag.trim().len() / 2)
            .filter_map(|i| u8::from_str_radix(tag.trim().get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        self.mac(&bytes)
            .verify_slice(&raw)
            .map_err(|_| CacheError::Tampered(path))?;
        Ok(Some(NetMap::from_json(&bytes)?))
    }
}
