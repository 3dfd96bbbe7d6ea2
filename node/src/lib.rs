//! segmesh-node: the data plane.

pub mod ctlsock;
pub mod flowlog;
pub mod status;
pub mod status_fmt;
pub mod uapi;
pub mod unixsock;
