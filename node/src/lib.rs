//! segmesh-node: the data plane.

pub mod status;
