//! The sending half: collects sealed packets into a group and computes its parity.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reed_solomon_simd::ReedSolomonEncoder;

use super::{MAX_GROUP_DATA, MAX_GROUP_PARITY, fill_shard, shard_len};
use crate::shared::PathAddr;

/// Parity shards waiting to be sent, at most: parity that cannot go out (amplification limit,
/// a path change) is useless soon, so the oldest is dropped rather than the queue growing.
const MAX_QUEUED: usize = 4 * MAX_GROUP_PARITY;

/// One parity shard ready to be sealed into a packet of its own.
#[derive(Debug)]
pub(crate) struct PendingParity {
    /// When it may go out (parity of one group is spread in time).
    pub(crate) due: Instant,
    pub(crate) data_pns: Vec<u64>,
    pub(crate) parity_count: u8,
    pub(crate) index: u8,
    pub(crate) shard: Vec<u8>,
    /// The path the group's data packets went out on: its parity goes there too.
    pub(crate) path: PathAddr,
}

/// Groups sealed packets and turns each closed group into parity shards.
#[derive(Default)]
pub(crate) struct FecSender {
    /// The open group: packet numbers and sealed datagrams, in sending order.
    group: Vec<(u64, Vec<u8>)>,
    /// The path the open group's packets went out on (a group never spans paths, see
    /// [`FecSender::group_path`]).
    path: Option<PathAddr>,
    /// Spare datagram buffers, reused for the next groups.
    spare: Vec<Vec<u8>>,
    queue: VecDeque<PendingParity>,
    encoder: Option<ReedSolomonEncoder>,
    /// Parity shards dropped because they could not be computed or sent in time.
    pub(crate) dropped: u64,
}

