//! segmesh-coordinator: identities, policy and netmap distribution.

pub mod store;
