//! Idempotent-producer state of one partition: which producer IDs wrote to it, at which
//! epoch, and the sequence numbers of their last batches.
//!
//! Sans-I/O: the broker feeds it batch headers (before appending, to decide; after appending,
//! to record) and rebuilds it after a restart from a snapshot (the serde form of
//! [`ProducerStateTable`], without the aborted index) plus a replay of the batch headers
//! after it; the aborted index is restored from the broker's per-segment files.
//!
//! Rules, as Kafka applies them per partition (`ProducerStateManager`):
//! - a batch from an epoch older than the producer's current one is fenced
//!   (`INVALID_PRODUCER_EPOCH`);
//! - within an epoch, a batch must start at the sequence after the last one written
//!   (sequences wrap from `i32::MAX` to 0), otherwise `OUT_OF_ORDER_SEQUENCE_NUMBER`;
//! - a batch equal to one of the producer's last [`RETAINED_BATCHES`] batches is a
//!   duplicate (a retry whose first attempt was written but not acknowledged): it is not
//!   written again and is answered with the original offsets;
//! - a new epoch (or a producer the partition has never seen) starts at sequence 0; a
//!   producer with no state here (its records were deleted, or its state expired) is
//!   accepted at any sequence, as Kafka does since KIP-360 (2.5): the producer continues
//!   where it was and is not told anything (before KIP-360 Kafka answered
//!   UNKNOWN_PRODUCER_ID; Kafka's transactions v2 refuses a non-zero sequence only for a
//!   *verified transactional* write, which this broker does not advertise);
//! - a producer's state expires ([`ProducerStateTable::expire`]) once the timestamp of its
//!   last batch or marker here is `producer.id.expiration.ms` old, unless it has an open
//!   transaction here (Kafka's `ProducerStateManager.removeExpiredProducers`). The
//!   timestamp is the batch header's `maxTimestamp` (Kafka's `lastTimestamp`), so the
//!   replay of a stored batch derives exactly what its append recorded.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence is 5).
pub const RETAINED_BATCHES: usize = 5;

/// One batch as far as producer state is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
}

impl ProducerBatch {
    /// From a batch header's fields; `last_offset_delta` gives the sequence span.
    pub fn new(producer_id: i64, epoch: i16, base_sequence: i32, last_offset_delta: i32) -> Self {
        ProducerBatch {
            producer_id,
            epoch,
            first_sequence: base_sequence,
            last_sequence: increment_sequence(base_sequence, last_offset_delta),
        }
    }
}

/// Where a written batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Append,
    /// Already written: answer with these offsets and write nothing.
    Duplicate { first_offset: i64, last_offset: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A transaction marker from a coordinator older than the one that wrote this
    /// producer's last marker here (a zombie coordinator: Kafka's
    /// TRANSACTION_COORDINATOR_FENCED).
    #[error("producer {producer_id}: marker of coordinator epoch {coordinator_epoch}, but epoch {current} wrote the last one")]
    CoordinatorFenced {
        producer_id: i64,
        coordinator_epoch: i32,
        current: i32,
    },
    #[error("producer {producer_id}: sequence {got}, expected {expected}")]
    OutOfOrder {
        producer_id: i64,
        got: i32,
        expected: i32,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<WrittenBatch>,
    /// `maxTimestamp` of the producer's last batch or marker here (Kafka's
    /// `lastTimestamp`). `None` only in entries of snapshots written before it was kept
    /// (serde default); [`ProducerStateTable::fill_missing_timestamps`] sets those on load.
    #[serde(default)]
    last_timestamp: Option<i64>,
    /// The coordinator epoch of the producer's last marker here (-1: none yet, or a
    /// snapshot written before it was kept). Markers of an older coordinator are fenced.
    #[serde(default = "no_coordinator_epoch")]
    coordinator_epoch: i32,
}

fn no_coordinator_epoch() -> i32 {
    -1
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp: None,
            coordinator_epoch: no_coordinator_epoch(),
        }
    }
}