impl std::fmt::Debug for FecSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FecSender")
            .field("group", &self.group.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl FecSender {
    /// Data packets in the open group.
    pub(crate) fn open_len(&self) -> usize {
        self.group.len()
    }

    /// The path of the open group, if one is open. A client spreading over several paths
    /// keeps a group (and its parity) on one path: a packet the peer rebuilds is acknowledged
    /// like one it received, and that acknowledgement is credited to the path the packet was
    /// sent on. Were the rest of its group and the parity on other paths, a dead path would be
    /// credited with packets it never carried.
    pub(crate) fn group_path(&self) -> Option<PathAddr> {
        self.path
    }

    /// Adds a sealed packet, sent on `path`, to the open group. The caller closes the group at
    /// its size limit and when the path changes; a group never exceeds [`MAX_GROUP_DATA`] (a
    /// packet beyond it is not protected).
    pub(crate) fn add(&mut self, pn: u64, sealed: &[u8], path: PathAddr) {
        if self.group.len() >= MAX_GROUP_DATA {
            return;
        }
        self.path.get_or_insert(path);
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(sealed);
        self.group.push((pn, buf));
    }

    /// Closes the open group: computes `parity` shards over it and queues them, the first due
    /// at `now` and each next one `spacing` later, so that one burst of loss does not take the
    /// whole group. Nothing happens for an empty group.
    pub(crate) fn close(&mut self, now: Instant, parity: usize, spacing: Duration) {
        let Some(path) = self.path.take() else {
            return;
        };
        if self.group.is_empty() {
            return;
        }
        let parity = parity.clamp(1, MAX_GROUP_PARITY);
        let k = self.group.len();
        let max_len = self.group.iter().map(|(_, d)| d.len()).max().unwrap_or(0);
        let len = shard_len(max_len);
        let data_pns: Vec<u64> = self.group.iter().map(|(pn, _)| *pn).collect();
        let shards = self.encode(k, parity, len);
        for (_, buf) in self.group.drain(..) {
            self.spare.push(buf);
        }
        self.spare.truncate(MAX_GROUP_DATA);
        let Some(shards) = shards else {
            self.dropped += parity as u64;
            return;
        };
        for (i, shard) in shards.into_iter().enumerate() {
            if self.queue.len() >= MAX_QUEUED {
                self.queue.pop_front();
                self.dropped += 1;
            }
            self.queue.push_back(PendingParity {
                due: now + spacing * i as u32,
                data_pns: data_pns.clone(),
                parity_count: parity as u8,
                index: i as u8,
                shard,
                path,
            });
        }
    }

    /// Reed–Solomon parity of the open group; `None` if the library refuses the shape.
    fn encode(&mut self, k: usize, parity: usize, len: usize) -> Option<Vec<Vec<u8>>> {
        let encoder = match self.encoder.as_mut() {
            Some(e) => {
                e.reset(k, parity, len).ok()?;
                e
            }
            None => self
                .encoder
                .insert(ReedSolomonEncoder::new(k, parity, len).ok()?),
        };
        let mut shard = Vec::with_capacity(len);
        for (_, datagram) in &self.group {
            fill_shard(datagram, len, &mut shard);
            encoder.add_original_shard(&shard).ok()?;
        }
        let result = encoder.encode().ok()?;
        Some(result.recovery_iter().map(<[u8]>::to_vec).collect())
    }

    /// When the next queued parity shard is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.iter().map(|p| p.due).min()
    }

    /// A parity shard due by `now`, earliest first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<PendingParity> {
        let (i, _) = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, p)| p.due <= now)
            .min_by_key(|(_, p)| p.due)?;
        self.queue.remove(i)
    }

    /// Puts back a shard that could not be sent yet (no budget), to be tried first next time.
    pub(crate) fn push_back_front(&mut self, parity: PendingParity) {
        self.queue.push_front(parity);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::shared::CarrierId;

    fn path(port: u16) -> PathAddr {
        PathAddr::new(CarrierId(0), SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_group_becomes_spread_parity() {
        let now = Instant::now();
        let mut s = FecSender::default();
        s.add(7, &[1; 40], path(1));
        s.add(8, &[2; 41], path(1));
        s.add(10, &[3; 30], path(1));
        assert_eq!(s.open_len(), 3);
        s.close(now, 2, Duration::from_millis(5));
        assert_eq!(s.open_len(), 0);
        assert_eq!(s.next_due(), Some(now));
        let first = s.pop_due(now).expect("first parity due at once");
        assert_eq!(first.data_pns, vec![7, 8, 10]);
        assert_eq!(first.path, path(1), "parity goes where its group went");
        assert_eq!((first.parity_count, first.index), (2, 0));
        assert_eq!(first.shard.len(), shard_len(41));
        assert!(s.pop_due(now).is_none(), "the second waits");
        assert_eq!(s.next_due(), Some(now + Duration::from_millis(5)));
        let second = s.pop_due(now + Duration::from_millis(5)).expect("second");
        assert_eq!(second.index, 1);
        assert_ne!(first.shard, second.shard);
        assert!(s.next_due().is_none());
    }

    #[test]
    fn a_single_packet_group_is_protected_too() {
        let now = Instant::now();
        let mut s = FecSender::default();
        s.add(1, &[9; 33], path(1));
        s.close(now, 3, Duration::ZERO);
        let shards: Vec<_> = std::iter::from_fn(|| s.pop_due(now)).collect();
        assert_eq!(shards.len(), 3);
        assert_eq!(s.dropped, 0);
    }

    #[test]
    fn groups_stop_at_their_limit() {
        let mut s = FecSender::default();
        for pn in 0..(MAX_GROUP_DATA as u64 + 5) {
            s.add(pn, &[0; 30], path(1));
        }
        assert_eq!(s.open_len(), MAX_GROUP_DATA);
    }

    #[test]
    fn a_group_keeps_the_path_of_its_first_packet_until_closed() {
        let now = Instant::now();
        let mut s = FecSender::default();
        assert_eq!(s.group_path(), None);
        s.add(1, &[1; 30], path(2));
        assert_eq!(s.group_path(), Some(path(2)));
        s.close(now, 1, Duration::ZERO);
        assert_eq!(s.group_path(), None, "closed: no path until the next group");
        s.add(2, &[2; 30], path(3));
        s.close(now, 1, Duration::ZERO);
        let paths: Vec<PathAddr> = std::iter::from_fn(|| s.pop_due(now))
            .map(|p| p.path)
            .collect();
        assert_eq!(paths, [path(2), path(3)]);
    }
}
