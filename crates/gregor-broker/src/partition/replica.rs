//! A partition's place in replication (issue 16): the leader's view of its followers, the
//! ISR it keeps, and the high watermark it derives from them; a follower's appends of its
//! leader's batches and the truncation of a diverging tail.
//!
//! * **Role.** [`Partition::make_leader`] / [`Partition::make_follower`] are called by the
//!   replica manager ([`crate::replication`]) when the metadata image changes. A broker
//!   that is not in a cluster never calls them: its partitions stay [`Role::Single`] and
//!   their high watermark is the log end offset.
//! * **High watermark.** On a leader, the smallest log end offset of the ISR (the leader's
//!   own log end, and each other member's last fetch offset), never lowered
//!   ([`Partition::advance_high_watermark`]); the ISR counted is the committed one plus a
//!   proposed expansion (Kafka's "maximal ISR", KIP-497): a shrink counts only once the
//!   controller committed it, so a write is never acknowledged on fewer replicas than the
//!   controller knows of. On a follower: the leader's, capped by its own log end.
//! * **ISR.** A follower is caught up when its fetch offset reaches the leader's log end
//!   (or the log end the leader had at its previous fetch); one not caught up for
//!   `replica.lag.time.max.ms` is proposed out, and one at or past the high watermark (and
//!   past the start of the leader's epoch) proposed back in ([`Partition::isr_change_due`]).
//!
//! Lock order: `log`, then `producers`, then `replica` (a leaf).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use gregor_log::{AppendInfo, LogError, ValidateError, ValidatedBatches};
use kafka_protocol::error::ResponseError;

use super::producer_state::{self, apply_batch, txn_index_entry, LoadExpiry};
use super::Partition;

/// What this broker is for a partition.
#[derive(Debug, Clone, Default)]
pub enum Role {
    /// Not in a cluster: the only copy; the high watermark is the log end offset.
    #[default]
    Single,
    /// Leads it at `epoch`.
    Leader(LeaderState),
    /// Copies it from `leader` at `epoch` (`leader` -1: no leader now).
    Follower { leader: i32, epoch: i32 },
}

/// A leader's view of its partition's replicas.
#[derive(Debug, Clone)]
pub struct LeaderState {
    pub me: i32,
    pub epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    /// The ISR the controller committed.
    pub isr: Vec<i32>,
    /// An ISR sent to the controller and not answered yet.
    pub pending_isr: Option<Vec<i32>>,
    /// The log end offset when this epoch began.
    pub epoch_start_offset: i64,
    pub followers: BTreeMap<i32, FollowerState>,
}

/// What a leader knows of one follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerState {
    /// Its log end offset: the offset of its last fetch (-1 before its first).
    pub log_end: i64,
    /// The last time it was caught up with the leader's log end.
    pub last_caught_up_ms: u64,
    /// The time of its last fetch and the leader's log end then.
    pub last_fetch_ms: u64,
    pub leader_end_at_last_fetch: i64,
}

/// An ISR change a leader wants the controller to commit (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrProposal {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

/// Whether the ISR going from `old` to `new` dropped members (a shrink) and whether it
/// added members (an expand); one change can do both.
fn shrinks_expands(old: &[i32], new: &[i32]) -> (bool, bool) {
    let shrink = old.iter().any(|b| !new.contains(b));
    let expand = new.iter().any(|b| !old.contains(b));
    (shrink, expand)
}

/// A leader takes the ISR `new` in place of `l.isr`, from the controller's answer to its
/// AlterPartition or from the metadata image (the controller also removes fenced brokers):
/// counted as Kafka's IsrShrinks / IsrExpands.
fn take_isr(l: &mut LeaderState, new: &[i32]) {
    let (shrink, expand) = shrinks_expands(&l.isr, new);
    if shrink {
        crate::metrics::metrics().isr_shrinks.inc();
    }
    if expand {
        crate::metrics::metrics().isr_expands.inc();
    }
    l.isr = new.to_vec();
}

