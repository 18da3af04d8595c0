//! The token a gaptun client sends first on a TLS connection or QUIC stream.
//!
//! `session id (16 random bytes) || HMAC-SHA256(key, LABEL || session id)[..16]`, with the
//! client's gaptun key as the HMAC key. The server checks it against every key it knows: a match
//! proves a gaptun client (a prober without a key cannot make one), and the session id groups a
//! client's several TCP connections into one peer for the core. The token travels inside TLS or
//! QUIC, so a passive observer never sees it; an active man in the middle that terminates TLS
//! could replay it, but learns nothing it could not learn by intercepting the client itself.

use ring::hmac;

use gaptun_runtime::proto::Psk;

/// Bytes of a token.
pub const TOKEN_LEN: usize = 32;

/// Bytes of a session id.
pub(crate) const SESSION_LEN: usize = 16;

/// Domain separation: these MACs are used for nothing else.
const LABEL: &[u8] = b"gaptun carrier token v1";

/// A client session id.
pub(crate) type SessionId = [u8; SESSION_LEN];

/// The gaptun keys a server accepts (or the one a client uses), as token keys.
#[derive(Clone)]
pub struct Keys(Vec<hmac::Key>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.0.len())
    }
}

impl Keys {
    /// Token keys for these gaptun keys.
    pub fn new(psks: &[Psk]) -> Self {
        Self(
            psks.iter()
                .map(|p| hmac::Key::new(hmac::HMAC_SHA256, p.as_bytes()))
                .collect(),
        )
    }

    /// A client's token for `session` (with its first key).
    pub(crate) fn token(&self, session: &SessionId) -> Option<[u8; TOKEN_LEN]> {
        let key = self.0.first()?;
        let mut out = [0u8; TOKEN_LEN];
        out[..SESSION_LEN].copy_from_slice(session);
        out[SESSION_LEN..].copy_from_slice(&tag(key, session));
        Some(out)
    }

    /// The session id of a valid token, `None` for anything else (in constant time per key).
    pub(crate) fn verify(&self, token: &[u8]) -> Option<SessionId> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let (session, mac) = token.split_at(SESSION_LEN);
        let session: SessionId = session.try_into().ok()?;
        self.0
            .iter()
            .any(|key| same(&tag(key, &session), mac))
            .then_some(session)
    }
}

fn tag(key: &hmac::Key, session: &SessionId) -> [u8; 16] {
    let mut msg = Vec::with_capacity(LABEL.len() + SESSION_LEN);
    msg.extend_from_slice(LABEL);
    msg.extend_from_slice(session);
    let full = hmac::sign(key, &msg);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_ref()[..16]);
    out
}

/// Compares without an early exit, so that timing tells nothing about how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random session id.
pub(crate) fn new_session() -> SessionId {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_only_with_the_same_key() {
        let a = Keys::new(&[Psk::from_bytes([1; 32])]);
        let b = Keys::new(&[Psk::from_bytes([2; 32])]);
        let both = Keys::new(&[Psk::from_bytes([2; 32]), Psk::from_bytes([1; 32])]);
        let session = [7u8; SESSION_LEN];
        let token = a.token(&session).expect("a key");
        assert_eq!(a.verify(&token), Some(session));
        assert_eq!(both.verify(&token), Some(session));
        assert_eq!(b.verify(&token), None);
        let mut bad = token;
        bad[31] ^= 1;
        assert_eq!(a.verify(&bad), None);
        assert_eq!(a.verify(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"), None);
    }
}
