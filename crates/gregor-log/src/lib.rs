//! The on-disk log of one Gregor partition.
//!
//! A [`PartitionLog`] stores Kafka `RecordBatch` v2 batches exactly as
//! producers sent them. The only bytes the log changes are each batch's
//! 8-byte `baseOffset`, which it overwrites when assigning offsets; that
//! field is outside the batch CRC (which covers bytes `[21..end)`), so stored
//! batches remain valid and are served to consumers verbatim. Records are
//! never decoded: all bookkeeping uses the 61-byte batch headers (see
//! [`batch`]).
//!
//! # On-disk layout
//!
//! Everything lives in one directory per partition:
//!
//! ```text
//! <dir>/00000000000000000000.log     segment whose first batch has base offset 0
//! <dir>/00000000000000000000.index   its offset/time index (sealed segments, and all at clean shutdown)
//! <dir>/00000000000000001234.log     next segment, first base offset 1234 (the active one)
//! <dir>/00000000000000000000.txnindex aborted transactions whose ABORT marker is in that segment
//! <dir>/log-start-offset             checkpoint: decimal log start offset + '\n'
//! <dir>/cleaner-offset-checkpoint    compaction: offsets below it were cleaned by the last pass
//! <dir>/leader-epoch-checkpoint      leader epochs and their start offsets (Kafka's text format)
//! <dir>/*.tmp, *.log.cleaned         transient; removed on open
//! ```
//!
//! * **Segments** (`<base offset as 20 zero-padded digits>.log`, as in Kafka)
//!   are append-only files containing nothing but whole batches back to back.
//!   The last segment is the *active* one; appends go there. Before an append
//!   that would push a non-empty active segment past
//!   [`LogConfig::segment_bytes`], or once its first append is
//!   [`LogConfig::segment_ms`] old, a new segment named after the next offset
//!   is created ("rolled"). One append is always written to a single
//!   segment with a single positioned write.
//! * **Index**: a sparse index per segment, one entry at least every
//!   [`LogConfig::index_interval_bytes`] bytes: `(base offset, file position,
//!   largest maxTimestamp of all earlier batches)`, so the same entries serve
//!   offset lookups and timestamp lookups (ListOffsets by time binary-searches
//!   the timestamp column, then scans batch headers forward — never the whole
//!   log). It lives in memory and is persisted as `<base>.index` (magic,
//!   segment size and next offset it describes, first-append time, max
//!   timestamp, entries, CRC-32C) when a segment is sealed by a roll, for
//!   the active segment at checkpoints
//!   ([`PartitionLog::checkpoint_active_index`]), and for every segment at a
//!   clean shutdown. Because segments only grow, an index file written
//!   earlier stays a correct description of a *prefix* of its segment.
//!   Index files are written with tmp + rename, not fsynced: one that is
//!   missing, damaged or longer than its segment is ignored and the segment
//!   is scanned instead. The operations that shrink a segment —
//!   recovery cutting a torn tail, replication's [`PartitionLog::truncate_to`] —
//!   first remove its index file durably (unlink + directory fsync);
//!   compaction swaps in a new file and a new index.
//! * **Aborted-transaction index** (`<base>.txnindex`, see [`txnindex`]):
//!   Kafka's 34-byte entries appended by [`PartitionLog::append_aborted_txn`]
//!   to the segment holding the marker; synced by the next [`SyncJob`];
//!   deleted with its segment; read and truncated on open by the caller
//!   ([`PartitionLog::read_aborted_txns`], [`PartitionLog::truncate_aborted_txns`]).
//!   The log attaches no meaning to the entries.
//! * **`log-start-offset`** holds the offset set by
//!   [`PartitionLog::advance_log_start_offset`] (DeleteRecords, retention);
//!   it is replaced atomically (write tmp, fsync, rename, fsync dir). If it is
//!   missing the log starts at the base offset of the first segment.
//!
//! # Invariants
//!
//! * **Dense offsets**: every batch's base offset equals the previous batch's
//!   last offset + 1, across segment boundaries too, and each segment's first
//!   batch starts at the segment's base offset. Hence segment `i + 1`'s base
//!   offset is segment `i`'s next offset. Compaction keeps this: a batch that
//!   loses all its records stays as an empty batch with the same offsets.
//! * **Whole batches**: a batch is never split across segments, and a
//!   segment file contains only whole, CRC-valid batches (after recovery).
//! * **Ordered bounds**: `log_start_offset <= log_end_offset`, and the first segment contains
//!   `log_start_offset` (or is the empty active segment at `log_end_offset`).
//!   There is always at least one segment.
//! * **Durable prefix**: every record below [`PartitionLog::durable_offset`]
//!   has been fdatasynced, together with the directory entries of its segment.
//!
//! # Durability: sync jobs and group commit
//!
//! Appends are plain `pwrite`s. [`PartitionLog::take_sync_job`] (called under
//! the caller's write lock, cheap) returns a [`SyncJob`] holding cloned
//! `Arc<File>` handles of the segments written since the last job, the
//! directory if segments were created or removed, and the log end offset it
//! covers; [`SyncJob::run`] fdatasyncs them *without* the lock, so appends
//! and reads continue; [`PartitionLog::complete_sync`] then advances the
//! durable offset. The broker's flusher uses this for group commit (one fsync
//! round covers everything appended meanwhile, across partitions).
//! [`PartitionLog::flush`] is the same three steps back to back. A failed
//! fsync takes the log offline (appends fail with
//! [`LogError::StorageFailed`]): after a failed fsync the kernel may have
//! dropped the dirty pages, so retrying would prove nothing — the durable
//! offset never advances again and [`PartitionLog::flush`] fails
//! ([`PartitionLog::offline_error`] says why). The records past the durable
//! offset may or may not be found by the next open's recovery.
//!
//! # Recovery
//!
//! [`PartitionLog::open_with`] takes a [`RecoveryHint`] from the caller: the
//! *recovery point* (an offset below which everything was fsynced, from the
//! broker's periodic checkpoint of [`PartitionLog::durable_offset`]) and
//! whether the previous process shut down cleanly. An index file is trusted
//! for the part of the segment it describes if the whole segment is known
//! durable — every segment after a clean shutdown, otherwise those lying
//! wholly below the recovery point — or if the prefix it describes ends at
//! or below the recovery point (the active segment, indexed at each
//! checkpoint). Only bytes past a trusted index are read and validated; so
//! after a crash a start reads just the unflushed tail of the active
//! segment (plus what was appended since its last index checkpoint).
//! Segments with no usable index file are scanned from the start. Scanning
//! validates every batch (length, magic, CRC, dense offsets). The log is cut at the first
//! invalid batch: a torn tail is truncated (a `warn!` names the segment, the
//! bytes dropped and why), and if the damage is in an earlier segment the
//! later segments are deleted as well, because keeping them would leave a
//! gap in the offsets. Recovered data past the recovery point may exist only
//! in the page cache, so it is fsynced before `open` returns; the durable
//! offset then equals the log end offset. Damage inside a trusted segment
//! (below the recovery point) is not looked for — as in Kafka; [`open`]
//! without a hint validates everything.
//!
//! [`open`]: PartitionLog::open
//!
//! # Retention and compaction
//!
//! [`PartitionLog::apply_retention`] deletes whole segments from the start
//! (time: the segment's largest timestamp is older than `retention.ms`;
//! size: dropping it keeps at least `retention.bytes`), checkpointing the new
//! log start offset before unlinking files. Compaction lives in [`clean`]; it
//! reads and writes without the log lock and swaps cleaned segments in with
//! one rename each.
//!
//! # Replication (issue 16; `partition/replication.rs`)
//!
//! * **Follower appends**: [`PartitionLog::append_replicated`] stores batches exactly as
//!   the leader stored them — base offsets kept, not assigned — after validating each
//!   batch's framing and CRC; a batch that does not start at the log end offset (a gap or
//!   an overlap) is refused with [`LogError::OffsetMismatch`] and nothing is written.
//!   Rolling, the index and durability (sync jobs) are those of an ordinary append.
//! * **Truncation** (KIP-101): [`PartitionLog::truncate_to`] removes every batch at or
//!   above an offset — whole segments above it deleted (last first), the segment holding
//!   it cut at the batch boundary (a batch straddling the offset goes whole), its index
//!   file removed durably before the cut, `.txnindex` entries of markers at or above the
//!   new end dropped first. A crash at any step leaves files that open as a prefix of the
//!   log. The cut is fsynced before it returns, the durable offset comes down to at most
//!   the new end and a sync job taken before the truncation no longer moves it. Never below the
//!   log start offset. This is the second operation (after recovery cutting a torn tail)
//!   that shrinks a segment; the caller lowers its checkpointed recovery point and drops
//!   producer snapshots above the new end.
//! * **Leader epochs** ([`epoch`], `partition/epochs.rs`): a [`LeaderEpochCache`] per log,
//!   persisted as `leader-epoch-checkpoint` (Kafka's format: version, count, lines
//!   `"epoch startOffset"`; replaced atomically), loaded on open — rebuilt from the
//!   batches' `partitionLeaderEpoch` if missing or damaged — and trimmed there to
//!   `[log start, log end)`. A leader calls [`PartitionLog::assign_leader_epoch`] when it
//!   takes over (its epoch starts at the log end; lower epochs are
//!   [`LogError::StaleLeaderEpoch`]) and stamps its batches with
//!   [`batch::stamp_partition_leader_epoch`] (outside the CRC: nothing is recomputed); a
//!   follower's [`PartitionLog::append_replicated`] records each new epoch of the batches
//!   it stores. [`PartitionLog::end_offset_for_leader_epoch`] answers OffsetForLeaderEpoch
//!   as Kafka does. Crash ordering: an entry is written before the batches of its epoch,
//!   and removed after a truncation removed them, so the file never lacks an entry the
//!   log needs; entries at or past the log end are dropped on open. The cache is trimmed
//!   from the start when the log start offset moves.
//!
//! # Reads
//!
//! [`PartitionLog::read`] finds the segment holding the requested offset,
//! binary-searches its sparse index, scans batch headers forward to the
//! batch containing the offset, and then does one positioned read of up to
//! `max_bytes` (at least the whole first batch), trimmed to whole batches
//! below the upper bound. Like Kafka, one read returns data from a single
//! segment; the caller continues from the next offset.
//!
//! # Known limitations
//!
//! * The produce path does not stamp `partitionLeaderEpoch` yet (the helper exists:
//!   [`batch::stamp_partition_leader_epoch`]); until it does, batches keep the value the
//!   producer sent, and a cache rebuilt from such a log holds whatever epochs producers
//!   put there (non-decreasing ones only).
//! * No preallocation (`fallocate`): with fdatasync per group-commit round
//!   the measured throughput is already at raw-disk level (see the README's
//!   `bench-storage`).
//!
//! # Concurrency
//!
//! Reads take `&self` and use positioned reads (`pread`), so the broker can
//! serve many fetches concurrently behind a read lock; appends take
//! `&mut self`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
mod checkpoint;
pub mod clean;
pub mod epoch;
mod partition;
mod segment;
pub mod txnindex;

