//! Library side of the `seckill` binary: the pieces the end-to-end tests use
//! too (the invariant checker).

pub mod check;
pub mod topic;
