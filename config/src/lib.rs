//! segmesh-config: the language shared by the node, the coordinator and the CLI.
//!
//! Identities, port sets, the netmap wire format, the policy language and its
//! compiler. Pure code: no IO beyond reading the files it is asked to parse.

pub mod audit;
#[cfg(feature = "cli-docs")]
pub mod cli_docs;
#[cfg(feature = "client")]
pub mod client;
pub mod compile;
pub mod control;
pub mod diff;
pub mod explain;
pub mod files;
pub mod graph;
pub mod identity;
pub mod netmap;
pub mod policy;
pub mod ports;

pub use files::{FilesError, InterfaceName, NodeConfig};
pub use identity::{IdentityError, Labels, NodeName, PublicKey};
pub use netmap::{NETMAP_FORMAT, NetMap, NetMapError, Peer, SelfNode};
pub use policy::{Policy, PolicyError, PolicyErrors};
pub use ports::{PortError, PortSet, PortSpec, Proto};
pub mod inventory;

pub use inventory::{Inventory, InventoryError, InventoryNode};

/// Renders a `toml` deserialisation error as `LINE:COL: message` (the caller
/// prefixes the file name), so every config error points at its place.
pub fn toml_error_message(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{line}:{col}: {}", err.message())
        }
        None => err.message().to_string(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}
