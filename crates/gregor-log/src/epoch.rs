//! The leader-epoch cache of a partition log, like Kafka's `leader-epoch-checkpoint`:
//! for each leader epoch that wrote to the log, the offset of its first batch.
//!
//! Replication rests on it (KIP-101/279): a follower asks its leader
//! (OffsetForLeaderEpoch) where the follower's latest epoch ended in the leader's log
//! ([`LeaderEpochCache::end_offset_for`]) and truncates its own log there before fetching,
//! so the logs of a partition never diverge below the high watermark.
//!
//! Entries are kept with strictly increasing epochs and strictly increasing start offsets.
//! The file (`leader-epoch-checkpoint` in the partition directory) is Kafka's text format:
//!
//! ```text
//! 0              version
//! 2              number of entries
//! 0 0            "epoch startOffset", one line per entry, in order
//! 3 1200
//! ```
//!
//! It is replaced atomically ([`gregor_os::fs::replace_file`]). The owning
//! [`PartitionLog`](crate::PartitionLog) keeps it consistent with the log: see
//! `partition/epochs.rs`.

/// Kafka's `UNDEFINED_EPOCH`.
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's `UNDEFINED_EPOCH_OFFSET`.
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
/// Name of the checkpoint file in the partition directory.
pub const FILE_NAME: &str = "leader-epoch-checkpoint";
/// The only format version.
const VERSION: u32 = 0;

/// One leader epoch and the offset of its first batch in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The partition leader epoch.
    pub epoch: i32,
    /// Offset of the first batch written in this epoch.
    pub start_offset: i64,
}

/// Why [`LeaderEpochCache::assign`] refused an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leader epoch {epoch} at offset {start_offset} is older than the latest epoch {latest}")]
pub struct StaleEpoch {
    /// The epoch refused.
    pub epoch: i32,
    /// Its start offset.
    pub start_offset: i64,
    /// The latest epoch in the cache (or `UNDEFINED_EPOCH` for a negative `epoch`).
    pub latest: i32,
}

