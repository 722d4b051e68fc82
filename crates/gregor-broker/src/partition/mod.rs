//! A partition led by this broker: its log, its idempotent producers' state, and every
//! path that writes or reads them. Nothing outside this module touches a partition's log
//! or producer table directly; each use has a named method here.
//!
//! * **Writes.** Every write goes through [`Partition::append_locked`], with the log lock
//!   and then the producer-state lock held: client produces through
//!   [`Partition::append_produced`] (transaction verification and idempotence checks
//!   first), the coordinators' internal records and transaction markers through
//!   [`Partition::append_internal`].
//! * **Reads.** [`Partition::offsets`], [`Partition::read`], [`Partition::aborted_between`],
//!   the timestamp lookups of ListOffsets, and [`Partition::replay`] for the coordinators.
//! * **Durability.** The group-commit flusher takes a [`SyncJob`] and completes it
//!   ([`Partition::take_sync_job`], [`Partition::complete_sync`]); the coordinators call
//!   [`Partition::flush`]. Producer-state snapshots are queued at segment rolls and written
//!   once the log is durable past them ([`producer_state`] has the file format and the
//!   load on open).
//! * **Maintenance.** Retention, DeleteRecords, compaction and producer expiry.
//!
//! Lock order: `log` before `producers`; `pending_snapshots` is a leaf lock.

pub mod producer_state;
pub mod replica;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use gregor_log::clean::{CleanConfig, CleanStats};
use gregor_log::{
    AppendInfo, BatchHeader, LogConfig, LogError, PartitionLog, ReadResult, RecoveryHint, SyncJob,
    ValidateError, ValidatedBatches,
};
use gregor_txn::{
    ProducerBatch, ProducerError, ProducerStateTable, ProducerSummary, TxnError, Verdict,
};

use producer_state::{
    apply_batch, prune_snapshots, replay_batches, txn_index_entry, write_snapshot, LoadExpiry,
    SNAPSHOTS_KEPT,
};

/// One partition of a topic, led by this broker.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    log: RwLock<PartitionLog>,
    /// Idempotent producers' sequence state. Lock order: `log` before `producers`.
    producers: Mutex<ProducerStateTable>,
    /// Queued for the group-commit flusher's next round (see [`crate::flusher`]).
    flush_queued: AtomicBool,
    /// The partition's directory (producer snapshots live there).
    dir: PathBuf,
    /// Producer-state snapshots taken at segment rolls, waiting for the log to be durable
    /// past their offset (see [`producer_state`]). A leaf lock.
    pending_snapshots: Mutex<Vec<(i64, ProducerStateTable)>>,
    /// Serializes snapshot writers; holds the newest snapshot offset on disk.
    snapshot_write: Mutex<Option<i64>>,
    /// Batches replayed into the producer state when the partition was opened.
    replayed_on_open: u64,
    /// Leader, follower or single copy (see [`replica`]). A leaf lock.
    replica: Mutex<replica::Role>,
    /// The high watermark in a cluster (see [`replica`]); -1 on a single node, where it is
    /// the log end offset.
    hw: AtomicI64,
    /// Sent when the high watermark rises or the role changes (acks=all waits on it).
    hw_changed: tokio::sync::watch::Sender<i64>,
}

/// A partition's offsets, read together under one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    /// On a single node every appended batch is committed: the log end offset.
    pub high_watermark: i64,
    /// The first offset of the earliest open transaction, or the high watermark.
    pub last_stable: i64,
}

impl Offsets {
    /// The offsets of `partition`, whose `log` the caller holds locked. Asserts
    /// `log start <= last stable <= high watermark <= log end`.
    fn of(log: &PartitionLog, partition: &Partition) -> Offsets {
        let log_end = log.log_end_offset();
        // Single node: every appended batch is committed. In a cluster: the ISR's minimum
        // log end (see [`replica`]), never above this log's end.
        let hw = partition.hw.load(Ordering::SeqCst);
        let high_watermark = if hw < 0 { log_end } else { hw.min(log_end) };
        let offsets = Offsets {
            log_start: log.log_start_offset(),
            high_watermark,
            last_stable: partition.last_stable_offset(high_watermark),
        };
        assert!(
            offsets.last_stable <= offsets.high_watermark && offsets.high_watermark <= log_end,
            "{}-{}: {offsets:?} with log end {log_end}",
            partition.topic,
            partition.index
        );
        assert!(
            offsets.log_start <= offsets.high_watermark,
            "{}-{}: {offsets:?}",
            partition.topic,
            partition.index
        );
        offsets
    }
}