pub use batch::{BatchError, BatchHeader, ValidateError, ValidatedBatches};
pub use epoch::{EpochEntry, LeaderEpochCache};
pub use partition::{AbortedTxnsOnDisk, PartitionLog, RecoveryHint, SyncJob};
pub use txnindex::AbortedTxnEntry;

/// Wall-clock milliseconds since the Unix epoch, for callers that have no
/// [`gregor_os::Clock`] yet (the log itself never calls it: it takes the time
/// from the clock it was opened with, or as an argument).
pub fn now_ms() -> i64 {
    use gregor_os::Clock as _;
    gregor_os::SystemClock.now_ms()
}

/// Tunables of a [`PartitionLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before the active one would exceed this size.
    /// Default 1 GiB.
    pub segment_bytes: u64,
    /// Roll the active segment before an append once its first batch is
    /// at least this old (Kafka's `segment.ms`). Default 7 days.
    pub segment_ms: i64,
    /// Approximate number of bytes between sparse index entries.
    /// Default 4096.
    pub index_interval_bytes: u64,
    /// Largest single batch [`PartitionLog::append`] accepts (Kafka's
    /// `message.max.bytes`). Default 1 MiB + 12 bytes of log overhead.
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            max_batch_bytes: 1024 * 1024 + batch::LOG_OVERHEAD,
        }
    }
}

