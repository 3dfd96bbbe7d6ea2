//! segmesh-coordinator: identities, policy and netmap distribution.
