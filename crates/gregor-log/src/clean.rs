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
//! `maxTimestamp`, producer fields and `lastOffsetDelta`; only `recordsCount`,
//! `batchLength` and the CRC change. A batch whose records are all removed stays as an
//! empty batch (61-byte header, `recordsCount` 0), as Kafka does for batches that carry
//! producer state, so offsets stay dense and segment boundaries unchanged (clients skip
//! empty batches).
//!
//! Records are never re-encoded: kept records are copied byte for byte (their
//! offset/timestamp deltas stay valid because the batch base values are unchanged). So
//! headers, including repeated header keys — which `kafka-protocol`'s `Record` would
//! collapse — are preserved exactly. The record parser here reads only length, offset
//! delta, key and value-nullness, walks bytes that are present (no allocation sized by a
//! count read from disk) and rejects anything inconsistent by keeping the batch as is.
//!
//! Simplifications: compressed and control/transactional batches are kept verbatim
//! (their keys are not mapped, which can only make the cleaner keep more, never drop a
//! latest record); each pass rewrites the whole cleanable prefix of the log.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, info};

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
/// Largest batch the cleaner reads into memory; larger ones are kept verbatim.
const MAX_CLEAN_BATCH: usize = 64 * 1024 * 1024;

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
    /// The cleaner checkpoint after the pass.
    pub cleaned_up_to: i64,
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
    let tmp = dir.join(format!("{CLEANER_CHECKPOINT}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{offset}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(CLEANER_CHECKPOINT))?;
    checkpoint::sync_dir(dir)
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

/// Zig-zag varint (Kafka's varint / varlong) at `*pos`; `None` if malformed.
fn varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// One record of an uncompressed batch, as byte ranges of the batch.
pub(crate) struct RawRecord<'a> {
    /// The whole record including its length prefix.
    pub(crate) bytes: &'a [u8],
    pub(crate) offset_delta: i64,
    pub(crate) timestamp_delta: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) tombstone: bool,
}

/// Parses the records of an uncompressed batch; `None` if anything is inconsistent.
pub(crate) fn parse_records<'a>(
    batch_bytes: &'a [u8],
    header: &BatchHeader,
) -> Option<Vec<RawRecord<'a>>> {
    let mut out = Vec::new();
    let mut pos = BatchHeader::SIZE;
    while pos < batch_bytes.len() {
        let start = pos;
        let len = usize::try_from(varint(batch_bytes, &mut pos)?).ok()?;
        let end = pos.checked_add(len)?;
        let rec = batch_bytes.get(pos..end)?;
        let mut p = 1; // attributes
        let timestamp_delta = varint(rec, &mut p)?;
        let offset_delta = varint(rec, &mut p)?;
        let key_len = varint(rec, &mut p)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = rec.get(p..p.checked_add(usize::try_from(key_len).ok()?)?)?;
            p += k.len();
            Some(k)
        };
        let value_len = varint(rec, &mut p)?;
        out.push(RawRecord {
            bytes: &batch_bytes[start..end],
            offset_delta,
            timestamp_delta,
            key,
            tombstone: value_len < 0,
        });
        pos = end;
    }
    (out.len() == usize::try_from(header.records_count).ok()?).then_some(out)
}

