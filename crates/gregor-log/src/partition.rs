//! [`PartitionLog`]: the segmented log of one partition.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use gregor_os::{SharedClock, SystemClock};
use tracing::{debug, warn};

use crate::batch::{self, BatchHeader};
use crate::checkpoint;
use crate::segment::{self, Segment};
use crate::txnindex::{self, AbortedTxnEntry};
use crate::{AppendInfo, LogConfig, LogError, ReadResult};

/// The log of one partition: an ordered list of segment files plus the log
/// start offset. See the crate documentation for the on-disk layout and the
/// invariants it maintains.
#[derive(Debug)]
pub struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Sorted by base offset, never empty; the last one is the active segment.
    pub(crate) segments: Vec<Segment>,
    /// Compaction: offsets below this were cleaned by the last pass.
    pub(crate) cleaned_up_to: i64,
    log_start_offset: i64,
    /// Segment files were created or removed since the last directory fsync.
    dir_dirty: bool,
    /// Every record below this offset is known to be fsynced (the recovery
    /// point). Only advanced by [`PartitionLog::complete_sync`].
    durable_offset: i64,
    /// Records appended since the last sync job was taken.
    unflushed_records: i64,
    /// Wall clock of the first append since the last sync job was taken.
    first_unflushed_ms: Option<i64>,
    /// Set when an fsync failed: the log refuses further appends.
    failed: Option<String>,
    /// The time (segment age for `segment.ms`, unflushed age); never read from the OS here.
    clock: SharedClock,
    /// Bytes of segment data read and validated by `open_with`.
    scanned_on_open: u64,
    /// Segment bases that have a `.txnindex` file.
    txn_index_bases: BTreeSet<i64>,
    /// Open `.txnindex` handles for appending, by segment base.
    txn_files: BTreeMap<i64, Arc<File>>,
    /// `.txnindex` files appended to since the last sync job.
    txn_dirty: Vec<Arc<File>>,
    /// Calls of `truncate_to` that cut the log: a sync job taken before one covers files
    /// that no longer hold the log, so its completion must not move the durable offset.
    truncations: u64,
    /// The leader-epoch cache (`leader-epoch-checkpoint`, see `partition/epochs.rs`).
    epochs: crate::epoch::LeaderEpochCache,
}

/// The aborted-transaction entries of a log's `.txnindex` files, as read on open.
#[derive(Debug, Default)]
pub struct AbortedTxnsOnDisk {
    /// Well-formed entries of live segments, sorted by marker offset, all below the log
    /// end offset.
    pub entries: Vec<AbortedTxnEntry>,
    /// Base offset of the first segment whose file was damaged (entries after the damage
    /// are unknown: they must be re-derived by replaying from at most this offset).
    pub damaged_from: Option<i64>,
}

/// What the caller knows about the state of a log directory when opening it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryHint {
    /// Offset below which every record was fsynced (from the broker's
    /// recovery-point checkpoint); `None` if unknown.
    pub recovery_point: Option<i64>,
    /// The previous process shut down cleanly (flushed everything and wrote
    /// index files) and nothing has touched the directory since.
    pub clean: bool,
}

/// The fsyncs that make a log durable up to [`SyncJob::up_to`], taken under
/// the log's lock by [`PartitionLog::take_sync_job`] and run without it, so
/// appends and reads continue during the fsync (group commit).
#[derive(Debug, Default)]
pub struct SyncJob {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
    up_to: i64,
    /// The log's truncation count when the job was taken.
    truncations: u64,
}

impl SyncJob {
    /// fdatasyncs the segment files, then the directory if segments were
    /// created or removed.
    pub fn run(&self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            checkpoint::sync_dir(dir)?;
        }
        Ok(())
    }

    /// The log end offset when the job was taken.
    pub fn up_to(&self) -> i64 {
        self.up_to
    }

    /// Nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dir.is_none()
    }
}

/// True if any of the whole batches in `data` holds a record.
fn holds_records(data: &[u8]) -> bool {
    let mut pos = 0;
    while let Ok(h) = BatchHeader::parse(&data[pos..]) {
        if h.records_count > 0 {
            return true;
        }
        pos += h.total_size();
        if pos >= data.len() {
            break;
        }
    }
    false
}

/// Files of a partition directory with the base offset of their segment.
type Files = Vec<(i64, PathBuf)>;

