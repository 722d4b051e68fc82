//! Log compaction (`cleanup.policy=compact`): keep the latest record per key.
//!
//! # What a pass does
//!
//! 1. **Plan** (read lock, microseconds): snapshot the *cleanable* segments — sealed
//!    segments (never the active one) whose newest timestamp is older than
//!    `min.compaction.lag.ms` — with cloned file handles. The part below the cleaner
//!    checkpoint (`cleaner-offset-checkpoint`, the end of the last pass) is *clean*, the
//!    rest *dirty*; the pass runs only if dirty / (clean + dirty) bytes reaches
//!    `min.cleanable.dirty.ratio`.
//! 2. **Map** (no lock): read the dirty segments and record, per key, the offset of its
//!    latest record. Keys are stored as 128-bit hashes; the map is capped at
//!    [`CleanConfig::max_map_bytes`] — when it would overflow, the pass maps only up to
//!    that point (`map_end`) and the next pass continues.
//! 3. **Copy** (no lock): rewrite every cleanable segment starting below `map_end` into
//!    `<segment>.log.cleaned`: a record below `map_end` survives if it is the latest of
//!    its key and is not a tombstone older than `delete.retention.ms` (by record
//!    timestamp); records without a key survive. I/O is throttled to
//!    [`CleanConfig::io_bytes_per_sec`]. The result is validated (read back like a
//!    recovered segment) and fsynced.
//! 4. **Swap** (write lock, one rename per segment): each cleaned file replaces its
//!    segment if that segment is still there with the same size (retention or
//!    DeleteRecords may have removed it meanwhile); the directory is fsynced and the
//!    cleaner checkpoint advanced to `map_end`.
//!
//! # Offsets and batches
//!
//! Offsets never change: a rewritten batch keeps its `baseOffset`, `baseTimestamp`,
//! `maxTimestamp`, producer fields (id, epoch, base sequence), transactional flag and
//! `lastOffsetDelta`; only `recordsCount`, `batchLength` and the CRC change. A batch
//! whose records are all removed stays as an empty batch (61-byte header, `recordsCount`
//! 0, codec bits cleared since there is nothing to decompress), as Kafka does for batches
//! that carry producer state, so offsets stay dense, segment boundaries unchanged and the
//! producer state can still be rebuilt from batch headers (clients skip empty batches).
//!
//! Records are never re-encoded: kept records are copied byte for byte (their
//! offset/timestamp deltas stay valid because the batch base values are unchanged). So
//! headers, including repeated header keys — which `kafka-protocol`'s `Record` would
//! collapse — are preserved exactly. The record parser here reads only length, offset
//! delta, key and value-nullness, walks bytes that are present (no allocation sized by a
//! count read from disk) and rejects anything inconsistent by keeping the batch as is.
//!
//! # Compressed batches
//!
//! A compressed batch (gzip, snappy, lz4, zstd) is decompressed with
//! [`gregor_compression::decompress_bounded`], capped at
//! [`CleanConfig::max_decompressed_bytes`] (the broker's `message.max.decompressed.bytes`,
//! 64 MiB by default), both to map its keys and to copy it. The kept records' bytes are
//! concatenated unchanged and compressed again with the batch's own codec (as Kafka does;
//! Kafka's framing: xerial snappy, lz4 frame, see `gregor-compression`). A batch that
//! would decompress beyond the cap, does not decompress, or whose records are
//! inconsistent is neither mapped nor filtered: it is kept verbatim (a `warn!` when it is
//! mapped, counted in [`CleanStats::batches_kept_verbatim`]). Memory per batch is bounded
//! by the batch read (at most 64 MiB; a larger stored batch fails the pass), the cap for
//! the decompressed records, the kept records (at most the cap) and their compressed
//! form; nothing is allocated per record.
//!
//! Segments can end up holding nothing but empty batches; [`PartitionLog::read`] reads on
//! past them so that a fetch never returns only empty batches while records follow.
//!
//! # Transactions
//!
//! Before mapping, the pass walks the batch headers of the whole cleanable range in
//! offset order (reading the segments in 1 MiB chunks, parsing only headers and the
//! records of control batches; this read counts against the I/O throttle), tracking per
//! producer id the transaction its transactional batches belong to until the control
//! batch that closes it; the marker's key (`version: i16, type: i16`) says 0 ABORT or
//! 1 COMMIT. Only aborted transactions (and those closed by an unreadable marker) are
//! remembered, as offset ranges per producer; below the first open transaction, any
//! other transactional batch was committed. Then:
//! - records of **committed** transactions are mapped and cleaned like any others;
//! - records of **aborted** transactions are not mapped (they must never hide a committed
//!   value) and are removed: the batch becomes an empty batch that keeps its producer id,
//!   epoch, base sequence and transactional flag, so the producer state can still be
//!   rebuilt from the headers;
//! - a transaction closed by a control batch whose marker cannot be read keeps its records
//!   as they are, unmapped (keeping more is always safe);
//! - a transaction with **no marker** in the cleanable range (still open, or its marker
//!   lies beyond: active segment, within `min.compaction.lag.ms`) bounds the pass: nothing
//!   at or after its first offset is mapped or rewritten, so `map_end` (and the cleaner
//!   checkpoint) stops there until the marker is in the cleanable range. If that leaves
//!   nothing to clean, the pass does nothing.
//!
//! Control batches (the markers) are always kept as they are. Kafka removes a marker once
//! `delete.retention.ms` has passed and no record of its transaction remains below it;
//! Gregor keeps them: they are small, the broker's producer-state rebuild and
//! read_committed consumers rely on markers closing the transactions whose (possibly
//! emptied) batches remain, and keeping them is never wrong.
//!
//! Simplification: each pass rewrites the whole cleanable prefix of the log.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::batch::{self, BatchHeader};
use crate::checkpoint;
use crate::partition::PartitionLog;
use crate::segment::{self, Segment};
use crate::LogError;

