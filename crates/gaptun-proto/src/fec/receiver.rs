//! The receiving half: remembers the last sealed datagrams and rebuilds lost ones from parity.

use std::collections::VecDeque;

use reed_solomon_simd::ReedSolomonDecoder;

use super::{ParityFrame, fill_shard, shard_datagram};
use crate::packet::MIN_PACKET_LEN;

/// Sealed datagrams remembered, by packet number modulo this: enough for the largest group
/// ([`super::MAX_GROUP_DATA`]) with the packets interleaved with it (ACKs, parity).
const RING: usize = 64;
/// Groups whose parity is being collected at once.
const MAX_GROUPS: usize = 16;

/// A group some of whose parity has arrived.
#[derive(Debug)]
struct Group {
    data_pns: Vec<u64>,
    parity_count: u8,
    shard_len: usize,
    parity: Vec<(u8, Vec<u8>)>,
    /// Rebuilt, or found complete: later parity of it is ignored.
    done: bool,
}

/// Recent sealed datagrams and the groups being rebuilt.
#[derive(Default)]
pub(crate) struct FecReceiver {
    /// `(packet number, sealed datagram)` by packet number modulo [`RING`]; grown on first use,
    /// so an idle connection holds only what it received.
    ring: Vec<(u64, Vec<u8>)>,
    /// The datagram being opened, before its packet number is known.
    scratch: Vec<u8>,
    groups: VecDeque<Group>,
    rebuilt: Vec<Vec<u8>>,
    decoder: Option<ReedSolomonDecoder>,
}

