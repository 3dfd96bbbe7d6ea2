//! The coordinator client: join (enroll with a token), the netmap stream
//! over mTLS with acks, the integrity-checked netmap cache, and peer-key
//! pinning.
//!
//! Files in the state directory (all secrets 0600):
//! - `private.key`: the WireGuard private key (base64), generated here;
//! - `private.key.pending`: during a key rotation, the new key until the
//!   coordinator accepted it (see [`rotate`]);
//! - `tls.key`, `tls.pem`, `ca.pem`: the node's TLS key, its certificate
//!   signed by the coordinator CA, and that CA (pinned by the join token);
//! - `control.json`: name, coordinator URLs, CA fingerprint, addresses;
//! - `netmap.json` + `netmap.json.mac`: the last applied netmap and its
//!   HMAC, so the node restarts from it while the coordinator is down;
//! - `node.toml`: the data plane configuration pointing at the above.

pub mod backoff;
pub mod cache;
pub mod cli;
pub mod files;
pub mod join;
pub mod pin;
pub mod rotate;
pub mod stream;

#[cfg(test)]
mod tests;

pub use cache::{CacheError, NetmapCache};
pub use files::{ControlState, StateDir};
pub use join::{JoinOptions, join};
pub use pin::{PinError, check_pins};
pub use rotate::{RotateError, RotateReport};
pub use stream::{ControlClient, PlaneCommand, RotateRequest, StreamEvent};
