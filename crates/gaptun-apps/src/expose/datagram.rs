//! How a UDP expose carries one visitor's datagrams on the visitor's own stream, each as
//! `length u16 | payload` (the stream is per visitor, so no address is needed). This is the
//! fallback for a client connection without transport datagrams; otherwise the visitor's
//! datagrams ride a flow ([`crate::flow`]) and the stream only marks its lifetime.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest datagram a frame carries.
pub(crate) const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Appends one framed datagram to `out`; datagrams over [`MAX_DATAGRAM`] are dropped
/// (`false`), as a UDP path would drop them.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(len) = u16::try_from(payload.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    true
}

/// Writes one framed datagram.
pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + payload.len());
    if frame(payload, &mut out) {
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Reads one datagram into `buf`; `Ok(false)` at a clean end of stream between datagrams.
pub(crate) async fn recv<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 2];
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(false);
    }
    r.read_exact(&mut len[1..]).await?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    r.read_exact(buf).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_round_trip() {
        let mut wire = Vec::new();
        assert!(frame(b"one", &mut wire));
        assert!(frame(b"", &mut wire));
        assert!(!frame(&vec![0; MAX_DATAGRAM + 1], &mut wire));
        assert_eq!(wire, [0, 3, b'o', b'n', b'e', 0, 0]);
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert!(recv(&mut r, &mut buf).await.unwrap());
        assert_eq!(buf, b"one");
        assert!(recv(&mut r, &mut buf).await.unwrap());
        assert!(buf.is_empty());
        assert!(!recv(&mut r, &mut buf).await.unwrap());
        let mut cut = &[0u8, 5, 1][..];
        let err = recv(&mut cut, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
