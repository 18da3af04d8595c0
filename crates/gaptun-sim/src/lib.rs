//! Deterministic in-memory network for gaptun-proto.

pub mod link;