/// File holding the offset up to which the log has been cleaned.
pub(crate) const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// Suffix of a cleaned segment before it replaces the original.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Estimated bytes per key-map entry (hash, offset, table overhead).
const MAP_ENTRY_BYTES: usize = 48;
/// Largest batch the cleaner reads into memory; a pass that meets a larger one fails and
/// leaves the log as it is (only reachable with `max.message.bytes` above 64 MiB).
const MAX_CLEAN_BATCH: usize = 64 * 1024 * 1024;
/// The codec bits of a batch's `attributes`.
const COMPRESSION_BITS: i16 = 0x07;

/// Settings of one compaction pass.
#[derive(Debug, Clone)]
pub struct CleanConfig {
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long tombstones survive.
    pub delete_retention_ms: i64,
    /// Memory cap of the key map.
    pub max_map_bytes: usize,
    /// Cap on bytes read + written per second.
    pub io_bytes_per_sec: u64,
    /// Largest size a compressed batch may decompress to (the broker passes
    /// `message.max.decompressed.bytes`); a batch that would grow beyond it is kept verbatim.
    pub max_decompressed_bytes: usize,
    /// Wall clock of the pass.
    pub now_ms: i64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments rewritten.
    pub segments: usize,
    /// Their total size before and after.
    pub bytes_before: u64,
    /// Total size after cleaning.
    pub bytes_after: u64,
    /// Records removed (superseded or expired tombstones).
    pub records_removed: u64,
    /// Of which expired tombstones.
    pub tombstones_removed: u64,
    /// Of which records of aborted transactions.
    pub aborted_records_removed: u64,
    /// The cleaner checkpoint after the pass.
    pub cleaned_up_to: i64,
    /// Batches in the cleaned range the cleaner could not read (compressed beyond
    /// [`CleanConfig::max_decompressed_bytes`], or inconsistent) and kept as they were.
    pub batches_kept_verbatim: u64,
}

#[derive(Debug)]
struct SegSnap {
    base: i64,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    next_offset: i64,
}

/// Reads the cleaner checkpoint of a log directory (0 if missing or unreadable).
pub(crate) fn read_checkpoint(dir: &Path) -> i64 {
    fs::read_to_string(dir.join(CLEANER_CHECKPOINT))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_checkpoint(dir: &Path, offset: i64) -> std::io::Result<()> {
    gregor_os::fs::replace_file(
        &dir.join(CLEANER_CHECKPOINT),
        format!("{offset}\n").as_bytes(),
    )
}

fn key_hash(key: &[u8]) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    0u8.hash(&mut a);
    key.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    1u8.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// One record of a batch, as byte ranges of the batch's (decompressed) records.
pub(crate) struct RawRecord<'a> {
    /// The whole record including its length prefix.
    pub(crate) bytes: &'a [u8],
    pub(crate) offset_delta: i64,
    pub(crate) timestamp_delta: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) tombstone: bool,
}