/// Sleeps as needed to keep `bytes` since `started` under `rate` bytes/s.
fn throttle(started: Instant, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// Runs one compaction pass on `log` if it is due; see the module docs.
pub fn clean(
    log: &RwLock<PartitionLog>,
    cfg: &CleanConfig,
) -> Result<Option<CleanStats>, LogError> {
    // ---- 1. plan (read lock)
    let (dir, snaps, first_dirty, interval) = {
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
        (
            l.dir.clone(),
            snaps,
            l.cleaned_up_to.max(l.log_start_offset()),
            l.config.index_interval_bytes,
        )
    };
    let Some(last) = snaps.last() else {
        return Ok(None);
    };
    if last.next_offset <= first_dirty {
        return Ok(None);
    }
    let total: u64 = snaps.iter().map(|s| s.size).sum();
    let dirty: u64 = snaps
        .iter()
        .filter(|s| s.next_offset > first_dirty)
        .map(|s| s.size)
        .sum();
    if total == 0 || (dirty as f64) / (total as f64) < cfg.min_cleanable_dirty_ratio {
        return Ok(None);
    }
    let started = Instant::now();
    let mut io_bytes = 0u64;

    // ---- 2. map (no lock)
    let max_entries = (cfg.max_map_bytes / MAP_ENTRY_BYTES).max(1);
    let mut map: HashMap<u128, i64> = HashMap::new();
    let mut map_end = first_dirty;
    'map: for s in snaps.iter().filter(|s| s.next_offset > first_dirty) {
        for item in SegmentBatches::new(s) {
            let (header, bytes) = item?;
            io_bytes += bytes.len() as u64;
            if header.next_offset() <= first_dirty {
                continue;
            }
            // Transactional batches are kept whole and stay out of the key map until the
            // cleaner knows which transactions aborted: an aborted write must never hide a
            // committed value of the same key.
            if header.compression() == 0 && !header.is_control() && !header.is_transactional() {
                if map.len() + header.records_count.max(0) as usize > max_entries
                    && map_end > first_dirty
                {
                    break 'map;
                }
                if let Some(records) = parse_records(&bytes, &header) {
                    for r in records {
                        let offset = header.base_offset + r.offset_delta;
                        if let (Some(k), true) = (r.key, offset >= first_dirty) {
                            map.insert(key_hash(k), offset);
                        }
                    }
                }
            }
            map_end = header.next_offset();
        }
        throttle(started, io_bytes, cfg.io_bytes_per_sec);
    }

    // ---- 3. copy (no lock)
    let tombstone_horizon = cfg.now_ms.saturating_sub(cfg.delete_retention_ms);
    let mut stats = CleanStats::default();
    let mut cleaned: Vec<(i64, u64, Segment)> = Vec::new();
    for s in snaps.iter().filter(|s| s.base < map_end) {
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
            io_bytes += bytes.len() as u64;
            let kept = if header.compression() == 0
                && !header.is_control()
                && !header.is_transactional()
                && header.base_offset < map_end
            {
                parse_records(&bytes, &header).map(|records| {
                    let total = records.len();
                    let keep: Vec<&RawRecord> = records
                        .iter()
                        .filter(|r| {
                            let offset = header.base_offset + r.offset_delta;
                            let Some(k) = r.key else { return true };
                            if offset >= map_end {
                                return true;
                            }
                            if map.get(&key_hash(k)).is_some_and(|&latest| latest > offset) {
                                return false;
                            }
                            if r.tombstone
                                && header.base_timestamp.saturating_add(r.timestamp_delta)
                                    < tombstone_horizon
                            {
                                stats.tombstones_removed += 1;
                                return false;
                            }
                            true
                        })
                        .collect();
                    stats.records_removed += (total - keep.len()) as u64;
                    (keep.len() < total).then(|| rebuild_batch(&bytes, &keep))
                })
            } else {
                None
            };
            let data = kept.flatten().flatten().unwrap_or(bytes);
            out.write_all(&data)?;
            written += data.len() as u64;
            io_bytes += data.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        // Validate what we wrote exactly like recovery would, and build its index.
        let (seg, recovery) = Segment::recover(tmp.clone(), s.base, interval)?;
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
        cleaned.push((s.base, s.size, seg));
        throttle(started, io_bytes, cfg.io_bytes_per_sec);
    }

    // ---- 4. swap (write lock)
    {
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
        checkpoint::sync_dir(&dir)?;
        l.cleaned_up_to = map_end;
    }
    write_checkpoint(&dir, map_end)?;
    stats.cleaned_up_to = map_end;
    info!(
        dir = %dir.display(),
        segments = stats.segments,
        bytes_before = stats.bytes_before,
        bytes_after = stats.bytes_after,
        records_removed = stats.records_removed,
        tombstones_removed = stats.tombstones_removed,
        cleaned_up_to = map_end,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted log"
    );
    Ok(Some(stats))
}

/// A copy of `batch` holding only `keep` (raw record bytes), with the same base offset,
/// timestamps, producer fields and `lastOffsetDelta`.
fn rebuild_batch(batch_bytes: &[u8], keep: &[&RawRecord]) -> Option<Vec<u8>> {
    let body: usize = keep.iter().map(|r| r.bytes.len()).sum();
    let mut out = Vec::with_capacity(BatchHeader::SIZE + body);
    out.extend_from_slice(&batch_bytes[..BatchHeader::SIZE]);
    for r in keep {
        out.extend_from_slice(r.bytes);
    }
    let batch_length = i32::try_from(out.len() - batch::LOG_OVERHEAD).ok()?;
    out[batch::BATCH_LENGTH_POS..batch::BATCH_LENGTH_POS + 4]
        .copy_from_slice(&batch_length.to_be_bytes());
    out[batch::RECORDS_COUNT_POS..batch::RECORDS_COUNT_POS + 4]
        .copy_from_slice(&(keep.len() as i32).to_be_bytes());
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
