//! gaptun-runtime
