//! The controller: decides metadata changes. Sans-I/O, like `gregor-group` and `gregor-txn`:
//! it gets the current [`MetadataImage`], a [`Command`] and the time (`now_ms`, any monotonic
//! millisecond clock), and answers with a [`Reply`] and the records to commit. Nothing changes
//! until the records are committed by the quorum and applied to the image.
//!
//! Only the active controller (the Raft leader) runs one; a new leader starts a new one
//! ([`Controller::new`]), which gives every unfenced broker a full session from its first
//! [`Controller::tick`].
//!
//! Rules (Kafka's KRaft controller, simplified):
//! - a broker registers (a new broker epoch, fenced) and is unfenced at once; a broker that
//!   registers again with a new incarnation (it restarted) is fenced first, so its partitions
//!   get new leaders and leader epochs;
//! - a broker that has not heartbeaten for `session_timeout_ms` is fenced by [`Controller::tick`]:
//!   it leaves every ISR it is in (unless it is the last member) and the partitions it led get
//!   a new leader, the first replica (in assignment order) that is in the ISR and live; with
//!   none the partition is offline (leader `-1`): `unclean.leader.election.enable=false`;
//! - an offline partition gets a leader as soon as a member of its ISR is live again;
//! - replicas of new partitions are placed round-robin over the live brokers, shifted by the
//!   partition index so that leaders (first replicas) are spread evenly.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::image::MetadataImage;
use crate::records::*;

/// Defaults chosen so that a killed broker loses its leaderships within 2 s: it is fenced
/// after at most `session_timeout_ms` (1.5 s) plus one tick (`heartbeat_interval_ms / 2`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: fence a broker not heard from for this long.
    pub session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`: how often brokers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Producer ids handed to a broker per [`Command::AllocateProducerIds`].
    pub producer_id_block_size: i32,
    /// `num.partitions`: used when CreateTopics asks for -1.
    pub default_num_partitions: i32,
    /// `default.replication.factor`: used when CreateTopics asks for -1.
    pub default_replication_factor: i16,
    /// `auto.leader.rebalance.enable`: every `leader_imbalance_check_interval_ms`, move
    /// leadership back to preferred leaders (first replicas) of brokers whose imbalance is
    /// above `leader_imbalance_per_broker_percentage` ([`Controller::tick`]).
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, in milliseconds (Kafka: 300 s).
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage` (Kafka: 10): a broker is imbalanced when more
    /// than this percentage of the partitions it is the preferred leader of are led elsewhere.
    pub leader_imbalance_per_broker_percentage: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            session_timeout_ms: 1500,
            heartbeat_interval_ms: 250,
            producer_id_block_size: 1000,
            default_num_partitions: 1,
            default_replication_factor: 1,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

/// A metadata error, with the Kafka error code the broker answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("topic already exists")]
    TopicAlreadyExists,
    #[error("invalid topic name")]
    InvalidTopic,
    #[error("invalid number of partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("stale broker epoch")]
    StaleBrokerEpoch,
    #[error("not leader of the partition")]
    NotLeaderOrFollower,
    #[error("fenced leader epoch")]
    FencedLeaderEpoch,
    #[error("partition epoch does not match")]
    InvalidUpdateVersion,
    #[error("replica not eligible for the ISR: {0}")]
    IneligibleReplica(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No active controller (no quorum, or an election in progress). Retriable.
    #[error("not the controller / no quorum")]
    NotController,
    /// The quorum did not commit in time. Retriable.
    #[error("request timed out")]
    RequestTimedOut,
    /// ElectLeaders: the partition already has the leader the election would give it.
    #[error("election not needed")]
    ElectionNotNeeded,
    /// ElectLeaders PREFERRED: the first replica is not live or not in the ISR.
    #[error("preferred leader not available: {0}")]
    PreferredLeaderNotAvailable(String),
    /// ElectLeaders UNCLEAN: no live replica at all.
    #[error("eligible leaders not available: {0}")]
    EligibleLeadersNotAvailable(String),
}

impl MetaError {
    /// The Kafka protocol error code.
    pub fn code(&self) -> i16 {
        match self {
            MetaError::TopicAlreadyExists => 36,
            MetaError::InvalidTopic => 17,
            MetaError::InvalidPartitions(_) => 37,
            MetaError::InvalidReplicationFactor(_) => 38,
            MetaError::InvalidReplicaAssignment(_) => 39,
            MetaError::UnknownTopicOrPartition => 3,
            MetaError::StaleBrokerEpoch => 77,
            MetaError::NotLeaderOrFollower => 6,
            MetaError::FencedLeaderEpoch => 74,
            MetaError::InvalidUpdateVersion => 108,
            MetaError::IneligibleReplica(_) => 107,
            MetaError::InvalidRequest(_) => 42,
            MetaError::NotController => 41,
            MetaError::RequestTimedOut => 7,
            MetaError::ElectionNotNeeded => 84,
            MetaError::PreferredLeaderNotAvailable(_) => 80,
            MetaError::EligibleLeadersNotAvailable(_) => 83,
        }
    }