impl LeaderState {
    /// The ISR the high watermark and acks=all count: the committed ISR plus the members a
    /// pending proposal adds.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.pending_isr {
            for b in p {
                if !isr.contains(b) {
                    isr.push(*b);
                }
            }
        }
        isr
    }
}

impl Partition {
    /// This broker's role for the partition.
    pub fn role(&self) -> Role {
        self.replica.lock().expect("replica lock").clone()
    }

    /// The leader epoch this broker leads the partition at, if it leads it.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*self.replica.lock().expect("replica lock") {
            Role::Leader(l) => Some(l.epoch),
            _ => None,
        }
    }

    /// The latest leader epoch in the log's leader-epoch cache (-1 if none).
    pub fn latest_log_epoch(&self) -> i32 {
        self.log
            .read()
            .expect("log lock")
            .latest_leader_epoch()
            .unwrap_or(-1)
    }

    /// Becomes (or stays) the leader at `epoch`: a new epoch starts at the log end offset
    /// (persisted in the leader-epoch cache before any batch stamped with it is appended);
    /// the same epoch only takes the controller's newer ISR.
    pub fn make_leader(
        &self,
        me: i32,
        epoch: i32,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
        now_ms: u64,
    ) -> Result<(), LogError> {
        let mut log = self.log.write().expect("log lock");
        let mut role = self.replica.lock().expect("replica lock");
        if let Role::Leader(l) = &mut *role {
            if l.epoch == epoch {
                if partition_epoch > l.partition_epoch {
                    l.partition_epoch = partition_epoch;
                    take_isr(l, isr);
                    l.pending_isr = None;
                    l.replicas = replicas.to_vec();
                    for b in replicas.iter().filter(|b| **b != me) {
                        l.followers.entry(*b).or_insert(FollowerState {
                            log_end: -1,
                            last_caught_up_ms: now_ms,
                            last_fetch_ms: now_ms,
                            leader_end_at_last_fetch: -1,
                        });
                    }
                    l.followers.retain(|b, _| replicas.contains(b));
                }
                drop(role);
                drop(log);
                self.advance_high_watermark();
                return Ok(());
            }
        }
        match log.assign_leader_epoch(epoch) {
            Ok(()) => {}
            // A replicated batch of a newer epoch than the one the image names cannot
            // happen (epochs grow with every election), but never lead below it.
            Err(e @ LogError::StaleLeaderEpoch { .. }) => return Err(e),
            Err(e) => return Err(e),
        }
        let end = log.log_end_offset();
        let followers = replicas
            .iter()
            .filter(|b| **b != me)
            .map(|b| {
                (
                    *b,
                    FollowerState {
                        log_end: -1,
                        last_caught_up_ms: now_ms,
                        last_fetch_ms: now_ms,
                        leader_end_at_last_fetch: -1,
                    },
                )
            })
            .collect();
        *role = Role::Leader(LeaderState {
            me,
            epoch,
            partition_epoch,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            pending_isr: None,
            epoch_start_offset: end,
            followers,
        });
        // The high watermark a new leader starts from is the one it knew as a follower
        // (or the log start when it never knew one); it rises as the ISR fetches.
        if self.hw.load(Ordering::SeqCst) < 0 {
            self.hw.store(log.log_start_offset(), Ordering::SeqCst);
        }
        drop(role);
        drop(log);
        tracing::info!(topic = %self.topic, partition = self.index, epoch, start_offset = end, ?isr, "leading");
        self.advance_high_watermark();
        Ok(())
    }

    /// Becomes a follower of `leader` at `epoch` (or stays one). Produces waiting for the
    /// ISR are woken: they answer NOT_LEADER_OR_FOLLOWER.
    pub fn make_follower(&self, leader: i32, epoch: i32) {
        let log = self.log.read().expect("log lock");
        let mut role = self.replica.lock().expect("replica lock");
        let was_leader = matches!(&*role, Role::Leader(_));
        *role = Role::Follower { leader, epoch };
        let end = log.log_end_offset();
        let hw = self.hw.load(Ordering::SeqCst);
        if hw < 0 || hw > end {
            self.hw.store(
                if hw < 0 { log.log_start_offset() } else { end },
                Ordering::SeqCst,
            );
        }
        drop(role);
        drop(log);
        if was_leader {
            tracing::info!(topic = %self.topic, partition = self.index, leader, epoch, "following");
        }
        self.hw_changed.send_modify(|_| {});
    }

    /// A follower's fetch at `fetch_offset` (the follower's log end offset), before the
    /// leader reads for it. Checks the follower's view of the leader epoch
    /// (`current_leader_epoch`, -1: unchecked) and, with `last_fetched_epoch` (>= 0), whether
    /// its log diverges from the leader's: then the answer is `Ok(Some((epoch, end)))` and
    /// the follower truncates before fetching again. Otherwise the follower's position
    /// moves (and with it possibly the high watermark).
    pub fn follower_fetch(
        &self,
        replica: i32,
        fetch_offset: i64,
        current_leader_epoch: i32,
        last_fetched_epoch: i32,
        now_ms: u64,
    ) -> Result<Option<(i32, i64)>, ResponseError> {
        let log = self.log.read().expect("log lock");
        let mut role = self.replica.lock().expect("replica lock");
        let Role::Leader(l) = &mut *role else {
            return Err(ResponseError::NotLeaderOrFollower);
        };
        if current_leader_epoch >= 0 && current_leader_epoch < l.epoch {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        if current_leader_epoch > l.epoch {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        let Some(f) = l.followers.get_mut(&replica) else {
            return Err(ResponseError::NotLeaderOrFollower);
        };
        if last_fetched_epoch >= 0 {
            let (epoch, end) = log.end_offset_for_leader_epoch(last_fetched_epoch);
            if epoch != last_fetched_epoch || end < fetch_offset {
                return Ok(Some((epoch, end)));
            }
        }
        let leader_end = log.log_end_offset();
        if fetch_offset > leader_end {
            return Err(ResponseError::OffsetOutOfRange);
        }
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = now_ms;
        } else if fetch_offset >= f.leader_end_at_last_fetch && f.leader_end_at_last_fetch >= 0 {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end = fetch_offset;
        f.last_fetch_ms = now_ms;
        f.leader_end_at_last_fetch = leader_end;
        drop(role);
        drop(log);
        self.advance_high_watermark();
        Ok(None)
    }

    /// On a leader: raises the high watermark to the smallest log end offset of the
    /// maximal ISR. Wakes waiting produces when it moved. Returns whether it moved.
    pub fn advance_high_watermark(&self) -> bool {
        let end = self.log.read().expect("log lock").log_end_offset();
        self.advance_hw_locked(end)
    }

    /// [`advance_high_watermark`](Self::advance_high_watermark) with the leader's log end
    /// offset read by the caller (who may hold the log lock: the replica lock is a leaf).
    pub(super) fn advance_hw_locked(&self, log_end: i64) -> bool {
        let role = self.replica.lock().expect("replica lock");
        let Role::Leader(l) = &*role else {
            return false;
        };
        let mut hw = log_end;
        for b in l.maximal_isr() {
            if b == l.me {
                continue;
            }
            let end = l.followers.get(&b).map_or(-1, |f| f.log_end);
            hw = hw.min(end);
        }
        let old = self.hw.load(Ordering::SeqCst);
        if hw > old {
            self.hw.store(hw, Ordering::SeqCst);
            drop(role);
            self.hw_changed.send_replace(hw);
            return true;
        }
        false
    }

    /// A follower learns its leader's high watermark (capped by its own log end).
    pub fn set_follower_high_watermark(&self, leader_hw: i64) {
        let end = self.log.read().expect("log lock").log_end_offset();
        self.hw.store(leader_hw.min(end), Ordering::SeqCst);
    }

    /// On a leader: the ISR change due at `now_ms`, if any and none is in flight: members
    /// not caught up for `lag_max_ms` leave; replicas that are live (`is_live`) and have
    /// reached the high watermark and the start of this epoch join. Marks it pending.
    pub fn isr_change_due(
        &self,
        now_ms: u64,
        lag_max_ms: u64,
        is_live: &dyn Fn(i32) -> bool,
    ) -> Option<IsrProposal> {
        let hw = self.hw.load(Ordering::SeqCst);
        let mut role = self.replica.lock().expect("replica lock");
        let Role::Leader(l) = &mut *role else {
            return None;
        };
        if l.pending_isr.is_some() {
            return None;
        }
        let mut isr: Vec<i32> = l
            .isr
            .iter()
            .copied()
            .filter(|b| {
                *b == l.me
                    || l.followers
                        .get(b)
                        .is_some_and(|f| now_ms.saturating_sub(f.last_caught_up_ms) <= lag_max_ms)
            })
            .collect();
        if !isr.contains(&l.me) {
            isr.insert(0, l.me);
        }
        for (b, f) in &l.followers {
            if !isr.contains(b)
                && is_live(*b)
                && f.log_end >= hw
                && f.log_end >= l.epoch_start_offset
                && now_ms.saturating_sub(f.last_caught_up_ms) <= lag_max_ms
            {
                isr.push(*b);
            }
        }
        let mut sorted_new = isr.clone();
        sorted_new.sort_unstable();
        let mut sorted_old = l.isr.clone();
        sorted_old.sort_unstable();
        if sorted_new == sorted_old {
            return None;
        }
        l.pending_isr = Some(isr.clone());
        Some(IsrProposal {
            leader_epoch: l.epoch,
            partition_epoch: l.partition_epoch,
            new_isr: isr,
        })
    }

    /// The controller committed an ISR (at `partition_epoch`): the leader takes it (if the
    /// image did not bring it already) and the proposal is done.
    pub fn isr_committed(&self, partition_epoch: i32, isr: &[i32]) {
        if let Role::Leader(l) = &mut *self.replica.lock().expect("replica lock") {
            if partition_epoch >= l.partition_epoch {
                l.partition_epoch = partition_epoch;
                take_isr(l, isr);
            }
            l.pending_isr = None;
        }
        self.advance_high_watermark();
    }

    /// The controller refused (or did not answer) the pending ISR change: forget it; the
    /// next check proposes again from the committed ISR.
    pub fn isr_change_failed(&self) {
        if let Role::Leader(l) = &mut *self.replica.lock().expect("replica lock") {
            l.pending_isr = None;
        }
        self.advance_high_watermark();
    }

    /// On a leader: the size of the ISR acks=all counts (None when not leading).
    pub fn isr_size(&self) -> Option<usize> {
        match &*self.replica.lock().expect("replica lock") {
            Role::Leader(l) => Some(l.isr.len()),
            Role::Single => Some(1),
            Role::Follower { .. } => None,
        }
    }

    /// Waits until the high watermark reaches `offset` (true) or this broker stops leading
    /// the partition at `epoch` (false). A single node's partition is there at once.
    pub async fn wait_replicated(&self, offset: i64, epoch: Option<i32>) -> bool {
        let mut rx = self.hw_changed.subscribe();
        loop {
            rx.borrow_and_update();
            match (self.role(), epoch) {
                (Role::Single, _) => return true,
                (Role::Leader(l), Some(e)) if l.epoch == e => {}
                _ => return false,
            }
            if self.hw.load(Ordering::SeqCst) >= offset {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// A follower's append of its leader's batches (the records of a Fetch response), at
    /// their offsets, applied to the producer state as a leader's append is (so the
    /// idempotence and transaction state are there when it leads).
    pub fn append_replicated(&self, data: &[u8]) -> Result<Option<AppendInfo>, LogError> {
        let batches = ValidatedBatches::validate(data, |_, _| Ok::<(), LogError>(())).map_err(
            |e| match e {
                ValidateError::Batch(e) => LogError::from(e),
                ValidateError::Check(e) => e,
            },
        )?;
        if batches.is_empty() {
            return Ok(None);
        }
        let mut log = self.log.write().expect("log lock");
        let mut producers = self.producers.lock().expect("producer state lock");
        let info = log.append_replicated_validated(&batches)?;
        if info.rolled {
            self.queue_snapshot(info.base_offset, producers.snapshot_copy());
        }
        for (header, batch) in batches.batches() {
            if let Some(a) = apply_batch(&mut producers, header, batch) {
                let entry = txn_index_entry(&producers, &a);
                if let Err(e) = log.append_aborted_txn(&entry) {
                    tracing::error!(topic = %self.topic, partition = self.index, error = %e, "writing the aborted-transaction index failed");
                }
            }
        }
        Ok(Some(info))
    }

    /// A follower cuts its log at `offset` (KIP-101/279: where it diverges from its
    /// leader), then rebuilds its producer state from the snapshots at or below `offset`
    /// and the log, as on open.
    pub fn truncate_to(&self, offset: i64, expiry: LoadExpiry) -> anyhow::Result<()> {
        let mut log = self.log.write().expect("log lock");
        let mut producers = self.producers.lock().expect("producer state lock");
        if offset >= log.log_end_offset() {
            // Nothing to cut; but an epoch this replica assigned as leader and lost before
            // writing in it would be sent as the last fetched epoch forever: dropped (a
            // follower only: a leader's own new epoch starts at its log end too).
            let follower = matches!(
                *self.replica.lock().expect("replica lock"),
                Role::Follower { .. }
            );
            if follower && log.truncate_epochs_to_end()? {
                tracing::info!(topic = %self.topic, partition = self.index,
                    end = log.log_end_offset(), "dropped a leader epoch with no records at the log end");
            }
            return Ok(());
        }
        let old_end = log.log_end_offset();
        log.truncate_to(offset)?;
        self.pending_snapshots
            .lock()
            .expect("snapshot lock")
            .retain(|(o, _)| *o <= offset);
        producer_state::remove_snapshots_above(&self.dir, offset)?;
        {
            let mut newest = self.snapshot_write.lock().expect("snapshot write lock");
            if newest.is_some_and(|o| o > offset) {
                *newest = None;
            }
        }
        let loaded = producer_state::load(&self.dir, &mut log, expiry)?;
        *producers = loaded.table;
        let end = log.log_end_offset();
        if self.hw.load(Ordering::SeqCst) > end {
            self.hw.store(end, Ordering::SeqCst);
        }
        tracing::info!(topic = %self.topic, partition = self.index, from = old_end, to = end, "truncated a diverging tail");
        Ok(())
    }

    /// A follower whose log ends below its leader's log start offset drops its whole log
    /// and starts again, empty, at `offset` (the leader's log start), with an empty
    /// producer state (Kafka's `truncateFullyAndStartAt`).
    pub fn truncate_fully_and_start_at(
        &self,
        offset: i64,
        expiry: LoadExpiry,
    ) -> anyhow::Result<()> {
        let mut log = self.log.write().expect("log lock");
        let mut producers = self.producers.lock().expect("producer state lock");
        let (old_start, old_end) = (log.log_start_offset(), log.log_end_offset());
        log.truncate_fully_and_start_at(offset)?;
        self.pending_snapshots
            .lock()
            .expect("snapshot lock")
            .clear();
        producer_state::remove_snapshots_above(&self.dir, -1)?;
        *self.snapshot_write.lock().expect("snapshot write lock") = None;
        let loaded = producer_state::load(&self.dir, &mut log, expiry)?;
        *producers = loaded.table;
        self.hw.store(offset, Ordering::SeqCst);
        tracing::warn!(topic = %self.topic, partition = self.index, old_start, old_end, new_start = offset, "the leader's log starts past this follower's end: dropped the whole log");
        Ok(())
    }
}

#[cfg(test)]
mod isr_change_tests {
    use super::shrinks_expands;

    #[test]
    fn shrinks_and_expands_are_counted_against_the_old_isr() {
        assert_eq!(shrinks_expands(&[1, 2, 3], &[1, 2]), (true, false));
        assert_eq!(shrinks_expands(&[1, 2], &[2, 1, 3]), (false, true));
        assert_eq!(shrinks_expands(&[1, 2], &[1, 3]), (true, true));
        assert_eq!(shrinks_expands(&[1, 2], &[2, 1]), (false, false));
    }
}
