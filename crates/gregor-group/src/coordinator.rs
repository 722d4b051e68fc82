//! The coordinator: every group of this broker, their members and committed offsets.
//!
//! Sans-I/O. Each call takes the current time (`now`, milliseconds) and an [`Effects`] to fill:
//! responses of requests that were waiting ([`Waiter`] ids chosen by the caller) and records
//! the caller must append to `__consumer_offsets`, in order. JoinGroup and SyncGroup answer
//! through `Effects::completions` — immediately or later, when another member's request or
//! [`Coordinator::tick`] completes the rebalance. Everything else answers directly.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;

use crate::records::{self, GroupValue, MemberValue, OffsetValue, RecordKey};
use crate::{group_partition, GroupState};

/// Identifies a waiting JoinGroup/SyncGroup request; chosen by the caller, unique while it waits.
pub type Waiter = u64;

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// Coordinator settings (Kafka's names in the docs).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_partitions: i32,
    /// `group.initial.rebalance.delay.ms`: how long a rebalance of an empty group waits for
    /// more members (extended by the same delay while members keep arriving, up to the
    /// rebalance timeout).
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.max.size`.
    pub max_size: usize,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_partitions: 10,
            initial_rebalance_delay_ms: 100,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: 1_000,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// A record for `__consumer_offsets`: partition, key, value (`None` = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsRecord {
    pub partition: i32,
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// What a call produced besides its direct result.
#[derive(Debug, Default)]
pub struct Effects {
    /// Answers for waiting JoinGroup/SyncGroup requests.
    pub completions: Vec<(Waiter, Completion)>,
    /// Records to append to `__consumer_offsets`, in this order.
    pub records: Vec<OffsetsRecord>,
}

/// The answer to a waiting request.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Join(JoinResponse),
    Sync(SyncResponse),
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Non-empty for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    /// A response carrying only an error.
    pub fn error(e: ResponseError, member_id: &str) -> Self {
        JoinResponse {
            error: code(e),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    /// A response carrying only an error.
    pub fn error(e: ResponseError) -> Self {
        SyncResponse {
            error: code(e),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// One partition's offset to commit.
#[derive(Debug, Clone)]
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub partitions: Vec<CommitPartition>,
}

/// A committed offset as OffsetFetch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribedGroup {
    pub error: i16,
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<Waiter>,
    sync_waiter: Option<Waiter>,
    /// The member is removed if no heartbeat (or other proof of life) arrives by then.
    session_deadline: i64,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Members waiting in JoinGroup or SyncGroup are alive by definition (as in Kafka).
    fn is_waiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }
}

#[derive(Debug)]
struct Group {
    id: String,
    /// The `__consumer_offsets` partition holding this group's records.
    partition: i32,
    state: GroupState,
    state_since: i64,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order: the first member becomes leader when there is none.
    members: IndexMap<String, Member>,
    /// `group.instance.id` → member id.
    static_members: HashMap<String, String>,
    /// Members that got MEMBER_ID_REQUIRED and must rejoin by the deadline.
    pending: HashMap<String, i64>,
    /// PreparingRebalance: when the join phase ends even if members are missing.
    join_deadline: Option<i64>,
    /// The join phase is the initial delay of an empty group (it never ends early).
    initial_delay: bool,
    /// Hard end of an initial delay (the largest rebalance timeout).
    initial_delay_limit: i64,
    new_member_added: bool,
    offsets: BTreeMap<(String, i32), Stored>,
}

/// A committed offset and the position of its record in the log order of
/// `__consumer_offsets` (see [`Coordinator::next_write`]).
#[derive(Debug, Clone)]
struct Stored {
    value: OffsetValue,
    written: u64,
}

impl Group {
    fn new(id: &str, partition: i32, now: i64) -> Group {
        Group {
            id: id.to_string(),
            partition,
            state: GroupState::Empty,
            state_since: now,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay: false,
            initial_delay_limit: 0,
            new_member_added: false,
            offsets: BTreeMap::new(),
        }
    }

    fn transition(&mut self, to: GroupState, now: i64) {
        tracing::debug!(group = %self.id, from = ?self.state, ?to, generation = self.generation, "group state");
        self.state = to;
        self.state_since = now;
    }

    fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms as i64)
            .max()
            .unwrap_or(0)
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Protocols every member supports, in the first member's order.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else {
            return vec![];
        };
        let mut c: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            c.retain(|p| m.protocols.iter().any(|(n, _)| n == p));
        }
        c
    }

    /// Each member votes for its most preferred candidate; most votes wins (ties: the first
    /// member's preference order).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&String, usize)> = None;
        for c in &candidates {
            let v = votes.get(c.as_str()).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((c, v));
            }
        }
        best.map(|(c, _)| c.clone())
    }

    /// A joining member's protocols are acceptable.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self
                .candidate_protocols()
                .iter()
                .any(|c| protocols.iter().any(|(n, _)| n == c))
    }

    fn subscribed_topics(&self) -> HashSet<String> {
        let mut topics = HashSet::new();
        if self.protocol_type.as_deref() != Some("consumer") {
            return topics;
        }
        let Some(protocol) = &self.protocol else {
            return topics;
        };
        for m in self.members.values() {
            if let Some(sub) = crate::decode_subscription(&m.metadata(protocol)) {
                topics.extend(sub);
            }
        }
        topics
    }

    fn metadata_value(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp: self.state_since,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }
}

/// The group coordinator of one broker (all partitions of `__consumer_offsets` it leads).
#[derive(Debug)]
pub struct Coordinator {
    config: GroupConfig,
    groups: HashMap<String, Group>,
    /// Per `__consumer_offsets` partition: replay finished.
    loaded: Vec<bool>,
    next_retention_check: i64,
    /// Transactional offset commits not yet committed or aborted, per producer id:
    /// (group, topic, partition) → offset. They become committed offsets when the
    /// transaction's COMMIT marker is written and are dropped on ABORT.
    pending_txn: HashMap<i64, BTreeMap<(String, String, i32), Stored>>,
    /// Counts offset records in the order they are written (live) or replayed: within one
    /// `__consumer_offsets` partition this is the log order, because records are appended
    /// under the coordinator lock in decision order and a partition is replayed before it
    /// serves. A transaction's offset becomes committed at its COMMIT marker only if no
    /// offset written after it is already committed for that partition (Kafka's rule), so
    /// the live state equals what a replay of the compacted log gives.
    writes: u64,
}

/// TxnOffsetCommit, version-free.
#[derive(Debug, Clone)]
pub struct TxnCommitRequest {
    pub group_id: String,
    pub producer_id: i64,
    /// -1 / empty when the producer does not send its consumer's group metadata.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub partitions: Vec<CommitPartition>,
}

/// The committed value of one partition of an OffsetCommit / TxnOffsetCommit and its
/// `__consumer_offsets` record (in the group's partition `partition`), or the partition's
/// error.
fn commit_record(
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

/// Kafka's group id rule: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DescribeGroups and
/// DeleteGroups need a non-empty id; offset APIs accept the empty id. In addition an id must
/// fit the `__consumer_offsets` key schema (an int16-length string), or it could not be
/// stored and reloaded intact.
pub fn valid_group_id(id: &str, offsets_api: bool) -> bool {
    id.len() <= i16::MAX as usize && (offsets_api || !id.is_empty())
}

impl Coordinator {
    /// A coordinator whose partitions are all still loading.
    pub fn new(config: GroupConfig) -> Coordinator {
        let n = config.offsets_partitions.max(1) as usize;
        Coordinator {
            config,
            groups: HashMap::new(),
            loaded: vec![false; n],
            next_retention_check: 0,
            pending_txn: HashMap::new(),
            writes: 0,
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The `__consumer_offsets` partition that stores `group_id`.
    /// Stamps an offset record with its place in the log order.
    fn next_write(&mut self, value: OffsetValue) -> Stored {
        self.writes += 1;
        Stored {
            value,
            written: self.writes,
        }
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        group_partition(group_id, self.loaded.len() as i32)
    }

    fn check_loaded(&self, group_id: &str) -> Result<(), ResponseError> {
        if self.loaded[self.partition_for(group_id) as usize] {
            Ok(())
        } else {
            Err(ResponseError::CoordinatorLoadInProgress)
        }
    }

    // ------------------------------------------------------------------ loading

    /// Applies one replayed record of `__consumer_offsets` (in log order).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>, now: i64) {
        let n = self.loaded.len() as i32;
        let key = match records::decode_key(key) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "skipping undecodable __consumer_offsets key");
                return;
            }
        };
        match (key, value) {
            (
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                Some(v),
            ) => match records::decode_offset_value(v) {
                Ok(v) => {
                    let stored = self.next_write(v);
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, group_partition(&group, n), now))
                        .offsets
                        .insert((topic, partition), stored);
                }
                Err(e) => tracing::warn!(error = %e, "skipping undecodable offset value"),
            },
            (
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                None,
            ) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
            (RecordKey::Group { group }, Some(v)) => match records::decode_group_value(v) {
                Ok(v) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, group_partition(&group, n), now));
                    // The group as last stored: Stable with its members and their
                    // assignments, or Empty. Restored members get a full session timeout
                    // from now to heartbeat again (with the same generation, so a
                    // coordinator restart causes no rebalance); the others expire.
                    g.generation = v.generation;
                    g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
                    g.state_since = if v.current_state_timestamp > 0 {
                        v.current_state_timestamp
                    } else {
                        now
                    };
                    g.members.clear();
                    g.static_members.clear();
                    g.pending.clear();
                    g.join_deadline = None;
                    g.initial_delay = false;
                    match v.protocol {
                        Some(protocol) if !v.members.is_empty() => {
                            for m in v.members {
                                if let Some(instance) = &m.group_instance_id {
                                    g.static_members
                                        .insert(instance.clone(), m.member_id.clone());
                                }
                                g.members.insert(
                                    m.member_id.clone(),
                                    Member {
                                        id: m.member_id,
                                        instance_id: m.group_instance_id,
                                        client_id: m.client_id,
                                        client_host: m.client_host,
                                        session_timeout_ms: m.session_timeout_ms,
                                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                                        protocols: vec![(protocol.clone(), m.subscription)],
                                        assignment: m.assignment,
                                        join_waiter: None,
                                        sync_waiter: None,
                                        session_deadline: now + m.session_timeout_ms.max(0) as i64,
                                    },
                                );
                            }
                            g.leader = v
                                .leader
                                .filter(|l| g.members.contains_key(l))
                                .or_else(|| g.members.keys().next().cloned());
                            g.protocol = Some(protocol);
                            g.state = GroupState::Stable;
                        }
                        _ => {
                            g.protocol = None;
                            g.leader = None;
                            g.state = GroupState::Empty;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "skipping undecodable group value"),
            },
            (RecordKey::Group { group }, None) => {
                self.groups.remove(&group);
            }
        }
    }

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
        if !valid_group_id(&req.group_id, true) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(&req.group_id)?;
        let partition = self.partition_for(&req.group_id);
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
        let mut codes = Vec::with_capacity(req.partitions.len());
        for p in &req.partitions {
            let value = match commit_record(&req.group_id, partition, p, now, max_meta) {
                Ok((value, record)) => {
                    fx.records.push(record);
                    value
                }
                Err(e) => {
                    codes.push(code(e));
                    continue;
                }
            };
            let stored = self.next_write(value);
            self.pending_txn
                .entry(req.producer_id)
                .or_default()
                .insert((req.group_id.clone(), p.topic.clone(), p.partition), stored);
            codes.push(0);
        }
        Ok(codes)
    }

    /// Marks a partition loaded: its groups answer from now on.
    pub fn finish_loading(&mut self, partition: i32) {
        if let Some(l) = self.loaded.get_mut(partition as usize) {
            *l = true;
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.iter().all(|l| *l)
    }

    // ---------------------------------------------------------------- JoinGroup

    /// JoinGroup. The answer for `waiter` arrives in `fx.completions` (now or later).
    pub fn join_group(&mut self, now: i64, waiter: Waiter, req: JoinRequest, fx: &mut Effects) {
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.completions.push((
                waiter,
                Completion::Join(JoinResponse::error(e, &req.member_id)),
            ));
        };
        if !valid_group_id(&req.group_id, false) {
            return fail(fx, ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(&req.group_id) {
            return fail(fx, e);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(fx, ResponseError::InvalidSessionTimeout);
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                return fail(fx, ResponseError::UnknownMemberId);
            }
            let partition = self.partition_for(&req.group_id);
            self.groups.insert(
                req.group_id.clone(),
                Group::new(&req.group_id, partition, now),
            );
        }
        let max_size = self.config.max_size;
        let delay = self.config.initial_rebalance_delay_ms;
        let group = self.groups.get_mut(&req.group_id).expect("inserted above");
        if group.state == GroupState::Dead {
            return fail(fx, ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports(&req.protocol_type, &req.protocols) {
            return fail(fx, ResponseError::InconsistentGroupProtocol);
        }
        let known = group.members.contains_key(&req.member_id)
            || group.pending.contains_key(&req.member_id);
        if !known && group.size() >= max_size {
            return fail(fx, ResponseError::GroupMaxSizeReached);
        }

        if req.member_id.is_empty() {
            let prefix = req
                .group_instance_id
                .as_deref()
                .unwrap_or(req.client_id.as_str());
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old_id) = group.static_members.get(&instance).cloned() {
                    return replace_static_member(group, now, waiter, &req, old_id, new_id, fx);
                }
                return add_member_and_rebalance(group, now, waiter, &req, new_id, delay, fx);
            }
            if req.require_known_member_id {
                group
                    .pending
                    .insert(new_id.clone(), now + req.session_timeout_ms as i64);
                fx.completions.push((
                    waiter,
                    Completion::Join(JoinResponse::error(
                        ResponseError::MemberIdRequired,
                        &new_id,
                    )),
                ));
                return;
            }
            return add_member_and_rebalance(group, now, waiter, &req, new_id, delay, fx);
        }

        // A known member id.
        if group.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return add_member_and_rebalance(group, now, waiter, &req, id, delay, fx);
        }
        if let Err(e) = check_static(group, &req.member_id, req.group_instance_id.as_deref()) {
            return fail(fx, e);
        }
        let Some(member) = group.members.get(&req.member_id) else {
            return fail(fx, ResponseError::UnknownMemberId);
        };
        let same = member.same_protocols(&req.protocols);
        let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
        match group.state {
            GroupState::PreparingRebalance => {
                update_member(group, now, waiter, &req, fx);
                try_complete_join(group, now, fx);
            }
            GroupState::CompletingRebalance if same => {
                // A lost JoinGroup response: answer with the current generation again.
                let resp = join_response_for(group, &req.member_id);
                fx.completions.push((waiter, Completion::Join(resp)));
            }
            GroupState::Stable if same && !is_leader => {
                let resp = join_response_for(group, &req.member_id);
                if let Some(m) = group.members.get_mut(&req.member_id) {
                    m.session_deadline = now + m.session_timeout_ms as i64;
                }
                fx.completions.push((waiter, Completion::Join(resp)));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                update_member(group, now, waiter, &req, fx);
                prepare_rebalance(group, now, delay, fx);
            }
            GroupState::Empty | GroupState::Dead => fail(fx, ResponseError::UnknownMemberId),
        }
    }

    // ---------------------------------------------------------------- SyncGroup

    pub fn sync_group(&mut self, now: i64, waiter: Waiter, req: SyncRequest, fx: &mut Effects) {
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.completions
                .push((waiter, Completion::Sync(SyncResponse::error(e))));
        };
        if !valid_group_id(&req.group_id, false) {
            return fail(fx, ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(&req.group_id) {
            return fail(fx, e);
        }
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return fail(fx, ResponseError::UnknownMemberId);
        };
        if let Err(e) = check_static(group, &req.member_id, req.group_instance_id.as_deref()) {
            return fail(fx, e);
        }
        if !group.members.contains_key(&req.member_id) {
            return fail(fx, ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation {
            return fail(fx, ResponseError::IllegalGeneration);
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| Some(p) != group.protocol.as_ref())
        {
            return fail(fx, ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(fx, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(fx, ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let member = group.members.get_mut(&req.member_id).expect("checked");
                if let Some(old) = member.sync_waiter.replace(waiter) {
                    fx.completions.push((
                        old,
                        Completion::Sync(SyncResponse::error(ResponseError::RebalanceInProgress)),
                    ));
                }
                member.session_deadline = now + member.session_timeout_ms as i64;
                if group.leader.as_deref() == Some(req.member_id.as_str()) {
                    let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    fx.records.push(OffsetsRecord {
                        partition: group.partition,
                        key: records::group_key(&group.id),
                        value: Some(records::group_value(&group.metadata_value())),
                    });
                    group.transition(GroupState::Stable, now);
                    let (pt, pn) = (group.protocol_type.clone(), group.protocol.clone());
                    for m in group.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            fx.completions.push((
                                w,
                                Completion::Sync(SyncResponse {
                                    error: 0,
                                    protocol_type: pt.clone(),
                                    protocol_name: pn.clone(),
                                    assignment: m.assignment.clone(),
                                }),
                            ));
                        }
                    }
                }
            }
            GroupState::Stable => {
                let member = group.members.get_mut(&req.member_id).expect("checked");
                member.session_deadline = now + member.session_timeout_ms as i64;
                let resp = SyncResponse {
                    error: 0,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    assignment: member.assignment.clone(),
                };
                fx.completions.push((waiter, Completion::Sync(resp)));
            }
        }
    }

    // ---------------------------------------------------------------- Heartbeat

    pub fn heartbeat(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if !valid_group_id(group_id, false) {
            return code(ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(group_id) {
            return code(e);
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if let Err(e) = check_static(group, member_id, instance_id) {
            return code(e);
        }
        let state = group.state;
        let current = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if generation != current {
            return code(ResponseError::IllegalGeneration);
        }
        member.session_deadline = now + member.session_timeout_ms as i64;
        match state {
            GroupState::Empty | GroupState::Dead => code(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => 0,
        }
    }

    // --------------------------------------------------------------- LeaveGroup

    /// LeaveGroup for `(member_id, group_instance_id)` pairs. `Err` is a group-level error;
    /// `Ok` has one code per member, in request order.
    pub fn leave_group(
        &mut self,
        now: i64,
        group_id: &str,
        members: &[(String, Option<String>)],
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        if !valid_group_id(group_id, false) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(group_id)?;
        let delay = self.config.initial_rebalance_delay_ms;
        let Some(group) = self.groups.get_mut(group_id) else {
            return Ok(vec![code(ResponseError::UnknownMemberId); members.len()]);
        };
        let mut codes = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    None => {
                        codes.push(code(ResponseError::UnknownMemberId));
                        continue;
                    }
                    Some(registered) if !member_id.is_empty() && registered != member_id => {
                        codes.push(code(ResponseError::FencedInstanceId));
                        continue;
                    }
                    Some(registered) => registered.clone(),
                },
                None => member_id.clone(),
            };
            if group.pending.remove(&id).is_some() {
                codes.push(0);
                if group.state == GroupState::PreparingRebalance {
                    try_complete_join(group, now, fx);
                }
                continue;
            }
            if !group.members.contains_key(&id) {
                codes.push(code(ResponseError::UnknownMemberId));
                continue;
            }
            tracing::debug!(group = %group_id, member = %id, "member left");
            remove_member_and_update(group, now, &id, delay, fx);
            codes.push(0);
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
        if !valid_group_id(&req.group_id, true) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(&req.group_id)?;
        let partition = self.partition_for(&req.group_id);
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
        let mut codes = Vec::with_capacity(req.partitions.len());
        for p in &req.partitions {
            let value = match commit_record(&req.group_id, partition, p, now, max_meta) {
                Ok((value, record)) => {
                    fx.records.push(record);
                    value
                }
                Err(e) => {
                    codes.push(code(e));
                    continue;
                }
            };
            self.writes += 1;
            let stored = Stored {
                value,
                written: self.writes,
            };
            group.offsets.insert((p.topic.clone(), p.partition), stored);
            codes.push(0);
        }
        Ok(codes)
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
        if !valid_group_id(group_id, true) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(group_id)?;
        let group = self.groups.get(group_id);
        let lookup = |t: &str, p: i32| {
            group
                .and_then(|g| g.offsets.get(&(t.to_string(), p)))
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

    // ----------------------------------------------------- Describe/List/Delete

    pub fn describe_group(&self, group_id: &str) -> DescribedGroup {
        let mut d = DescribedGroup {
            error: 0,
            group_id: group_id.to_string(),
            state: GroupState::Dead,
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
        };
        if !valid_group_id(group_id, false) {
            d.error = code(ResponseError::InvalidGroupId);
            return d;
        }
        if let Err(e) = self.check_loaded(group_id) {
            d.error = code(e);
            return d;
        }
        let Some(g) = self.groups.get(group_id) else {
            return d;
        };
        d.state = g.state;
        d.protocol_type = g.protocol_type.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        if stable {
            d.protocol = g.protocol.clone().unwrap_or_default();
        }
        let protocol = g.protocol.clone().unwrap_or_default();
        d.members = g
            .members
            .values()
            .map(|m| DescribedMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        d
    }

    /// Groups whose state is in `states` (lower-case names; empty = all). `Err` while loading.
    pub fn list_groups(&self, states: &[String]) -> Result<Vec<ListedGroup>, ResponseError> {
        if !self.is_loaded() {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let mut out: Vec<ListedGroup> = self
            .groups
            .values()
            .filter(|g| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// DeleteGroups for one group: only an empty group can be deleted.
    pub fn delete_group(&mut self, group_id: &str, fx: &mut Effects) -> i16 {
        if !valid_group_id(group_id, false) {
            return code(ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(group_id) {
            return code(e);
        }
        let partition = self.partition_for(group_id);
        let Some(group) = self.groups.get(group_id) else {
            return code(ResponseError::GroupIdNotFound);
        };
        match group.state {
            GroupState::Dead => return code(ResponseError::GroupIdNotFound),
            GroupState::Empty => {}
            _ => return code(ResponseError::NonEmptyGroup),
        }
        let mut group = self.groups.remove(group_id).expect("present");
        group.state = GroupState::Dead;
        for (t, p) in group.offsets.keys() {
            fx.records.push(OffsetsRecord {
                partition,
                key: records::offset_key(group_id, t, *p),
                value: None,
            });
        }
        fx.records.push(OffsetsRecord {
            partition,
            key: records::group_key(group_id),
            value: None,
        });
        tracing::info!(group = group_id, "group deleted");
        0
    }

    /// OffsetDelete. `Err` is a group-level error; `Ok` has one code per partition.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[(String, i32)],
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        if !valid_group_id(group_id, true) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(group_id)?;
        let partition = self.partition_for(group_id);
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

    // --------------------------------------------------------------------- time

    /// The earliest time [`tick`](Self::tick) has something to do, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        // Groups still being replayed are skipped by `tick`, so their deadlines must not wake it.
        for g in self
            .groups
            .values()
            .filter(|g| self.loaded[g.partition as usize])
        {
            if let Some(d) = g.join_deadline {
                consider(d);
            }
            for d in g.pending.values() {
                consider(*d);
            }
            for m in g.members.values() {
                if !m.is_waiting() {
                    consider(m.session_deadline);
                }
            }
        }
        if !self.groups.is_empty() {
            consider(self.next_retention_check);
        }
        next
    }

    /// Expires sessions and pending members, ends join phases whose time is up, and expires
    /// offsets of empty groups.
    pub fn tick(&mut self, now: i64, fx: &mut Effects) {
        let delay = self.config.initial_rebalance_delay_ms;
        for group in self.groups.values_mut() {
            if !self.loaded[group.partition as usize] {
                continue;
            }
            let expired_pending: Vec<String> = group
                .pending
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired_pending {
                tracing::debug!(group = %group.id, member = %id, "pending member expired");
                group.pending.remove(&id);
                if group.state == GroupState::PreparingRebalance && !group.initial_delay {
                    try_complete_join(group, now, fx);
                }
            }
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| !m.is_waiting() && m.session_deadline <= now)
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "session timeout: member removed");
                remove_member_and_update(group, now, &id, delay, fx);
            }
            if let Some(deadline) = group.join_deadline {
                if deadline <= now && group.state == GroupState::PreparingRebalance {
                    if group.initial_delay && group.new_member_added {
                        let remaining = group.initial_delay_limit - now;
                        if remaining > 0 {
                            group.new_member_added = false;
                            group.join_deadline = Some(now + delay.min(remaining));
                            continue;
                        }
                    }
                    complete_join(group, now, fx);
                }
            }
        }
        if now >= self.next_retention_check {
            self.next_retention_check = now + self.config.retention_check_interval_ms.max(1);
            self.expire_offsets(now, fx);
        }
    }

    /// Removes offsets of empty groups older than `offsets.retention.minutes` (counted from
    /// the later of the commit and the moment the group became empty), then groups that are
    /// empty and have no offsets left.
    fn expire_offsets(&mut self, now: i64, fx: &mut Effects) {
        let retention = self.config.offsets_retention_ms;
        let n = self.loaded.len() as i32;
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            if group.state != GroupState::Empty || !self.loaded[group.partition as usize] {
                continue;
            }
            let partition = group_partition(&group.id, n);
            let since = group.state_since;
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| {
                    c.value
                        .commit_timestamp
                        .max(since)
                        .saturating_add(retention)
                        <= now
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (t, p) in expired {
                group.offsets.remove(&(t.clone(), p));
                fx.records.push(OffsetsRecord {
                    partition,
                    key: records::offset_key(&group.id, &t, p),
                    value: None,
                });
            }
            if group.offsets.is_empty() && since.saturating_add(retention) <= now {
                dead.push((group.id.clone(), partition));
            }
        }
        for (id, partition) in dead {
            tracing::info!(group = %id, "empty group expired");
            self.groups.remove(&id);
            fx.records.push(OffsetsRecord {
                partition,
                key: records::group_key(&id),
                value: None,
            });
        }
    }

    /// The group's state and generation (for tests and diagnostics).
    pub fn group_state(&self, group_id: &str) -> Option<(GroupState, i32)> {
        self.groups.get(group_id).map(|g| (g.state, g.generation))
    }
}

/// FENCED_INSTANCE_ID if `instance_id` is registered to another member id.
fn check_static(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    if let Some(instance) = instance_id {
        match group.static_members.get(instance) {
            Some(registered) if registered != member_id => {
                return Err(ResponseError::FencedInstanceId)
            }
            None if group.members.contains_key(member_id) => {
                return Err(ResponseError::FencedInstanceId)
            }
            _ => {}
        }
    }
    Ok(())
}

/// The JoinGroup answer for `member_id` in the current generation.
fn join_response_for(group: &Group, member_id: &str) -> JoinResponse {
    let leader = group.leader.clone().unwrap_or_default();
    let protocol = group.protocol.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata(&protocol),
            })
            .collect()
    } else {
        vec![]
    };
    JoinResponse {
        error: 0,
        generation_id: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

fn add_member_and_rebalance(
    group: &mut Group,
    now: i64,
    waiter: Waiter,
    req: &JoinRequest,
    id: String,
    delay: i64,
    fx: &mut Effects,
) {
    if group.members.is_empty() {
        group.protocol_type = Some(req.protocol_type.clone());
    }
    if let Some(instance) = &req.group_instance_id {
        group.static_members.insert(instance.clone(), id.clone());
    }
    tracing::debug!(group = %group.id, member = %id, "member joined");
    group.members.insert(
        id.clone(),
        Member {
            id: id.clone(),
            instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(waiter),
            sync_waiter: None,
            session_deadline: now + req.session_timeout_ms as i64,
        },
    );
    if group.leader.is_none() {
        group.leader = Some(id);
    }
    group.new_member_added = true;
    if group.state == GroupState::PreparingRebalance {
        if !group.initial_delay {
            try_complete_join(group, now, fx);
        }
    } else {
        prepare_rebalance(group, now, delay, fx);
    }
}

fn update_member(group: &mut Group, now: i64, waiter: Waiter, req: &JoinRequest, fx: &mut Effects) {
    let member = group
        .members
        .get_mut(&req.member_id)
        .expect("caller checked");
    member.protocols = req.protocols.clone();
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_deadline = now + req.session_timeout_ms as i64;
    if let Some(old) = member.join_waiter.replace(waiter) {
        fx.completions.push((
            old,
            Completion::Join(JoinResponse::error(
                ResponseError::RebalanceInProgress,
                &req.member_id,
            )),
        ));
    }
}

/// A static member came back with a new member id (`group.instance.id` known).
fn replace_static_member(
    group: &mut Group,
    now: i64,
    waiter: Waiter,
    req: &JoinRequest,
    old_id: String,
    new_id: String,
    fx: &mut Effects,
) {
    let Some(mut member) = group.members.shift_remove(&old_id) else {
        group
            .static_members
            .remove(req.group_instance_id.as_deref().unwrap_or_default());
        return add_member_and_rebalance(group, now, waiter, req, new_id, 0, fx);
    };
    // The old incarnation's waiting requests are fenced.
    if let Some(w) = member.join_waiter.take() {
        fx.completions.push((
            w,
            Completion::Join(JoinResponse::error(
                ResponseError::FencedInstanceId,
                &old_id,
            )),
        ));
    }
    if let Some(w) = member.sync_waiter.take() {
        fx.completions.push((
            w,
            Completion::Sync(SyncResponse::error(ResponseError::FencedInstanceId)),
        ));
    }
    let old_leader = group.leader.clone().unwrap_or_default();
    if group.leader.as_deref() == Some(old_id.as_str()) {
        group.leader = Some(new_id.clone());
    }
    let same = member.same_protocols(&req.protocols);
    member.id = new_id.clone();
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.protocols = req.protocols.clone();
    member.session_deadline = now + req.session_timeout_ms as i64;
    group.members.insert(new_id.clone(), member);
    if let Some(instance) = &req.group_instance_id {
        group
            .static_members
            .insert(instance.clone(), new_id.clone());
    }
    tracing::info!(group = %group.id, old = %old_id, new = %new_id, state = ?group.state, "static member rejoined");
    match group.state {
        GroupState::Stable if same => {
            // No rebalance: the member keeps its assignment (it fetches it with SyncGroup).
            // The leader id returned is the old one, so a returning leader does not assign.
            let mut resp = join_response_for(group, &new_id);
            resp.leader = old_leader;
            resp.members.clear();
            fx.records.push(OffsetsRecord {
                partition: group.partition,
                key: records::group_key(&group.id),
                value: Some(records::group_value(&group.metadata_value())),
            });
            fx.completions.push((waiter, Completion::Join(resp)));
        }
        GroupState::PreparingRebalance => {
            let m = group.members.get_mut(&new_id).expect("inserted");
            m.join_waiter = Some(waiter);
            if !group.initial_delay {
                try_complete_join(group, now, fx);
            }
        }
        _ => {
            let m = group.members.get_mut(&new_id).expect("inserted");
            m.join_waiter = Some(waiter);
            prepare_rebalance(group, now, 0, fx);
        }
    }
}

/// Removes a member (left, expired) and moves the group on.
fn remove_member_and_update(group: &mut Group, now: i64, id: &str, delay: i64, fx: &mut Effects) {
    let Some(mut member) = group.members.shift_remove(id) else {
        return;
    };
    if let Some(w) = member.join_waiter.take() {
        fx.completions.push((
            w,
            Completion::Join(JoinResponse::error(ResponseError::UnknownMemberId, id)),
        ));
    }
    if let Some(w) = member.sync_waiter.take() {
        fx.completions.push((
            w,
            Completion::Sync(SyncResponse::error(ResponseError::UnknownMemberId)),
        ));
    }
    if let Some(instance) = &member.instance_id {
        if group.static_members.get(instance).map(String::as_str) == Some(id) {
            group.static_members.remove(instance);
        }
    }
    if group.leader.as_deref() == Some(id) {
        group.leader = group.members.keys().next().cloned();
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, now, delay, fx)
        }
        GroupState::PreparingRebalance => {
            if !group.initial_delay || group.members.is_empty() {
                try_complete_join(group, now, fx)
            }
        }
        GroupState::Empty | GroupState::Dead => {}
    }
}

/// Starts a rebalance: members must rejoin within the largest rebalance timeout.
fn prepare_rebalance(group: &mut Group, now: i64, delay: i64, fx: &mut Effects) {
    if group.state == GroupState::CompletingRebalance {
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                fx.completions.push((
                    w,
                    Completion::Sync(SyncResponse::error(ResponseError::RebalanceInProgress)),
                ));
            }
        }
    }
    let timeout = group.max_rebalance_timeout();
    if group.state == GroupState::Empty && delay > 0 {
        group.initial_delay = true;
        group.initial_delay_limit = now + timeout;
        group.new_member_added = false;
        group.join_deadline = Some(now + delay.min(timeout));
        group.transition(GroupState::PreparingRebalance, now);
    } else {
        group.initial_delay = false;
        group.join_deadline = Some(now + timeout);
        group.transition(GroupState::PreparingRebalance, now);
        try_complete_join(group, now, fx);
    }
}

/// Ends the join phase early if every member has rejoined — except during the initial delay of
/// an empty group, which always runs its course (unless nobody is left).
fn try_complete_join(group: &mut Group, now: i64, fx: &mut Effects) {
    let may_end = !group.initial_delay || group.members.is_empty();
    if group.state == GroupState::PreparingRebalance && may_end && group.all_joined() {
        complete_join(group, now, fx);
    }
}

/// Ends the join phase: members that did not rejoin are removed, the generation advances and
/// every joined member gets its JoinGroup answer (the leader with the member list).
fn complete_join(group: &mut Group, now: i64, fx: &mut Effects) {
    let missing: Vec<String> = group
        .members
        .values()
        .filter(|m| m.join_waiter.is_none())
        .map(|m| m.id.clone())
        .collect();
    for id in missing {
        tracing::info!(group = %group.id, member = %id, "member did not rejoin in time: removed");
        if let Some(m) = group.members.shift_remove(&id) {
            if let Some(instance) = &m.instance_id {
                if group.static_members.get(instance) == Some(&id) {
                    group.static_members.remove(instance);
                }
            }
        }
    }
    group.join_deadline = None;
    group.initial_delay = false;
    group.generation = group.generation.saturating_add(1);
    if group.members.is_empty() {
        group.protocol = None;
        group.leader = None;
        group.transition(GroupState::Empty, now);
        fx.records.push(OffsetsRecord {
            partition: group.partition,
            key: records::group_key(&group.id),
            value: Some(records::group_value(&group.metadata_value())),
        });
        return;
    }
    group.protocol = group.select_protocol();
    if !group
        .leader
        .as_ref()
        .is_some_and(|l| group.members.contains_key(l))
    {
        group.leader = group.members.keys().next().cloned();
    }
    group.transition(GroupState::CompletingRebalance, now);
    let responses: Vec<(Waiter, JoinResponse)> = group
        .members
        .values()
        .filter_map(|m| m.join_waiter.map(|w| (w, join_response_for(group, &m.id))))
        .collect();
    for m in group.members.values_mut() {
        m.join_waiter = None;
        m.session_deadline = now + m.session_timeout_ms as i64;
    }
    tracing::info!(group = %group.id, generation = group.generation, members = group.members.len(), protocol = ?group.protocol, "rebalance: join phase complete");
    for (w, r) in responses {
        fx.completions.push((w, Completion::Join(r)));
    }
}