    /// Whether a client should retry (after a new controller is known).
    pub fn is_retriable(&self) -> bool {
        matches!(self, MetaError::NotController | MetaError::RequestTimedOut)
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1: `default_num_partitions` (ignored with `assignments`).
    pub num_partitions: i32,
    /// -1: `default_replication_factor` (ignored with `assignments`).
    pub replication_factor: i16,
    /// Replicas per partition, when the client chose them.
    #[serde(default)]
    pub assignments: Option<Vec<Vec<BrokerId>>>,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// An ISR change asked by a partition leader (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic_id: Uuid,
    pub partition: i32,
    /// The leader epoch the leader knows.
    pub leader_epoch: i32,
    /// The partition epoch the leader knows.
    pub partition_epoch: i32,
    pub new_isr: Vec<BrokerId>,
}

/// One config set (`Some`) or delete (`None`), as IncrementalAlterConfigs sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOp {
    pub resource: ConfigResource,
    pub key: String,
    pub value: Option<String>,
}

/// ElectLeaders' `election_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionType {
    /// 0: leadership to the first replica in the assignment, when it is live and in the ISR.
    Preferred,
    /// 1: for a partition without a leader and no live ISR member, a live replica outside
    /// the ISR (it becomes the whole ISR; records only the old ISR had may be lost).
    Unclean,
}

/// What a broker (or the node itself) asks of the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterBroker {
        broker_id: BrokerId,
        incarnation: Uuid,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
        /// The broker's controller listener, when it is not a voter: the node running the
        /// controller makes it a Raft learner so that it receives the metadata log.
        #[serde(default)]
        controller_addr: Option<String>,
    },
    Heartbeat {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    /// Grow topics to a new total partition count.
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    AlterConfigs {
        ops: Vec<ConfigOp>,
        validate_only: bool,
    },
    AllocateProducerIds {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
    AlterPartition {
        broker_id: BrokerId,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    },
    /// AlterPartitionReassignments: per partition, the target replicas (`None`: cancel the
    /// reassignment in progress).
    AlterReassignments {
        reassignments: Vec<(String, i32, Option<Vec<BrokerId>>)>,
    },
    /// ElectLeaders: per partition (`None`: every partition), a preferred or unclean election.
    ElectLeaders {
        election_type: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// The broker is shutting down (SIGTERM): fence it now, moving its leaderships and
    /// taking it out of every ISR, so that clients move on before it stops serving.
    /// Answered `Heartbeat { fenced: true }`; the broker sends no heartbeat after it.
    ControlledShutdown {
        broker_id: BrokerId,
        broker_epoch: i64,
    },
}

/// Per-topic outcome of CreateTopics / DeleteTopics / CreatePartitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicResult {
    pub name: String,
    pub topic_id: Option<Uuid>,
    pub error: Option<MetaError>,
}

/// The controller's answer to a [`Command`] (valid once its records are committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Registered {
        broker_epoch: i64,
        /// The metadata log index the registration is committed at (set by the node that
        /// commits it; 0 from [`Controller::handle`]): the broker must have applied the log
        /// this far before it acts on its image.
        #[serde(default)]
        metadata_index: u64,
    },
    Heartbeat {
        /// Still fenced (never after a successful heartbeat today; kept for controlled
        /// shutdown in part 2).
        fenced: bool,
        /// As for `Registered`: the log index the controller had applied when it answered.
        #[serde(default)]
        metadata_index: u64,
    },
    Topics(Vec<TopicResult>),
    Configs(Vec<Result<(), MetaError>>),
    ProducerIds {
        first_producer_id: i64,
        size: i32,
    },
    /// Per change: the partition after it, or why not.
    AlterPartition(Vec<Result<PartitionRecord, MetaError>>),
    /// Per reassignment asked: started (or cancelled), or why not.
    Reassignments(Vec<Result<(), MetaError>>),
    /// Per partition of an ElectLeaders (the ones asked, in order; with `partitions: None`
    /// every partition except those whose election was not needed): elected, or why not.
    Elections(Vec<(String, i32, Result<(), MetaError>)>),
}

