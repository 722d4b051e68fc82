//! What partition replication needs of a log (issue 16): a follower's append of batches
//! exactly as its leader stored them ([`PartitionLog::append_replicated`]) and the
//! truncation of a diverging tail ([`PartitionLog::truncate_to`], KIP-101).
//!
//! Kept apart from the produce path: the leader assigns offsets, a follower keeps them.

use crate::batch::{self, BatchHeader, ValidatedBatches};
use crate::checkpoint;
use crate::{AppendInfo, LogError, PartitionLog};
use tracing::info;

impl PartitionLog {
    /// A follower's append: `batches` are whole v2 batches as the leader stored them (the
    /// `records` of a Fetch response), appended with their base offsets unchanged.
    ///
    /// Every batch is validated before anything is written: framing, magic, CRC-32C,
    /// `recordsCount >= 0` and `lastOffsetDelta >= 0` (compaction leaves empty batches,
    /// and they are replicated as they are; [`LogConfig::max_batch_bytes`] is not applied:
    /// the leader already accepted the batch, and refusing it here would stop replication).
    /// The first batch must start at the log end offset and each following batch where the
    /// previous one ended; otherwise nothing is written and the error is
    /// [`LogError::OffsetMismatch`] (the follower truncates or fetches again from its log
    /// end offset). Then, as [`append`](Self::append): the active segment rolls first if it
    /// would exceed [`LogConfig::segment_bytes`] (or is older than `segment.ms`, or the
    /// offsets relative to its base would leave `i32`), the batches are written with one
    /// positioned write, the sparse index is updated, and nothing is fsynced: the sync jobs
    /// make it durable as any append ([`PartitionLog::take_sync_job`]).
    ///
    /// [`LogConfig::max_batch_bytes`]: crate::LogConfig::max_batch_bytes
    /// [`LogConfig::segment_bytes`]: crate::LogConfig::segment_bytes
    pub fn append_replicated(&mut self, batches: &[u8]) -> Result<AppendInfo, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        if batches.is_empty() {
            return Err(LogError::InvalidRecord("empty record set".into()));
        }
        let validated = ValidatedBatches::validate(batches, |_, _| Ok::<(), LogError>(()))
            .map_err(|e| match e {
                batch::ValidateError::Batch(e) => LogError::from(e),
                batch::ValidateError::Check(e) => e,
            })?;
        self.append_replicated_validated(&validated)
    }

    /// [`append_replicated`](Self::append_replicated) of batches the caller validated once
    /// already ([`ValidatedBatches::validate`]): no CRC is computed again.
    pub fn append_replicated_validated(
        &mut self,
        batches: &ValidatedBatches<'_>,
    ) -> Result<AppendInfo, LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        let data = batches.data();
        if data.is_empty() {
            return Err(LogError::InvalidRecord("empty record set".into()));
        }
        let base_offset = self.log_end_offset();
        let mut next_offset = base_offset;
        let mut record_count: i64 = 0;
        let mut max_timestamp = i64::MIN;
        let mut offset_of_max_timestamp = -1;
        let mut headers: Vec<(BatchHeader, usize)> = Vec::with_capacity(batches.len());
        for (header, start) in batches.starts() {
            if header.base_offset != next_offset {
                return Err(LogError::OffsetMismatch {
                    expected: next_offset,
                    found: header.base_offset,
                });
            }
            // `lastOffsetDelta >= 0` was validated; the sum must not leave i64.
            let Some(next) = header
                .base_offset
                .checked_add(i64::from(header.last_offset_delta))
                .and_then(|last| last.checked_add(1))
            else {
                return Err(LogError::InvalidRecord(format!(
                    "batch at byte {start} ends past the largest offset"
                )));
            };
            next_offset = next;
            record_count += i64::from(header.records_count);
            if header.max_timestamp > max_timestamp {
                max_timestamp = header.max_timestamp;
                offset_of_max_timestamp = header.last_offset();
            }
            headers.push((*header, *start));
        }

        // The cache first: a crash leaves it no less than the batches need (see epochs.rs).
        self.assign_batch_epochs(
            headers
                .iter()
                .map(|(h, _)| (h.partition_leader_epoch, h.base_offset)),
        )?;
        let active = self.active();
        let would_exceed = active.size() + data.len() as u64 > self.config.segment_bytes;
        // Offsets relative to the segment base stay within i32 (Kafka's index format).
        let relative_overflow = next_offset - active.base_offset() > i64::from(i32::MAX);
        let now = self.clock.now_ms();
        let aged = active
            .first_append_ms()
            .is_some_and(|t| now.saturating_sub(t) >= self.config.segment_ms);
        let rolled = !active.is_empty() && (would_exceed || relative_overflow || aged);
        if rolled {
            self.roll(base_offset)?;
        }
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(data, &headers, interval, now)?;
        debug_assert_eq!(self.log_end_offset(), next_offset);
        self.unflushed_records += record_count;
        self.first_unflushed_ms.get_or_insert(now);
        self.check_invariants();
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

    /// Removes every batch at or above `offset` (KIP-101 truncation of a follower's
    /// diverging tail): segments lying wholly above it are deleted, the segment holding it
    /// is cut at the batch boundary — a batch holding `offset` and earlier offsets too is
    /// removed whole, so the log end offset becomes that batch's base offset, which may be
    /// below `offset` — and the aborted-transaction entries of markers at or above the new
    /// end are dropped ([`truncate_aborted_txns`](Self::truncate_aborted_txns)).
    ///
    /// `offset >= log_end_offset` changes nothing. `offset` below the log start offset, or
    /// a batch holding `offset` that begins below the log start offset, is
    /// [`LogError::OffsetOutOfRange`] and changes nothing.
    ///
    /// Crash-safe: the `.txnindex` entries go first, then the segment files from the
    /// last one down, then the directory is fsynced, then the holding segment's index file
    /// is removed and the segment cut and fsynced. A crash at any point leaves files that
    /// open as a prefix of the log as it was. When it returns, the cut is fsynced, the
    /// durable offset is at most the new log end offset, and a sync job taken before the
    /// truncation no longer moves it (the next one does). The caller must, before appending again, lower the
    /// recovery point it checkpoints (the broker's `recovery-point-offset-checkpoint`) to
    /// at most the new end, drop its producer snapshots above it and rebuild its producer
    /// state, and not let compaction swap in a copy made before the truncation (as Kafka
    /// pauses cleaning around a truncation).
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset < start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        if offset >= end {
            return Ok(());
        }
        let i = self
            .segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        let seg = &self.segments[i];
        let Some((position, holding)) = seg.locate(offset)? else {
            return Err(LogError::CorruptBatch(format!(
                "offset {offset} not found in {}",
                seg.path().display()
            )));
        };
        let new_end = holding.base_offset;
        if new_end < start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        info!(dir = %self.dir.display(), offset, new_log_end_offset = new_end,
            old_log_end_offset = end, "truncating log");
        if let Err(e) = self.cut_tail(i, position, new_end) {
            // Memory and files may disagree now: no more writes until a reopen recovers.
            tracing::error!(dir = %self.dir.display(), error = %e, "truncation failed; log is offline");
            self.failed = Some(format!("truncation failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Drops the whole log and starts it again, empty, at `offset` (Kafka's
    /// `truncateFullyAndStartAt`): a follower whose log ends below its leader's log start
    /// offset (the leader deleted what the follower still needs, by retention or
    /// DeleteRecords) cannot catch up by fetching, so it keeps nothing of its own and
    /// fetches from the leader's start.
    ///
    /// Every segment (with its index and `.txnindex`) is deleted, newest first; then an
    /// empty segment is created at `offset`, the log start offset checkpointed at `offset`,
    /// the directory fsynced and the leader-epoch cache cleared. A crash in between leaves
    /// a prefix of the old log, or an empty log, which the follower fetches again (and is
    /// told to truncate again): nothing in it was the follower's to keep. As after
    /// [`truncate_to`](Self::truncate_to), the caller drops its producer snapshots and
    /// rebuilds the producer state.
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), LogError> {
        if let Some(e) = &self.failed {
            return Err(LogError::StorageFailed(e.clone()));
        }
        if offset < 0 {
            return Err(LogError::InvalidRecord(format!(
                "cannot start a log at offset {offset}"
            )));
        }
        info!(dir = %self.dir.display(), offset, old_log_start_offset = self.log_start_offset,
            old_log_end_offset = self.log_end_offset(), "truncating the whole log");
        if let Err(e) = self.restart_at(offset) {
            tracing::error!(dir = %self.dir.display(), error = %e, "full truncation failed; log is offline");
            self.failed = Some(format!("full truncation failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// The changes of [`truncate_fully_and_start_at`](Self::truncate_fully_and_start_at).
    fn restart_at(&mut self, offset: i64) -> Result<(), LogError> {
        self.txn_files.clear();
        self.txn_dirty.clear();
        while let Some(seg) = self.segments.pop() {
            self.txn_index_bases.remove(&seg.base_offset());
            seg.delete()?;
        }
        self.segments
            .push(crate::segment::Segment::create(&self.dir, offset)?);
        checkpoint::write(&self.dir, offset)?;
        checkpoint::sync_dir(&self.dir)?;
        self.dir_dirty = false;
        self.log_start_offset = offset;
        self.epochs = crate::epoch::LeaderEpochCache::default();
        self.write_leader_epochs()?;
        self.truncations += 1;
        self.durable_offset = offset;
        self.cleaned_up_to = offset;
        self.unflushed_records = 0;
        self.first_unflushed_ms = None;
        debug_assert_eq!(self.log_end_offset(), offset);
        self.check_invariants();
        Ok(())
    }

    /// The changes of [`truncate_to`](Self::truncate_to): segment `i` is cut at `position`,
    /// where the batch with base offset `new_end` begins.
    fn cut_tail(&mut self, i: usize, position: u64, new_end: i64) -> Result<(), LogError> {
        self.truncate_aborted_txns(new_end)?;
        while self.segments.len() > i + 1 {
            let seg = self.segments.pop().expect("more than i + 1 segments");
            self.txn_index_bases.remove(&seg.base_offset());
            self.txn_files.remove(&seg.base_offset());
            seg.delete()?;
        }
        checkpoint::sync_dir(&self.dir)?;
        self.dir_dirty = false;
        let interval = self.config.index_interval_bytes;
        self.segments[i].truncate_to(position, interval)?;
        // The cache after the log: a crash in between leaves entries past the end, which
        // the next open drops.
        if self.epochs.truncate_from_end(new_end) {
            self.write_leader_epochs()?;
        }
        // Unsynced kept data is synced here too; but a sync job taken earlier may still be
        // fsyncing what it took, so the durable offset only comes down (its completion no
        // longer moves it; the next job's does).
        for seg in &mut self.segments[..i] {
            if let Some(f) = seg.take_dirty_file() {
                f.sync_data()?;
            }
        }
        for f in std::mem::take(&mut self.txn_dirty) {
            f.sync_data()?;
        }
        self.truncations += 1;
        self.durable_offset = self.durable_offset.min(new_end);
        self.cleaned_up_to = self.cleaned_up_to.min(new_end);
        self.unflushed_records = 0;
        self.first_unflushed_ms = None;
        debug_assert_eq!(self.log_end_offset(), new_end);
        self.check_invariants();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