/// Walks the records in `data` (a batch's records section, decompressed), calling `f` on
/// each; `None` if anything is inconsistent or there are not exactly `count` records.
/// Allocates nothing.
fn walk_records<'a>(data: &'a [u8], count: i32, mut f: impl FnMut(RawRecord<'a>)) -> Option<()> {
    let mut found = 0i64;
    let mut pos = 0;
    while pos < data.len() {
        let r = gregor_wire::read_record(data, &mut pos).ok()?;
        f(RawRecord {
            bytes: r.bytes,
            offset_delta: i64::from(r.offset_delta),
            timestamp_delta: r.timestamp_delta,
            key: r.key,
            tombstone: r.value.is_none(),
        });
        found += 1;
    }
    (found == i64::from(count)).then_some(())
}

/// Parses the records of an uncompressed batch; `None` if anything is inconsistent.
#[cfg(test)]
pub(crate) fn parse_records<'a>(
    batch_bytes: &'a [u8],
    header: &BatchHeader,
) -> Option<Vec<RawRecord<'a>>> {
    let mut out = Vec::new();
    walk_records(
        batch_bytes.get(BatchHeader::SIZE..)?,
        header.records_count,
        |r| out.push(r),
    )?;
    Some(out)
}

/// The records section of a batch, decompressed within `cap` bytes if need be.
fn records_section<'a>(
    bytes: &'a [u8],
    header: &BatchHeader,
    cap: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    let payload = bytes
        .get(BatchHeader::SIZE..)
        .ok_or_else(|| "batch shorter than its header".to_string())?;
    match header.compression() {
        0 => Ok(std::borrow::Cow::Borrowed(payload)),
        codec => gregor_compression::decompress_bounded(codec, payload, cap)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| e.to_string()),
    }
}

/// What [`filter_batch`] made of a batch.
enum Filtered {
    /// Every record stays: write the batch as it was.
    Unchanged,
    /// Some records were removed: write this batch instead.
    Rewritten(Vec<u8>),
    /// The records could not be read (or recompressed): write the batch as it was.
    Unreadable(String),
}

/// A copy of `batch` holding only the records for which `keep` is true (given the record
/// and its offset), byte for byte, recompressed with the batch's codec. The copy keeps the
/// base offset, timestamps, producer fields and `lastOffsetDelta`; an emptied batch is a
/// bare header with no compression.
fn filter_batch(
    bytes: &[u8],
    header: &BatchHeader,
    cap: usize,
    mut keep: impl FnMut(&RawRecord, i64) -> bool,
) -> Filtered {
    let data = match records_section(bytes, header, cap) {
        Ok(d) => d,
        Err(e) => return Filtered::Unreadable(e),
    };
    let mut body = Vec::new();
    let (mut total, mut kept) = (0usize, 0usize);
    let walked = walk_records(&data, header.records_count, |r| {
        total += 1;
        if keep(&r, header.base_offset.saturating_add(r.offset_delta)) {
            kept += 1;
            body.extend_from_slice(r.bytes);
        }
    });
    if walked.is_none() {
        return Filtered::Unreadable("malformed records".into());
    }
    if kept == total {
        return Filtered::Unchanged;
    }
    drop(data);
    let codec = header.compression();
    if kept > 0 && codec != 0 {
        body = match gregor_compression::compress(codec, &body) {
            Ok(c) => c,
            Err(e) => return Filtered::Unreadable(e.to_string()),
        };
    }
    match rebuild_batch(bytes, &body, kept, kept == 0) {
        Some(b) => Filtered::Rewritten(b),
        None => Filtered::Unreadable("rewritten batch too large".into()),
    }
}

/// What decides whether a record below `map_end` survives.
struct Keep<'a> {
    map: &'a HashMap<u128, i64>,
    map_end: i64,
    tombstone_horizon: i64,
    cap: usize,
}