/// Segment files and aborted-transaction index files of a partition directory, each sorted
/// by base offset. Transient files (checkpoint and index temporaries, cleaned copies) are
/// removed.
fn list_dir(dir: &Path) -> Result<(Files, Files), LogError> {
    let mut files = Vec::new();
    let mut txn_index_files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == checkpoint::TMP_FILE_NAME
            || name.ends_with(".index.tmp")
            || name.ends_with(crate::clean::CLEANED_SUFFIX)
        {
            fs::remove_file(entry.path())?;
        } else if let Some(base) = segment::parse_file_name(name) {
            files.push((base, entry.path()));
        } else if let Some(base) = name
            .strip_suffix(txnindex::TXN_INDEX_SUFFIX)
            .and_then(|stem| segment::parse_file_name(&format!("{stem}.log")))
        {
            txn_index_files.push((base, entry.path()));
        }
    }
    files.sort_unstable_by_key(|(base, _)| *base);
    Ok((files, txn_index_files))
}

/// The segments [`load_segments`] kept.
struct LoadedSegments {
    segments: Vec<Segment>,
    /// Index in the file list from which the log was cut (a gap or a torn segment).
    cut_at: Option<usize>,
    scanned_bytes: u64,
}

/// Loads the segment `files` in order: trusted ones from their index files, the rest
/// scanned and validated, cutting the log at the first gap in offsets or invalid batch.
fn load_segments(
    files: &[(i64, PathBuf)],
    hint: &RecoveryHint,
    config: &LogConfig,
    now_ms: i64,
) -> Result<LoadedSegments, LogError> {
    let recovery_point = hint.recovery_point.unwrap_or(i64::MIN);
    let mut segments: Vec<Segment> = Vec::with_capacity(files.len());
    let mut scanned_bytes = 0u64;
    for (i, (base, path)) in files.iter().enumerate() {
        let (base, path) = (*base, path.clone());
        if let Some(prev) = segments.last() {
            if prev.next_offset() != base {
                warn!(
                    segment = %path.display(),
                    expected = prev.next_offset(),
                    "segment base offset does not continue the log; \
                     dropping it and all later segments"
                );
                return Ok(LoadedSegments {
                    segments,
                    cut_at: Some(i),
                    scanned_bytes,
                });
            }
        }
        // Segment i ends where segment i + 1 begins.
        let trusted = hint.clean
            || files
                .get(i + 1)
                .is_some_and(|(next_base, _)| *next_base <= recovery_point);
        // An index file may describe the whole segment or a prefix of it
        // (active segments are indexed at every checkpoint); its data is
        // trusted if the segment is, or if the prefix is below the
        // recovery point. Whatever lies past it is validated.
        let loaded = Segment::load_indexed(path.clone(), base, |indexed_next| {
            trusted || indexed_next <= recovery_point
        })?
        .filter(|s| trusted || s.next_offset() <= recovery_point);
        let (mut seg, recovery) = match loaded {
            Some(mut seg) => {
                let recovery = seg.scan_tail(config.index_interval_bytes, now_ms)?;
                (seg, recovery)
            }
            None => Segment::recover(path, base, config.index_interval_bytes, now_ms)?,
        };
        scanned_bytes += recovery.scanned_bytes;
        let recovery =
            (recovery.scanned_bytes > 0 || recovery.bytes_dropped > 0).then_some(recovery);
        let dropped = recovery.as_ref().map_or(0, |r| r.bytes_dropped);
        if dropped > 0 {
            warn!(
                segment = %seg.path().display(),
                bytes_dropped = dropped,
                valid_bytes = seg.size(),
                reason = recovery.as_ref().and_then(|r| r.reason.as_deref()).unwrap_or(""),
                "truncated invalid tail of log segment"
            );
        }
        if recovery.is_some() && seg.next_offset() > recovery_point {
            // Found on disk but maybe only in the page cache.
            seg.mark_dirty();
        }
        segments.push(seg);
        if dropped > 0 {
            return Ok(LoadedSegments {
                segments,
                cut_at: Some(i + 1),
                scanned_bytes,
            });
        }
    }
    Ok(LoadedSegments {
        segments,
        cut_at: None,
        scanned_bytes,
    })
}

/// Deletes segment files (and their index files) after the point where the log was cut.
fn delete_files_from(files: &[(i64, PathBuf)]) -> Result<(), LogError> {
    for (_, path) in files {
        warn!(
            segment = %path.display(),
            "deleting segment after the point where the log was cut"
        );
        let _ = fs::remove_file(segment::index_path(path));
        let _ = fs::remove_file(txnindex::txn_index_path(path));
        fs::remove_file(path)?;
    }
    Ok(())
}

