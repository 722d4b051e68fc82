//! The records of the cluster metadata log.
//!
//! Every change to cluster metadata is one of these records; a Raft log entry carries a
//! [`RecordBatch`] that the state machine ([`crate::MetadataImage`]) applies atomically (all
//! records or none). Records are serde structs with short field names (the log stores them as
//! JSON inside CRC frames); a batch carries a format version ([`RECORD_VERSION`]) so that a
//! later format can still read older logs. Fields added later must be `#[serde(default)]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A broker's (and controller's) node id, as in Kafka's `node.id`.
pub type BrokerId = i32;

/// "No leader" in [`PartitionRecord::leader`], as in Kafka's metadata (`-1`).
pub const NO_LEADER: BrokerId = -1;

/// Format version written into every [`RecordBatch`].
pub const RECORD_VERSION: u16 = 1;

/// One listener a broker serves clients on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name, e.g. `PLAINTEXT`.
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// Where a config applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigResource {
    /// A topic, by name.
    #[serde(rename = "t")]
    Topic(String),
    /// A broker, by id.
    #[serde(rename = "b")]
    Broker(BrokerId),
}

/// A broker joined (or re-joined after a restart). It starts fenced: it leads nothing until an
/// [`MetaRecord::UnfenceBroker`] with the same epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBrokerRecord {
    #[serde(rename = "id")]
    pub broker_id: BrokerId,
    /// Assigned by the controller, strictly greater than any earlier epoch of any broker.
    #[serde(rename = "ep")]
    pub broker_epoch: i64,
    /// A random id the broker process picks at start, to tell a restart from a retry.
    #[serde(rename = "inc")]
    pub incarnation: Uuid,
    #[serde(rename = "l")]
    pub endpoints: Vec<Endpoint>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// A topic exists (its partitions come in [`PartitionRecord`]s of the same batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "id")]
    pub topic_id: Uuid,
    /// Topic configs set at creation (later changes come as [`MetaRecord::ConfigChange`]).
    #[serde(rename = "c", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, String>,
}

/// A partition's full state: written when a partition is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    #[serde(rename = "t")]
    pub topic_id: Uuid,
    #[serde(rename = "p")]
    pub partition: i32,
    /// Assigned replicas; the first is the preferred leader.
    #[serde(rename = "r")]
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas, a subset of `replicas`.
    #[serde(rename = "i")]
    pub isr: Vec<BrokerId>,
    /// The leader, a member of `isr`, or [`NO_LEADER`].
    #[serde(rename = "l")]
    pub leader: BrokerId,
    #[serde(rename = "le")]
    pub leader_epoch: i32,
    #[serde(rename = "pe")]
    pub partition_epoch: i32,
    /// A reassignment in progress: replicas being added (copying; the partition's replicas
    /// include them) ...
    #[serde(rename = "ar", default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<BrokerId>,
    /// ... and replicas to drop once every target replica is in the ISR. The target is
    /// `replicas` without these.
    #[serde(rename = "rr", default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<BrokerId>,
}

/// A change to a partition (leader election, ISR change from AlterPartition, fencing).
/// The state machine derives the epochs: `partition_epoch` grows by one on every change,
/// `leader_epoch` by one when the leader changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChangeRecord {
    #[serde(rename = "t")]
    pub topic_id: Uuid,
    #[serde(rename = "p")]
    pub partition: i32,
    /// The new ISR, if it changes.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub isr: Option<Vec<BrokerId>>,
    /// The new leader ([`NO_LEADER`] for offline), if it changes.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<BrokerId>,
    /// The new replica set, if it changes (reassignment).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<BrokerId>>,
    /// The new adding replicas, if they change (empty: the reassignment ended).
    #[serde(rename = "ar", default, skip_serializing_if = "Option::is_none")]
    pub adding_replicas: Option<Vec<BrokerId>>,
    /// The new removing replicas, if they change.
    #[serde(rename = "rr", default, skip_serializing_if = "Option::is_none")]
    pub removing_replicas: Option<Vec<BrokerId>>,
}

/// One metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    #[serde(rename = "RB")]
    RegisterBroker(RegisterBrokerRecord),
    /// The broker missed heartbeats for `broker.session.timeout.ms` (or asked to be fenced).
    #[serde(rename = "FB")]
    FenceBroker {
        #[serde(rename = "id")]
        broker_id: BrokerId,
        #[serde(rename = "ep")]
        broker_epoch: i64,
    },
    /// The broker is alive again (at the epoch it registered with).
    #[serde(rename = "UB")]
    UnfenceBroker {
        #[serde(rename = "id")]
        broker_id: BrokerId,
        #[serde(rename = "ep")]
        broker_epoch: i64,
    },
    #[serde(rename = "T")]
    Topic(TopicRecord),
    #[serde(rename = "P")]
    Partition(PartitionRecord),
    #[serde(rename = "PC")]
    PartitionChange(PartitionChangeRecord),
    /// Set (`value: Some`) or delete (`None`) one config.
    #[serde(rename = "C")]
    ConfigChange {
        #[serde(rename = "res")]
        resource: ConfigResource,
        #[serde(rename = "k")]
        key: String,
        #[serde(rename = "v", default)]
        value: Option<String>,
    },
    /// The topic and all its partitions are gone.
    #[serde(rename = "RT")]
    RemoveTopic {
        #[serde(rename = "id")]
        topic_id: Uuid,
    },
    /// `[first, first + size)` is handed to a broker for its idempotent producers.
    #[serde(rename = "PID")]
    ProducerIdBlock {
        #[serde(rename = "b")]
        broker_id: BrokerId,
        #[serde(rename = "ep")]
        broker_epoch: i64,
        #[serde(rename = "f")]
        first_producer_id: i64,
        #[serde(rename = "s")]
        size: i32,
    },
}

/// What one Raft log entry carries: records applied together, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBatch {
    #[serde(rename = "v")]
    pub version: u16,
    #[serde(rename = "r")]
    pub records: Vec<MetaRecord>,
    /// The image's `applied_index` the records were decided on, if they must be refused
    /// once another batch was applied after it (a controller's decision on a stale image, e.g.
    /// after a commit that timed out but went through later).
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

impl RecordBatch {
    /// A batch applied whatever came before it.
    pub fn new(records: Vec<MetaRecord>) -> Self {
        RecordBatch {
            version: RECORD_VERSION,
            records,
            decided_at: None,
        }
    }

    /// A batch decided on the image at `applied_index`: refused if any batch was applied
    /// after that.
    pub fn decided_at(records: Vec<MetaRecord>, applied_index: u64) -> Self {
        RecordBatch {
            decided_at: Some(applied_index),
            ..RecordBatch::new(records)
        }
    }
}

impl std::fmt::Display for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecordBatch(v{}, {} records)",
            self.version,
            self.records.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_is_compact() {
        let b = RecordBatch::new(vec![
            MetaRecord::Partition(PartitionRecord {
                topic_id: Uuid::nil(),
                partition: 0,
                replicas: vec![1, 2, 3],
                isr: vec![1, 2, 3],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                adding_replicas: vec![],
                removing_replicas: vec![],
            }),
            MetaRecord::FenceBroker {
                broker_id: 2,
                broker_epoch: 7,
            },
        ]);
        let s = serde_json::to_string(&b).unwrap();
        assert!(s.len() < 150, "{s}");
        let back: RecordBatch = serde_json::from_str(&s).unwrap();
        assert_eq!(back, b);
    }
}
