//! segmesh-coordinator: identities, policy and netmap distribution.

pub mod api;
pub mod ca;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod distribute;
pub mod feed;
pub mod maintenance;
pub mod metrics;
pub mod server;
pub mod store;