/// One producer's state in a partition, as DescribeProducers reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    /// Last sequence written at the current epoch (-1: none since the epoch began).
    pub last_sequence: i32,
    /// Last offset written at the current epoch (-1: none).
    pub last_offset: i64,
    /// Timestamp of the last batch or marker (-1: unknown).
    pub last_timestamp: i64,
    /// Coordinator epoch of the last marker (-1: none).
    pub coordinator_epoch: i32,
}

/// An aborted transaction in a partition: its producer and the offsets from its first
/// record to its ABORT marker. Fetch with read_committed returns these so clients drop the
/// aborted records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// The producer state of one partition. Serializable, so the broker can write snapshots
/// that a later start loads instead of replaying the log up to them. The aborted index is
/// not part of a snapshot (`serde(skip)`): the broker persists it per segment
/// (`.txnindex`) and restores it with [`ProducerStateTable::set_aborted`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: producer id → offset of the transaction's first batch here.
    ongoing: BTreeMap<i64, i64>,
    /// Aborted transactions, in the order of their markers (so by `last_offset`).
    #[serde(skip)]
    aborted: Vec<AbortedTxn>,
}

/// `seq + delta` with Kafka's wraparound at `i32::MAX`.
pub fn increment_sequence(seq: i32, delta: i32) -> i32 {
    let next = seq as i64 + delta as i64;
    if next > i32::MAX as i64 {
        (next - i32::MAX as i64 - 1) as i32
    } else {
        next as i32
    }
}