/// Filters a (non-aborted) batch: a keyed record below `map_end` survives if it is the
/// latest of its key and not a tombstone older than `delete.retention.ms`.
fn filter_keyed(
    bytes: &[u8],
    header: &BatchHeader,
    keep: &Keep,
    stats: &mut CleanStats,
) -> Filtered {
    let mut tombstones = 0u64;
    let f = filter_batch(bytes, header, keep.cap, |r, offset| {
        let Some(k) = r.key else { return true };
        if offset >= keep.map_end {
            return true;
        }
        if keep
            .map
            .get(&key_hash(k))
            .is_some_and(|&latest| latest > offset)
        {
            return false;
        }
        // With LogAppendTime every record's timestamp is the batch's.
        let timestamp = if header.timestamp_type_log_append() {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(r.timestamp_delta)
        };
        if r.tombstone && timestamp < keep.tombstone_horizon {
            tombstones += 1;
            return false;
        }
        true
    });
    if let Filtered::Rewritten(b) = &f {
        let removed = i64::from(header.records_count) - i64::from(records_count(b));
        stats.records_removed += removed.max(0) as u64;
        stats.tombstones_removed += tombstones;
    }
    f
}

/// `recordsCount` of a whole batch.
fn records_count(batch_bytes: &[u8]) -> i32 {
    batch_bytes
        .get(batch::RECORDS_COUNT_POS..batch::RECORDS_COUNT_POS + 4)
        .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Records in `map` the offset of each keyed record of the batch at or above `from`.
/// A batch whose records cannot be read is not mapped (it will be kept verbatim, which can
/// only make the cleaner keep more).
fn map_keys(
    bytes: &[u8],
    header: &BatchHeader,
    from: i64,
    cap: usize,
    map: &mut HashMap<u128, i64>,
    path: &Path,
) {
    let data = match records_section(bytes, header, cap) {
        Ok(d) => d,
        Err(reason) => {
            warn!(path = %path.display(), offset = header.base_offset, %reason,
                "cannot read batch; its keys are not compacted and it is kept verbatim");
            return;
        }
    };
    // Validate the whole batch before mapping any of it.
    if walk_records(&data, header.records_count, |_| ()).is_none() {
        warn!(path = %path.display(), offset = header.base_offset,
            "malformed records; batch kept verbatim");
        return;
    }
    let _ = walk_records(&data, header.records_count, |r| {
        let offset = header.base_offset.saturating_add(r.offset_delta);
        if let (Some(k), true) = (r.key, offset >= from) {
            map.insert(key_hash(k), offset);
        }
    });
}

/// Largest control batch whose marker the cleaner reads (markers are ~80 bytes).
const MAX_MARKER_BATCH: usize = 64 * 1024;
/// Bytes read at a time when scanning batch headers.
const SCAN_CHUNK: usize = 1 << 20;

/// What the cleaner knows of the transaction a transactional batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnFate {
    /// Closed by a COMMIT marker in the cleanable range: cleaned like any batch.
    Committed,
    /// Closed by an ABORT marker: its records are removed.
    Aborted,
    /// Closed by a control batch whose marker cannot be read: kept as is, not mapped.
    Unknown,
    /// No marker in the cleanable range yet: nothing at or after its first offset is
    /// touched in this pass.
    Open,
}

/// The transactions of the cleanable range, from one walk over its batch headers and
/// transaction markers in offset order.
#[derive(Debug)]
struct Transactions {
    /// Per producer id, the transactions closed by an ABORT (`true`) or by an unreadable
    /// marker (`false`): `(first offset, marker offset, aborted)`, in offset order.
    /// Committed transactions are not stored: below `open_from`, a transactional batch
    /// not covered here was committed.
    closed: HashMap<i64, Vec<(i64, i64, bool)>>,
    /// First offset of the earliest transaction with no marker in the range.
    open_from: i64,
}

impl Transactions {
    fn fate(&self, producer_id: i64, offset: i64) -> TxnFate {
        if offset >= self.open_from {
            return TxnFate::Open;
        }
        if let Some(list) = self.closed.get(&producer_id) {
            let i = list.partition_point(|&(first, _, _)| first <= offset);
            if let Some(&(_, marker, aborted)) = i.checked_sub(1).map(|i| &list[i]) {
                if offset < marker {
                    return if aborted {
                        TxnFate::Aborted
                    } else {
                        TxnFate::Unknown
                    };
                }
            }
        }
        TxnFate::Committed
    }
}

