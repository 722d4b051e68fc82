//! Committed offsets: OffsetCommit, OffsetFetch, OffsetDelete, and transactional offset
//! commits (pending until their transaction's marker).

use super::membership::check_static;
use super::*;

/// The committed value of one partition of an OffsetCommit / TxnOffsetCommit and its
/// `__consumer_offsets` record (in the group's partition `partition`), or the partition's
/// error.
pub(super) fn commit_record(
    group_id: &str,
    partition: i32,
    p: &CommitPartition,
    now: i64,
    max_meta: usize,
) -> Result<(OffsetValue, OffsetsRecord), ResponseError> {
    let metadata = p.metadata.clone().unwrap_or_default();
    if metadata.len() > max_meta {
        return Err(ResponseError::OffsetMetadataTooLarge);
    }
    let value = OffsetValue {
        offset: p.offset,
        leader_epoch: p.leader_epoch,
        metadata,
        commit_timestamp: now,
    };
    let record = OffsetsRecord {
        partition,
        key: records::offset_key(group_id, &p.topic, p.partition),
        value: Some(records::offset_value(&value)),
    };
    Ok((value, record))
}

/// The records of an OffsetCommit's / TxnOffsetCommit's `partitions`, pushed to `fx` in
/// order: one code per partition, and the accepted partitions with their values.
fn commit_records<'p>(
    group_id: &str,
    partition: i32,
    partitions: &'p [CommitPartition],
    now: i64,
    max_meta: usize,
    fx: &mut Effects,
) -> (Vec<i16>, Vec<(&'p CommitPartition, OffsetValue)>) {
    let mut codes = Vec::with_capacity(partitions.len());
    let mut accepted = Vec::with_capacity(partitions.len());
    for p in partitions {
        match commit_record(group_id, partition, p, now, max_meta) {
            Ok((value, record)) => {
                fx.records.push(record);
                accepted.push((p, value));
                codes.push(0);
            }
            Err(e) => codes.push(code(e)),
        }
    }
    (codes, accepted)
}

impl Coordinator {
    /// Applies one replayed transactional offset commit record of `producer_id` (pending
    /// until that producer's marker is replayed).
    pub fn replay_txn(&mut self, producer_id: i64, key: &[u8], value: Option<&[u8]>) {
        if let (
            Ok(RecordKey::Offset {
                group,
                topic,
                partition,
            }),
            Some(v),
        ) = (records::decode_key(key), value)
        {
            match records::decode_offset_value(v) {
                Ok(v) => {
                    let stored = self.next_write(v);
                    self.pending_txn
                        .entry(producer_id)
                        .or_default()
                        .insert((group, topic, partition), stored);
                }
                Err(e) => tracing::warn!(error = %e, "skipping undecodable offset value"),
            }
        }
    }

    /// The transaction of `producer_id` ended (its marker reached `__consumer_offsets`):
    /// its pending offsets become committed (`commit`) or are dropped. A pending offset
    /// does not replace one whose record was written after it (a plain OffsetCommit that
    /// came in while the transaction was open wins, as in Kafka).
    pub fn complete_txn(&mut self, producer_id: i64, commit: bool, now: i64) {
        let Some(pending) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        if !commit {
            return;
        }
        let n = self.loaded.len() as i32;
        for ((group, topic, partition), v) in pending {
            let offsets = &mut self
                .groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, group_partition(&group, n), now))
                .offsets;
            let key = (topic, partition);
            if offsets.get(&key).is_none_or(|c| c.written < v.written) {
                offsets.insert(key, v);
            }
        }
    }

    /// The `__consumer_offsets` partition of a group id that an offset API may use: the id
    /// is valid and its partition is loaded.
    fn offsets_partition(&self, group_id: &str) -> Result<i32, ResponseError> {
        if !valid_group_id(group_id, true) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(group_id)?;
        Ok(self.partition_for(group_id))
    }

    /// Whether a transactional offset commit for this partition is pending (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT then).
    pub fn has_pending_txn_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (group_id.to_string(), topic.to_string(), partition);
        self.pending_txn.values().any(|m| m.contains_key(&key))
    }

    /// TxnOffsetCommit: the records in `fx` must be written as a transactional batch of the
    /// producer and be durable before the caller acknowledges.
    pub fn txn_commit_offsets(
        &mut self,
        now: i64,
        req: &TxnCommitRequest,
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        let partition = self.offsets_partition(&req.group_id)?;
        if let Some(group) = self.groups.get(&req.group_id) {
            if req.generation_id >= 0 && !req.member_id.is_empty() && !group.members.is_empty() {
                check_static(group, &req.member_id, req.group_instance_id.as_deref())?;
                if !group.members.contains_key(&req.member_id) {
                    return Err(ResponseError::UnknownMemberId);
                }
                if req.generation_id != group.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
            }
        }
        let max_meta = self.config.offset_metadata_max_bytes;
        let (codes, committed) =
            commit_records(&req.group_id, partition, &req.partitions, now, max_meta, fx);
        for (p, value) in committed {
            let stored = self.next_write(value);
            self.pending_txn
                .entry(req.producer_id)
                .or_default()
                .insert((req.group_id.clone(), p.topic.clone(), p.partition), stored);
        }
        Ok(codes)
    }

    // ------------------------------------------------------------- OffsetCommit

    /// OffsetCommit. `Err` applies to every partition; `Ok` has one code per partition.
    /// The records in `fx` must be durable before the caller acknowledges.
    pub fn commit_offsets(
        &mut self,
        now: i64,
        req: &CommitRequest,
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        let partition = self.offsets_partition(&req.group_id)?;
        let max_meta = self.config.offset_metadata_max_bytes;
        let group = match self.groups.get_mut(&req.group_id) {
            Some(g) => g,
            None if req.generation_id < 0 && req.member_id.is_empty() => {
                // A commit outside any group membership (manual assignment, admin tools).
                self.groups
                    .entry(req.group_id.clone())
                    .or_insert_with(|| Group::new(&req.group_id, partition, now))
            }
            None => return Err(ResponseError::IllegalGeneration),
        };
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let simple = req.generation_id < 0 && req.member_id.is_empty();
        if simple {
            if group.state != GroupState::Empty {
                // Kafka: only an empty group accepts commits from non-members.
                return Err(ResponseError::UnknownMemberId);
            }
        } else {
            check_static(group, &req.member_id, req.group_instance_id.as_deref())?;
            if group.state == GroupState::CompletingRebalance {
                return Err(ResponseError::RebalanceInProgress);
            }
            let Some(member) = group.members.get_mut(&req.member_id) else {
                return Err(ResponseError::UnknownMemberId);
            };
            if req.generation_id != group.generation {
                return Err(ResponseError::IllegalGeneration);
            }
            member.session_deadline = now + member.session_timeout_ms as i64;
        }
        let (codes, committed) =
            commit_records(&req.group_id, partition, &req.partitions, now, max_meta, fx);
        let mut undo = CommitUndo {
            group_id: req.group_id.clone(),
            entries: Vec::with_capacity(committed.len()),
        };
        for (p, value) in committed {
            self.writes += 1;
            let stored = Stored {
                value,
                written: self.writes,
            };
            let key = (p.topic.clone(), p.partition);
            let previous = group.offsets.insert(key.clone(), stored.clone());
            // OffsetFetch keeps showing the durable value until this one is confirmed.
            let written = self.writes;
            group
                .unconfirmed
                .entry(key.clone())
                .and_modify(|u| u.0 = written)
                .or_insert_with(|| (written, previous.clone()));
            undo.entries.push((key, written, previous, stored));
        }
        self.last_commit_undo = Some(undo);
        Ok(codes)
    }

    /// Takes back what the last [`commit_offsets`](Self::commit_offsets) call applied, for a
    /// commit whose records did not become durable (the append or its fsync failed): the
    /// requester was told KAFKA_STORAGE_ERROR, so OffsetFetch must not show it. A partition
    /// committed again since (a later write) keeps that later value.
    pub fn undo_commit(&mut self, undo: CommitUndo) {
        let Some(group) = self.groups.get_mut(&undo.group_id) else {
            return;
        };
        for (key, written, previous, _) in undo.entries {
            if group.offsets.get(&key).map(|s| s.written) != Some(written) {
                continue;
            }
            // The restored value is still unconfirmed if it is not the durable one.
            let restored = previous.as_ref().map(|p| p.written);
            if let Some(u) = group.unconfirmed.get_mut(&key) {
                if u.0 == written {
                    match restored {
                        Some(w) if u.1.as_ref().map(|d| d.written) != Some(w) => u.0 = w,
                        _ => {
                            group.unconfirmed.remove(&key);
                        }
                    }
                }
            }
            match previous {
                Some(p) => {
                    group.offsets.insert(key, p);
                }
                None => {
                    group.offsets.remove(&key);
                }
            }
        }
    }

    /// Marks what a [`commit_offsets`](Self::commit_offsets) call applied as durable: from now
    /// on OffsetFetch shows it (unless a later commit of the same partition is still
    /// unconfirmed: then this value is what OffsetFetch shows until that one is).
    pub fn confirm_commit(&mut self, undo: CommitUndo) {
        let Some(group) = self.groups.get_mut(&undo.group_id) else {
            return;
        };
        for (key, written, _, stored) in undo.entries {
            match group.unconfirmed.get_mut(&key) {
                Some(u) if u.0 == written => {
                    group.unconfirmed.remove(&key);
                }
                Some(u) if u.0 > written && u.1.as_ref().is_none_or(|d| d.written < written) => {
                    u.1 = Some(stored);
                }
                _ => {}
            }
        }
    }

    /// The undo record of the last successful `commit_offsets` call, taken (once).
    pub fn take_commit_undo(&mut self) -> Option<CommitUndo> {
        self.last_commit_undo.take()
    }

    // -------------------------------------------------------------- OffsetFetch

    /// Committed offsets of `group_id`: for the requested partitions (`None` where nothing is
    /// committed) or, with `topics = None`, every committed partition.
    #[allow(clippy::type_complexity)]
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<(String, Vec<(i32, Option<Committed>)>)>, ResponseError> {
        self.offsets_partition(group_id)?;
        let group = self.groups.get(group_id);
        let lookup = |t: &str, p: i32| {
            group
                .and_then(|g| {
                    let key = (t.to_string(), p);
                    match g.unconfirmed.get(&key) {
                        Some((_, durable)) => durable.as_ref(),
                        None => g.offsets.get(&key),
                    }
                })
                .map(|c| &c.value)
                .map(|v| Committed {
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata.clone(),
                })
        };
        Ok(match topics {
            Some(topics) => topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|&p| (p, lookup(t, p))).collect()))
                .collect(),
            None => {
                let mut out: Vec<(String, Vec<(i32, Option<Committed>)>)> = Vec::new();
                if let Some(g) = group {
                    for (t, p) in g.offsets.keys() {
                        match out.last_mut() {
                            Some((last, ps)) if last == t => ps.push((*p, lookup(t, *p))),
                            _ => out.push((t.clone(), vec![(*p, lookup(t, *p))])),
                        }
                    }
                }
                out
            }
        })
    }

    /// OffsetDelete. `Err` is a group-level error; `Ok` has one code per partition.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[(String, i32)],
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        let partition = self.offsets_partition(group_id)?;
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound);
        };
        match group.state {
            GroupState::Dead => return Err(ResponseError::GroupIdNotFound),
            GroupState::Empty => {}
            _ if group.protocol_type.as_deref() != Some("consumer") => {
                return Err(ResponseError::NonEmptyGroup)
            }
            _ => {}
        }
        let subscribed = if group.state == GroupState::Empty {
            HashSet::new()
        } else {
            group.subscribed_topics()
        };
        Ok(partitions
            .iter()
            .map(|(t, p)| {
                if subscribed.contains(t) {
                    return code(ResponseError::GroupSubscribedToTopic);
                }
                group.unconfirmed.remove(&(t.clone(), *p));
                if group.offsets.remove(&(t.clone(), *p)).is_some() {
                    fx.records.push(OffsetsRecord {
                        partition,
                        key: records::offset_key(group_id, t, *p),
                        value: None,
                    });
                }
                0
            })
            .collect())
    }
}
