//! segmesh-coordinator: identities, policy and netmap distribution.

pub mod ca;
pub mod clock;
pub mod metrics;
pub mod store;
