//! segmesh-node: the data plane.
//!
//! The sans-IO core ([`core::Node`] with [`peers`], [`filter`], [`packet`]
//! and the boringtun adapter [`tunn`]) makes every decision; the driver
//! only moves bytes and time between it, the TUN device and the UDP socket:
//! two packet threads ([`pump`], batched I/O in [`tunio`] and [`udpio`])
//! and tokio tasks for timers, netmaps and the control sockets
//! ([`dataplane`]).

pub mod cli;
pub mod coalesce;
pub mod control;
pub mod core;
pub mod courtesy;
pub mod craft;
pub mod ctlsock;
pub mod dataplane;
pub mod filter;
pub mod flowlog;
pub mod packet;
pub mod peers;
pub mod pump;
pub mod status;
pub mod status_fmt;
pub mod tundev;
pub mod tunio;
pub mod tunn;
pub mod uapi;
pub mod udpio;
pub mod unixsock;
pub mod waitset;