/// The active controller's in-memory state: broker session deadlines.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    config: ControllerConfig,
    /// Broker id → time (ms) after which it is fenced.
    deadlines: BTreeMap<BrokerId, u64>,
    /// When [`Controller::tick`] next checks the leader imbalance (set by the first tick).
    next_imbalance_check: Option<u64>,
}

/// The image the controller decides on, plus the records decided so far (applied to the image
/// as they are made, so that every record is valid after the ones before it).
struct Scratch {
    image: MetadataImage,
    records: Vec<MetaRecord>,
}

impl Scratch {
    fn push(&mut self, r: MetaRecord) {
        self.image
            .apply(&r)
            .unwrap_or_else(|e| panic!("controller made an invalid record {r:?}: {e}"));
        self.records.push(r);
    }
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Self {
        Controller {
            config,
            deadlines: BTreeMap::new(),
            next_imbalance_check: None,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Decides `cmd` on `image` at `now_ms`. `new_id` gives fresh topic ids (random v4 uuids in
    /// the node; a seeded source in tests). On `Err` nothing is to be committed.
    pub fn handle(
        &mut self,
        image: &MetadataImage,
        cmd: &Command,
        now_ms: u64,
        new_id: &mut dyn FnMut() -> Uuid,
    ) -> Result<(Reply, Vec<MetaRecord>), MetaError> {
        let mut s = Scratch {
            image: image.clone(),
            records: vec![],
        };
        let reply = match cmd {
            Command::RegisterBroker {
                broker_id,
                incarnation,
                endpoints,
                rack,
                ..
            } => {
                if *broker_id < 0 {
                    return Err(MetaError::InvalidRequest("negative broker id".into()));
                }
                if let Some(b) = s.image.brokers.get(broker_id) {
                    if b.registration.incarnation == *incarnation {
                        // A retry of a registration that was committed.
                        let epoch = b.registration.broker_epoch;
                        if b.fenced {
                            s.push(MetaRecord::UnfenceBroker {
                                broker_id: *broker_id,
                                broker_epoch: epoch,
                            });
                            elect_offline(&mut s);
                        }
                        self.deadlines
                            .insert(*broker_id, now_ms + self.config.session_timeout_ms);
                        return Ok((
                            Reply::Registered {
                                broker_epoch: epoch,
                                metadata_index: 0,
                            },
                            s.records,
                        ));
                    }
                    if !b.fenced {
                        fence(&mut s, *broker_id);
                    }
                }
                let epoch = s.image.last_broker_epoch + 1;
                s.push(MetaRecord::RegisterBroker(RegisterBrokerRecord {
                    broker_id: *broker_id,
                    broker_epoch: epoch,
                    incarnation: *incarnation,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                }));
                s.push(MetaRecord::UnfenceBroker {
                    broker_id: *broker_id,
                    broker_epoch: epoch,
                });
                elect_offline(&mut s);
                self.deadlines
                    .insert(*broker_id, now_ms + self.config.session_timeout_ms);
                Reply::Registered {
                    broker_epoch: epoch,
                    metadata_index: 0,
                }
            }
            Command::Heartbeat {
                broker_id,
                broker_epoch,
            } => {
                let b = check_epoch(&s.image, *broker_id, *broker_epoch)?;
                if b.fenced {
                    s.push(MetaRecord::UnfenceBroker {
                        broker_id: *broker_id,
                        broker_epoch: *broker_epoch,
                    });
                    elect_offline(&mut s);
                }
                self.deadlines
                    .insert(*broker_id, now_ms + self.config.session_timeout_ms);
                Reply::Heartbeat {
                    fenced: false,
                    metadata_index: 0,
                }
            }
            Command::CreateTopics {
                topics,
                validate_only,
            } => {
                let mut results = vec![];
                for t in topics {
                    let r = self.create_topic(&mut s, t, new_id);
                    results.push(match r {
                        Ok(id) => TopicResult {
                            name: t.name.clone(),
                            topic_id: Some(id),
                            error: None,
                        },
                        Err(e) => TopicResult {
                            name: t.name.clone(),
                            topic_id: None,
                            error: Some(e),
                        },
                    });
                }
                if *validate_only {
                    s.records.clear();
                }
                Reply::Topics(results)
            }
            Command::DeleteTopics { names } => {
                let mut results = vec![];
                for name in names {
                    let id = s.image.topic_ids.get(name).copied();
                    if let Some(topic_id) = id {
                        s.push(MetaRecord::RemoveTopic { topic_id });
                    }
                    results.push(TopicResult {
                        name: name.clone(),
                        topic_id: id,
                        error: id.is_none().then_some(MetaError::UnknownTopicOrPartition),
                    });
                }
                Reply::Topics(results)
            }
            Command::CreatePartitions {
                topics,
                validate_only,
            } => {
                let mut results = vec![];
                for (name, count) in topics {
                    let r = create_partitions(&mut s, name, *count);
                    results.push(TopicResult {
                        name: name.clone(),
                        topic_id: s.image.topic_ids.get(name).copied(),
                        error: r.err(),
                    });
                }
                if *validate_only {
                    s.records.clear();
                }
                Reply::Topics(results)
            }
            Command::AlterConfigs { ops, validate_only } => {
                let mut results = vec![];
                for op in ops {
                    if let ConfigResource::Topic(name) = &op.resource {
                        if !s.image.topic_ids.contains_key(name) {
                            results.push(Err(MetaError::UnknownTopicOrPartition));
                            continue;
                        }
                    }
                    if op.key.is_empty() {
                        results.push(Err(MetaError::InvalidRequest("empty config name".into())));
                        continue;
                    }
                    s.push(MetaRecord::ConfigChange {
                        resource: op.resource.clone(),
                        key: op.key.clone(),
                        value: op.value.clone(),
                    });
                    results.push(Ok(()));
                }
                if *validate_only {
                    s.records.clear();
                }
                Reply::Configs(results)
            }
            Command::AllocateProducerIds {
                broker_id,
                broker_epoch,
            } => {
                check_epoch(&s.image, *broker_id, *broker_epoch)?;
                let first = s.image.next_producer_id;
                let size = self.config.producer_id_block_size;
                s.push(MetaRecord::ProducerIdBlock {
                    broker_id: *broker_id,
                    broker_epoch: *broker_epoch,
                    first_producer_id: first,
                    size,
                });
                Reply::ProducerIds {
                    first_producer_id: first,
                    size,
                }
            }
            Command::AlterReassignments { reassignments } => {
                let results = reassignments
                    .iter()
                    .map(|(topic, partition, target)| {
                        reassign(&mut s, topic, *partition, target.as_deref())
                    })
                    .collect();
                complete_reassignments(&mut s);
                Reply::Reassignments(results)
            }
            Command::ElectLeaders {
                election_type,
                partitions,
            } => Reply::Elections(elect_leaders(&mut s, *election_type, partitions.as_deref())),
            Command::ControlledShutdown {
                broker_id,
                broker_epoch,
            } => {
                let b = check_epoch(&s.image, *broker_id, *broker_epoch)?;
                if !b.fenced {
                    fence(&mut s, *broker_id);
                }
                self.deadlines.remove(broker_id);
                Reply::Heartbeat {
                    fenced: true,
                    metadata_index: 0,
                }
            }
            Command::AlterPartition {
                broker_id,
                broker_epoch,
                changes,
            } => {
                check_epoch(&s.image, *broker_id, *broker_epoch)?;
                let mut results = vec![];
                for c in changes {
                    let r = alter_isr(&mut s, *broker_id, c);
                    results.push(r);
                }
                complete_reassignments(&mut s);
                Reply::AlterPartition(results)
            }
        };
        Ok((reply, s.records))
    }

    /// The node running this controller knows that `broker`'s node has been unreachable for
    /// a while (a voter that has not acknowledged anything from a new Raft leader, which only
    /// a dead or cut-off node fails to do): its session ends one heartbeat interval from now
    /// unless it heartbeats. This keeps a controller failover from granting a dead broker a
    /// full fresh session.
    pub fn expire_unreachable(&mut self, broker: BrokerId, now_ms: u64) {
        let d = self
            .deadlines
            .entry(broker)
            .or_insert(now_ms + self.config.session_timeout_ms);
        *d = (*d).min(now_ms + self.config.heartbeat_interval_ms);
    }

    /// Fences brokers whose session expired at `now_ms` and moves their leaderships; elects
    /// leaders for offline partitions that have a live ISR member. Call it periodically (every
    /// `heartbeat_interval_ms / 2`) on the active controller; commit what it returns.
    pub fn tick(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<MetaRecord> {
        let mut s = Scratch {
            image: image.clone(),
            records: vec![],
        };
        let live = image.live_brokers();
        self.deadlines
            .retain(|id, _| image.brokers.contains_key(id));
        for id in live {
            let deadline = *self
                .deadlines
                .entry(id)
                .or_insert(now_ms + self.config.session_timeout_ms);
            if now_ms > deadline {
                fence(&mut s, id);
            }
        }
        elect_offline(&mut s);
        complete_reassignments(&mut s);
        if self.config.auto_leader_rebalance_enable {
            let next = *self
                .next_imbalance_check
                .get_or_insert(now_ms + self.config.leader_imbalance_check_interval_ms);
            if now_ms >= next {
                self.next_imbalance_check =
                    Some(now_ms + self.config.leader_imbalance_check_interval_ms);
                rebalance_leaders(&mut s, self.config.leader_imbalance_per_broker_percentage);
            }
        }
        s.records
    }

    fn create_topic(
        &mut self,
        s: &mut Scratch,
        t: &NewTopic,
        new_id: &mut dyn FnMut() -> Uuid,
    ) -> Result<Uuid, MetaError> {
        if !valid_topic_name(&t.name) {
            return Err(MetaError::InvalidTopic);
        }
        if s.image.topic_ids.contains_key(&t.name) {
            return Err(MetaError::TopicAlreadyExists);
        }
        let assignments = match &t.assignments {
            Some(a) => {
                if a.is_empty() {
                    return Err(MetaError::InvalidReplicaAssignment("no partitions".into()));
                }
                for replicas in a {
                    check_assignment(&s.image, replicas)?;
                }
                a.clone()
            }
            None => {
                let n = if t.num_partitions == -1 {
                    self.config.default_num_partitions
                } else {
                    t.num_partitions
                };
                if n <= 0 {
                    return Err(MetaError::InvalidPartitions(format!(
                        "{n} partitions asked, at least 1 needed"
                    )));
                }
                let rf = if t.replication_factor == -1 {
                    self.config.default_replication_factor
                } else {
                    t.replication_factor
                };
                let start = s.image.partitions().count();
                place(&s.image, 0, n, rf, start)?
            }
        };
        let mut topic_id = new_id();
        while topic_id.is_nil() || s.image.topics.contains_key(&topic_id) {
            topic_id = new_id();
        }
        s.push(MetaRecord::Topic(TopicRecord {
            name: t.name.clone(),
            topic_id,
            configs: t.configs.clone(),
        }));
        for (i, replicas) in assignments.into_iter().enumerate() {
            push_new_partition(s, topic_id, i as i32, replicas);
        }
        Ok(topic_id)
    }
}

fn check_epoch(
    image: &MetadataImage,
    broker_id: BrokerId,
    broker_epoch: i64,
) -> Result<&crate::image::BrokerState, MetaError> {
    match image.brokers.get(&broker_id) {
        Some(b) if b.registration.broker_epoch == broker_epoch => Ok(b),
        _ => Err(MetaError::StaleBrokerEpoch),
    }
}

/// Kafka's topic name rule: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_assignment(image: &MetadataImage, replicas: &[BrokerId]) -> Result<(), MetaError> {
    let set: BTreeSet<_> = replicas.iter().collect();
    if replicas.is_empty() || set.len() != replicas.len() {
        return Err(MetaError::InvalidReplicaAssignment(format!(
            "{replicas:?} empty or repeated"
        )));
    }
    if let Some(b) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
        return Err(MetaError::InvalidReplicaAssignment(format!(
            "broker {b} is not registered"
        )));
    }
    Ok(())
}

/// Replicas for partitions `first..first+count` over the live brokers: partition `p`'s
/// replicas are the `rf` live brokers from index `start + p` (mod n), so leaders go round-robin.
fn place(
    image: &MetadataImage,
    first: i32,
    count: i32,
    rf: i16,
    start: usize,
) -> Result<Vec<Vec<BrokerId>>, MetaError> {
    let live = image.live_brokers();
    if rf <= 0 {
        return Err(MetaError::InvalidReplicationFactor(format!(
            "{rf}, at least 1 needed"
        )));
    }
    if rf as usize > live.len() {
        return Err(MetaError::InvalidReplicationFactor(format!(
            "{rf} is larger than the {} live brokers",
            live.len()
        )));
    }
    let n = live.len();
    Ok((first..first + count)
        .map(|p| {
            (0..rf as usize)
                .map(|j| live[(start + p as usize + j) % n])
                .collect()
        })
        .collect())
}

/// A new partition: ISR = the live replicas (all replicas if none is live), leader the first
/// live one.
fn push_new_partition(s: &mut Scratch, topic_id: Uuid, partition: i32, replicas: Vec<BrokerId>) {
    let live: Vec<_> = replicas
        .iter()
        .copied()
        .filter(|b| s.image.is_live(*b))
        .collect();
    let (isr, leader) = if live.is_empty() {
        (replicas.clone(), NO_LEADER)
    } else {
        (live.clone(), live[0])
    };
    s.push(MetaRecord::Partition(PartitionRecord {
        topic_id,
        partition,
        replicas,
        isr,
        leader,
        leader_epoch: 0,
        partition_epoch: 0,
        adding_replicas: vec![],
        removing_replicas: vec![],
    }));
}

fn create_partitions(s: &mut Scratch, name: &str, count: i32) -> Result<(), MetaError> {
    let Some(t) = s.image.topic_by_name(name) else {
        return Err(MetaError::UnknownTopicOrPartition);
    };
    let current = t.partitions.len() as i32;
    if count <= current {
        return Err(MetaError::InvalidPartitions(format!(
            "topic has {current} partitions, {count} asked"
        )));
    }
    let rf = t.partitions.get(&0).map(|p| p.replicas.len()).unwrap_or(1) as i16;
    let topic_id = t.topic_id;
    let start = s.image.partitions().count();
    let placed = place(&s.image, current, count - current, rf, start)?;
    for (i, replicas) in placed.into_iter().enumerate() {
        push_new_partition(s, topic_id, current + i as i32, replicas);
    }
    Ok(())
}

fn alter_isr(
    s: &mut Scratch,
    broker: BrokerId,
    c: &IsrChange,
) -> Result<PartitionRecord, MetaError> {
    let Some(p) = s.image.partition(&c.topic_id, c.partition).cloned() else {
        return Err(MetaError::UnknownTopicOrPartition);
    };
    if p.leader != broker {
        return Err(MetaError::NotLeaderOrFollower);
    }
    if c.leader_epoch != p.leader_epoch {
        return Err(MetaError::FencedLeaderEpoch);
    }
    if c.partition_epoch != p.partition_epoch {
        return Err(MetaError::InvalidUpdateVersion);
    }
    let set: BTreeSet<_> = c.new_isr.iter().collect();
    if set.len() != c.new_isr.len() || !c.new_isr.contains(&broker) {
        return Err(MetaError::InvalidRequest(format!(
            "isr {:?} repeated or without the leader",
            c.new_isr
        )));
    }
    for b in &c.new_isr {
        if !p.replicas.contains(b) {
            return Err(MetaError::IneligibleReplica(format!(
                "{b} is not a replica"
            )));
        }
        if !p.isr.contains(b) && !s.image.is_live(*b) {
            return Err(MetaError::IneligibleReplica(format!("{b} is fenced")));
        }
    }
    if c.new_isr == p.isr {
        return Ok(p);
    }
    s.push(MetaRecord::PartitionChange(PartitionChangeRecord {
        topic_id: c.topic_id,
        partition: c.partition,
        isr: Some(c.new_isr.clone()),
        leader: None,
        replicas: None,
        adding_replicas: None,
        removing_replicas: None,
    }));
    Ok(s.image
        .partition(&c.topic_id, c.partition)
        .cloned()
        .expect("still there"))
}

/// Starts (or, with no target, cancels) a reassignment of `topic`/`partition`: the
/// replicas become the target followed by the current ones not in it (adding = target not
/// yet a replica, removing = replicas not in the target). It completes once every target
/// replica is in the ISR ([`complete_reassignments`]).
fn reassign(
    s: &mut Scratch,
    topic: &str,
    partition: i32,
    target: Option<&[BrokerId]>,
) -> Result<(), MetaError> {
    let Some(t) = s.image.topic_by_name(topic) else {
        return Err(MetaError::UnknownTopicOrPartition);
    };
    let Some(p) = t.partitions.get(&partition).cloned() else {
        return Err(MetaError::UnknownTopicOrPartition);
    };
    let Some(target) = target else {
        if p.adding_replicas.is_empty() && p.removing_replicas.is_empty() {
            return Err(MetaError::InvalidRequest(
                "no reassignment in progress".into(),
            ));
        }
        // Back to the replicas before: drop the ones being added.
        let replicas: Vec<_> = p
            .replicas
            .iter()
            .copied()
            .filter(|b| !p.adding_replicas.contains(b))
            .collect();
        let mut isr: Vec<_> = p
            .isr
            .iter()
            .copied()
            .filter(|b| replicas.contains(b))
            .collect();
        if isr.is_empty() {
            isr = vec![replicas[0]];
        }
        let leader = if isr.contains(&p.leader) {
            p.leader
        } else {
            choose_leader(
                &s.image,
                &PartitionRecord {
                    replicas: replicas.clone(),
                    ..p.clone()
                },
                &isr,
            )
        };
        s.push(reassignment_change(
            &p,
            replicas,
            isr,
            leader,
            vec![],
            vec![],
        ));
        return Ok(());
    };
    check_assignment(&s.image, target)?;
    let original: Vec<BrokerId> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| !p.adding_replicas.contains(b))
        .collect();
    let adding: Vec<_> = target
        .iter()
        .copied()
        .filter(|b| !original.contains(b))
        .collect();
    let removing: Vec<_> = original
        .iter()
        .copied()
        .filter(|b| !target.contains(b))
        .collect();
    let mut replicas = target.to_vec();
    replicas.extend(removing.iter().copied());
    let isr: Vec<_> = p
        .isr
        .iter()
        .copied()
        .filter(|b| replicas.contains(b))
        .collect();
    let isr = if isr.is_empty() { p.isr.clone() } else { isr };
    s.push(reassignment_change(
        &p, replicas, isr, p.leader, adding, removing,
    ));
    Ok(())
}

fn reassignment_change(
    p: &PartitionRecord,
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
    leader: BrokerId,
    adding: Vec<BrokerId>,
    removing: Vec<BrokerId>,
) -> MetaRecord {
    MetaRecord::PartitionChange(PartitionChangeRecord {
        topic_id: p.topic_id,
        partition: p.partition,
        isr: (isr != p.isr).then_some(isr),
        leader: (leader != p.leader).then_some(leader),
        replicas: (replicas != p.replicas).then_some(replicas),
        adding_replicas: Some(adding),
        removing_replicas: Some(removing),
    })
}

/// Ends every reassignment whose target replicas are all in the ISR: the replicas become
/// the target, the removed ones leave the ISR, and a leader being removed hands over to the
/// first target replica in the ISR.
fn complete_reassignments(s: &mut Scratch) {
    let done: Vec<PartitionRecord> = s
        .image
        .partitions()
        .filter(|(_, p)| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
        .filter(|(_, p)| {
            p.replicas
                .iter()
                .filter(|b| !p.removing_replicas.contains(b))
                .all(|b| p.isr.contains(b))
        })
        .map(|(_, p)| p.clone())
        .collect();
    for p in done {
        let target: Vec<_> = p
            .replicas
            .iter()
            .copied()
            .filter(|b| !p.removing_replicas.contains(b))
            .collect();
        let isr: Vec<_> = p
            .isr
            .iter()
            .copied()
            .filter(|b| target.contains(b))
            .collect();
        let leader = if target.contains(&p.leader) {
            p.leader
        } else {
            choose_leader(
                &s.image,
                &PartitionRecord {
                    replicas: target.clone(),
                    ..p.clone()
                },
                &isr,
            )
        };
        s.push(reassignment_change(&p, target, isr, leader, vec![], vec![]));
    }
}

/// ElectLeaders on `partitions` (`None`: all, leaving out those where it is not needed).
fn elect_leaders(
    s: &mut Scratch,
    kind: ElectionType,
    partitions: Option<&[(String, i32)]>,
) -> Vec<(String, i32, Result<(), MetaError>)> {
    let asked: Vec<(String, i32)> = match partitions {
        Some(p) => p.to_vec(),
        None => s
            .image
            .partitions()
            .map(|(t, p)| (t.name.clone(), p.partition))
            .collect(),
    };
    let mut out = vec![];
    for (topic, partition) in asked {
        let r = elect_one(s, kind, &topic, partition);
        if partitions.is_none() && r == Err(MetaError::ElectionNotNeeded) {
            continue;
        }
        out.push((topic, partition, r));
    }
    out
}

/// One partition's election (Kafka's rules): PREFERRED moves leadership to the first
/// replica when it is live and in the ISR; UNCLEAN is only for a partition without a live
/// leader, and takes a live ISR member if there is one, else the first live replica (which
/// becomes the whole ISR).
fn elect_one(
    s: &mut Scratch,
    kind: ElectionType,
    topic: &str,
    partition: i32,
) -> Result<(), MetaError> {
    let p = s
        .image
        .topic_by_name(topic)
        .and_then(|t| t.partitions.get(&partition))
        .cloned()
        .ok_or(MetaError::UnknownTopicOrPartition)?;
    match kind {
        ElectionType::Preferred => {
            let preferred = p.replicas[0];
            if p.leader == preferred {
                return Err(MetaError::ElectionNotNeeded);
            }
            if !s.image.is_live(preferred) {
                return Err(MetaError::PreferredLeaderNotAvailable(format!(
                    "broker {preferred} is not live"
                )));
            }
            if !p.isr.contains(&preferred) {
                return Err(MetaError::PreferredLeaderNotAvailable(format!(
                    "broker {preferred} is not in the ISR {:?}",
                    p.isr
                )));
            }
            change(s, &p, p.isr.clone(), preferred);
            Ok(())
        }
        ElectionType::Unclean => {
            if p.leader != NO_LEADER && s.image.is_live(p.leader) {
                return Err(MetaError::ElectionNotNeeded);
            }
            let clean = choose_leader(&s.image, &p, &p.isr);
            if clean != NO_LEADER {
                change(s, &p, p.isr.clone(), clean);
                return Ok(());
            }
            let Some(any) = p.replicas.iter().copied().find(|b| s.image.is_live(*b)) else {
                return Err(MetaError::EligibleLeadersNotAvailable(format!(
                    "no replica of {:?} is live",
                    p.replicas
                )));
            };
            change(s, &p, vec![any], any);
            Ok(())
        }
    }
}

/// `auto.leader.rebalance.enable`: for every live broker whose share of partitions it is the
/// preferred leader of but does not lead exceeds `percentage`, preferred elections of those
/// partitions (where the preferred leader is in the ISR; in a reassignment, none).
fn rebalance_leaders(s: &mut Scratch, percentage: u32) {
    let mut preferred: BTreeMap<BrokerId, (u64, Vec<(String, i32)>)> = BTreeMap::new();
    for (t, p) in s.image.partitions() {
        if !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty() {
            continue;
        }
        let e = preferred.entry(p.replicas[0]).or_default();
        e.0 += 1;
        if p.leader != p.replicas[0] {
            e.1.push((t.name.clone(), p.partition));
        }
    }
    for (broker, (total, not_led)) in preferred {
        if !s.image.is_live(broker) || not_led.is_empty() {
            continue;
        }
        if (not_led.len() as u64) * 100 <= u64::from(percentage) * total {
            continue;
        }
        for (topic, partition) in not_led {
            // Not possible yet (not in the ISR): the next check tries again.
            let _ = elect_one(s, ElectionType::Preferred, &topic, partition);
        }
    }
}

/// The first replica, in assignment order, that is in `isr` and live.
fn choose_leader(image: &MetadataImage, p: &PartitionRecord, isr: &[BrokerId]) -> BrokerId {
    p.replicas
        .iter()
        .copied()
        .find(|b| isr.contains(b) && image.is_live(*b))
        .unwrap_or(NO_LEADER)
}

/// Fences `broker` (registered, unfenced) and moves its partitions.
fn fence(s: &mut Scratch, broker: BrokerId) {
    let epoch = s.image.brokers[&broker].registration.broker_epoch;
    s.push(MetaRecord::FenceBroker {
        broker_id: broker,
        broker_epoch: epoch,
    });
    let affected: Vec<PartitionRecord> = s
        .image
        .partitions()
        .filter(|(_, p)| p.leader == broker || p.isr.contains(&broker))
        .map(|(_, p)| p.clone())
        .collect();
    for p in affected {
        let mut isr: Vec<_> = p.isr.iter().copied().filter(|b| *b != broker).collect();
        if isr.is_empty() {
            // The last ISR member stays in the ISR: it has every committed record, and only
            // it may lead again (no unclean election).
            isr = p.isr.clone();
        }
        let leader = if p.leader == broker || p.leader == NO_LEADER {
            choose_leader(&s.image, &p, &isr)
        } else {
            p.leader
        };
        change(s, &p, isr, leader);
    }
}

/// Elects a leader for every offline partition with a live ISR member.
fn elect_offline(s: &mut Scratch) {
    let offline: Vec<PartitionRecord> = s
        .image
        .partitions()
        .filter(|(_, p)| p.leader == NO_LEADER)
        .map(|(_, p)| p.clone())
        .collect();
    for p in offline {
        let leader = choose_leader(&s.image, &p, &p.isr);
        if leader != NO_LEADER {
            change(s, &p, p.isr.clone(), leader);
        }
    }
}

fn change(s: &mut Scratch, p: &PartitionRecord, isr: Vec<BrokerId>, leader: BrokerId) {
    if isr == p.isr && leader == p.leader {
        return;
    }
    s.push(MetaRecord::PartitionChange(PartitionChangeRecord {
        topic_id: p.topic_id,
        partition: p.partition,
        isr: (isr != p.isr).then_some(isr),
        leader: (leader != p.leader).then_some(leader),
        replicas: None,
        adding_replicas: None,
        removing_replicas: None,
    }));
}