/// The leader epochs of one log, oldest first. Pure: no files (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest entry, if any.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the cache changed.
    ///
    /// Monotonic: an epoch lower than the latest one (or negative, or a negative offset)
    /// is refused; the latest epoch again keeps its first start offset (no change). A new
    /// epoch starting at or below the latest entry's start offset replaces the entries
    /// starting there or later (an epoch in which nothing was written, e.g. a leader that
    /// lost leadership before its first append).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<bool, StaleEpoch> {
        let latest = self.latest();
        let refused = StaleEpoch {
            epoch,
            start_offset,
            latest: latest.map_or(UNDEFINED_EPOCH, |e| e.epoch),
        };
        if epoch < 0 || start_offset < 0 {
            return Err(refused);
        }
        match latest {
            Some(l) if epoch < l.epoch => Err(refused),
            Some(l) if epoch == l.epoch => Ok(false),
            _ => {
                let keep = self
                    .entries
                    .partition_point(|e| e.start_offset < start_offset);
                if keep + 1 < self.entries.len() {
                    tracing::warn!(epoch, start_offset, removed = ?&self.entries[keep..],
                        "new leader epoch starts below earlier epochs; removing them");
                }
                self.entries.truncate(keep);
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset,
                });
                Ok(true)
            }
        }
    }

    /// OffsetForLeaderEpoch, as Kafka answers it (`LeaderEpochFileCache.endOffsetFor`):
    /// for the latest epoch, `(epoch, log_end_offset)`; for an older epoch, the largest
    /// known epoch `<=` it and the start offset of the first epoch above it; for an epoch
    /// below every known one, `(epoch, start offset of the first entry)` (the log start
    /// moved past it: the follower truncates to there); `UNDEFINED` (`(-1, -1)`) for
    /// `UNDEFINED_EPOCH`, an epoch above the latest one, or an empty cache.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if epoch == UNDEFINED_EPOCH {
            return UNDEFINED;
        }
        if self.latest().is_some_and(|l| l.epoch == epoch) {
            return (epoch, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let Some(next) = self.entries.get(higher) else {
            return UNDEFINED;
        };
        match higher.checked_sub(1).map(|i| self.entries[i]) {
            None => (epoch, next.start_offset),
            Some(floor) => (floor.epoch, next.start_offset),
        }
    }

    /// Removes the entries starting at or after `end_offset` (the log was truncated there,
    /// or lost its tail). Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log start offset moved to `start_offset`: entries starting at or before it are
    /// replaced by the last of them, starting at `start_offset` (Kafka's
    /// `truncateFromStart`). Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let n = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if n == 0 || (n == 1 && self.entries[0].start_offset == start_offset) {
            return false;
        }
        let epoch = self.entries[n - 1].epoch;
        self.entries.drain(..n);
        self.entries.insert(
            0,
            EpochEntry {
                epoch,
                start_offset,
            },
        );
        true
    }

    /// The checkpoint file's text (see the module docs).
    pub fn encode(&self) -> String {
        let mut s = format!("{VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s
    }

    /// Parses the checkpoint file's text; `None` unless it is exactly a valid one (version
    /// 0, the count matching the lines, epochs and start offsets non-negative and strictly
    /// increasing).
    pub fn parse(text: &str) -> Option<LeaderEpochCache> {
        let mut lines = text.lines();
        if lines.next()?.trim().parse::<u32>().ok()? != VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries: Vec<EpochEntry> = Vec::new();
        for line in lines.by_ref().take(count) {
            let mut parts = line.split_whitespace();
            let epoch: i32 = parts.next()?.parse().ok()?;
            let start_offset: i64 = parts.next()?.parse().ok()?;
            if parts.next().is_some() || epoch < 0 || start_offset < 0 {
                return None;
            }
            if entries
                .last()
                .is_some_and(|l| l.epoch >= epoch || l.start_offset >= start_offset)
            {
                return None;
            }
            entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        if entries.len() != count || lines.any(|l| !l.trim().is_empty()) {
            return None;
        }
        Some(LeaderEpochCache { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for (e, o) in entries {
            assert!(c.assign(*e, *o).unwrap());
        }
        c
    }

    fn pairs(c: &LeaderEpochCache) -> Vec<(i32, i64)> {
        c.entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_is_monotonic() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert_eq!(
            c.assign(3, 15),
            Ok(false),
            "same epoch keeps its first start"
        );
        let err = c.assign(2, 20).unwrap_err();
        assert_eq!((err.epoch, err.latest), (2, 3));
        assert!(c.assign(-1, 20).is_err());
        assert!(c.assign(4, -5).is_err());
        assert_eq!(pairs(&c), [(1, 0), (3, 10)]);
        // An epoch that wrote nothing is replaced by the next one at the same offset.
        assert_eq!(c.assign(4, 10), Ok(true));
        assert_eq!(pairs(&c), [(1, 0), (4, 10)]);
        // A new epoch below earlier starts removes them.
        assert_eq!(c.assign(6, 5), Ok(true));
        assert_eq!(pairs(&c), [(1, 0), (6, 5)]);
    }

    #[test]
    fn end_offset_for_answers_as_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 25)]);
        let leo = 40;
        assert_eq!(c.end_offset_for(5, leo), (5, 40), "latest: the log end");
        assert_eq!(c.end_offset_for(3, leo), (3, 25));
        assert_eq!(
            c.end_offset_for(4, leo),
            (3, 25),
            "largest epoch <= 4, next start"
        );
        assert_eq!(c.end_offset_for(2, leo), (1, 10));
        assert_eq!(c.end_offset_for(1, leo), (1, 10));
        assert_eq!(
            c.end_offset_for(0, leo),
            (0, 0),
            "below the first: its start"
        );
        assert_eq!(c.end_offset_for(6, leo), (-1, -1), "above the latest");
        assert_eq!(c.end_offset_for(UNDEFINED_EPOCH, leo), (-1, -1));
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, leo), (-1, -1));
        let moved = cache(&[(3, 100), (5, 120)]);
        assert_eq!(moved.end_offset_for(1, 130), (1, 100));
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (5, 25)]);
        assert!(!c.truncate_from_end(26));
        assert!(c.truncate_from_end(25));
        assert_eq!(pairs(&c), [(1, 0), (3, 10)]);
        assert!(!c.truncate_from_start(0));
        assert!(c.truncate_from_start(12));
        assert_eq!(pairs(&c), [(3, 12)]);
        assert!(!c.truncate_from_start(12));
        let mut c = cache(&[(1, 0), (3, 10), (5, 25)]);
        assert!(c.truncate_from_start(10));
        assert_eq!(pairs(&c), [(3, 10), (5, 25)]);
        assert!(c.truncate_from_start(5000));
        assert_eq!(pairs(&c), [(5, 5000)]);
        assert!(c.truncate_from_end(0));
        assert!(c.entries().is_empty());
    }

    /// The cache of a log whose batches (one offset each) carry `epochs`.
    fn of_batches(epochs: &[i32]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for (offset, e) in epochs.iter().enumerate() {
            let _ = c.assign(*e, offset as i64);
        }
        c
    }

    proptest::proptest! {
        /// For a log whose batch epochs never decrease: every known epoch's end offset is
        /// the first offset of a higher epoch (the log end for the latest), the file round
        /// trips, and truncating the cache from the end at `cut` gives the cache of the
        /// log's first `cut` batches.
        #[test]
        fn the_cache_describes_the_log(
            steps in proptest::collection::vec((0i32..3, 1usize..5), 1..30),
            cut in 0usize..100,
        ) {
            let mut epochs = Vec::new();
            let mut epoch = 0;
            for (bump, n) in steps {
                epoch += bump;
                epochs.extend(std::iter::repeat_n(epoch, n));
            }
            let c = of_batches(&epochs);
            let leo = epochs.len() as i64;
            for w in c.entries().windows(2) {
                proptest::prop_assert!(w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
            }
            for e in 0..=epoch + 1 {
                let first_above = epochs.iter().position(|x| *x > e).map(|p| p as i64);
                let got = c.end_offset_for(e, leo);
                if e > epoch {
                    proptest::prop_assert_eq!(got, (-1, -1));
                } else if e == epoch {
                    proptest::prop_assert_eq!(got, (e, leo));
                } else {
                    let floor = epochs.iter().copied().filter(|x| *x <= e).max();
                    let first_above = first_above.unwrap();
                    proptest::prop_assert_eq!(got, (floor.unwrap_or(e), first_above));
                }
            }
            proptest::prop_assert_eq!(LeaderEpochCache::parse(&c.encode()), Some(c.clone()));
            let cut = cut.min(epochs.len());
            let mut t = c.clone();
            t.truncate_from_end(cut as i64);
            proptest::prop_assert_eq!(t, of_batches(&epochs[..cut]));
        }
    }

    #[test]
    fn file_format_round_trip_and_damage() {
        let c = cache(&[(0, 0), (3, 1200)]);
        let text = c.encode();
        assert_eq!(text, "0\n2\n0 0\n3 1200\n");
        assert_eq!(LeaderEpochCache::parse(&text), Some(c));
        assert_eq!(
            LeaderEpochCache::parse("0\n0\n"),
            Some(LeaderEpochCache::default())
        );
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 0\n3 4\n",
            "0\n1\n0\n",
            "0\n1\n0 0 0\n",
            "0\n2\n3 0\n1 5\n",
            "0\n2\n1 5\n3 5\n",
            "0\n1\n-1 0\n",
            "0\n1\nx 0\n",
            "0\n99999999999999999999\n",
        ] {
            assert_eq!(LeaderEpochCache::parse(bad), None, "{bad:?}");
        }
    }
}