/// The control type of a transaction marker batch (0 ABORT, 1 COMMIT): the key of its
/// first record is `version: i16, type: i16`. `None` if it cannot be read.
fn marker_type(bytes: &[u8], header: &BatchHeader) -> Option<i16> {
    let data = records_section(bytes, header, MAX_MARKER_BATCH).ok()?;
    let mut key = None;
    walk_records(&data, header.records_count, |r| {
        if key.is_none() {
            key = r.key.map(<[u8]>::to_vec);
        }
    })?;
    let key = key?;
    let (version, kind) = match key[..] {
        [v0, v1, t0, t1, ..] => (i16::from_be_bytes([v0, v1]), i16::from_be_bytes([t0, t1])),
        _ => return None,
    };
    // Like Kafka, accept versions newer than 0 (the type keeps its place).
    (version >= 0).then_some(kind)
}

/// Walks the batch headers of `snaps` in offset order (reading only headers and markers)
/// and finds, per producer, which transactions committed, aborted or are still open.
fn scan_transactions(snaps: &[SegSnap], io_bytes: &mut u64) -> Result<Transactions, LogError> {
    let mut open: HashMap<i64, i64> = HashMap::new();
    let mut closed: HashMap<i64, Vec<(i64, i64, bool)>> = HashMap::new();
    let mut buf = Vec::new();
    for s in snaps {
        let mut chunk = ChunkReader::new(s, &mut buf, io_bytes);
        let mut pos = 0u64;
        while pos < s.size {
            let header = BatchHeader::parse(chunk.get(pos, BatchHeader::SIZE)?)?;
            let size = header.total_size();
            if pos + size as u64 > s.size {
                return Err(LogError::CorruptBatch(format!(
                    "{}: batch at {pos} runs past the end of the segment",
                    s.path.display()
                )));
            }
            if header.is_transactional() {
                let pid = header.producer_id;
                if !header.is_control() {
                    open.entry(pid).or_insert(header.base_offset);
                } else if let Some(first) = open.remove(&pid) {
                    let kind = if size <= MAX_MARKER_BATCH {
                        marker_type(chunk.get(pos, size)?, &header)
                    } else {
                        None
                    };
                    match kind {
                        Some(1) => {}
                        Some(0) => {
                            closed
                                .entry(pid)
                                .or_default()
                                .push((first, header.base_offset, true))
                        }
                        _ => {
                            warn!(path = %s.path.display(), offset = header.base_offset,
                                "unreadable transaction marker; the transaction's records are kept as they are");
                            closed
                                .entry(pid)
                                .or_default()
                                .push((first, header.base_offset, false))
                        }
                    }
                }
            }
            pos += size as u64;
        }
    }
    Ok(Transactions {
        closed,
        open_from: open.values().copied().min().unwrap_or(i64::MAX),
    })
}

/// Positioned reads of a segment snapshot through a buffer of [`SCAN_CHUNK`] bytes.
struct ChunkReader<'a> {
    seg: &'a SegSnap,
    buf: &'a mut Vec<u8>,
    start: u64,
    read: &'a mut u64,
}

impl<'a> ChunkReader<'a> {
    fn new(seg: &'a SegSnap, buf: &'a mut Vec<u8>, read: &'a mut u64) -> Self {
        buf.clear();
        ChunkReader {
            seg,
            buf,
            start: 0,
            read,
        }
    }

    /// `len` bytes at `pos`, which must lie within the segment.
    fn get(&mut self, pos: u64, len: usize) -> Result<&[u8], LogError> {
        let end = pos.checked_add(len as u64).filter(|&e| e <= self.seg.size);
        let Some(end) = end else {
            return Err(LogError::CorruptBatch(format!(
                "{}: {len} bytes at {pos} run past the end of the segment",
                self.seg.path.display()
            )));
        };
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let want = (self.seg.size - pos).min(len.max(SCAN_CHUNK) as u64) as usize;
            self.buf.resize(want, 0);
            self.seg.file.read_exact_at(self.buf, pos)?;
            *self.read += want as u64;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// The I/O of one pass, paced to at most `rate` bytes/s (0: unpaced). The pace is real
/// I/O against real elapsed time, so it uses the monotonic clock, not the log's [`Clock`].
///
/// [`Clock`]: gregor_os::Clock
struct Pace {
    started: Instant,
    io_bytes: u64,
    rate: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            started: Instant::now(),
            io_bytes: 0,
            rate,
        }
    }