impl std::fmt::Debug for FecReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FecReceiver")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl FecReceiver {
    /// Keeps a copy of a datagram about to be opened in place (opening destroys the sealed form
    /// that parity covers).
    pub(crate) fn stash(&mut self, datagram: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
    }

    /// The stashed datagram authenticated as packet `pn`: remember it.
    pub(crate) fn commit(&mut self, pn: u64) {
        let slot = (pn % RING as u64) as usize;
        while self.ring.len() <= slot {
            self.ring.push((u64::MAX, Vec::new()));
        }
        let entry = &mut self.ring[slot];
        entry.0 = pn;
        std::mem::swap(&mut entry.1, &mut self.scratch);
    }

    /// The remembered sealed datagram of packet `pn`.
    fn get(&self, pn: u64) -> Option<&[u8]> {
        let (stored, data) = self.ring.get((pn % RING as u64) as usize)?;
        (*stored == pn).then_some(data.as_slice())
    }

    /// A parity shard arrived. Rebuilds what it can; the rebuilt sealed datagrams are then
    /// taken with [`FecReceiver::take_rebuilt`] and must be opened like received ones (a
    /// wrong shard rebuilds garbage, which the AEAD rejects).
    pub(crate) fn on_parity(&mut self, frame: &ParityFrame<'_>) {
        let shard_len = frame.shard.len();
        let same = |g: &Group| {
            g.data_pns == frame.data_pns
                && g.parity_count == frame.parity_count
                && g.shard_len == shard_len
        };
        let index = match self.groups.iter().position(same) {
            Some(i) => i,
            None => {
                if self.groups.len() >= MAX_GROUPS {
                    self.groups.pop_front();
                }
                self.groups.push_back(Group {
                    data_pns: frame.data_pns.clone(),
                    parity_count: frame.parity_count,
                    shard_len,
                    parity: Vec::new(),
                    done: false,
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[index];
        if group.done || group.parity.iter().any(|(i, _)| *i == frame.parity_index) {
            return;
        }
        group
            .parity
            .push((frame.parity_index, frame.shard.to_vec()));
        let group = &self.groups[index];
        let missing: Vec<usize> = (0..group.data_pns.len())
            .filter(|&i| self.get(group.data_pns[i]).is_none())
            .collect();
        if !missing.is_empty() && group.parity.len() < missing.len() {
            return;
        }
        if !missing.is_empty() {
            self.rebuild(index, &missing);
        }
        let group = &mut self.groups[index];
        group.done = true;
        group.parity = Vec::new();
    }

    /// Decodes group `index`, whose data packets `missing` were not received.
    fn rebuild(&mut self, index: usize, missing: &[usize]) {
        let group = &self.groups[index];
        let (k, p, len) = (
            group.data_pns.len(),
            usize::from(group.parity_count),
            group.shard_len,
        );
        let decoder = match self.decoder.as_mut() {
            Some(d) => match d.reset(k, p, len) {
                Ok(()) => d,
                Err(_) => return,
            },
            None => match ReedSolomonDecoder::new(k, p, len) {
                Ok(d) => self.decoder.insert(d),
                Err(_) => return,
            },
        };
        let mut shard = Vec::with_capacity(len);
        for (i, pn) in group.data_pns.iter().enumerate() {
            let Some((stored, data)) = self.ring.get((pn % RING as u64) as usize) else {
                continue;
            };
            if stored != pn {
                continue;
            }
            // A datagram longer than the group's shards: the parity is not about these packets.
            if data.len() + 2 > len {
                return;
            }
            fill_shard(data, len, &mut shard);
            if decoder.add_original_shard(i, &shard).is_err() {
                return;
            }
        }
        for (i, parity) in &group.parity {
            if decoder.add_recovery_shard(usize::from(*i), parity).is_err() {
                return;
            }
        }
        let Ok(result) = decoder.decode() else {
            return;
        };
        for &i in missing {
            if let Some(datagram) = result.restored_original(i).and_then(shard_datagram)
                && datagram.len() >= MIN_PACKET_LEN
            {
                self.rebuilt.push(datagram.to_vec());
            }
        }
    }

    /// A rebuilt sealed datagram, to be opened.
    pub(crate) fn take_rebuilt(&mut self) -> Option<Vec<u8>> {
        self.rebuilt.pop()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::FecSender;
    use super::*;

    /// Sends `datagrams` (numbered from 100) through a sender with `parity` shards; the
    /// receiver gets the data packets `received` and all parity. Returns what it rebuilt.
    fn run(datagrams: &[Vec<u8>], parity: usize, received: &[usize]) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let mut tx = FecSender::default();
        for (i, d) in datagrams.iter().enumerate() {
            tx.add(
                100 + i as u64,
                d,
                crate::shared::PathAddr::single(([127, 0, 0, 1], 1).into()),
            );
        }
        tx.close(now, parity, Duration::ZERO);
        let mut rx = FecReceiver::default();
        for &i in received {
            rx.stash(&datagrams[i]);
            rx.commit(100 + i as u64);
        }
        while let Some(p) = tx.pop_due(now) {
            let frame = ParityFrame {
                data_pns: p.data_pns.clone(),
                parity_count: p.parity_count,
                parity_index: p.index,
                shard: &p.shard,
            };
            rx.on_parity(&frame);
        }
        let mut out: Vec<Vec<u8>> = std::iter::from_fn(|| rx.take_rebuilt()).collect();
        out.sort();
        out
    }

    fn datagrams(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| (0..(40 + i * 7)).map(|b| (b * 31 + i) as u8).collect())
            .collect()
    }

    #[test]
    fn rebuilds_up_to_parity_count_losses() {
        let d = datagrams(5);
        assert_eq!(run(&d, 2, &[0, 2, 4]), vec![d[1].clone(), d[3].clone()]);
        assert_eq!(run(&d, 2, &[0, 1, 2, 3, 4]), Vec::<Vec<u8>>::new());
        // Three losses, two parity shards: nothing can be rebuilt.
        assert_eq!(run(&d, 2, &[0, 4]), Vec::<Vec<u8>>::new());
        let one = datagrams(1);
        assert_eq!(run(&one, 3, &[]), one);
    }

    #[test]
    fn a_corrupt_shard_rebuilds_garbage_not_a_crash() {
        let d = datagrams(3);
        let mut rx = FecReceiver::default();
        rx.stash(&d[0]);
        rx.commit(0);
        let shard = vec![0xab; 80];
        rx.on_parity(&ParityFrame {
            data_pns: vec![0, 1, 2],
            parity_count: 2,
            parity_index: 0,
            shard: &shard,
        });
        assert!(rx.take_rebuilt().is_none(), "one shard for two losses");
        rx.on_parity(&ParityFrame {
            data_pns: vec![0, 1, 2],
            parity_count: 2,
            parity_index: 1,
            shard: &shard,
        });
        // Whatever comes out is not one of the real datagrams.
        while let Some(r) = rx.take_rebuilt() {
            assert!(!d.contains(&r));
        }
    }
}
