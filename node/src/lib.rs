//! segmesh-node: the data plane.
//!
//! The sans-IO core ([`core::Node`] with [`peers`], [`filter`], [`packet`]
//! and the boringtun adapter [`tunn`]) makes every decision; the tokio
//! driver only moves bytes and time between it, the TUN device and the UDP
//! socket.

pub mod cli;
pub mod control;
pub mod core;
pub mod craft;
pub mod ctlsock;
pub mod dataplane;
pub mod filter;
pub mod flowlog;
pub mod packet;
pub mod peers;
pub mod status;
pub mod status_fmt;
pub mod tundev;
pub mod tunn;
pub mod uapi;
pub mod unixsock;
