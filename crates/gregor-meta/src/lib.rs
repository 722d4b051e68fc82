//! Cluster metadata for Gregor, the way KRaft keeps it: a log of metadata records agreed by a
//! Raft quorum of controllers.
//!
//! - [`records`]: the records ([`MetaRecord`]) and the batch a log entry carries.
//! - [`image`]: [`MetadataImage`], the state machine the records are applied to, with its
//!   invariants.
//! - [`controller`]: the sans-I/O [`Controller`] that decides changes (registration,
//!   heartbeats and fencing, leader election from the ISR, placement, CreateTopics & co.).
//!
//! - [`node`]: [`MetaNode`], a member of the openraft quorum that replicates the records
//!   (log and snapshots in [`store`], the TCP controller link in `net`).
//!
//! Not yet wired into `gregor serve`.

use std::io::Cursor;

pub mod controller;
pub mod image;
mod net;
pub mod node;
pub mod records;
pub mod store;

openraft::declare_raft_types!(
    /// openraft's types for the metadata quorum: log entries carry a [`RecordBatch`].
    pub TypeConfig:
        D = RecordBatch,
        R = store::Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

#[cfg(test)]
mod controller_tests;

pub use controller::{
    Command, ConfigOp, Controller, ControllerConfig, ElectionType, IsrChange, MetaError, NewTopic,
    Reply, TopicResult,
};
pub use image::{ApplyError, BrokerState, MetadataImage, TopicImage};
pub use node::{BrokerHandle, Clock, MetaConfig, MetaNode, MonotonicClock, QuorumInfo, VoterState};
pub use records::{
    BrokerId, ConfigResource, Endpoint, MetaRecord, PartitionChangeRecord, PartitionRecord,
    RecordBatch, RegisterBrokerRecord, TopicRecord, NO_LEADER, RECORD_VERSION,
};
