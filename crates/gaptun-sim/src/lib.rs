//! Deterministic in-memory network for gaptun-proto.
