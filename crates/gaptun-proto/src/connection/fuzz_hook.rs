//! Fuzzing hook (feature `fuzzing` only): seals arbitrary frame bytes with a live connection's
//! keys, so that a harness holding one end of a connection can speak to the other end as a
//! peer that knows the key. Without it no fuzz input gets past packet authentication.

use super::Connection;
use crate::packet;

impl Connection {
    /// Seals `payload` (frame bytes, not checked) as this connection's next packet into `buf`,
    /// ready to be handed to the peer's endpoint. The packet number is taken from the
    /// connection's own sequence, so the peer's replay window accepts it; the connection does
    /// not remember the packet (an ACK of it is ignored). Returns `false`, leaving `buf` empty,
    /// while the connection has no keys.
    pub fn fuzz_seal(&mut self, payload: &[u8], buf: &mut Vec<u8>) -> bool {
        buf.clear();
        let Some(keys) = self.keys.as_mut() else {
            return false;
        };
        let start = packet::begin(buf);
        buf.extend_from_slice(payload);
        let pn = self.next_pn;
        packet::seal(&self.header_key, keys, self.peer_cid, pn, buf, start);
        self.next_pn = pn + 1;
        true
    }
}
