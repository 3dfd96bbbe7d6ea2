//! Daemon configuration files: `node.toml`.
//!
//! Parsed into validated types with `deny_unknown_fields`, so a typo is an
//! error naming `file:line:col`, never a silently ignored setting. Relative
//! paths in the file are relative to the file's directory, so a config can
//! travel with its key and netmap.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `file:line:col: message`.
    #[error("{path}:{message}")]
    Parse { path: PathBuf, message: String },
}

/// A network interface name as Linux accepts it (IFNAMSIZ - 1 characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Validates a name: 1-15 characters of a-z, A-Z, 0-9, '-', '_', '.'.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "invalid interface name {s:?}: use 1-15 characters of a-z, A-Z, 0-9, '-', '_', '.'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InterfaceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn default_interface() -> InterfaceName {
    InterfaceName("segmesh0".into())
}

fn default_listen_port() -> u16 {
    51820
}

fn default_mtu() -> u16 {
    1420
}

/// IPv6 needs at least 1280; the TUN MTU plus WireGuard's 80 bytes of
/// overhead must fit an Ethernet jumbo frame at most.
fn mtu<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u16::deserialize(d)?;
    if (1280..=9000).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "mtu {v} out of range 1280-9000"
        )))
    }
}

/// `node.toml`: how `segmesh-node run` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// TUN interface name (default `segmesh0`).
    #[serde(default = "default_interface")]
    pub interface: InterfaceName,
    /// The WireGuard private key (base64, as `segmesh-node keygen` writes it; mode 0600).
    pub private_key_file: PathBuf,
    /// The netmap JSON (`segmeshctl policy netmap --json`); reloaded on SIGHUP and on change.
    pub netmap_file: PathBuf,
    /// UDP port for WireGuard (default 51820; 0 picks a free port).
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// Address to bind the UDP socket to (default: all, IPv4 and IPv6).
    #[serde(default)]
    pub listen_address: Option<IpAddr>,
    /// TUN MTU (default 1420, like wg-quick).
    #[serde(default = "default_mtu", deserialize_with = "mtu")]
    pub mtu: u16,
    /// Append one JSON line per new flow here (rate-limited).
    #[serde(default)]
    pub flow_log: Option<PathBuf>,
    /// The control socket `segmesh-node status` talks to.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Worker threads of the runtime (default: one per core, at most 2).
    #[serde(default)]
    pub threads: Option<NonZeroUsize>,
    /// Kernel offloads on the data path (default on): TUN super-packets
    /// (`IFF_VNET_HDR`), UDP GSO and GRO. Off is slower; it exists for
    /// kernels or sandboxes that refuse them, and to measure what they buy.
    #[serde(default = "default_offload")]
    pub offload: bool,
    /// While the machine has CPU to spare (default on), the packet threads
    /// do not preempt the program that woke them (`SCHED_BATCH`), which on
    /// a VM keeps the next wakeup off a halted vCPU; when the CPUs are
    /// busy they preempt again. Off keeps the kernel's default throughout.
    #[serde(default = "default_polite_wakeups")]
    pub polite_wakeups: bool,
}

fn default_offload() -> bool {
    true
}

fn default_polite_wakeups() -> bool {
    true
}

impl NodeConfig {
    /// Parses `text`; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FilesError> {
        let mut c: NodeConfig = toml::from_str(text).map_err(|e| FilesError::Parse {
            path: path.to_path_buf(),
            message: crate::toml_error_message(text, &e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        anchor(&mut c.private_key_file);
        anchor(&mut c.netmap_file);
        c.flow_log.as_mut().map(anchor);
        c.control_socket.as_mut().map(anchor);
        Ok(c)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, FilesError> {
        let text = std::fs::read_to_string(path).map_err(|source| FilesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NodeConfig, String> {
        NodeConfig::parse(s, Path::new("/etc/segmesh/node.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_with_defaults_and_relative_paths() {
        let c = parse(
            "private_key_file = \"wg.key\"\nnetmap_file = \"/var/lib/segmesh/netmap.json\"\n",
        )
        .unwrap();
        assert_eq!(c.interface.as_str(), "segmesh0");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.private_key_file, Path::new("/etc/segmesh/wg.key"));
        assert_eq!(c.netmap_file, Path::new("/var/lib/segmesh/netmap.json"));
        assert!(c.listen_address.is_none() && c.flow_log.is_none() && c.control_socket.is_none());
        assert!(c.offload && c.polite_wakeups);
    }

    #[test]
    fn full() {
        let c = parse(
            r#"interface = "sm1"
private_key_file = "/k"
netmap_file = "/n"
listen_port = 0
listen_address = "10.0.0.1"
mtu = 1380
flow_log = "flows.jsonl"
control_socket = "/run/x.sock"
threads = 1
offload = false
polite_wakeups = false
"#,
        )
        .unwrap();
        assert!(!c.offload && !c.polite_wakeups);
        assert_eq!(c.interface.as_str(), "sm1");
        assert_eq!(c.listen_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.flow_log, Some(PathBuf::from("/etc/segmesh/flows.jsonl")));
        assert_eq!(c.threads.map(NonZeroUsize::get), Some(1));
    }

    #[test]
    fn errors_name_file_line_col() {
        let e = parse("private_key_file = \"/k\"\nnetmap_file = \"/n\"\nlisten_prot = 1\n")
            .unwrap_err();
        assert!(
            e.starts_with("/etc/segmesh/node.toml:3:1: unknown field `listen_prot`"),
            "{e}"
        );
        let e = parse("private_key_file = \"/k\"\nnetmap_file = \"/n\"\nmtu = 100\n").unwrap_err();
        assert!(
            e.starts_with("/etc/segmesh/node.toml:3:7: mtu 100 out of range"),
            "{e}"
        );
        let e = parse("interface = \"this-name-is-too-long\"\nprivate_key_file = \"/k\"\nnetmap_file = \"/n\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/segmesh/node.toml:1:13: invalid interface name"),
            "{e}"
        );
        let e = parse("private_key_file = \"/k\"\n").unwrap_err();
        assert!(e.contains("missing field `netmap_file`"), "{e}");
    }
}
