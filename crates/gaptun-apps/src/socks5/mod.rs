//! The client's SOCKS5 server (RFC 1928, with RFC 1929 username/password authentication).
//!
//! Every CONNECT becomes one tunnel stream; the tunnel server dials the target and its reply
//! code is passed through unchanged, so a SOCKS client sees "connection refused", "not allowed
//! by ruleset" or "host unreachable" exactly as if it had talked to a SOCKS server on the far
//! side. UDP ASSOCIATE carries all of one association's datagrams on one tunnel stream.
//! BIND is not supported (command not supported, 7).

pub mod codec;
pub mod server;

pub use codec::SocksError;
pub use server::{SocksConfig, serve_socks};