    /// Sleeps as needed to keep the bytes done so far under the rate.
    fn throttle(&self) {
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.io_bytes as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// What a pass will look at, taken under the read lock.
struct Plan {
    dir: PathBuf,
    /// The sealed segments old enough to clean (`min.compaction.lag.ms`).
    snaps: Vec<SegSnap>,
    /// Offsets below this were cleaned by the last pass.
    first_dirty: i64,
    index_interval: u64,
}

/// Step 1 (read lock): the cleanable segments, or `None` if the pass is not due (nothing
/// dirty, or dirty below `min.cleanable.dirty.ratio`).
fn plan(log: &RwLock<PartitionLog>, cfg: &CleanConfig) -> Option<Plan> {
    let plan = {
        let l = log.read().expect("log lock");
        let horizon = cfg.now_ms.saturating_sub(cfg.min_compaction_lag_ms);
        let sealed = l.segments.len() - 1;
        let snaps: Vec<SegSnap> = l.segments[..sealed]
            .iter()
            .take_while(|s| s.max_timestamp().is_none_or(|m| m.timestamp <= horizon))
            .map(|s| SegSnap {
                base: s.base_offset(),
                path: s.path().to_path_buf(),
                file: s.file_handle(),
                size: s.size(),
                next_offset: s.next_offset(),
            })
            .collect();
        Plan {
            dir: l.dir.clone(),
            snaps,
            first_dirty: l.cleaned_up_to.max(l.log_start_offset()),
            index_interval: l.config.index_interval_bytes,
        }
    };
    if plan.snaps.last()?.next_offset <= plan.first_dirty {
        return None;
    }
    let total: u64 = plan.snaps.iter().map(|s| s.size).sum();
    let dirty: u64 = plan
        .snaps
        .iter()
        .filter(|s| s.next_offset > plan.first_dirty)
        .map(|s| s.size)
        .sum();
    if total == 0 || (dirty as f64) / (total as f64) < cfg.min_cleanable_dirty_ratio {
        return None;
    }
    Some(plan)
}

/// Step 2 (no lock): the offset of the last record of each key in the dirty range, up to
/// the returned end (bounded by the map's memory and by the first open transaction).
fn build_map(
    plan: &Plan,
    txns: &Transactions,
    cfg: &CleanConfig,
    pace: &mut Pace,
) -> Result<(HashMap<u128, i64>, i64), LogError> {
    let first_dirty = plan.first_dirty;
    let max_entries = (cfg.max_map_bytes / MAP_ENTRY_BYTES).max(1);
    let mut map: HashMap<u128, i64> = HashMap::new();
    let mut map_end = first_dirty;
    'map: for s in plan.snaps.iter().filter(|s| s.next_offset > first_dirty) {
        for item in SegmentBatches::new(s) {
            let (header, bytes) = item?;
            pace.io_bytes += bytes.len() as u64;
            if header.next_offset() <= first_dirty {
                continue;
            }
            // Nothing at or after the first offset of a transaction that has no marker
            // yet is cleaned in this pass.
            if header.base_offset >= txns.open_from {
                break 'map;
            }
            // Control batches carry markers, not keys. Records of aborted transactions
            // (and of transactions whose marker cannot be read) stay out of the map: they
            // must never hide a committed value of the same key.
            let mapped = !header.is_control()
                && (!header.is_transactional()
                    || txns.fate(header.producer_id, header.base_offset) == TxnFate::Committed);
            if mapped {
                if map.len() + header.records_count.max(0) as usize > max_entries
                    && map_end > first_dirty
                {
                    break 'map;
                }
                let cap = cfg.max_decompressed_bytes;
                map_keys(&bytes, &header, first_dirty, cap, &mut map, &s.path);
            }
            map_end = header.next_offset();
        }
        pace.throttle();
    }
    Ok((map, map_end))
}

/// What becomes of one batch of the cleaned range.
fn filter_one(
    header: &BatchHeader,
    bytes: &[u8],
    keep: &Keep,
    txns: &Transactions,
    stats: &mut CleanStats,
) -> Filtered {
    if header.is_control() || header.base_offset >= keep.map_end {
        return Filtered::Unchanged;
    }
    if !header.is_transactional() {
        return filter_keyed(bytes, header, keep, stats);
    }
    match txns.fate(header.producer_id, header.base_offset) {
        TxnFate::Committed => filter_keyed(bytes, header, keep, stats),
        TxnFate::Aborted if header.records_count > 0 => match rebuild_batch(bytes, &[], 0, true) {
            Some(empty) => {
                let n = u64::try_from(header.records_count).unwrap_or(0);
                stats.records_removed += n;
                stats.aborted_records_removed += n;
                Filtered::Rewritten(empty)
            }
            None => Filtered::Unreadable("cannot empty batch".into()),
        },
        TxnFate::Aborted | TxnFate::Unknown | TxnFate::Open => Filtered::Unchanged,
    }
}

/// Step 3 (no lock): writes the cleaned copy of segment `s` next to it, fsyncs it and
/// validates it as recovery would; returns the copy with its index.
fn copy_segment(
    s: &SegSnap,
    plan: &Plan,
    keep: &Keep,
    txns: &Transactions,
    cfg: &CleanConfig,
    stats: &mut CleanStats,
    pace: &mut Pace,
) -> Result<Segment, LogError> {
    let tmp = PathBuf::from(format!("{}{CLEANED_SUFFIX}", s.path.display()));
    let mut out = BufWriter::with_capacity(
        1 << 20,
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?,
    );
    let mut written = 0u64;
    for item in SegmentBatches::new(s) {
        let (header, bytes) = item?;
        pace.io_bytes += bytes.len() as u64;
        let data = match filter_one(&header, &bytes, keep, txns, stats) {
            Filtered::Rewritten(b) => b,
            Filtered::Unchanged => bytes,
            Filtered::Unreadable(reason) => {
                debug!(path = %s.path.display(), offset = header.base_offset, %reason,
                    "batch kept verbatim");
                stats.batches_kept_verbatim += 1;
                bytes
            }
        };
        out.write_all(&data)?;
        written += data.len() as u64;
        pace.io_bytes += data.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    // Validate what we wrote exactly like recovery would, and build its index.
    let (seg, recovery) = Segment::recover(tmp.clone(), s.base, plan.index_interval, cfg.now_ms)?;
    if recovery.bytes_dropped > 0 || seg.next_offset() != s.next_offset {
        let _ = fs::remove_file(&tmp);
        return Err(LogError::CorruptBatch(format!(
            "cleaned copy of {} failed validation: {:?}",
            s.path.display(),
            recovery.reason
        )));
    }
    stats.segments += 1;
    stats.bytes_before += s.size;
    stats.bytes_after += written;
    Ok(seg)
}

/// Step 4 (write lock): renames each copy over its segment if the segment is unchanged
/// since the plan, then records `map_end` as cleaned.
fn swap(
    log: &RwLock<PartitionLog>,
    dir: &Path,
    cleaned: Vec<(i64, u64, Segment)>,
    map_end: i64,
) -> Result<(), LogError> {
    let mut l = log.write().expect("log lock");
    let sealed = l.segments.len() - 1;
    for (base, old_size, mut seg) in cleaned {
        let tmp = seg.path().to_path_buf();
        let Some(i) = l.segments[..sealed]
            .iter()
            .position(|s| s.base_offset() == base && s.size() == old_size)
        else {
            debug!(path = %tmp.display(), "segment changed during cleaning; discarding copy");
            let _ = fs::remove_file(&tmp);
            continue;
        };
        let final_path = l.segments[i].path().to_path_buf();
        // Old index first: it must never describe the new file.
        let _ = fs::remove_file(segment::index_path(&final_path));
        fs::rename(&tmp, &final_path)?;
        seg.set_path(final_path);
        if let Err(e) = seg.write_index() {
            tracing::warn!(error = %e, "could not write index file after cleaning");
        }
        l.segments[i] = seg;
    }
    checkpoint::sync_dir(dir)?;
    l.cleaned_up_to = map_end;
    Ok(())
}

/// Runs one compaction pass on `log` if it is due; see the module docs.
pub fn clean(
    log: &RwLock<PartitionLog>,
    cfg: &CleanConfig,
) -> Result<Option<CleanStats>, LogError> {
    let Some(plan) = plan(log, cfg) else {
        return Ok(None);
    };
    let mut pace = Pace::new(cfg.io_bytes_per_sec);
    // Which transactions in the cleanable range committed, aborted or are still open.
    let txns = scan_transactions(&plan.snaps, &mut pace.io_bytes)?;
    pace.throttle();
    let (map, map_end) = build_map(&plan, &txns, cfg, &mut pace)?;
    if map_end <= plan.first_dirty {
        debug!(dir = %plan.dir.display(), open_transaction_from = txns.open_from,
            "nothing cleanable before an open transaction");
        return Ok(None);
    }
    let keep = Keep {
        map: &map,
        map_end,
        tombstone_horizon: cfg.now_ms.saturating_sub(cfg.delete_retention_ms),
        cap: cfg.max_decompressed_bytes,
    };
    let mut stats = CleanStats::default();
    let mut cleaned: Vec<(i64, u64, Segment)> = Vec::new();
    for s in plan.snaps.iter().filter(|s| s.base < map_end) {
        let seg = copy_segment(s, &plan, &keep, &txns, cfg, &mut stats, &mut pace)?;
        cleaned.push((s.base, s.size, seg));
        pace.throttle();
    }
    swap(log, &plan.dir, cleaned, map_end)?;
    write_checkpoint(&plan.dir, map_end)?;
    stats.cleaned_up_to = map_end;
    info!(
        dir = %plan.dir.display(),
        segments = stats.segments,
        bytes_before = stats.bytes_before,
        bytes_after = stats.bytes_after,
        records_removed = stats.records_removed,
        tombstones_removed = stats.tombstones_removed,
        aborted_records_removed = stats.aborted_records_removed,
        batches_kept_verbatim = stats.batches_kept_verbatim,
        cleaned_up_to = map_end,
        elapsed_ms = pace.started.elapsed().as_millis() as u64,
        "compacted log"
    );
    Ok(Some(stats))
}

/// `batch`'s header followed by `body` (the records section, compressed as the header
/// says unless `plain`, which clears the codec bits), with `recordsCount` = `count` and
/// `batchLength` and CRC recomputed. Everything else in the header is kept.
fn rebuild_batch(batch_bytes: &[u8], body: &[u8], count: usize, plain: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(BatchHeader::SIZE + body.len());
    out.extend_from_slice(batch_bytes.get(..BatchHeader::SIZE)?);
    out.extend_from_slice(body);
    let batch_length = i32::try_from(out.len() - batch::LOG_OVERHEAD).ok()?;
    out[batch::BATCH_LENGTH_POS..batch::BATCH_LENGTH_POS + 4]
        .copy_from_slice(&batch_length.to_be_bytes());
    out[batch::RECORDS_COUNT_POS..batch::RECORDS_COUNT_POS + 4]
        .copy_from_slice(&i32::try_from(count).ok()?.to_be_bytes());
    if plain {
        let attributes =
            i16::from_be_bytes([out[batch::ATTRIBUTES_POS], out[batch::ATTRIBUTES_POS + 1]])
                & !COMPRESSION_BITS;
        out[batch::ATTRIBUTES_POS..batch::ATTRIBUTES_POS + 2]
            .copy_from_slice(&attributes.to_be_bytes());
    }
    let crc = batch::compute_crc(&out);
    out[batch::CRC_POS..batch::CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// Reads a sealed segment's batches one at a time (headers were validated when the
/// segment was written or recovered).
struct SegmentBatches<'a> {
    seg: &'a SegSnap,
    pos: u64,
}

impl<'a> SegmentBatches<'a> {
    fn new(seg: &'a SegSnap) -> Self {
        SegmentBatches { seg, pos: 0 }
    }
}

impl Iterator for SegmentBatches<'_> {
    type Item = Result<(BatchHeader, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.seg.size {
            return None;
        }
        let mut head = [0u8; BatchHeader::SIZE];
        let r = (|| {
            self.seg.file.read_exact_at(&mut head, self.pos)?;
            let header = BatchHeader::parse(&head)?;
            let size = header.total_size();
            if size > MAX_CLEAN_BATCH || self.pos + size as u64 > self.seg.size {
                return Err(LogError::CorruptBatch(format!(
                    "{}: batch of {size} bytes at {} cannot be cleaned",
                    self.seg.path.display(),
                    self.pos
                )));
            }
            let mut bytes = vec![0u8; size];
            self.seg.file.read_exact_at(&mut bytes, self.pos)?;
            self.pos += size as u64;
            Ok((header, bytes))
        })();
        if r.is_err() {
            self.pos = self.seg.size;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests;
