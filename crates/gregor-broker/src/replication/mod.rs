//! Partition replication (issue 16): who leads, who follows, and the fetchers that copy.
//!
//! [`ReplicaManager::apply`] runs after every metadata image the broker applies (see
//! [`crate::cluster`]): for each partition this broker is a replica of, it makes the local
//! partition the leader ([`Partition::make_leader`]: a new leader epoch begins at the log
//! end) or a follower ([`Partition::make_follower`]), and hands the followed partitions to
//! one [`fetcher`] per leader broker. A fetcher copies with the Kafka protocol itself: Fetch
//! v12 with this broker's id as `replica_id`, the leader epoch it knows and the epoch of its
//! last batch; the leader answers from its log end (not its high watermark), records the
//! follower's position ([`Partition::follower_fetch`]) and, when the follower's log
//! diverges, the epoch and end offset to truncate to (KIP-320).
//!
//! The ISR check ([`ReplicaManager::isr_changes`]) is driven by the cluster's loop, which
//! sends the changes to the controller (AlterPartition).

mod fetcher;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use gregor_meta::{MetadataImage, NO_LEADER};
use gregor_os::SharedClock;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::producer_state::LoadExpiry;
use crate::partition::replica::IsrProposal;
use crate::partition::Partition;
use crate::registry::TopicRegistry;

pub use fetcher::FetcherConfig;
use fetcher::{FetchTarget, Fetcher};

/// Called with the partitions a fetch appended to (to queue them for the flusher).
pub type OnReplicated = crate::flusher::QueueFn;

/// This broker started (`leader: true`) or stopped leading a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadershipChange {
    pub topic: String,
    pub partition: i32,
    pub leader: bool,
}

/// The replica side of one broker: role changes and the fetchers.
pub struct ReplicaManager {
    /// Leadership changes, for the coordinators (which rebuild a partition's state when
    /// they start leading it).
    events: tokio::sync::broadcast::Sender<LeadershipChange>,
    me: i32,
    registry: Arc<TopicRegistry>,
    clock: SharedClock,
    fetch_config: FetcherConfig,
    producer_id_expiration_ms: i64,
    on_replicated: OnReplicated,
    /// One fetcher per leader broker, by its id.
    fetchers: Mutex<HashMap<i32, Fetcher>>,
    /// The partitions led here, with their topic ids (for AlterPartition).
    led: Mutex<Vec<(Uuid, Arc<Partition>)>>,
}

impl ReplicaManager {
    pub fn new(
        me: i32,
        registry: Arc<TopicRegistry>,
        clock: SharedClock,
        config: &BrokerConfig,
        on_replicated: OnReplicated,
    ) -> ReplicaManager {
        ReplicaManager {
            events: tokio::sync::broadcast::channel(4096).0,
            me,
            registry,
            clock,
            fetch_config: FetcherConfig::from_broker(config),
            producer_id_expiration_ms: config.producer_id_expiration_ms,
            on_replicated,
            fetchers: Mutex::new(HashMap::new()),
            led: Mutex::new(Vec::new()),
        }
    }

