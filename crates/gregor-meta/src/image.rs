//! The metadata state machine: what the applied records say about the cluster.
//!
//! [`MetadataImage::apply_batch`] applies a [`RecordBatch`] all-or-nothing and checks the
//! invariants of every partition it touches, so that an image reached by applying a log is
//! always valid, on every node alike (application is deterministic: ordered maps, no clock, no
//! randomness). The invariants:
//! - a partition's replicas are distinct and non-empty, its ISR is a non-empty subset of them,
//!   and its leader is a member of the ISR or [`NO_LEADER`];
//! - a newly elected leader is a registered, unfenced broker;
//! - `leader_epoch` never decreases; it grows by one exactly when the leader changes;
//! - `partition_epoch` grows by one on every change of the partition;
//! - broker epochs and producer-id blocks only move forward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::records::*;

/// Why a batch cannot be applied to an image. It is then not applied at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A record breaks an invariant.
    #[error("cannot apply metadata record: {0}")]
    Invalid(String),
    /// The batch was decided on an image older than the last applied batch
    /// ([`RecordBatch::decided_at`]).
    #[error("metadata batch decided at {decided_at} is stale: a batch was applied at {last}")]
    Stale { decided_at: u64, last: u64 },
}

fn fail<T>(msg: impl Into<String>) -> Result<T, ApplyError> {
    Err(ApplyError::Invalid(msg.into()))
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    pub registration: RegisterBrokerRecord,
    /// A fenced broker leads nothing and is not elected.
    pub fenced: bool,
}

/// One topic with its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: Uuid,
    pub configs: BTreeMap<String, String>,
    /// Indexed 0..n, contiguous.
    pub partitions: BTreeMap<i32, PartitionRecord>,
}

/// The cluster metadata, as of `applied_index`. A read-only view for its users: it changes only
/// through [`MetadataImage::apply_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<BrokerId, BrokerState>,
    pub topics: BTreeMap<Uuid, TopicImage>,
    pub topic_ids: BTreeMap<String, Uuid>,
    pub broker_configs: BTreeMap<BrokerId, BTreeMap<String, String>>,
    /// The highest broker epoch handed out.
    pub last_broker_epoch: i64,
    /// The first producer id not yet handed out.
    pub next_producer_id: i64,
    /// Raft log index of the last applied entry (0: none).
    pub applied_index: u64,
    /// Raft log index of the last batch applied (refused ones do not count).
    #[serde(default)]
    pub last_batch_index: u64,
}

impl MetadataImage {
    /// The topic named `name`.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// A partition by topic id and index.
    pub fn partition(&self, topic_id: &Uuid, partition: i32) -> Option<&PartitionRecord> {
        self.topics.get(topic_id)?.partitions.get(&partition)
    }

