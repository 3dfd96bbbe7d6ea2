//! segmesh-coordinator: identities, policy and netmap distribution.

pub mod ctl;
pub mod store;