    /// Makes the local replicas match `image` (blocking file I/O: a new leader epoch is
    /// persisted before it is used). Must run inside a tokio runtime (fetchers are tasks).
    pub fn apply(&self, image: &MetadataImage) {
        let now = self.clock.now_ms().max(0) as u64;
        let mut follow: BTreeMap<i32, Vec<FetchTarget>> = BTreeMap::new();
        let mut led = Vec::new();
        let mut dropped = Vec::new();
        for (t, p) in image.partitions() {
            if !p.replicas.contains(&self.me) {
                // Not (or no longer, after a reassignment) a replica: its copy goes.
                if let Some(partition) = self
                    .registry
                    .topic(&t.name)
                    .filter(|x| x.id == t.topic_id)
                    .and_then(|x| x.partition(p.partition).cloned())
                {
                    if partition.log_end_offset() > partition.log_start_offset() {
                        dropped.push(partition);
                    }
                }
                continue;
            }
            let Some(partition) = self
                .registry
                .topic(&t.name)
                .filter(|x| x.id == t.topic_id)
                .and_then(|x| x.partition(p.partition).cloned())
            else {
                continue;
            };
            if p.leader == self.me {
                match partition.make_leader(
                    self.me,
                    p.leader_epoch,
                    p.partition_epoch,
                    &p.replicas,
                    &p.isr,
                    now,
                ) {
                    Ok(()) => led.push((t.topic_id, partition)),
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = p.partition, error = %e, "cannot lead: the leader epoch was not recorded")
                    }
                }
            } else {
                partition.make_follower(p.leader, p.leader_epoch);
                if p.leader != NO_LEADER {
                    follow.entry(p.leader).or_default().push(FetchTarget {
                        partition,
                        leader_epoch: p.leader_epoch,
                    });
                }
            }
        }
        {
            let mut current = self.led.lock().expect("led lock");
            let key = |p: &Arc<Partition>| (p.topic.clone(), p.index);
            let before: std::collections::HashSet<_> =
                current.iter().map(|(_, p)| key(p)).collect();
            let after: std::collections::HashSet<_> = led.iter().map(|(_, p)| key(p)).collect();
            for (topic, partition) in after.difference(&before) {
                let _ = self.events.send(LeadershipChange {
                    topic: topic.clone(),
                    partition: *partition,
                    leader: true,
                });
            }
            for (topic, partition) in before.difference(&after) {
                let _ = self.events.send(LeadershipChange {
                    topic: topic.clone(),
                    partition: *partition,
                    leader: false,
                });
            }
            *current = led;
        }
        let mut fetchers = self.fetchers.lock().expect("fetchers lock");
        fetchers.retain(|leader, f| {
            let keep = follow.contains_key(leader)
                && endpoint(image, *leader).is_some_and(|addr| addr == f.addr());
            if !keep {
                f.stop();
            }
            keep
        });
        for (leader, targets) in follow {
            let Some(addr) = endpoint(image, leader) else {
                continue;
            };
            let fetcher = fetchers.entry(leader).or_insert_with(|| {
                Fetcher::start(
                    self.me,
                    leader,
                    addr,
                    self.fetch_config.clone(),
                    self.on_replicated.clone(),
                    LoadExpiry {
                        now_ms: self.clock.now_ms(),
                        expiration_ms: self.producer_id_expiration_ms,
                    },
                )
            });
            fetcher.set_targets(targets);
        }
        drop(fetchers);
        // After the fetchers dropped them: a late follower append meets the truncated log
        // and is refused (`OffsetMismatch`), it cannot land in it.
        let expiry = LoadExpiry {
            now_ms: self.clock.now_ms(),
            expiration_ms: self.producer_id_expiration_ms,
        };
        for partition in dropped {
            let start = partition.log_start_offset();
            let end = partition.log_end_offset();
            match partition.truncate_to(start, expiry) {
                Ok(()) => {
                    tracing::info!(topic = %partition.topic, partition = partition.index, from = end, to = start, "not a replica any more: local log emptied")
                }
                Err(e) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e, "could not empty the log of a partition this broker no longer replicates")
                }
            }
        }
    }

    /// The ISR changes due now on the partitions led here, with their topic ids.
    pub fn isr_changes(
        &self,
        lag_max_ms: u64,
        is_live: &dyn Fn(i32) -> bool,
    ) -> Vec<(Uuid, Arc<Partition>, IsrProposal)> {
        let now = self.clock.now_ms().max(0) as u64;
        let led = self.led.lock().expect("led lock").clone();
        led.into_iter()
            .filter_map(|(id, p)| {
                p.isr_change_due(now, lag_max_ms, is_live)
                    .map(|c| (id, p.clone(), c))
            })
            .collect()
    }

    /// Leadership changes from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LeadershipChange> {
        self.events.subscribe()
    }

    /// Whether this broker leads `topic`/`partition` now (as of the last image applied).
    pub fn leads(&self, topic: &str, partition: i32) -> bool {
        self.led
            .lock()
            .expect("led lock")
            .iter()
            .any(|(_, p)| p.topic == topic && p.index == partition)
    }

    /// Stops every fetcher.
    pub fn shutdown(&self) {
        for (_, f) in self.fetchers.lock().expect("fetchers lock").drain() {
            f.stop();
        }
    }
}

/// `host:port` of a broker's first listener.
fn endpoint(image: &MetadataImage, broker: i32) -> Option<String> {
    let b = image.brokers.get(&broker)?;
    let e = b.registration.endpoints.first()?;
    Some(format!("{}:{}", e.host, e.port))
}
