//! The coordinator: every group of this broker, their members and committed offsets.
//!
//! Sans-I/O. Each call takes the current time (`now`, milliseconds) and an [`Effects`] to fill:
//! responses of requests that were waiting ([`Waiter`] ids chosen by the caller) and records
//! the caller must append to `__consumer_offsets`, in order. JoinGroup and SyncGroup answer
//! through `Effects::completions` — immediately or later, when another member's request or
//! [`Coordinator::tick`] completes the rebalance. Everything else answers directly.
//!
//! This module holds the state (groups, members, the coordinator) and the describe/list/delete
//! calls; the coordinator's other methods live by concept: `membership` (join, sync,
//! heartbeat, leave, rebalance), `offsets` (commit, fetch, delete, transactional offsets),
//! `replay` (loading `__consumer_offsets`) and `expiry` (deadlines, timeouts, retention).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;

use crate::records::{self, GroupValue, MemberValue, OffsetValue, RecordKey};
use crate::{group_partition, GroupState};

mod expiry;
mod membership;
mod offsets;
mod replay;

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
    /// Commits not yet durable, by partition: the write number of the newest one, and the
    /// durable value OffsetFetch shows until it is confirmed
    /// ([`Coordinator::confirm_commit`]) or taken back ([`Coordinator::undo_commit`]).
    unconfirmed: BTreeMap<(String, i32), (u64, Option<Stored>)>,
}

/// What one OffsetCommit changed in a group's committed offsets: confirmed once its records
/// are durable ([`Coordinator::confirm_commit`]), taken back if they did not become durable
/// ([`Coordinator::undo_commit`]).
#[derive(Debug)]
pub struct CommitUndo {
    group_id: String,
    /// (topic, partition), the write number of the new value, the value it replaced, the new
    /// value.
    #[allow(clippy::type_complexity)]
    entries: Vec<((String, i32), u64, Option<Stored>, Stored)>,
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
            unconfirmed: BTreeMap::new(),
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
    /// What the last `commit_offsets` applied (see [`Coordinator::take_commit_undo`]).
    last_commit_undo: Option<CommitUndo>,
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
            last_commit_undo: None,
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

    /// The group's state and generation (for tests and diagnostics).
    pub fn group_state(&self, group_id: &str) -> Option<(GroupState, i32)> {
        self.groups.get(group_id).map(|g| (g.state, g.generation))
    }
}