/// Where a client's batches went: the first offset assigned and the log start offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// One past the last offset of the batches (of the earlier copy, for a duplicate):
    /// acks=all waits for the high watermark to reach it.
    pub end_offset: i64,
}

/// Why a client's batches were not appended.
#[derive(Debug)]
pub enum ProduceError {
    /// The producer's epoch is fenced by the transaction coordinator.
    Fenced { producer_id: i64, epoch: i16 },
    /// A transactional batch for a partition not in the producer's ongoing transaction.
    NotInTransaction { producer_id: i64, error: TxnError },
    /// Batch `index` of a multi-batch request repeats a batch already written.
    DuplicateInMultiBatch { index: usize },
    /// The idempotence check refused a batch (stale epoch, sequence gap).
    Producer(ProducerError),
    /// The log refused the append.
    Log(LogError),
    /// A retry of a batch the log holds at `first_offset`, not known durable: its fsync
    /// failed (the log is offline). It may or may not survive a restart, so the answer
    /// must say "possibly written" — never a success, and never an error that tells the
    /// client it was not written (see [`Partition::append_produced`]).
    NotDurable { first_offset: i64 },
}

impl Partition {
    /// A partition over an opened log and its producer state.
    pub fn new(
        topic: &str,
        index: i32,
        dir: PathBuf,
        log: PartitionLog,
        producers: ProducerStateTable,
    ) -> Partition {
        Partition {
            topic: topic.to_string(),
            index,
            log: RwLock::new(log),
            producers: Mutex::new(producers),
            flush_queued: AtomicBool::new(false),
            dir,
            pending_snapshots: Mutex::new(Vec::new()),
            snapshot_write: Mutex::new(None),
            replayed_on_open: 0,
            replica: Mutex::new(replica::Role::Single),
            hw: AtomicI64::new(-1),
            hw_changed: tokio::sync::watch::channel(-1).0,
        }
    }

    /// Opens the partition in `dir`: recovers its log (see `PartitionLog::open_with`) and
    /// loads its producer state (see [`producer_state::load`]).
    pub fn open(
        topic: &str,
        index: i32,
        dir: PathBuf,
        config: LogConfig,
        hint: RecoveryHint,
        expiry: LoadExpiry,
        clock: gregor_os::SharedClock,
    ) -> anyhow::Result<Partition> {
        let mut log = PartitionLog::open_with_clock(&dir, config, hint, clock)?;
        let loaded = producer_state::load(&dir, &mut log, expiry)?;
        if loaded.replayed_batches > 0 || !loaded.table.is_empty() || loaded.expired_producers > 0 {
            tracing::info!(
                topic,
                partition = index,
                snapshot_offset = loaded.snapshot_offset.unwrap_or(-1),
                replayed_batches = loaded.replayed_batches,
                producers = loaded.table.len(),
                expired_producers = loaded.expired_producers,
                aborted_txns = loaded.table.aborted_len(),
                "producer state loaded"
            );
        }
        let mut partition = Partition::new(topic, index, dir, log, loaded.table);
        partition.replayed_on_open = loaded.replayed_batches;
        // A snapshot without timestamps (earlier version) is not "already written": the
        // clean shutdown rewrites it even with nothing appended.
        *partition
            .snapshot_write
            .get_mut()
            .expect("snapshot write lock") = loaded
            .snapshot_offset
            .filter(|_| loaded.filled_timestamps == 0);
        Ok(partition)
    }

    /// Batches replayed into the producer state when the partition was opened.
    pub fn replayed_on_open(&self) -> u64 {
        self.replayed_on_open
    }

    /// Bytes the log scanned when it was opened (recovery).
    pub fn scanned_on_open(&self) -> u64 {
        self.log.read().expect("log lock").scanned_on_open()
    }

