//! The log's leader-epoch cache ([`crate::epoch`]) kept consistent with its batches.
//!
//! The file only ever holds a superset of what the log's batches need: an entry is
//! written (durably) *before* the batches of its epoch, and removed *after* a truncation
//! removed them; entries starting at or past the log end offset are dropped on open (their
//! data never became durable, or was truncated just before a crash). So a crash at any
//! point leaves a file that, trimmed to the recovered log on open, describes it.

use std::fs;
use std::path::Path;

use tracing::{debug, warn};

use crate::epoch::{self, LeaderEpochCache, StaleEpoch};
use crate::{LogError, PartitionLog};

impl From<StaleEpoch> for LogError {
    fn from(e: StaleEpoch) -> Self {
        LogError::StaleLeaderEpoch {
            epoch: e.epoch,
            latest: e.latest,
        }
    }
}

/// Reads the checkpoint file: `Ok(None)` if it is missing or damaged (warned).
fn read_file(dir: &Path) -> Result<Option<LeaderEpochCache>, LogError> {
    let path = dir.join(epoch::FILE_NAME);
    let _ = fs::remove_file(gregor_os::fs::tmp_path(&path));
    match fs::read_to_string(&path) {
        Ok(text) => {
            let parsed = LeaderEpochCache::parse(&text);
            if parsed.is_none() {
                warn!(file = %path.display(), "damaged leader-epoch checkpoint; rebuilding it from the log");
            }
            Ok(parsed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            warn!(file = %path.display(), "leader-epoch checkpoint is not text; rebuilding it from the log");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl PartitionLog {
    /// Loads the leader-epoch cache at the end of opening: from `leader-epoch-checkpoint`,
    /// or rebuilt from the batches' `partitionLeaderEpoch` (every batch header is read) if
    /// the file is missing or damaged; then trimmed to `[log start, log end)` and written
    /// back if that changed it.
    pub(super) fn load_leader_epochs(&mut self) -> Result<(), LogError> {
        let (mut cache, mut changed) = match read_file(&self.dir)? {
            Some(cache) => (cache, false),
            None => (
                self.rebuild_leader_epochs()?,
                self.log_end_offset() > self.log_start_offset,
            ),
        };
        changed |= cache.truncate_from_end(self.log_end_offset());
        changed |= cache.truncate_from_start(self.log_start_offset);
        self.epochs = cache;
        if changed {
            self.write_leader_epochs()?;
        }
        Ok(())
    }

    /// The cache as the batches' `partitionLeaderEpoch` fields describe it: each epoch
    /// (>= 0) at the base offset of its first batch; a batch with an epoch lower than an
    /// earlier batch's (not written by this log's leaders) is passed over.
    fn rebuild_leader_epochs(&self) -> Result<LeaderEpochCache, LogError> {
        let mut cache = LeaderEpochCache::default();
        for seg in &self.segments {
            let mut scanner = seg.scanner(0);
            while let Some((_, h)) = scanner.next_header()? {
                if h.partition_leader_epoch >= 0 {
                    let _ = cache.assign(h.partition_leader_epoch, h.base_offset);
                }
            }
        }
        debug!(dir = %self.dir.display(), entries = cache.entries().len(),
            "rebuilt leader-epoch cache from the log");
        Ok(cache)
    }

    /// Drops, durably, the leader-epoch entries starting at or past the log end offset: an
    /// epoch this replica assigned as leader and lost before its first append. A follower
    /// calls it when a divergence truncation has nothing to cut (Kafka's
    /// `UnifiedLog.truncateTo` does the same); kept, the entry would be sent as the last
    /// fetched epoch forever, the leader would answer with the same diverging epoch, and
    /// the follower would never catch up. Returns whether the cache changed.
    pub fn truncate_epochs_to_end(&mut self) -> Result<bool, LogError> {
        if !self.epochs.truncate_from_end(self.log_end_offset()) {
            return Ok(false);
        }
        self.write_leader_epochs()?;
        Ok(true)
    }

    /// Replaces `leader-epoch-checkpoint` with the cache, durably.
    pub(super) fn write_leader_epochs(&self) -> Result<(), LogError> {
        gregor_os::fs::replace_file(
            &self.dir.join(epoch::FILE_NAME),
            self.epochs.encode().as_bytes(),
        )?;
        Ok(())
    }

    /// Assigns `epochs` (the `partitionLeaderEpoch` of batches about to be written, with
    /// their base offsets) in order, persisting the cache before the batches are written.
    /// An epoch lower than the latest is passed over (the data is the leader's and is
    /// stored anyway); negative epochs (`-1`: none) are ignored.
    pub(super) fn assign_batch_epochs(
        &mut self,
        epochs: impl Iterator<Item = (i32, i64)>,
    ) -> Result<(), LogError> {
        let mut cache = self.epochs.clone();
        let mut changed = false;
        for (epoch, base) in epochs.filter(|(e, _)| *e >= 0) {
            match cache.assign(epoch, base) {
                Ok(c) => changed |= c,
                Err(e) => {
                    debug!(dir = %self.dir.display(), error = %e, "replicated batch with an older leader epoch")
                }
            }
        }
        if changed {
            self.epochs = cache;
            self.write_leader_epochs()?;
        }
        Ok(())
    }

    /// The leader-epoch cache (see [`crate::epoch`]).
    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// The latest leader epoch that wrote to the log (or was assigned at its end).
    pub fn latest_leader_epoch(&self) -> Option<i32> {
        self.epochs.latest().map(|e| e.epoch)
    }

    /// A leader's start of `epoch` (on becoming leader, before appending batches stamped
    /// with it, see [`crate::batch::stamp_partition_leader_epoch`]): `epoch` starts at the
    /// log end offset. Persisted durably when it changes the cache. An epoch lower than the
    /// latest is [`LogError::StaleLeaderEpoch`]; the latest again changes nothing.
    pub fn assign_leader_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        let mut cache = self.epochs.clone();
        if cache.assign(epoch, self.log_end_offset())? {
            self.epochs = cache;
            self.write_leader_epochs()?;
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch against this log: see [`LeaderEpochCache::end_offset_for`]
    /// (with the log end offset for the latest epoch).
    pub fn end_offset_for_leader_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// After the log start offset moved: trims the cache (Kafka's `truncateFromStart`) and
    /// rewrites the file. A failure to write is only warned: the file is trimmed again on
    /// open.
    pub(super) fn trim_leader_epochs_to_start(&mut self) {
        if self.epochs.truncate_from_start(self.log_start_offset) {
            if let Err(e) = self.write_leader_epochs() {
                warn!(dir = %self.dir.display(), error = %e, "could not rewrite the leader-epoch checkpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests;
