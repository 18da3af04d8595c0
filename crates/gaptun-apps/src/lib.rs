//! gaptun-apps
