//! Cluster metadata for Gregor, the way KRaft keeps it: a log of metadata records agreed by a
//! Raft quorum of controllers.
//!
//! - [`records`]: the records ([`MetaRecord`]) and the batch a log entry carries.
//! - [`image`]: [`MetadataImage`], the state machine the records are applied to, with its
//!   invariants.
//! - [`controller`]: the sans-I/O [`Controller`] that decides changes (registration,
//!   heartbeats and fencing, leader election from the ISR, placement, CreateTopics & co.).
//!
//! Not yet wired into `gregor serve`.

pub mod controller;
pub mod image;
pub mod records;

#[cfg(test)]
mod controller_tests;

pub use controller::{
    Command, ConfigOp, Controller, ControllerConfig, IsrChange, MetaError, NewTopic, Reply,
    TopicResult,
};
pub use image::{ApplyError, BrokerState, MetadataImage, TopicImage};
pub use records::{
    BrokerId, ConfigResource, Endpoint, MetaRecord, PartitionChangeRecord, PartitionRecord,
    RecordBatch, RegisterBrokerRecord, TopicRecord, NO_LEADER, RECORD_VERSION,
};