/// Errors returned by [`PartitionLog`].
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    /// An I/O error from the file system.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A batch is damaged: bad CRC, bad magic, inconsistent lengths.
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    /// A batch in an append is larger than [`LogConfig::max_batch_bytes`].
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// Size of the offending batch.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A well-formed batch whose contents are not acceptable, e.g.
    /// `recordsCount < 1` or `lastOffsetDelta != recordsCount - 1`.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// An earlier fsync of this log failed; the log refuses writes because
    /// the kernel may have dropped the unsynced pages (see "fsyncgate").
    #[error("log is offline after a failed fsync: {0}")]
    StorageFailed(String),
    /// A replicated batch ([`PartitionLog::append_replicated`]) does not start at the log
    /// end offset (or where the previous batch of the same append ended): a gap or an
    /// overlap. The follower must truncate its log or fetch again from its log end offset.
    #[error("replicated batch has base offset {found} where {expected} was expected")]
    OffsetMismatch {
        /// The offset the batch had to start at (the log end offset).
        expected: i64,
        /// The batch's base offset.
        found: i64,
    },
    /// A leader epoch older than the latest one in the log's leader-epoch cache
    /// ([`PartitionLog::assign_leader_epoch`]).
    #[error("leader epoch {epoch} is older than the log's latest leader epoch {latest}")]
    StaleLeaderEpoch {
        /// The epoch refused.
        epoch: i32,
        /// The latest epoch in the cache.
        latest: i32,
    },
    /// The requested offset is outside `[start, end]`.
    #[error("offset {requested} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: i64,
        /// The log start offset.
        start: i64,
        /// The log end offset.
        end: i64,
    },
}

impl From<BatchError> for LogError {
    fn from(e: BatchError) -> Self {
        if e.is_corruption() {
            LogError::CorruptBatch(e.to_string())
        } else {
            LogError::InvalidRecord(e.to_string())
        }
    }
}

/// Outcome of a successful [`PartitionLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the first record.
    pub base_offset: i64,
    /// Offset assigned to the last record.
    pub last_offset: i64,
    /// Largest `maxTimestamp` among the appended batches.
    pub max_timestamp: i64,
    /// Last offset of the first batch carrying `max_timestamp` (records are
    /// not decoded, so this is batch granularity, like Kafka's
    /// "shallow" offset of max timestamp).
    pub offset_of_max_timestamp: i64,
    /// Number of batches appended.
    pub batches: usize,
    /// Number of records appended (sum of `recordsCount`).
    pub records: i64,
    /// A new segment was rolled for this append (its base offset is `base_offset`).
    pub rolled: bool,
}

/// Outcome of a [`PartitionLog::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Zero or more whole batches, concatenated, exactly as stored.
    pub data: bytes::Bytes,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
    /// Log end offset at the time of the read.
    pub log_end_offset: i64,
}