impl ProducerStateTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of producers with state here.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what to do with `batch` without changing any state.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, ProducerError> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            return if batch.first_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(ProducerError::OutOfOrder {
                    producer_id: batch.producer_id,
                    got: batch.first_sequence,
                    expected: 0,
                })
            };
        }
        if let Some(dup) = entry.batches.iter().find(|b| {
            b.first_sequence == batch.first_sequence && b.last_sequence == batch.last_sequence
        }) {
            return Ok(Verdict::Duplicate {
                first_offset: dup.first_offset,
                last_offset: dup.last_offset,
            });
        }
        let expected = match entry.batches.back() {
            Some(last) => increment_sequence(last.last_sequence, 1),
            None => 0,
        };
        if batch.first_sequence != expected {
            return Err(ProducerError::OutOfOrder {
                producer_id: batch.producer_id,
                got: batch.first_sequence,
                expected,
            });
        }
        Ok(Verdict::Append)
    }

    /// A transactional batch of `producer_id` was written at `first_offset`: the producer's
    /// transaction is open here from its first such batch until its marker.
    pub fn record_transactional(&mut self, producer_id: i64, first_offset: i64) {
        self.ongoing.entry(producer_id).or_insert(first_offset);
    }

    /// Whether a COMMIT/ABORT marker of `producer_id` at `epoch` from the coordinator at
    /// `coordinator_epoch` may be written (checked on the leader before the append, as
    /// Kafka's `ProducerAppendInfo.appendEndTxnMarker` does): a marker of an older producer
    /// epoch would close the producer's newer transaction, one of an older coordinator
    /// comes from a zombie that lost `__transaction_state` leadership.
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), ProducerError> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerError::CoordinatorFenced {
                producer_id,
                coordinator_epoch,
                current: entry.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// A COMMIT/ABORT marker of `producer_id` at `epoch`, from the coordinator at
    /// `coordinator_epoch`, was written at `offset` with (batch max) timestamp `timestamp`. Returns the aborted transaction it closed, if it
    /// was an ABORT of an open transaction (the caller persists it in the segment's
    /// aborted-transaction index).
    pub fn record_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
        offset: i64,
        commit: bool,
        timestamp: i64,
    ) -> Option<AbortedTxn> {
        let mut closed = None;
        if let Some(first_offset) = self.ongoing.remove(&producer_id) {
            if !commit {
                let a = AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset: offset,
                };
                self.aborted.push(a);
                closed = Some(a);
            }
        }
        // A marker with a bumped epoch (fencing, timeout) fences the older epoch here too.
        let entry = self.producers.entry(producer_id).or_default();
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.last_timestamp = Some(timestamp);
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        closed
    }

    /// Removes the producers whose last batch or marker here is at least `expiration_ms`
    /// older than `now_ms` and that have no open transaction here (Kafka's
    /// `producer.id.expiration.ms`). Returns how many were removed. One pass over the
    /// table; the open transactions and the aborted index are untouched. A producer whose
    /// timestamp is unknown (`None`) is kept.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let ongoing = &self.ongoing;
        self.producers.retain(|id, e| {
            ongoing.contains_key(id)
                || e.last_timestamp
                    .is_none_or(|t| now_ms.saturating_sub(t) < expiration_ms)
        });
        before - self.producers.len()
    }

    /// Gives every producer without a known last timestamp (loaded from a snapshot of a
    /// version that did not keep it) the timestamp `now_ms`, so its idle time counts from
    /// the load. Returns how many were set.
    pub fn fill_missing_timestamps(&mut self, now_ms: i64) -> usize {
        let mut n = 0;
        for e in self.producers.values_mut() {
            if e.last_timestamp.is_none() {
                e.last_timestamp = Some(now_ms);
                n += 1;
            }
        }
        n
    }

    /// A copy without the aborted index: what a snapshot holds.
    pub fn snapshot_copy(&self) -> ProducerStateTable {
        ProducerStateTable {
            producers: self.producers.clone(),
            ongoing: self.ongoing.clone(),
            aborted: Vec::new(),
        }
    }

    /// Replaces the aborted index (loaded from the segments' `.txnindex` files); entries
    /// are kept sorted by `last_offset`, duplicates dropped.
    pub fn set_aborted(&mut self, mut aborted: Vec<AbortedTxn>) {
        aborted.sort_by_key(|a| a.last_offset);
        aborted.dedup_by_key(|a| a.last_offset);
        self.aborted = aborted;
    }

    /// Forgets the aborted transactions whose marker lies below `offset` (their segments
    /// were deleted by retention or DeleteRecords). Returns how many were dropped.
    pub fn drop_aborted_below(&mut self, offset: i64) -> usize {
        let n = self.aborted.partition_point(|a| a.last_offset < offset);
        self.aborted.drain(..n);
        n
    }

    /// Number of aborted transactions in the index.
    pub fn aborted_len(&self) -> usize {
        self.aborted.len()
    }

    /// The first offset of the earliest open transaction: the last stable offset is this
    /// or, with none open, the high watermark.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Whether `producer_id` has an open transaction here.
    pub fn in_transaction(&self, producer_id: i64) -> bool {
        self.ongoing.contains_key(&producer_id)
    }

    /// Open transactions: (producer id, first offset).
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|(&p, &o)| (p, o))
    }

    /// Producers with state here, in no particular order.
    pub fn producers(&self) -> Vec<ProducerSummary> {
        self.producers
            .iter()
            .map(|(&id, e)| {
                let last = e.batches.back();
                ProducerSummary {
                    producer_id: id,
                    epoch: e.epoch,
                    last_sequence: last.map_or(-1, |b| b.last_sequence),
                    last_offset: last.map_or(-1, |b| b.last_offset),
                    last_timestamp: e.last_timestamp.unwrap_or(-1),
                    coordinator_epoch: e.coordinator_epoch,
                }
            })
            .collect()
    }

    /// Aborted transactions overlapping `from..=to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset <= to)
            .copied()
            .collect()
    }

    /// Records a batch that was written at `first_offset..=last_offset` with header
    /// `maxTimestamp` `timestamp`. Used after an append and when replaying the log on
    /// start.
    pub fn record(
        &mut self,
        batch: &ProducerBatch,
        first_offset: i64,
        last_offset: i64,
        timestamp: i64,
    ) {
        let entry = self.producers.entry(batch.producer_id).or_default();
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.last_timestamp = Some(timestamp);
        entry.batches.push_back(WrittenBatch {
            first_sequence: batch.first_sequence,
            last_sequence: batch.last_sequence,
            first_offset,
            last_offset,
        });
        while entry.batches.len() > RETAINED_BATCHES {
            entry.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(pid: i64, epoch: i16, seq: i32, n: i32) -> ProducerBatch {
        ProducerBatch::new(pid, epoch, seq, n - 1)
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut t = ProducerStateTable::new();
        let first = b(7, 0, 0, 10);
        assert_eq!(t.check(&first), Ok(Verdict::Append));
        t.record(&first, 100, 109, 0);
        let second = b(7, 0, 10, 5);
        assert_eq!(t.check(&second), Ok(Verdict::Append));
        t.record(&second, 110, 114, 0);
        assert_eq!(
            t.check(&first),
            Ok(Verdict::Duplicate {
                first_offset: 100,
                last_offset: 109
            })
        );
        assert!(matches!(
            t.check(&b(7, 0, 20, 1)),
            Err(ProducerError::OutOfOrder { expected: 15, .. })
        ));
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut t = ProducerStateTable::new();
        t.record(&b(1, 3, 0, 1), 0, 0, 0);
        assert!(matches!(
            t.check(&b(1, 2, 1, 1)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
        assert!(matches!(
            t.check(&b(1, 4, 5, 1)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert_eq!(t.check(&b(1, 4, 0, 1)), Ok(Verdict::Append));
        t.record(&b(1, 4, 0, 1), 1, 1, 0);
        assert!(matches!(
            t.check(&b(1, 3, 1, 1)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
    }

    #[test]
    fn transactions_track_the_first_unstable_offset_and_aborts() {
        let mut t = ProducerStateTable::new();
        t.record(&b(1, 0, 0, 2), 10, 11, 0);
        t.record_transactional(1, 10);
        t.record_transactional(1, 20);
        t.record_transactional(2, 15);
        assert_eq!(t.first_unstable_offset(), Some(10));
        assert!(t.record_marker(1, 0, 0, 30, false, 0).is_some());
        assert_eq!(t.first_unstable_offset(), Some(15));
        assert_eq!(t.record_marker(2, 0, 0, 31, true, 0), None);
        assert_eq!(t.first_unstable_offset(), None);
        let a = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 30,
        };
        assert_eq!(t.aborted_between(0, 9), vec![]);
        assert_eq!(t.aborted_between(0, 10), vec![a]);
        assert_eq!(t.aborted_between(30, 40), vec![a]);
        assert_eq!(t.aborted_between(31, 40), vec![]);
        // Same-epoch marker keeps sequence state; a later batch continues the sequence.
        assert_eq!(t.check(&b(1, 0, 2, 1)), Ok(Verdict::Append));
        // A marker with a bumped epoch fences the old epoch.
        assert_eq!(t.record_marker(1, 1, 0, 32, false, 0), None);
        assert!(matches!(
            t.check(&b(1, 0, 2, 1)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
    }

    #[test]
    fn markers_of_an_older_producer_epoch_or_coordinator_are_fenced() {
        let mut t = ProducerStateTable::new();
        // Unknown producer: any marker may be written.
        assert_eq!(t.check_marker(1, 0, 0), Ok(()));
        t.record(&b(1, 3, 0, 1), 0, 0, 0);
        t.record_transactional(1, 0);
        assert_eq!(t.record_marker(1, 3, 5, 1, true, 0), None);
        assert_eq!(t.check_marker(1, 3, 5), Ok(()));
        assert_eq!(t.check_marker(1, 4, 6), Ok(()));
        assert!(matches!(
            t.check_marker(1, 2, 5),
            Err(ProducerError::InvalidEpoch { current: 3, .. })
        ));
        assert!(matches!(
            t.check_marker(1, 3, 4),
            Err(ProducerError::CoordinatorFenced { current: 5, .. })
        ));
        // A snapshot keeps the coordinator epoch.
        let json = serde_json::to_vec(&t).unwrap();
        let back: ProducerStateTable = serde_json::from_slice(&json).unwrap();
        assert!(back.check_marker(1, 3, 4).is_err());
    }

    #[test]
    fn snapshot_round_trip_keeps_decisions() {
        let mut t = ProducerStateTable::new();
        t.record(&b(7, 2, 0, 4), 10, 13, 0);
        t.record(&b(7, 2, 4, 1), 14, 14, 0);
        let json = serde_json::to_string(&t).unwrap();
        let back: ProducerStateTable = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.check(&b(7, 2, 0, 4)),
            Ok(Verdict::Duplicate {
                first_offset: 10,
                last_offset: 13
            })
        );
        assert_eq!(back.check(&b(7, 2, 5, 1)), Ok(Verdict::Append));
        assert!(matches!(
            back.check(&b(7, 1, 5, 1)),
            Err(ProducerError::InvalidEpoch { .. })
        ));
    }

    #[test]
    fn snapshots_leave_out_the_aborted_index_and_it_can_be_restored_and_pruned() {
        let mut t = ProducerStateTable::new();
        for (pid, first, marker) in [(1, 0, 5), (2, 6, 9), (3, 10, 20)] {
            t.record_transactional(pid, first);
            assert!(t.record_marker(pid, 0, 0, marker, false, 0).is_some());
        }
        t.record_transactional(4, 21);
        let copy = t.snapshot_copy();
        assert_eq!(copy.aborted_len(), 0);
        assert_eq!(copy.first_unstable_offset(), Some(21));
        let json = serde_json::to_string(&t).unwrap();
        let mut back: ProducerStateTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back.aborted_len(), 0);
        let mut entries = t.aborted_between(0, i64::MAX);
        entries.push(entries[0]);
        entries.reverse();
        back.set_aborted(entries);
        assert_eq!(
            back.aborted_between(0, i64::MAX),
            t.aborted_between(0, i64::MAX)
        );
        assert_eq!(back.drop_aborted_below(9), 1);
        assert_eq!(back.aborted_len(), 2);
        assert_eq!(back.aborted_between(0, 8).len(), 1);
    }

    #[test]
    fn unknown_producers_are_accepted_at_any_sequence() {
        let t = ProducerStateTable::new();
        assert_eq!(t.check(&b(9, 0, 12345, 3)), Ok(Verdict::Append));
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn idle_producers_expire_recent_ones_stay() {
        let mut t = ProducerStateTable::new();
        t.record(&b(1, 0, 0, 3), 0, 2, 1_000);
        t.record(&b(2, 0, 0, 1), 3, 3, 1_000 + DAY / 2);
        // Not yet a day idle: nobody goes (the boundary is inclusive, as in Kafka).
        assert_eq!(t.expire(1_000 + DAY - 1, DAY), 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(1_000 + DAY, DAY), 1);
        let left: Vec<i64> = t.producers().iter().map(|p| p.producer_id).collect();
        assert_eq!(left, vec![2]);
        // The expired producer is unknown again: it is accepted at any sequence
        // (KIP-360), and its retried old batch is no longer recognised as a duplicate.
        assert_eq!(t.check(&b(1, 0, 3, 1)), Ok(Verdict::Append));
        assert_eq!(t.check(&b(1, 0, 0, 3)), Ok(Verdict::Append));
        // A write refreshes the timestamp: the last batch counts, not the first.
        t.record(&b(2, 0, 1, 1), 4, 4, 1_000 + DAY + 10);
        assert_eq!(t.expire(1_000 + DAY / 2 + DAY, DAY), 0);
        assert_eq!(t.expire(1_000 + 2 * DAY + 10, DAY), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn producers_with_an_open_transaction_never_expire() {
        let mut t = ProducerStateTable::new();
        t.record(&b(5, 0, 0, 1), 10, 10, 0);
        t.record_transactional(5, 10);
        t.record(&b(6, 0, 0, 1), 11, 11, 0);
        assert_eq!(t.expire(10 * DAY, DAY), 1);
        assert_eq!(t.producers()[0].producer_id, 5);
        assert!(t.in_transaction(5));
        assert_eq!(t.first_unstable_offset(), Some(10));
        // Its marker closes the transaction and is its last write: it expires a day after
        // the marker's timestamp.
        assert!(t.record_marker(5, 0, 0, 12, false, 10 * DAY).is_some());
        assert_eq!(t.expire(11 * DAY - 1, DAY), 0);
        assert_eq!(t.expire(11 * DAY, DAY), 1);
        assert!(t.is_empty());
        // The aborted index is not producer state: it stays.
        assert_eq!(t.aborted_len(), 1);
    }

    #[test]
    fn describe_reports_the_last_timestamp() {
        let mut t = ProducerStateTable::new();
        t.record(&b(3, 1, 0, 2), 0, 1, 500);
        t.record(&b(3, 1, 2, 1), 2, 2, 400);
        assert_eq!(
            t.producers(),
            vec![ProducerSummary {
                producer_id: 3,
                epoch: 1,
                last_sequence: 2,
                last_offset: 2,
                // The last batch's, even if older than an earlier one (Kafka's rule).
                last_timestamp: 400,
                coordinator_epoch: -1,
            }]
        );
        // A marker with a bumped epoch (fencing) forgets the sequences, keeps the time.
        t.record_marker(3, 2, 0, 3, false, 900);
        let p = t.producers()[0];
        assert_eq!((p.epoch, p.last_sequence, p.last_timestamp), (2, -1, 900));
    }

    #[test]
    fn snapshots_without_timestamps_load_and_get_the_load_time() {
        // The serde form before last_timestamp existed.
        let old = r#"{"producers":{"7":{"epoch":2,"batches":[{"first_sequence":0,"last_sequence":3,"first_offset":10,"last_offset":13}]},"8":{"epoch":0,"batches":[]}},"ongoing":{"8":14}}"#;
        let mut t: ProducerStateTable = serde_json::from_str(old).unwrap();
        assert_eq!(
            t.check(&b(7, 2, 0, 4)),
            Ok(Verdict::Duplicate {
                first_offset: 10,
                last_offset: 13
            })
        );
        assert!(t.producers().iter().all(|p| p.last_timestamp == -1));
        // Unknown timestamps never expire by themselves...
        assert_eq!(t.expire(i64::MAX, DAY), 0);
        // ...the load gives them its own time.
        assert_eq!(t.fill_missing_timestamps(5 * DAY), 2);
        assert_eq!(t.expire(6 * DAY - 1, DAY), 0);
        assert_eq!(t.expire(6 * DAY, DAY), 1, "8 has an open transaction");
        assert!(t.in_transaction(8));
        // And the new form round-trips the timestamp.
        let back: ProducerStateTable =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.producers()[0].last_timestamp, 5 * DAY);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut t = ProducerStateTable::new();
        let near_end = ProducerBatch::new(1, 0, i32::MAX - 1, 2);
        assert_eq!(near_end.last_sequence, 0);
        t.record(&near_end, 0, 2, 0);
        assert_eq!(t.check(&b(1, 0, 1, 1)), Ok(Verdict::Append));
    }

    proptest! {
        /// Any interleaving of first attempts and retries of the last five batches writes
        /// each batch exactly once, in sequence order.
        #[test]
        fn retries_never_write_twice(sizes in proptest::collection::vec(1i32..20, 1..40),
                                     retries in proptest::collection::vec(0usize..5, 0..80)) {
            let mut t = ProducerStateTable::new();
            let mut written: Vec<ProducerBatch> = Vec::new();
            let mut seq = 0;
            let mut offset = 0i64;
            let mut retry_iter = retries.into_iter();
            for n in sizes {
                let batch = b(42, 0, seq, n);
                prop_assert_eq!(t.check(&batch), Ok(Verdict::Append));
                t.record(&batch, offset, offset + n as i64 - 1, 0);
                written.push(batch);
                offset += n as i64;
                seq += n;
                if let Some(back) = retry_iter.next() {
                    if back < written.len() {
                        let again = written[written.len() - 1 - back];
                        let verdict = t.check(&again);
                        prop_assert!(matches!(verdict, Ok(Verdict::Duplicate { .. })), "{:?}", verdict);
                    }
                }
            }
        }
    }
}
