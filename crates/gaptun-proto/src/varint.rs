//! Variable-length integers, as in QUIC (RFC 9000 §16): the top two bits of the first byte give
//! the length (1, 2, 4 or 8 bytes), so values up to 2^62 - 1 fit.

use thiserror::Error;

/// The largest value a varint can hold.
pub const MAX: u64 = (1 << 62) - 1;

/// The input ended in the middle of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("input ended inside a variable-length integer")]
pub struct UnexpectedEnd;

/// Bytes needed to encode `v` (values above [`MAX`] are clamped by [`write`]).
pub fn size(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` to `buf`. Values above [`MAX`] are clamped to it: callers only ever encode counts
/// and offsets that are far below, and clamping keeps this function total.
pub fn write(v: u64, buf: &mut Vec<u8>) {
    let v = v.min(MAX);
    match size(v) {
        1 => buf.push(v as u8),
        2 => buf.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => buf.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => buf.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads one varint from the front of `input` and advances it.
pub fn read(input: &mut &[u8]) -> Result<u64, UnexpectedEnd> {
    let first = *input.first().ok_or(UnexpectedEnd)?;
    let len = 1usize << (first >> 6);
    if input.len() < len {
        return Err(UnexpectedEnd);
    }
    let mut v = u64::from(first & 0x3f);
    for b in &input[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    *input = &input[len..];
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length_boundary() {
        for v in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut buf = Vec::new();
            write(v, &mut buf);
            assert_eq!(buf.len(), size(v));
            let mut input = &buf[..];
            assert_eq!(read(&mut input), Ok(v));
            assert!(input.is_empty());
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut buf = Vec::new();
        write(1 << 40, &mut buf);
        let mut input = &buf[..5];
        assert_eq!(read(&mut input), Err(UnexpectedEnd));
        let mut empty: &[u8] = &[];
        assert_eq!(read(&mut empty), Err(UnexpectedEnd));
    }
}
