//! What `segmesh-node status`, the read-only WireGuard UAPI socket and the
//! flow log report. Plain data shared by the core (which fills counters), the
//! driver (which adds wall-clock times) and the CLI (which prints it).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use segmesh_config::{NodeName, PublicKey};
use serde::{Deserialize, Serialize};

pub use crate::courtesy::Policy;

/// Why a packet was dropped. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A handshake initiation from a key that is not in the netmap.
    UnknownKey,
    /// An outbound packet to an address no peer's allowed IPs cover.
    NoRoute,
    /// A decrypted packet whose inner source is not in the sender's allowed IPs.
    SpoofedSource,
    /// The stateful filter refused the flow (not in the netmap's ports).
    Policy,
    /// A datagram or TUN frame that could not be parsed or decrypted.
    BadPacket,
}

impl DropReason {
    /// All reasons, in display order.
    pub const ALL: [DropReason; 5] = [
        DropReason::UnknownKey,
        DropReason::NoRoute,
        DropReason::SpoofedSource,
        DropReason::Policy,
        DropReason::BadPacket,
    ];

    /// The snake_case name used in JSON, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownKey => "unknown_key",
            DropReason::NoRoute => "no_route",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::Policy => "policy",
            DropReason::BadPacket => "bad_packet",
        }
    }
}

/// Packets dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters {
    pub unknown_key: u64,
    pub no_route: u64,
    pub spoofed_source: u64,
    pub policy: u64,
    pub bad_packet: u64,
}

impl DropCounters {
    /// Counts one drop.
    pub fn count(&mut self, reason: DropReason) {
        *self.get_mut(reason) += 1;
    }

    /// The counter of one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::UnknownKey => self.unknown_key,
            DropReason::NoRoute => self.no_route,
            DropReason::SpoofedSource => self.spoofed_source,
            DropReason::Policy => self.policy,
            DropReason::BadPacket => self.bad_packet,
        }
    }

    fn get_mut(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::UnknownKey => &mut self.unknown_key,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::SpoofedSource => &mut self.spoofed_source,
            DropReason::Policy => &mut self.policy,
            DropReason::BadPacket => &mut self.bad_packet,
        }
    }
}

/// One peer as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<NodeName>,
    /// Where the peer's datagrams come from / go to (configured or learned).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Wall-clock time of the last completed handshake, ms since the Unix epoch.
    pub last_handshake_unix_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Canonical port strings this node may open to the peer.
    pub outbound: Vec<String>,
    /// Canonical port strings the peer may open to this node.
    pub inbound: Vec<String>,
}

/// The whole node as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: Option<NodeName>,
    pub interface: String,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub addresses: Vec<IpAddr>,
    pub netmap_version: u64,
    pub peers: Vec<PeerStatus>,
    pub drops: DropCounters,
    /// System calls on the TUN device and the packets they moved: packets
    /// per call shows whether the offloads work (1 means they do not).
    #[serde(default)]
    pub tun: TunCounters,
    /// How each packet thread is scheduled now (node.toml `polite_wakeups`).
    #[serde(default)]
    pub threads: ThreadPolicies,
}

/// The packet threads' scheduling policies (see `courtesy.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadPolicies {
    pub tun: Policy,
    pub udp: Policy,
}

/// TUN device I/O since start. A read returns one super-packet (split into
/// `packets_read`); a write carries one or more coalesced packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunCounters {
    pub reads: u64,
    pub packets_read: u64,
    pub writes: u64,
    pub packets_written: u64,
}

/// Direction of a flow as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Opened by a local process towards a peer.
    Outbound,
    /// Opened by a peer towards this node.
    Inbound,
}

/// The filter's decision on a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// One line of the flow log: a new flow and what the node decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Wall-clock time, ms since the Unix epoch (set by the driver).
    pub time_unix_ms: u64,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The peer on the other end, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PublicKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<NodeName>,
    pub direction: Direction,
    pub verdict: Verdict,
    /// `allowed` for admitted flows, else a [`DropReason`] name.
    pub reason: String,
}

/// Where the status servers (`status` control socket, read-only WireGuard
/// UAPI) get a fresh snapshot from. The driver implements it over the shared
/// core, so the servers never touch the core's lock or its types directly.
pub trait StatusSource: Send + Sync {
    /// A consistent snapshot of the node, with wall-clock times filled in.
    fn status(&self) -> NodeStatus;
}
