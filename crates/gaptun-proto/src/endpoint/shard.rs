//! Shards: one server's connections spread over several endpoints, one per core.
//!
//! Each shard is a whole [`Endpoint`](super::Endpoint) driven on its own (its own socket
//! bound to the shared port, its own connections and timers), so the data path needs no lock
//! between them. Two things tie them together:
//!
//! - **The connection ID names the shard.** A server ID is 4 random bytes and a 4-byte tag (see
//!   `reset.rs`); the shard draws random bytes until `u32(random) % count` is its own index.
//!   The ID is masked on the wire, so this shows nothing to an observer. When a client's packets
//!   reach another shard (it changed address, and the kernel hashes the new one elsewhere), that
//!   shard unmasks the ID, sees whose it is, and the caller passes the datagram on.
//! - **Admission is shared** ([`Common`]): the replay cache, the handshake budget, the
//!   connection caps and the count of live connections. A replayed Initial sent from another
//!   address lands on another shard and must still be refused; a cap means the whole server.

use thiserror::Error;

use super::Limits;
use crate::config::EndpointConfig;
use crate::handshake::ReplayCache;
use crate::packet::ConnectionId;
use crate::reset::CID_RANDOM_LEN;

/// Most shards one server may have (far more cores than any machine it runs on).
pub const MAX_SHARDS: usize = 256;

/// Why shards could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ShardError {
    /// Zero shards, or more than [`MAX_SHARDS`].
    #[error("{0} shards: between 1 and {MAX_SHARDS} are possible")]
    Count(usize),
}

/// Which shard an endpoint is, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardPos {
    pub(crate) index: usize,
    pub(crate) count: usize,
}

impl ShardPos {
    /// An endpoint on its own.
    pub(crate) const SOLE: Self = Self { index: 0, count: 1 };
}

/// What the shards of one server share, behind one mutex taken on handshakes and when
/// connections come and go (never per packet).
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) replay: ReplayCache,
    /// Handshake budget, connection caps and per-key accounting.
    pub(crate) limits: Limits,
    /// Live connections of every shard.
    pub(crate) live: usize,
}

impl Common {
    pub(crate) fn new(config: &EndpointConfig, unix_time: std::time::Duration) -> Self {
        let mut replay = ReplayCache::new(config.handshake_window);
        // Until persisted state is loaded, nothing is known about Initials accepted before this
        // start: refuse every one stamped earlier.
        replay.refuse_stamped_before(unix_time);
        Self {
            replay,
            limits: Limits::new(config.limits),
            live: 0,
        }
    }
}

/// The shard a (server-issued) connection ID names, of `count`.
pub(crate) fn shard_of(cid: &ConnectionId, count: usize) -> usize {
    let [a, b, c, d, ..] = cid.0;
    let value = u32::from_be_bytes([a, b, c, d]) as usize;
    value % count.max(1)
}

// The shard is read from the random part of the ID, never from its tag.
const _: () = assert!(CID_RANDOM_LEN >= 4);