impl PartitionLog {
    /// Opens (creating if missing) the log in `dir`, validating every
    /// segment (no recovery point known). See [`PartitionLog::open_with`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, LogError> {
        Self::open_with(dir, config, RecoveryHint::default())
    }

    /// Opens (creating if missing) the log in `dir`.
    ///
    /// Segments that `hint` says are durable and unchanged — all of them
    /// after a clean shutdown, otherwise those lying wholly below the
    /// recovery point — are loaded from their index files without reading
    /// their data. Every other segment (always including the active one
    /// after an unclean stop) is scanned and each batch validated (length,
    /// magic, CRC, dense offsets); the log is cut at the first invalid
    /// batch, which truncates a torn tail (logged with `warn!` and the
    /// number of bytes dropped). Recovered data past the recovery point is
    /// fsynced before the log is returned, so the durable offset starts at
    /// the log end offset. The log start offset checkpoint is read and
    /// segments lying entirely below it are deleted.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        hint: RecoveryHint,
    ) -> Result<PartitionLog, LogError> {
        Self::open_with_clock(dir, config, hint, SystemClock::shared())
    }

    /// [`open_with`](Self::open_with) on `clock` (the broker's clock; a
    /// [`gregor_os::ManualClock`] in tests): the log takes every "now" from it.
    pub fn open_with_clock(
        dir: &Path,
        config: LogConfig,
        hint: RecoveryHint,
        clock: SharedClock,
    ) -> Result<PartitionLog, LogError> {
        fs::create_dir_all(dir)?;
        let checkpointed_start = checkpoint::read(dir)?;
        let (files, txn_index_files) = list_dir(dir)?;
        let loaded = load_segments(&files, &hint, &config, clock.now_ms())?;
        let mut segments = loaded.segments;
        if let Some(from) = loaded.cut_at {
            delete_files_from(&files[from..])?;
        }
        if loaded.scanned_bytes > 0 {
            debug!(dir = %dir.display(), scanned_bytes = loaded.scanned_bytes,
                "validated segment data on open");
        }

        let mut dir_dirty = loaded.cut_at.is_some();
        if segments.is_empty() {
            let base = checkpointed_start.unwrap_or(0);
            segments.push(Segment::create(dir, base)?);
            dir_dirty = true;
        }
        let first_base = segments[0].base_offset();
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset: checkpointed_start.unwrap_or(first_base).max(first_base),
            dir_dirty,
            cleaned_up_to: crate::clean::read_checkpoint(dir),
            durable_offset: 0,
            unflushed_records: 0,
            first_unflushed_ms: None,
            failed: None,
            clock,
            scanned_on_open: loaded.scanned_bytes,
            txn_index_bases: BTreeSet::new(),
            txn_files: BTreeMap::new(),
            txn_dirty: Vec::new(),
            truncations: 0,
            epochs: Default::default(),
        };
        log.adopt_txn_indexes(txn_index_files)?;
        log.finish_open()?;
        log.load_leader_epochs()?;
        Ok(log)
    }

    /// Keeps the aborted-transaction indexes of live segments; deletes any other (an orphan).
    fn adopt_txn_indexes(&mut self, txn_index_files: Vec<(i64, PathBuf)>) -> Result<(), LogError> {
        for (base, path) in txn_index_files {
            if self.segments.iter().any(|s| s.base_offset() == base) {
                self.txn_index_bases.insert(base);
            } else {
                warn!(file = %path.display(), "deleting aborted-transaction index without a segment");
                fs::remove_file(&path)?;
                self.dir_dirty = true;
            }
        }
        Ok(())
    }

    /// The end of opening: restarts the log at its start offset if the tail holding it was
    /// lost, deletes segments below the start, makes everything recovered durable and writes
    /// the index files of scanned sealed segments.
    fn finish_open(&mut self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        if self.log_start_offset > end {
            // The tail holding the start offset was lost (e.g. truncated
            // above). Everything below the start offset is invisible anyway:
            // restart the log at the checkpointed start offset.
            warn!(
                dir = %self.dir.display(),
                log_start_offset = self.log_start_offset,
                log_end_offset = end,
                "log start offset beyond recovered log end; starting a new segment there"
            );
            let start = self.log_start_offset;
            self.roll(start)?;
        }
        self.delete_segments_below_start()?;
        // Make everything recovered durable, so that durable offset = end.
        self.flush()?;
        self.durable_offset = self.log_end_offset();
        // Index files for sealed segments that were scanned, so the next
        // start can skip them once they are below the recovery point.
        let sealed = self.segments.len() - 1;
        for seg in &mut self.segments[..sealed] {
            if !seg.has_persisted_index() {
                if let Err(e) = seg.write_index() {
                    warn!(segment = %seg.path().display(), error = %e, "could not write index file");
                }
            }
        }
        self.check_invariants();
        debug!(
            dir = %self.dir.display(),
            segments = self.segments.len(),
            log_start_offset = self.log_start_offset,
            log_end_offset = self.log_end_offset(),
            "opened partition log"
        );
        Ok(())
    }

    /// Appends `records`, the raw `records` field of one partition in a
    /// Produce request: one or more concatenated v2 batches.
    ///
    /// All batches are validated before anything is written (magic 2, exact
    /// lengths, CRC-32C, `recordsCount >= 1`,
    /// `lastOffsetDelta == recordsCount - 1`, size at most
    /// [`LogConfig::max_batch_bytes`]); if any is bad nothing is written.
    /// Then each batch's `baseOffset` is set to the next offset and the
    /// whole set is written with one positioned write (no fsync) to the
    /// active segment, rolling first if it would exceed
    /// [`LogConfig::segment_bytes`].
    pub fn append(&mut self, records: &[u8]) -> Result<AppendInfo, LogError> {
        self.append_with_log_append_time(records, None)
    }

    /// Like [`append`](Self::append), but if `log_append_time` is
    /// `Some(ts)` (topics with `message.timestamp.type=LogAppendTime`), each
    /// batch is stamped as Kafka does: the timestampType attribute bit is
    /// set, `maxTimestamp` becomes `ts` and the CRC is recomputed.
    pub fn append_with_log_append_time(
        &mut self,
        records: &[u8],
        log_append_time: Option<i64>,
    ) -> Result<AppendInfo, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        if records.is_empty() {
            return Err(LogError::InvalidRecord("empty record set".into()));
        }
        let validated = batch::ValidatedBatches::validate(records, |_, _| Ok::<(), LogError>(()))
            .map_err(|e| match e {
            batch::ValidateError::Batch(e) => LogError::from(e),
            batch::ValidateError::Check(e) => e,
        })?;
        self.append_validated_with(&validated, log_append_time)
    }

    /// Appends batches validated once by the caller ([`batch::ValidatedBatches`]): no CRC
    /// is computed again and no header parsed again. Checks only what the log itself
    /// requires of each header (size at most [`LogConfig::max_batch_bytes`],
    /// `recordsCount >= 1`, `lastOffsetDelta == recordsCount - 1`); otherwise as
    /// [`append`](Self::append).
    pub fn append_validated(
        &mut self,
        batches: &batch::ValidatedBatches<'_>,
    ) -> Result<AppendInfo, LogError> {
        self.append_validated_with(batches, None)
    }

    fn append_validated_with(
        &mut self,
        batches: &batch::ValidatedBatches<'_>,
        log_append_time: Option<i64>,
    ) -> Result<AppendInfo, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        let records = batches.data();
        if records.is_empty() {
            return Err(LogError::InvalidRecord("empty record set".into()));
        }
        let mut headers = Vec::with_capacity(batches.len());
        let mut record_count: i64 = 0;
        for (header, start) in batches.starts() {
            let (header, start) = (*header, *start);
            let size = header.total_size();
            if size > self.config.max_batch_bytes {
                return Err(LogError::BatchTooLarge {
                    size,
                    max: self.config.max_batch_bytes,
                });
            }
            if header.records_count < 1 {
                return Err(LogError::InvalidRecord(format!(
                    "batch at byte {} has recordsCount {}",
                    start, header.records_count
                )));
            }
            if header.last_offset_delta != header.records_count - 1 {
                return Err(LogError::InvalidRecord(format!(
                    "batch at byte {} has lastOffsetDelta {} but recordsCount {}",
                    start, header.last_offset_delta, header.records_count
                )));
            }
            record_count += i64::from(header.records_count);
            headers.push((header, start));
        }

        let base_offset = self.log_end_offset();
        let active = self.active();
        let would_exceed = active.size() + records.len() as u64 > self.config.segment_bytes;
        // Keep offsets relative to the segment base within i32, as Kafka's
        // index format requires.
        let relative_overflow =
            base_offset + record_count - active.base_offset() > i64::from(i32::MAX);
        let now = self.clock.now_ms();
        let aged = active
            .first_append_ms()
            .is_some_and(|t| now.saturating_sub(t) >= self.config.segment_ms);
        let rolled = !active.is_empty() && (would_exceed || relative_overflow || aged);
        if rolled {
            self.roll(base_offset)?;
        }

        let mut data = records.to_vec();
        // A leader stamps the epoch it leads at (the latest in the cache) into every batch.
        let leader_epoch = self.latest_leader_epoch();
        let mut next_offset = base_offset;
        let mut max_timestamp = i64::MIN;
        let mut offset_of_max_timestamp = -1;
        for (header, start) in &mut headers {
            let batch_bytes = &mut data[*start..*start + header.total_size()];
            batch::write_base_offset(batch_bytes, next_offset);
            header.base_offset = next_offset;
            if let Some(epoch) = leader_epoch {
                batch::set_partition_leader_epoch(batch_bytes, epoch);
                header.partition_leader_epoch = epoch;
            }
            if let Some(ts) = log_append_time {
                batch::set_log_append_time(batch_bytes, header, ts);
            }
            next_offset = header.next_offset();
            if header.max_timestamp > max_timestamp {
                max_timestamp = header.max_timestamp;
                offset_of_max_timestamp = header.last_offset();
            }
        }
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(&data, &headers, interval, now)?;
        debug_assert_eq!(self.log_end_offset(), next_offset);
        self.unflushed_records += record_count;
        self.first_unflushed_ms.get_or_insert(now);
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            max_timestamp,
            offset_of_max_timestamp,
            batches: headers.len(),
            records: record_count,
            rolled,
        })
    }

    /// fdatasyncs every segment written since the last flush, and the
    /// directory if segment files were created or deleted, holding the
    /// caller's `&mut` throughout (the broker's group commit uses
    /// [`take_sync_job`](Self::take_sync_job) instead).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if let Some(e) = &self.failed {
            // An fsync that succeeds after a failed one proves nothing (see
            // `complete_sync`): the log stays offline.
            return Err(LogError::StorageFailed(e.clone()));
        }
        let job = self.take_sync_job();
        let result = job.run().map_err(|e| e.to_string());
        self.complete_sync(&job, result.clone());
        result.map_err(LogError::StorageFailed)
    }

    /// Collects what must be fsynced for every record appended so far to be
    /// durable. The segments count as clean from now on: the caller must
    /// run the job and report the outcome to
    /// [`complete_sync`](Self::complete_sync).
    pub fn take_sync_job(&mut self) -> SyncJob {
        let mut files: Vec<Arc<File>> = self
            .segments
            .iter_mut()
            .filter_map(Segment::take_dirty_file)
            .collect();
        files.append(&mut self.txn_dirty);
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        self.unflushed_records = 0;
        self.first_unflushed_ms = None;
        SyncJob {
            files,
            dir,
            up_to: self.log_end_offset(),
            truncations: self.truncations,
        }
    }

    /// Records the outcome of a [`SyncJob`]: on success the durable offset
    /// advances to the job's end; on failure the log goes offline (appends
    /// fail with [`LogError::StorageFailed`]), because after a failed fsync
    /// the kernel may have dropped dirty pages and a retry proves nothing.
    /// Once offline, the durable offset never moves again (a job taken before
    /// the failure and completed after it covers pages the failure may have
    /// dropped).
    pub fn complete_sync(&mut self, job: &SyncJob, result: Result<(), String>) {
        if result.is_ok() && job.truncations != self.truncations {
            // Taken before a `truncate_to`: its `up_to` may lie past data that was cut
            // and rewritten since; the truncation set the durable offset itself.
            return;
        }

        match result {
            Ok(()) if self.failed.is_some() => {}
            Ok(()) => self.durable_offset = self.durable_offset.max(job.up_to),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed; log is offline");
                self.failed = Some(e);
            }
        }
    }

    /// Appends an aborted transaction to the `.txnindex` of the segment holding its
    /// marker (`entry.last_offset`, which must be in the log). Not fsynced here: the next
    /// sync job covers it, so entries below the durable offset are durable.
    pub fn append_aborted_txn(&mut self, entry: &AbortedTxnEntry) -> Result<(), LogError> {
        let end = self.log_end_offset();
        if entry.last_offset < self.segments[0].base_offset() || entry.last_offset >= end {
            return Err(LogError::InvalidRecord(format!(
                "aborted transaction marker offset {} is not in the log [{}, {end})",
                entry.last_offset,
                self.segments[0].base_offset()
            )));
        }
        let seg = self.segment_for(entry.last_offset);
        let (base, path) = (seg.base_offset(), txnindex::txn_index_path(seg.path()));
        let file = match self.txn_files.get(&base) {
            Some(f) => f.clone(),
            None => {
                let (f, created) = txnindex::open_for_append(&path)?;
                let f = Arc::new(f);
                self.dir_dirty |= created;
                self.txn_index_bases.insert(base);
                // Only the active segment's handle is worth keeping open.
                if base == self.active().base_offset() {
                    self.txn_files.clear();
                    self.txn_files.insert(base, f.clone());
                }
                f
            }
        };
        txnindex::append(&file, entry)?;
        if !self.txn_dirty.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.txn_dirty.push(file);
        }
        Ok(())
    }

    /// Reads the `.txnindex` files of the live segments. Entries for markers at or
    /// beyond the log end offset (the log lost its tail) are left out.
    pub fn read_aborted_txns(&self) -> Result<AbortedTxnsOnDisk, LogError> {
        let mut out = AbortedTxnsOnDisk::default();
        let last = self.active().base_offset();
        for seg in &self.segments {
            if !self.txn_index_bases.contains(&seg.base_offset()) {
                continue;
            }
            let parsed = txnindex::read(
                &txnindex::txn_index_path(seg.path()),
                seg.base_offset(),
                seg.next_offset(),
                seg.base_offset() == last,
            )?;
            if parsed.damaged && out.damaged_from.is_none() {
                warn!(segment = %seg.path().display(), valid_entries = parsed.entries.len(), "damaged aborted-transaction index; entries after the damage will be rebuilt from the log");
                out.damaged_from = Some(seg.base_offset());
            }
            out.entries.extend(parsed.entries);
        }
        Ok(out)
    }

    /// Removes from the `.txnindex` files every entry whose marker is at or above
    /// `from` (and anything unreadable), durably, so that a replay of the log from
    /// `from` can append them again without duplicates.
    pub fn truncate_aborted_txns(&mut self, from: i64) -> Result<(), LogError> {
        self.txn_files.clear();
        let last = self.active().base_offset();
        let mut removed_any = false;
        for seg in &self.segments {
            let base = seg.base_offset();
            if !self.txn_index_bases.contains(&base) {
                continue;
            }
            let path = txnindex::txn_index_path(seg.path());
            let parsed = txnindex::read(&path, base, seg.next_offset(), base == last)?;
            let keep = parsed
                .entries
                .iter()
                .take_while(|e| e.last_offset < from)
                .count();
            let keep_len = (keep * txnindex::ENTRY_SIZE) as u64;
            if keep == 0 {
                match fs::remove_file(&path) {
                    Ok(()) => removed_any = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.txn_index_bases.remove(&base);
            } else if fs::metadata(&path)?.len() != keep_len {
                let f = fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(keep_len)?;
                f.sync_all()?;
            }
        }
        if removed_any {
            checkpoint::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Base offset of the oldest segment: aborted transactions whose marker lies below
    /// it belonged to deleted segments.
    pub fn oldest_segment_base(&self) -> i64 {
        self.segments[0].base_offset()
    }

    /// Bytes of segment data [`open_with`](Self::open_with) had to read and
    /// validate (0 when everything was covered by trusted index files).
    pub fn scanned_on_open(&self) -> u64 {
        self.scanned_on_open
    }

    /// Why the log is offline (an fsync failed), or `None` while it takes appends.
    pub fn offline_error(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Every record below this offset is durable (fsynced).
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset
    }

    /// Records appended since the last sync job, and the wall clock of the
    /// first of those appends (for `flush.messages` / `flush.ms`).
    pub fn unflushed(&self) -> (i64, Option<i64>) {
        (self.unflushed_records, self.first_unflushed_ms)
    }

    /// Replaces the tunables (live topic config changes); they apply from
    /// the next append.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// The current tunables.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Time and size retention: deletes the oldest whole segments while a
    /// segment's largest timestamp is older than `now_ms - retention_ms`
    /// (`retention_ms < 0`: no time limit) or while dropping it keeps the
    /// log at least `retention_bytes` large (`retention_bytes < 0`: no size
    /// limit). Stops at the first segment that must stay. The active
    /// segment may go too (a fresh one is rolled first). The log start
    /// offset advances to the first remaining offset and is checkpointed
    /// before files are removed. Returns the number of segments deleted.
    pub fn apply_retention(
        &mut self,
        retention_ms: i64,
        retention_bytes: i64,
        now_ms: i64,
    ) -> Result<usize, LogError> {
        let mut excess = if retention_bytes >= 0 {
            self.size_bytes() as i64 - retention_bytes
        } else {
            0
        };
        let mut new_start = None;
        let mut count = 0;
        for seg in &self.segments {
            if seg.is_empty() {
                break;
            }
            let expired = retention_ms >= 0
                && seg
                    .max_timestamp()
                    .is_some_and(|m| m.timestamp < now_ms.saturating_sub(retention_ms));
            let over_size = retention_bytes >= 0 && (seg.size() as i64) <= excess;
            if !(expired || over_size) {
                break;
            }
            excess -= seg.size() as i64;
            new_start = Some(seg.next_offset());
            count += 1;
        }
        match new_start {
            Some(start) if start > self.log_start_offset => {
                debug!(dir = %self.dir.display(), new_log_start_offset = start, segments = count, "retention");
                self.advance_log_start_offset(start)?;
                Ok(count)
            }
            _ => Ok(0),
        }
    }

    /// Reads whole batches starting with the one containing `offset`.
    ///
    /// Returns batches from a single segment, at most `max_bytes` in total —
    /// except that the first batch is always returned whole even if it is
    /// larger (KIP-74). Batches whose base offset is `>= upper_bound` (the
    /// high watermark) are never returned. `offset == log_end_offset` yields
    /// empty data; offsets outside `[log_start_offset, log_end_offset]` are
    /// [`LogError::OffsetOutOfRange`].
    ///
    /// If what one segment yields holds no record (only the empty batches compaction
    /// leaves in place of removed records), the read continues into the following
    /// segments, within `max_bytes`: a client gets nothing from such a response, and
    /// librdkafka takes it for a fetch size too small for the next message (it doubles
    /// its fetch size each time, then fails the partition with MSG_SIZE_TOO_LARGE).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<ReadResult, LogError> {
        let start = self.log_start_offset;
        let end = self.log_end_offset();
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let mut data = self.read_segment(offset, max_bytes, upper_bound, true)?;
        while let (false, Some(next)) = (holds_records(&data), batch::next_offset_after(&data)) {
            if next >= end || next >= upper_bound || data.len() >= max_bytes {
                break;
            }
            let more = self.read_segment(next, max_bytes - data.len(), upper_bound, false)?;
            if more.is_empty() {
                break;
            }
            data.extend_from_slice(&more);
        }
        Ok(ReadResult {
            data: Bytes::from(data),
            log_start_offset: start,
            log_end_offset: end,
        })
    }

    /// [`PartitionLog::read`] within the segment holding `offset` (which must lie in the
    /// log); the first batch is returned whole even beyond `max_bytes` if `first_whole`.
    fn read_segment(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
        first_whole: bool,
    ) -> Result<Vec<u8>, LogError> {
        if offset >= self.log_end_offset() || offset >= upper_bound {
            return Ok(Vec::new());
        }
        let seg = self.segment_for(offset);
        let Some((position, first)) = seg.locate(offset)? else {
            return Err(LogError::CorruptBatch(format!(
                "offset {offset} not found in {}",
                seg.path().display()
            )));
        };
        if first.base_offset >= upper_bound || (!first_whole && first.total_size() > max_bytes) {
            return Ok(Vec::new());
        }
        let available = seg.size() - position;
        let want = max_bytes.max(first.total_size()) as u64;
        let len = want.min(available) as usize;
        let mut data = seg.read_vec(position, len)?;

        // Keep only whole batches below the upper bound.
        let mut keep = 0;
        while let Some((base, size)) = batch::peek_offset_and_size(&data[keep..]) {
            if base >= upper_bound || keep + size > data.len() {
                break;
            }
            keep += size;
        }
        debug_assert!(keep >= first.total_size());
        data.truncate(keep);
        Ok(data)
    }

    /// The first offset that can be read.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// DeleteRecords: advances the log start offset to `offset` and returns
    /// the resulting log start offset.
    ///
    /// Offsets at or below the current start offset leave it unchanged;
    /// offsets above the log end offset are [`LogError::OffsetOutOfRange`].
    /// The new value is checkpointed durably before segments lying entirely
    /// below it are deleted. Reads below the new start fail with
    /// [`LogError::OffsetOutOfRange`].
    pub fn advance_log_start_offset(&mut self, offset: i64) -> Result<i64, LogError> {
        let end = self.log_end_offset();
        if offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: self.log_start_offset,
                end,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        checkpoint::write(&self.dir, offset)?;
        self.log_start_offset = offset;
        self.delete_segments_below_start()?;
        self.trim_leader_epochs_to_start();
        self.check_invariants();
        Ok(offset)
    }

    /// For ListOffsets by timestamp: the first batch whose `maxTimestamp` is
    /// `>= ts` and whose last offset is `>= log_start_offset`, with its bytes.
    pub fn find_batch_by_timestamp(
        &self,
        ts: i64,
    ) -> Result<Option<(BatchHeader, Bytes)>, LogError> {
        let start = self.log_start_offset;
        for seg in &self.segments {
            let Some(max) = seg.max_timestamp() else {
                continue;
            };
            if max.timestamp < ts || seg.next_offset() <= start {
                continue;
            }
            let mut position = seg.position_for_timestamp(ts);
            if seg.base_offset() < start {
                if let Some((start_pos, _)) = seg.locate(start)? {
                    position = position.max(start_pos);
                }
            }
            let mut scanner = seg.scanner(position);
            while let Some((pos, header)) = scanner.next_header()? {
                // Batches emptied by compaction keep their header but hold no record.
                if header.max_timestamp >= ts
                    && header.last_offset() >= start
                    && header.records_count > 0
                {
                    let data = seg.read_vec(pos, header.total_size())?;
                    return Ok(Some((header, Bytes::from(data))));
                }
            }
        }
        Ok(None)
    }

    /// For ListOffsets `MAX_TIMESTAMP`: the first batch (at or after the log
    /// start offset) carrying the largest `maxTimestamp` in the log, with its
    /// bytes; `None` if the log holds no readable batch. The broker decodes
    /// it to find the exact record.
    pub fn find_max_timestamp_batch(&self) -> Result<Option<(BatchHeader, Bytes)>, LogError> {
        let start = self.log_start_offset;
        // (timestamp, segment index, position)
        let mut best: Option<(i64, usize, u64)> = None;
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(max) = seg.max_timestamp() else {
                continue;
            };
            if seg.next_offset() <= start {
                continue;
            }
            let candidate = if max.last_offset >= start {
                Some((max.timestamp, i, max.position))
            } else {
                // The segment's maximum lies below the start offset: scan
                // the visible part of the segment.
                let mut found: Option<(i64, usize, u64)> = None;
                if let Some((pos, _)) = seg.locate(start)? {
                    let mut scanner = seg.scanner(pos);
                    while let Some((pos, header)) = scanner.next_header()? {
                        if found.is_none_or(|(ts, _, _)| header.max_timestamp > ts) {
                            found = Some((header.max_timestamp, i, pos));
                        }
                    }
                }
                found
            };
            if let Some(c) = candidate {
                if best.is_none_or(|(ts, _, _)| c.0 > ts) {
                    best = Some(c);
                }
            }
        }
        match best {
            None => Ok(None),
            Some((_, i, position)) => {
                let (header, data) = self.segments[i].read_batch(position)?;
                Ok(Some((header, Bytes::from(data))))
            }
        }
    }

    /// Checkpoint support: if the active segment grew by at least
    /// `min_growth` bytes since its index file was last written, writes it
    /// (describing the segment as it is now). After a crash, `open_with`
    /// then only validates what was appended after it — the unflushed tail —
    /// provided the recovery point covers it.
    pub fn checkpoint_active_index(&mut self, min_growth: u64) -> Result<(), LogError> {
        let active = self
            .segments
            .last_mut()
            .expect("a log always has a segment");
        if !active.has_persisted_index()
            && active.size().saturating_sub(active.indexed_size()) >= min_growth
        {
            active.write_index()?;
        }
        Ok(())
    }

    /// Flushes the log and writes the index files of segments that lack
    /// one, so that a start after a clean shutdown reads no segment data.
    /// The log stays usable.
    pub fn flush_for_shutdown(&mut self) -> Result<(), LogError> {
        self.flush()?;
        for seg in &mut self.segments {
            if !seg.has_persisted_index() {
                seg.write_index()?;
            }
        }
        Ok(())
    }

    /// Flushes and closes the log (see
    /// [`flush_for_shutdown`](Self::flush_for_shutdown)).
    pub fn close(mut self) -> Result<(), LogError> {
        self.flush_for_shutdown()
    }

    /// Deletes the log's directory and everything in it (topic deletion).
    pub fn delete(self) -> Result<(), LogError> {
        let PartitionLog { dir, segments, .. } = self;
        drop(segments);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }

    /// The segment that holds `offset` (the last one with base <= offset).
    fn segment_for(&self, offset: i64) -> &Segment {
        let i = self.segments.partition_point(|s| s.base_offset() <= offset);
        &self.segments[i.saturating_sub(1)]
    }

    /// Starts a new, empty active segment at `base_offset`.
    fn roll(&mut self, base_offset: i64) -> Result<(), LogError> {
        debug_assert!(base_offset >= self.log_end_offset());
        if let Some(prev) = self.segments.last_mut() {
            if !prev.is_empty() && !prev.has_persisted_index() {
                // Sealed from now on: persist its index for fast restarts.
                if let Err(e) = prev.write_index() {
                    warn!(segment = %prev.path().display(), error = %e, "could not write index file");
                }
            }
        }
        let seg = Segment::create(&self.dir, base_offset)?;
        debug!(segment = %seg.path().display(), "rolled new log segment");
        self.segments.push(seg);
        self.dir_dirty = true;
        Ok(())
    }

    /// Deletes the segments whose records all lie below the log start
    /// offset, rolling a fresh active segment first if that includes the
    /// active one.
    fn delete_segments_below_start(&mut self) -> Result<(), LogError> {
        let start = self.log_start_offset;
        let active = self.active();
        if !active.is_empty() && active.next_offset() <= start {
            let end = self.log_end_offset();
            self.roll(end)?;
        }
        let n = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|s| s.next_offset() <= start)
            .count();
        for seg in self.segments.drain(..n) {
            debug!(segment = %seg.path().display(), "deleting segment below log start offset");
            self.txn_index_bases.remove(&seg.base_offset());
            self.txn_files.remove(&seg.base_offset());
            seg.delete()?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    fn check_invariants(&self) {
        debug_assert!(!self.segments.is_empty());
        debug_assert!(self.log_start_offset <= self.log_end_offset());
        debug_assert!(self.segments[0].base_offset() <= self.log_start_offset);
        debug_assert!(self
            .segments
            .windows(2)
            .all(|w| w[0].next_offset() == w[1].base_offset()));
    }
}

mod epochs;
mod replication;

#[cfg(test)]
mod tests;