    /// Registered, unfenced brokers, by id.
    pub fn live_brokers(&self) -> Vec<BrokerId> {
        self.brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `id` is registered and unfenced.
    pub fn is_live(&self, id: BrokerId) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// Every partition, with its topic.
    pub fn partitions(&self) -> impl Iterator<Item = (&TopicImage, &PartitionRecord)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (t, p)))
    }

    /// Partitions whose leader is `broker`.
    pub fn led_by(
        &self,
        broker: BrokerId,
    ) -> impl Iterator<Item = (&TopicImage, &PartitionRecord)> {
        self.partitions().filter(move |(_, p)| p.leader == broker)
    }

    /// Partitions that `broker` is a replica of but does not lead.
    pub fn followed_by(
        &self,
        broker: BrokerId,
    ) -> impl Iterator<Item = (&TopicImage, &PartitionRecord)> {
        self.partitions()
            .filter(move |(_, p)| p.leader != broker && p.replicas.contains(&broker))
    }

    /// Applies `batch` at log index `index`: every record, or (on the first that fails) none.
    pub fn apply_batch(&mut self, batch: &RecordBatch, index: u64) -> Result<(), ApplyError> {
        if batch.version > RECORD_VERSION {
            return fail(format!("record batch version {} unknown", batch.version));
        }
        if let Some(decided_at) = batch.decided_at {
            if self.last_batch_index > decided_at {
                return Err(ApplyError::Stale {
                    decided_at,
                    last: self.last_batch_index,
                });
            }
        }
        let mut next = self.clone();
        for r in &batch.records {
            next.apply(r)?;
        }
        next.applied_index = index;
        next.last_batch_index = index;
        *self = next;
        Ok(())
    }

    /// Applies one record (the batch's atomicity is [`Self::apply_batch`]'s job: on error
    /// `self` may be partly changed).
    pub fn apply(&mut self, record: &MetaRecord) -> Result<(), ApplyError> {
        match record {
            MetaRecord::RegisterBroker(r) => {
                if r.broker_epoch <= self.last_broker_epoch {
                    return fail(format!(
                        "broker {} epoch {} not above {}",
                        r.broker_id, r.broker_epoch, self.last_broker_epoch
                    ));
                }
                if r.broker_id < 0 {
                    return fail("negative broker id");
                }
                self.last_broker_epoch = r.broker_epoch;
                self.brokers.insert(
                    r.broker_id,
                    BrokerState {
                        registration: r.clone(),
                        fenced: true,
                    },
                );
            }
            MetaRecord::FenceBroker {
                broker_id,
                broker_epoch,
            }
            | MetaRecord::UnfenceBroker {
                broker_id,
                broker_epoch,
            } => {
                let Some(b) = self.brokers.get_mut(broker_id) else {
                    return fail(format!("broker {broker_id} not registered"));
                };
                if b.registration.broker_epoch != *broker_epoch {
                    return fail(format!(
                        "broker {broker_id} epoch {broker_epoch} is not the registered {}",
                        b.registration.broker_epoch
                    ));
                }
                b.fenced = matches!(record, MetaRecord::FenceBroker { .. });
            }
            MetaRecord::Topic(t) => {
                if self.topic_ids.contains_key(&t.name) {
                    return fail(format!("topic {} exists", t.name));
                }
                if self.topics.contains_key(&t.topic_id) || t.topic_id.is_nil() {
                    return fail(format!("topic id {} taken or nil", t.topic_id));
                }
                self.topic_ids.insert(t.name.clone(), t.topic_id);
                self.topics.insert(
                    t.topic_id,
                    TopicImage {
                        name: t.name.clone(),
                        topic_id: t.topic_id,
                        configs: t.configs.clone(),
                        partitions: BTreeMap::new(),
                    },
                );
            }
            MetaRecord::Partition(p) => {
                let Some(t) = self.topics.get(&p.topic_id) else {
                    return fail(format!("partition of unknown topic {}", p.topic_id));
                };
                if p.partition != t.partitions.len() as i32 {
                    return fail(format!(
                        "partition {} of {} is not the next index {}",
                        p.partition,
                        t.name,
                        t.partitions.len()
                    ));
                }
                if p.leader_epoch < 0 || p.partition_epoch < 0 {
                    return fail("negative epoch");
                }
                check_partition(p)?;
                if p.leader != NO_LEADER && !self.is_live(p.leader) {
                    return fail(format!("leader {} is not a live broker", p.leader));
                }
                let t = self.topics.get_mut(&p.topic_id).expect("checked above");
                t.partitions.insert(p.partition, p.clone());
            }
            MetaRecord::PartitionChange(c) => {
                let live_leader = c
                    .leader
                    .map(|l| l == NO_LEADER || self.is_live(l))
                    .unwrap_or(true);
                let Some(p) = self
                    .topics
                    .get_mut(&c.topic_id)
                    .and_then(|t| t.partitions.get_mut(&c.partition))
                else {
                    return fail(format!(
                        "change of unknown partition {}-{}",
                        c.topic_id, c.partition
                    ));
                };
                let mut next = p.clone();
                if let Some(r) = &c.replicas {
                    next.replicas = r.clone();
                }
                if let Some(isr) = &c.isr {
                    next.isr = isr.clone();
                }
                if let Some(a) = &c.adding_replicas {
                    next.adding_replicas = a.clone();
                }
                if let Some(r) = &c.removing_replicas {
                    next.removing_replicas = r.clone();
                }
                if let Some(l) = c.leader {
                    if l != p.leader {
                        if !live_leader {
                            return fail(format!("new leader {l} is not a live broker"));
                        }
                        next.leader = l;
                        next.leader_epoch = p
                            .leader_epoch
                            .checked_add(1)
                            .ok_or_else(|| ApplyError::Invalid("leader epoch overflow".into()))?;
                    }
                }
                next.partition_epoch = p
                    .partition_epoch
                    .checked_add(1)
                    .ok_or_else(|| ApplyError::Invalid("partition epoch overflow".into()))?;
                check_partition(&next)?;
                debug_assert!(next.leader_epoch >= p.leader_epoch);
                debug_assert!(next.partition_epoch > p.partition_epoch);
                *p = next;
            }
            MetaRecord::ConfigChange {
                resource,
                key,
                value,
            } => {
                let map = match resource {
                    ConfigResource::Topic(name) => {
                        let Some(id) = self.topic_ids.get(name) else {
                            return fail(format!("config of unknown topic {name}"));
                        };
                        &mut self
                            .topics
                            .get_mut(id)
                            .expect("index is consistent")
                            .configs
                    }
                    ConfigResource::Broker(b) => self.broker_configs.entry(*b).or_default(),
                };
                match value {
                    Some(v) => {
                        map.insert(key.clone(), v.clone());
                    }
                    None => {
                        map.remove(key);
                    }
                }
            }
            MetaRecord::RemoveTopic { topic_id } => {
                let Some(t) = self.topics.remove(topic_id) else {
                    return fail(format!("remove of unknown topic {topic_id}"));
                };
                self.topic_ids.remove(&t.name);
            }
            MetaRecord::ProducerIdBlock {
                broker_id,
                first_producer_id,
                size,
                ..
            } => {
                if *first_producer_id != self.next_producer_id || *size <= 0 {
                    return fail(format!(
                        "producer id block {first_producer_id}+{size} for {broker_id} is not next at {}",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = first_producer_id
                    .checked_add(*size as i64)
                    .ok_or_else(|| ApplyError::Invalid("producer ids exhausted".into()))?;
            }
        }
        Ok(())
    }
}

/// Replicas distinct and non-empty; ISR a non-empty subset; leader in ISR or none.
fn check_partition(p: &PartitionRecord) -> Result<(), ApplyError> {
    let mut r = p.replicas.clone();
    r.sort_unstable();
    r.dedup();
    if r.is_empty() || r.len() != p.replicas.len() {
        return fail(format!("replicas {:?} empty or repeated", p.replicas));
    }
    let mut isr = p.isr.clone();
    isr.sort_unstable();
    isr.dedup();
    if isr.is_empty() || isr.len() != p.isr.len() || !isr.iter().all(|b| r.contains(b)) {
        return fail(format!(
            "isr {:?} not a non-empty subset of replicas {:?}",
            p.isr, p.replicas
        ));
    }
    if p.leader != NO_LEADER && !isr.contains(&p.leader) {
        return fail(format!("leader {} not in isr {:?}", p.leader, p.isr));
    }
    if !p
        .adding_replicas
        .iter()
        .chain(&p.removing_replicas)
        .all(|b| r.contains(b))
        || p.adding_replicas
            .iter()
            .any(|b| p.removing_replicas.contains(b))
        || p.removing_replicas.len() >= p.replicas.len()
    {
        return fail(format!(
            "adding {:?} / removing {:?} not disjoint subsets of replicas {:?} leaving a target",
            p.adding_replicas, p.removing_replicas, p.replicas
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: BrokerId, epoch: i64) -> MetaRecord {
        MetaRecord::RegisterBroker(RegisterBrokerRecord {
            broker_id: id,
            broker_epoch: epoch,
            incarnation: Uuid::nil(),
            endpoints: vec![],
            rack: None,
        })
    }

    fn unfence(id: BrokerId, epoch: i64) -> MetaRecord {
        MetaRecord::UnfenceBroker {
            broker_id: id,
            broker_epoch: epoch,
        }
    }

    #[test]
    fn batches_are_atomic_and_epochs_derived() {
        let mut img = MetadataImage::default();
        let tid = Uuid::from_u128(1);
        img.apply_batch(
            &RecordBatch::new(vec![
                reg(1, 1),
                unfence(1, 1),
                reg(2, 2),
                unfence(2, 2),
                MetaRecord::Topic(TopicRecord {
                    name: "a".into(),
                    topic_id: tid,
                    configs: BTreeMap::new(),
                }),
                MetaRecord::Partition(PartitionRecord {
                    topic_id: tid,
                    partition: 0,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    leader: 1,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                }),
            ]),
            1,
        )
        .unwrap();
        let before = img.clone();
        // Leader outside the ISR: the whole batch is refused.
        let bad = RecordBatch::new(vec![
            MetaRecord::ConfigChange {
                resource: ConfigResource::Topic("a".into()),
                key: "retention.ms".into(),
                value: Some("1".into()),
            },
            MetaRecord::PartitionChange(PartitionChangeRecord {
                topic_id: tid,
                partition: 0,
                isr: Some(vec![1]),
                leader: Some(2),
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            }),
        ]);
        assert!(img.apply_batch(&bad, 2).is_err());
        assert_eq!(img, before);
        img.apply_batch(
            &RecordBatch::new(vec![MetaRecord::PartitionChange(PartitionChangeRecord {
                topic_id: tid,
                partition: 0,
                isr: Some(vec![2]),
                leader: Some(2),
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            })]),
            3,
        )
        .unwrap();
        let p = img.partition(&tid, 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 1));
        img.apply_batch(
            &RecordBatch::new(vec![MetaRecord::PartitionChange(PartitionChangeRecord {
                topic_id: tid,
                partition: 0,
                isr: Some(vec![1, 2]),
                leader: None,
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            })]),
            4,
        )
        .unwrap();
        let p = img.partition(&tid, 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 2));
        assert_eq!(img.applied_index, 4);
    }

    #[test]
    fn a_batch_decided_before_the_last_applied_one_is_refused() {
        let mut img = MetadataImage::default();
        img.apply_batch(&RecordBatch::decided_at(vec![reg(1, 1)], 0), 3)
            .unwrap();
        // Decided at 0 as well, but a batch was applied at 3 since.
        let stale = RecordBatch::decided_at(vec![reg(2, 2)], 0);
        assert!(matches!(
            img.apply_batch(&stale, 4),
            Err(ApplyError::Stale { .. })
        ));
        img.apply_batch(&RecordBatch::decided_at(vec![reg(2, 2)], 4), 5)
            .unwrap();
        assert_eq!(img.brokers.len(), 2);
    }

    #[test]
    fn stale_broker_epochs_are_refused() {
        let mut img = MetadataImage::default();
        img.apply_batch(&RecordBatch::new(vec![reg(1, 5)]), 1)
            .unwrap();
        assert!(img
            .apply_batch(&RecordBatch::new(vec![reg(2, 5)]), 2)
            .is_err());
        assert!(img
            .apply_batch(&RecordBatch::new(vec![unfence(1, 4)]), 2)
            .is_err());
        img.apply_batch(&RecordBatch::new(vec![unfence(1, 5)]), 2)
            .unwrap();
        assert_eq!(img.live_brokers(), vec![1]);
    }
}
