//! `gregor-group`: the classic-protocol consumer group coordinator, as a sans-I/O state
//! machine.
//!
//! Inputs are requests plus the current time; outputs are responses (some of them later, for
//! JoinGroup and SyncGroup, which wait for the other members) and records the caller appends
//! to `__consumer_offsets`. Nothing here touches sockets, files or clocks, so the whole
//! protocol is tested with a simulated clock (`tests` below and `tests/`).
//!
//! State machine of a group (Kafka's classic protocol):
//!
//! ```text
//!  Empty ──join──▶ PreparingRebalance ──all joined / timeout──▶ CompletingRebalance
//!    ▲                 ▲        │                                 │ leader's SyncGroup
//!    │  last member    │        └──no member left──▶ Empty        ▼
//!    └──leaves/expires─┴────── join, leave, expiry, leader rejoin ── Stable
//!  DeleteGroups / retention: Empty ──▶ Dead (removed)
//! ```
//!
//! Invariants: the generation only grows (+1 per completed join phase); a member waiting in
//! JoinGroup/SyncGroup is never expired; a static member (`group.instance.id`) maps to exactly
//! one member id and an older incarnation is fenced (FENCED_INSTANCE_ID); the assignment is the
//! leader's, stored and handed out unchanged (so eager and cooperative assignors both work).

pub mod coordinator;
pub mod records;

pub use coordinator::{
    CommitPartition, CommitRequest, CommitUndo, Committed, Completion, Coordinator, DescribedGroup,
    DescribedMember, Effects, GroupConfig, JoinRequest, JoinResponse, JoinedMember, ListedGroup,
    OffsetsRecord, SyncRequest, SyncResponse, TxnCommitRequest, Waiter,
};

/// The state of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka reports in DescribeGroups/ListGroups.
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

pub use gregor_wire::java_string_hash;

/// The `__consumer_offsets` partition of a group, as Kafka computes it:
/// `Utils.abs(groupId.hashCode()) % partitions` (`Utils.abs` maps `i32::MIN` to 0).
pub fn group_partition(group_id: &str, partitions: i32) -> i32 {
    gregor_wire::coordinator_partition(group_id, partitions)
}

/// The topics of a `consumer` protocol subscription, or `None` if it does not decode.
pub fn decode_subscription(metadata: &[u8]) -> Option<Vec<String>> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if metadata.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]);
    if !(0..=3).contains(&version) {
        return None;
    }
    let mut buf = bytes::Bytes::copy_from_slice(&metadata[2..]);
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        ConsumerProtocolSubscription::decode(&mut buf, version)
    }));
    match decoded {
        Ok(Ok(sub)) => Some(sub.topics.iter().map(|t| t.to_string()).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
