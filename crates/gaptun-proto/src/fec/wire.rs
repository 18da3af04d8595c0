//! The FEC_PARITY frame: one parity shard of a group, and which packets the group covers.
//!
//! ```text
//! type (varint 0x20) | first_pn (varint) | data_count (varint) | (data_count - 1) gaps (varint)
//!   | parity_count (varint) | parity_index (varint) | shard_len (varint) | shard (shard_len)
//! ```
//! The group's data packets are `first_pn`, then each next one `gap + 1` numbers above the one
//! before (consecutive packets: gap 0).

use crate::frame::{FrameError, kind};
use crate::varint;

use super::{MAX_GROUP_DATA, MAX_GROUP_PARITY};

/// One parity shard and the group it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityFrame<'a> {
    /// Packet numbers of the group's data packets, ascending; shard `i` is packet `data_pns[i]`.
    pub data_pns: Vec<u64>,
    /// Parity shards in the group.
    pub parity_count: u8,
    /// Which of them this is.
    pub parity_index: u8,
    /// The parity shard (even length, the length of every shard of the group).
    pub shard: &'a [u8],
}

impl ParityFrame<'_> {
    /// Appends the frame. `data_pns` must be ascending and non-empty (the sender's groups are).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let Some(&first) = self.data_pns.first() else {
            return;
        };
        varint::write(kind::FEC_PARITY, buf);
        varint::write(first, buf);
        varint::write(self.data_pns.len() as u64, buf);
        for pair in self.data_pns.windows(2) {
            varint::write(pair[1].saturating_sub(pair[0]).saturating_sub(1), buf);
        }
        varint::write(u64::from(self.parity_count), buf);
        varint::write(u64::from(self.parity_index), buf);
        varint::write(self.shard.len() as u64, buf);
        buf.extend_from_slice(self.shard);
    }

    /// Decodes the fields after the type from `rest`, advancing it.
    pub(crate) fn decode<'a>(rest: &mut &'a [u8]) -> Result<ParityFrame<'a>, FrameError> {
        let mut v = || varint::read(rest).map_err(|_| FrameError::UnexpectedEnd);
        let first = v()?;
        let count = v()?;
        if count == 0 || count > MAX_GROUP_DATA as u64 {
            return Err(FrameError::Malformed("FEC group data count out of range"));
        }
        let mut data_pns = Vec::with_capacity(count as usize);
        data_pns.push(first);
        let mut pn = first;
        for _ in 1..count {
            let gap = v()?;
            pn = pn
                .checked_add(gap)
                .and_then(|p| p.checked_add(1))
                .filter(|&p| p < 1 << 62)
                .ok_or(FrameError::Malformed("FEC group packet number too large"))?;
            data_pns.push(pn);
        }
        let parity_count = v()?;
        let parity_index = v()?;
        let len = v()?;
        if parity_count == 0 || parity_count > MAX_GROUP_PARITY as u64 {
            return Err(FrameError::Malformed("FEC parity count out of range"));
        }
        if parity_index >= parity_count {
            return Err(FrameError::Malformed("FEC parity index out of range"));
        }
        if len < 2 || len % 2 != 0 {
            return Err(FrameError::Malformed("FEC shard length must be even"));
        }
        let len = usize::try_from(len).map_err(|_| FrameError::UnexpectedEnd)?;
        if len > rest.len() {
            return Err(FrameError::UnexpectedEnd);
        }
        let (shard, tail) = rest.split_at(len);
        *rest = tail;
        Ok(ParityFrame {
            data_pns,
            parity_count: parity_count as u8,
            parity_index: parity_index as u8,
            shard,
        })
    }
}