    // ---- offsets and reads

    /// The high watermark: on a single node the log end offset (every appended batch is
    /// committed); in a cluster the ISR's minimum log end (see [`replica`]).
    pub fn high_watermark(&self) -> i64 {
        self.offsets().high_watermark
    }

    /// The log end offset: the offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.log.read().expect("log lock").log_end_offset()
    }

    /// The log start offset.
    pub fn log_start_offset(&self) -> i64 {
        self.log.read().expect("log lock").log_start_offset()
    }

    /// The offset below which every record was fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.log.read().expect("log lock").durable_offset()
    }

    /// The size of the log on disk.
    pub fn size_bytes(&self) -> u64 {
        self.log.read().expect("log lock").size_bytes()
    }

    /// Log start, high watermark and last stable offset, under one lock.
    pub fn offsets(&self) -> Offsets {
        Offsets::of(&self.log.read().expect("log lock"), self)
    }

    /// The last stable offset given the high watermark: the first offset of the earliest
    /// open transaction, or the high watermark. read_committed consumers stop here.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.producers
            .lock()
            .expect("producer state lock")
            .first_unstable_offset()
            .map_or(high_watermark, |o| o.min(high_watermark))
    }

    /// A fetch: the offsets and, if `max_bytes` is given, the whole batches from `offset`
    /// (at most about `max_bytes`; see `PartitionLog::read`) below the high watermark, or
    /// below the last stable offset if `read_committed`. One read lock for both, so the
    /// offsets answered are those the read saw.
    pub fn fetch(
        &self,
        offset: i64,
        max_bytes: Option<usize>,
        read_committed: bool,
    ) -> (Offsets, Option<Result<ReadResult, LogError>>) {
        let log = self.log.read().expect("log lock");
        let offsets = Offsets::of(&log, self);
        let upper_bound = if read_committed {
            offsets.last_stable
        } else {
            offsets.high_watermark
        };
        let read = max_bytes.map(|max| log.read(offset, max, upper_bound));
        (offsets, read)
    }

    /// A follower's fetch: as [`fetch`](Self::fetch), but reading up to the log end
    /// offset (a follower copies what the leader has, committed or not).
    pub fn fetch_for_follower(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> (Offsets, Result<ReadResult, LogError>) {
        let log = self.log.read().expect("log lock");
        let offsets = Offsets::of(&log, self);
        let read = log.read(offset, max_bytes, log.log_end_offset());
        (offsets, read)
    }

    /// Whole batches from `offset`, at most about `max_bytes`, none at or above
    /// `upper_bound` (see `PartitionLog::read`).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<ReadResult, LogError> {
        self.log
            .read()
            .expect("log lock")
            .read(offset, max_bytes, upper_bound)
    }

    /// The aborted transactions overlapping `[first, last]` (for read_committed fetches).
    pub fn aborted_between(&self, first: i64, last: i64) -> Vec<gregor_txn::AbortedTxn> {
        self.producers
            .lock()
            .expect("producer state lock")
            .aborted_between(first, last)
    }

    /// The first batch with a record at or after timestamp `ts` (ListOffsets), with the
    /// log start offset.
    pub fn find_batch_by_timestamp(
        &self,
        ts: i64,
    ) -> Result<(Option<(BatchHeader, Bytes)>, i64), LogError> {
        let log = self.log.read().expect("log lock");
        Ok((log.find_batch_by_timestamp(ts)?, log.log_start_offset()))
    }

    /// The batch holding the largest timestamp (ListOffsets), with the log start offset.
    pub fn find_max_timestamp_batch(
        &self,
    ) -> Result<(Option<(BatchHeader, Bytes)>, i64), LogError> {
        let log = self.log.read().expect("log lock");
        Ok((log.find_max_timestamp_batch()?, log.log_start_offset()))
    }

    /// The producers writing here and the first offset of each one's open transaction
    /// (DescribeProducers).
    pub fn producer_summaries(&self) -> (Vec<ProducerSummary>, Vec<(i64, i64)>) {
        let table = self.producers.lock().expect("producer state lock");
        (table.producers(), table.ongoing().collect())
    }

    /// A copy of the producer state (tests, tools).
    pub fn producer_state_copy(&self) -> ProducerStateTable {
        self.producers
            .lock()
            .expect("producer state lock")
            .snapshot_copy()
    }

    /// Calls `f` with every batch of this partition's log, from its start to its end at the
    /// time each chunk is read, in offset order. The read lock is taken per 1 MiB chunk, so
    /// appends proceed in between. Used by the coordinators to load their internal topics.
    pub fn replay(
        &self,
        f: impl FnMut(&BatchHeader, Bytes) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = self.log.read().expect("log lock").log_start_offset();
        replay_batches(
            start,
            |offset| {
                let log = self.log.read().expect("log lock");
                let end = log.log_end_offset();
                Ok(log.read(offset, 1 << 20, end)?.data)
            },
            f,
        )
    }

    // ---- writes

    /// Appends a client's batches (already validated: `headers` are theirs, in order).
    ///
    /// Under the log lock: KIP-890 part 1 — each transactional batch must pass
    /// `verify_txn` (its partition was added to the producer's ongoing transaction at this
    /// epoch; checked under the log lock, which marker writes also take, so no batch slips
    /// in after its transaction's marker). Then, under the producer-state lock too, the
    /// idempotence check decides every batch before any is written: a lone batch that
    /// repeats one already written is answered with its original offsets and not written
    /// again; several batches are checked against a scratch copy, so each sees its
    /// predecessors. Then [`append_locked`](Self::append_locked).
    ///
    /// An offline log (an fsync failed) takes nothing, and is checked *before* the
    /// sequence check: every batch gets [`LogError::StorageFailed`] except a lone retry of
    /// a batch the log holds, which gets its offsets if that batch is durable and
    /// [`ProduceError::NotDurable`] if not. Never OUT_OF_ORDER_SEQUENCE_NUMBER: a client
    /// whose earlier batch was refused takes that answer for a later one as a reason to
    /// bump its epoch and re-send everything unacknowledged at sequence 0 (librdkafka
    /// does), which no sequence check can match with a copy the log already holds.
    pub fn append_produced(
        &self,
        batches: &ValidatedBatches<'_>,
        verify_txn: impl Fn(&BatchHeader) -> Result<(), TxnError>,
    ) -> Result<Appended, ProduceError> {
        let headers: Vec<&BatchHeader> = batches.headers().collect();
        let producer_batches: Vec<Option<ProducerBatch>> = headers
            .iter()
            .map(|h| {
                (h.producer_id >= 0).then(|| {
                    ProducerBatch::new(
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.last_offset_delta,
                    )
                })
            })
            .collect();
        let mut log = self.log.write().expect("log lock");
        for h in headers.iter().filter(|h| h.is_transactional()) {
            match verify_txn(h) {
                Ok(()) => {}
                Err(TxnError::ProducerFenced) => {
                    return Err(ProduceError::Fenced {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                    })
                }
                Err(error) => {
                    return Err(ProduceError::NotInTransaction {
                        producer_id: h.producer_id,
                        error,
                    })
                }
            }
        }
        let mut producers = self.producers.lock().expect("producer state lock");
        if let Some(e) = log.offline_error() {
            if let [Some(pb)] = producer_batches.as_slice() {
                if let Ok(Verdict::Duplicate {
                    first_offset,
                    last_offset,
                }) = producers.check(pb)
                {
                    return if last_offset < log.durable_offset() {
                        Ok(Appended {
                            base_offset: first_offset,
                            log_start_offset: log.log_start_offset(),
                            end_offset: last_offset + 1,
                        })
                    } else {
                        Err(ProduceError::NotDurable { first_offset })
                    };
                }
            }
            return Err(ProduceError::Log(LogError::StorageFailed(e.to_string())));
        }
        let mut scratch = None;
        for (i, pb) in producer_batches.iter().enumerate() {
            let Some(pb) = pb else { continue };
            let verdict = if headers.len() == 1 {
                producers.check(pb)
            } else {
                let table = scratch.get_or_insert_with(|| producers.clone());
                let verdict = table.check(pb);
                if verdict == Ok(Verdict::Append) {
                    table.record(pb, -1, -1, headers[i].max_timestamp);
                }
                verdict
            };
            match verdict {
                Ok(Verdict::Append) => {}
                Ok(Verdict::Duplicate {
                    first_offset,
                    last_offset,
                }) if headers.len() == 1 => {
                    tracing::debug!(
                        producer_id = pb.producer_id,
                        sequence = pb.first_sequence,
                        first_offset,
                        "duplicate batch"
                    );
                    return Ok(Appended {
                        base_offset: first_offset,
                        log_start_offset: log.log_start_offset(),
                        end_offset: last_offset + 1,
                    });
                }
                Ok(Verdict::Duplicate { .. }) => {
                    return Err(ProduceError::DuplicateInMultiBatch { index: i })
                }
                Err(e) => return Err(ProduceError::Producer(e)),
            }
        }
        let info = self
            .append_locked(&mut log, &mut producers, batches)
            .map_err(ProduceError::Log)?;
        Ok(Appended {
            base_offset: info.base_offset,
            log_start_offset: log.log_start_offset(),
            end_offset: info.last_offset + 1,
        })
    }

    /// Appends a batch the broker wrote itself (a coordinator's record or a transaction
    /// marker), under the same locks and through the same path as a client's.
    ///
    /// A follower's log takes only its leader's batches: on a follower this is refused (a
    /// coordinator that does not lead the partition must not write to it).
    pub fn append_internal(&self, batch: &[u8]) -> Result<AppendInfo, LogError> {
        if let replica::Role::Follower { leader, .. } = self.role() {
            return Err(LogError::InvalidRecord(format!(
                "{}-{} is led by broker {leader}: a follower's log takes only its leader's batches",
                self.topic, self.index
            )));
        }
        let batches = ValidatedBatches::validate(batch, |_, _| Ok::<(), LogError>(())).map_err(
            |e| match e {
                ValidateError::Batch(e) => LogError::from(e),
                ValidateError::Check(e) => e,
            },
        )?;
        let mut log = self.log.write().expect("log lock");
        let mut producers = self.producers.lock().expect("producer state lock");
        self.append_locked(&mut log, &mut producers, &batches)
    }

    /// Queues a snapshot of `table` (the state at `offset`) for writing once the log is
    /// durable past it. Cheap; called under the log lock when a segment rolls.
    pub fn queue_snapshot(&self, offset: i64, table: ProducerStateTable) {
        let mut pending = self.pending_snapshots.lock().expect("snapshot lock");
        pending.push((offset, table));
        if pending.len() > SNAPSHOTS_KEPT {
            pending.remove(0);
        }
    }

    /// Writes the queued snapshots whose offset the log is durable up to. Blocking file
    /// I/O; called by the flusher thread after a round, never under the log lock.
    pub fn write_due_snapshots(&self) {
        if self
            .pending_snapshots
            .lock()
            .expect("snapshot lock")
            .is_empty()
        {
            return;
        }
        let mut newest = self.snapshot_write.lock().expect("snapshot write lock");
        let (durable, start) = {
            let log = self.log.read().expect("log lock");
            (log.durable_offset(), log.log_start_offset())
        };
        let due: Vec<(i64, ProducerStateTable)> = {
            let mut pending = self.pending_snapshots.lock().expect("snapshot lock");
            let n = pending.partition_point(|(o, _)| *o <= durable);
            pending.drain(..n).collect()
        };
        for (offset, table) in due {
            match write_snapshot(&self.dir, offset, &table) {
                Ok(()) => *newest = Some(offset),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = self.index, offset, error = %e, "writing producer snapshot failed")
                }
            }
        }
        if let Err(e) = prune_snapshots(&self.dir, start) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "pruning producer snapshots failed");
        }
    }

    /// Clean shutdown (after the log was flushed): writes the queued snapshots and one at
    /// the log end, unless the newest snapshot on disk is already there.
    pub fn snapshot_at_shutdown(&self) -> anyhow::Result<()> {
        self.write_due_snapshots();
        let mut newest = self.snapshot_write.lock().expect("snapshot write lock");
        let (end, start, table) = {
            let log = self.log.read().expect("log lock");
            let table = self
                .producers
                .lock()
                .expect("producer state lock")
                .snapshot_copy();
            (log.log_end_offset(), log.log_start_offset(), table)
        };
        if *newest == Some(end) || (end == start && table.is_empty()) {
            return Ok(());
        }
        write_snapshot(&self.dir, end, &table)?;
        *newest = Some(end);
        prune_snapshots(&self.dir, start)?;
        Ok(())
    }

    /// Appends `batches` to this partition's `log` and applies them to its producer state
    /// (both locked by the caller, log first): a roll queues a snapshot of the state
    /// before the append; each batch goes through [`apply_batch`]; an ABORT marker's
    /// aborted transaction is persisted in its segment's `.txnindex`. The headers are
    /// those validated, with the assigned offsets: the log stores the batches
    /// unchanged otherwise (`LogAppendTime` stamping is not used — topics accept only
    /// `message.timestamp.type=CreateTime` — so `maxTimestamp` is the stored one; if it
    /// ever is, the stamped time must be applied here, or replay would differ).
    ///
    /// Producer expiry ([`Partition::expire_producers`]) takes only the producer-state
    /// lock; it cannot fall between a produce's check and this, which hold both.
    fn append_locked(
        &self,
        log: &mut PartitionLog,
        producers: &mut ProducerStateTable,
        batches: &ValidatedBatches<'_>,
    ) -> Result<AppendInfo, LogError> {
        let end = log.log_end_offset();
        let info = log.append_validated(batches)?;
        // Offsets only grow: the batches start at the old end and the end moved past them.
        assert!(
            info.base_offset == end && info.last_offset >= end && log.log_end_offset() > end,
            "{}-{}: append at {end} got offsets {}..={} and end {}",
            self.topic,
            self.index,
            info.base_offset,
            info.last_offset,
            log.log_end_offset()
        );
        if info.rolled {
            self.queue_snapshot(info.base_offset, producers.snapshot_copy());
        }
        // A leader whose ISR is itself alone commits at once.
        self.advance_hw_locked(log.log_end_offset());
        // The headers as validated, with the offsets the log assigned.
        let mut offset = info.base_offset;
        for (header, batch) in batches.batches() {
            let mut header = *header;
            header.base_offset = offset;
            offset = header.next_offset();
            if let Some(a) = apply_batch(producers, &header, batch) {
                let entry = txn_index_entry(producers, &a);
                if let Err(e) = log.append_aborted_txn(&entry) {
                    // The in-memory index has it; a restart replaying from a snapshot
                    // below the marker re-derives it.
                    tracing::error!(topic = %self.topic, partition = self.index, error = %e, "writing the aborted-transaction index failed");
                }
            }
        }
        Ok(info)
    }

    /// Removes this partition's producers idle for `expiration_ms` at `now_ms` (see
    /// [`ProducerStateTable::expire`]); one pass over the table under its lock. Returns
    /// how many were removed.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producers
            .lock()
            .expect("producer state lock")
            .expire(now_ms, expiration_ms)
    }

    /// After retention or DeleteRecords deleted segments: forgets their aborted
    /// transactions (their `.txnindex` files went with them).
    fn segments_deleted(&self, log: &PartitionLog) {
        self.producers
            .lock()
            .expect("producer state lock")
            .drop_aborted_below(log.oldest_segment_base());
    }

    // ---- durability

    /// Marks the partition queued for the flusher's next round; false if it already was.
    pub fn mark_flush_queued(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// The flusher took the partition for a round.
    pub fn clear_flush_queued(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// The fsync work for everything appended so far (see `PartitionLog::take_sync_job`).
    pub fn take_sync_job(&self) -> SyncJob {
        self.log.write().expect("log lock").take_sync_job()
    }

    /// Why the log is offline (an fsync failed; see `PartitionLog::complete_sync`), or
    /// `None`.
    pub fn offline_error(&self) -> Option<String> {
        self.log
            .read()
            .expect("log lock")
            .offline_error()
            .map(str::to_string)
    }

    /// Records the outcome of a sync job: the durable offset, or the log goes offline.
    pub fn complete_sync(&self, job: &SyncJob, result: Result<(), String>) {
        self.log
            .write()
            .expect("log lock")
            .complete_sync(job, result);
    }

    /// fsyncs the log under its lock (the coordinators' writes, tests).
    pub fn flush(&self) -> Result<(), LogError> {
        self.log.write().expect("log lock").flush()
    }

    /// Records (count) and age of the oldest record not yet fsynced (`fsync = interval`).
    pub fn unflushed(&self) -> (i64, Option<i64>) {
        self.log.read().expect("log lock").unflushed()
    }

    /// The offset below which every record was fsynced, after indexing the active segment
    /// if it grew by `min_growth` (for the recovery-point checkpoint: after a crash only
    /// what was appended since is rescanned).
    pub fn checkpoint(&self, min_growth: u64) -> i64 {
        let mut log = self.log.write().expect("log lock");
        if let Err(e) = log.checkpoint_active_index(min_growth) {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "could not write active segment index");
        }
        log.durable_offset()
    }

    /// Clean shutdown: flushes the log and writes its indexes, then the producer snapshots.
    /// False (logged) if either failed.
    pub fn close_for_shutdown(&self) -> bool {
        let mut ok = true;
        if let Err(e) = self.log.write().expect("log lock").flush_for_shutdown() {
            ok = false;
            tracing::error!(topic = %self.topic, partition = self.index, error = %e, "flush on shutdown failed");
        }
        if let Err(e) = self.snapshot_at_shutdown() {
            ok = false;
            tracing::error!(topic = %self.topic, partition = self.index, error = %e, "producer snapshot failed");
        }
        ok
    }

    // ---- maintenance

    /// Applies new log settings (segment settings take effect from the next append).
    pub fn set_log_config(&self, config: LogConfig) {
        self.log.write().expect("log lock").set_config(config);
    }

    /// One compaction pass (see `gregor_log::clean`).
    pub fn compact(&self, cfg: &CleanConfig) -> Result<Option<CleanStats>, LogError> {
        gregor_log::clean::clean(&self.log, cfg)
    }

    /// Time and size retention; returns the segments deleted and the new log start offset.
    pub fn apply_retention(
        &self,
        retention_ms: i64,
        retention_bytes: i64,
        now_ms: i64,
    ) -> Result<(usize, i64), LogError> {
        let mut log = self.log.write().expect("log lock");
        let n = log.apply_retention(retention_ms, retention_bytes, now_ms)?;
        if n > 0 {
            self.segments_deleted(&log);
        }
        Ok((n, log.log_start_offset()))
    }

    /// DeleteRecords: moves the log start offset to `offset` (-1: the high watermark).
    /// `Ok(None)` if the offset is outside `[0, high watermark]`; else the new low watermark.
    pub fn delete_records_before(&self, offset: i64) -> Result<Option<i64>, LogError> {
        // In a cluster only what the ISR has may go (a follower could otherwise lead with
        // records below the new start); on a single node the HW is the log end.
        let hw = self.high_watermark();
        let mut log = self.log.write().expect("log lock");
        let hw = hw.min(log.log_end_offset());
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            return Ok(None);
        }
        let low = log.advance_log_start_offset(target)?;
        self.segments_deleted(&log);
        Ok(Some(low))
    }

    /// A follower follows its leader's log start offset (DeleteRecords, retention on the
    /// leader) up to its own log end, so that records deleted on the leader are not served
    /// again after a failover.
    pub fn follow_log_start(&self, leader_start: i64) -> Result<(), LogError> {
        let mut log = self.log.write().expect("log lock");
        let target = leader_start.min(log.log_end_offset());
        if target > log.log_start_offset() {
            log.advance_log_start_offset(target)?;
            self.segments_deleted(&log);
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch against this partition's log: `(epoch, end offset)` from its
    /// leader-epoch cache, see [`PartitionLog::end_offset_for_leader_epoch`].
    pub fn end_offset_for_leader_epoch(&self, epoch: i32) -> (i32, i64) {
        self.log
            .read()
            .expect("log lock")
            .end_offset_for_leader_epoch(epoch)
    }
}
