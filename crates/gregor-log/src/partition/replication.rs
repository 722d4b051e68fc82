//! What partition replication needs of a log (issue 16): a follower's append of batches
//! exactly as its leader stored them ([`PartitionLog::append_replicated`]).
//!
//! Kept apart from the produce path: the leader assigns offsets, a follower keeps them.

use crate::batch::{self, BatchHeader, ValidatedBatches};
use crate::{AppendInfo, LogError, PartitionLog};

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
}

#[cfg(test)]
mod tests;
