//! The broker as a member of a cluster: its link to the metadata quorum
//! ([`gregor_meta::MetaNode`]) and the view of the metadata the handlers answer from.
//!
//! - The topic registry is a view of the metadata image: [`Cluster::start`] runs a task that,
//!   after every image change, makes the local topics match it
//!   ([`TopicRegistry::apply_image`]) and then publishes the image as *applied*. Handlers read
//!   the applied image ([`Cluster::image`]), so a partition they find in it has its local
//!   log already.
//! - Changes (CreateTopics & co.) are proposed to the active controller
//!   ([`Cluster::propose`]) and answered once committed and applied here
//!   ([`Cluster::wait_applied`]).
//! - Registration and heartbeats run in [`gregor_meta::MetaNode::start_broker`]; the broker
//!   epoch it holds is what producer-id blocks are asked with.
//!
//! Part 1 of clustering: every broker keeps a (possibly empty) local log for every partition,
//! and only the leader serves it. Copying data to followers is part 2.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gregor_meta::{
    BrokerHandle, Command, Endpoint, IsrChange, MetaError, MetaNode, MetadataImage, Reply,
    NO_LEADER,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::registry::{TopicRegistry, TopicSpec};
use crate::replication::ReplicaManager;

/// Producer ids handed to this broker by the controller: `[next, end)`.
#[derive(Default)]
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

/// The broker's cluster membership. Cheap to share (`Arc`).
pub struct Cluster {
    node: MetaNode,
    me: i32,
    registration: BrokerHandle,
    applied: watch::Receiver<Arc<MetadataImage>>,
    cluster_id: String,
    producer_ids: Mutex<ProducerIdBlock>,
    /// Serializes producer-id block requests.
    producer_id_refill: tokio::sync::Mutex<()>,
    reconciler: JoinHandle<()>,
    /// Proposes the ISR changes of the partitions led here (AlterPartition).
    isr_task: JoinHandle<()>,
    replicas: Arc<ReplicaManager>,
}

/// Where a partition is served, as the applied image says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl Cluster {
    /// Joins the quorum that `node` is a member of: starts the registry reconciler and the
    /// broker's registration (advertising `endpoint` to clients). Must be called inside a
    /// tokio runtime.
    pub fn start(
        node: MetaNode,
        registry: Arc<TopicRegistry>,
        endpoint: (String, u16),
        replicas: Arc<ReplicaManager>,
        replica_lag_time_max_ms: u64,
    ) -> Self {
        let me = node.node_id();
        let (applied_tx, applied) = watch::channel(Arc::new(MetadataImage::default()));
        let mut images = node.image();
        let reconcile_replicas = replicas.clone();
        let reconciler = tokio::spawn(async move {
            let replicas = reconcile_replicas;
            loop {
                let image = images.borrow_and_update().clone();
                // Index 0 is the empty image before anything was applied: never a reason to
                // remove a topic.
                if image.applied_index > 0 && image.applied_index >= registry.meta_index() {
                    let specs = topic_specs(&image);
                    let index = image.applied_index;
                    let reg = registry.clone();
                    let (replicas, img) = (replicas.clone(), image.clone());
                    match tokio::task::spawn_blocking(move || {
                        reg.apply_image(&specs, index)?;
                        replicas.apply(&img);
                        anyhow::Ok(())
                    })
                    .await
                    {
                        Ok(Ok(())) => {
                            applied_tx.send_replace(image);
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, index, "applying cluster metadata to the local logs failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                        Err(_) => return,
                    }
                }
                if images.changed().await.is_err() {
                    return;
                }
            }
        });
        let registration = node.start_broker(
            vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: endpoint.0,
                port: endpoint.1,
            }],
            None,
        );
        let cluster_id = cluster_id_of(node.voters());
        let isr_task = tokio::spawn(isr_loop(
            node.clone(),
            me,
            registration.epoch.clone(),
            applied.clone(),
            replicas.clone(),
            replica_lag_time_max_ms,
        ));
        Cluster {
            node,
            me,
            registration,
            applied,
            cluster_id,
            producer_ids: Mutex::new(ProducerIdBlock::default()),
            producer_id_refill: tokio::sync::Mutex::new(()),
            reconciler,
            isr_task,
            replicas,
        }
    }

    /// This broker's id.
    pub fn broker_id(&self) -> i32 {
        self.me
    }

    /// The cluster id: derived from `controller.quorum.voters`, the same on every node.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The replica manager (leadership changes, fetchers).
    pub fn replicas(&self) -> &Arc<ReplicaManager> {
        &self.replicas
    }

    /// The metadata node (quorum information, the controller).
    pub fn node(&self) -> &MetaNode {
        &self.node
    }

    /// The metadata image the local registry reflects.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.applied.borrow().clone()
    }

    /// The address of a registered broker's first listener (`host:port`).
    pub fn broker_addr(&self, broker: i32) -> Option<String> {
        let image = self.image();
        let e = image
            .brokers
            .get(&broker)?
            .registration
            .endpoints
            .first()?
            .clone();
        Some(format!("{}:{}", e.host, e.port))
    }

    /// The metadata log index of the applied image.
    fn applied_index(&self) -> u64 {
        self.applied.borrow().applied_index
    }

    /// The active controller, or -1 when none is known.
    pub fn controller_id(&self) -> i32 {
        self.node.leader_id().unwrap_or(-1)
    }

    /// Whether this broker is registered and unfenced.
    pub fn is_registered(&self) -> bool {
        self.registration.epoch.borrow().is_some()
    }

    /// A partition's leader, epoch, replicas and ISR, if the topic and partition exist.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<PartitionView> {
        let image = self.image();
        let t = image.topic_by_name(topic)?;
        t.partitions.get(&partition).map(|p| PartitionView {
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        })
    }

    /// Whether this broker leads `topic`/`partition`. `Err(leader)` names the leader
    /// (-1 when the partition has none, or is unknown to the image).
    /// A broker out of touch with the quorum for a session timeout leads nothing: the
    /// controller has fenced it and elected other leaders it may not have heard of.
    pub fn check_leader(&self, topic: &str, partition: i32) -> Result<(), (i32, i32)> {
        match self.partition(topic, partition) {
            Some(p)
                if p.leader == self.me && !self.registration.in_session(self.applied_index()) =>
            {
                Err((-1, p.leader_epoch))
            }
            Some(p) if p.leader == self.me => Ok(()),
            Some(p) if p.leader == NO_LEADER => Err((-1, p.leader_epoch)),
            Some(p) => Err((p.leader, p.leader_epoch)),
            None => Err((-1, -1)),
        }
    }

    /// Proposes `cmd` to the active controller (forwarded when this node is not it); returns
    /// once the quorum committed it.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, MetaError> {
        self.node.propose(cmd).await
    }

    /// Waits (up to `limit`) until the applied image satisfies `done`; whether it did.
    pub async fn wait_applied(
        &self,
        limit: Duration,
        done: impl Fn(&MetadataImage) -> bool,
    ) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(limit, async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Takes a producer id from this broker's block, if one is left.
    pub fn take_producer_id(&self) -> Option<i64> {
        let mut b = self.producer_ids.lock().expect("producer ids lock");
        (b.next < b.end).then(|| {
            b.next += 1;
            b.next - 1
        })
    }

    /// Makes sure a producer id is available, asking the controller for a new block (unique
    /// in the cluster) when this broker's is used up.
    pub async fn reserve_producer_ids(&self) -> Result<(), MetaError> {
        let _one = self.producer_id_refill.lock().await;
        {
            let b = self.producer_ids.lock().expect("producer ids lock");
            if b.next < b.end {
                return Ok(());
            }
        }
        let broker_epoch = (*self.registration.epoch.borrow()).ok_or(MetaError::NotController)?;
        match self
            .propose(Command::AllocateProducerIds {
                broker_id: self.me,
                broker_epoch,
            })
            .await?
        {
            Reply::ProducerIds {
                first_producer_id,
                size,
            } => {
                *self.producer_ids.lock().expect("producer ids lock") = ProducerIdBlock {
                    next: first_producer_id,
                    end: first_producer_id + i64::from(size),
                };
                Ok(())
            }
            _ => Err(MetaError::InvalidRequest("unexpected reply".into())),
        }
    }

    /// Controlled shutdown (SIGTERM, before the listener closes): stops heartbeating, asks
    /// the controller to fence this broker (its leaderships move to other ISR members and it
    /// leaves every ISR) and waits, at most `limit`, until the applied image shows it leads
    /// nothing. Clients meanwhile get NOT_LEADER_OR_FOLLOWER here and move on.
    pub async fn controlled_shutdown(&self, limit: Duration) {
        let Some(broker_epoch) = *self.registration.epoch.borrow() else {
            return;
        };
        self.registration.stop_heartbeats();
        let started = std::time::Instant::now();
        let asked = tokio::time::timeout(
            limit,
            self.propose(Command::ControlledShutdown {
                broker_id: self.me,
                broker_epoch,
            }),
        )
        .await;
        if !matches!(asked, Ok(Ok(_))) {
            tracing::warn!(
                ?asked,
                "controlled shutdown not acknowledged; stopping anyway"
            );
            return;
        }
        let me = self.me;
        let moved = self
            .wait_applied(limit.saturating_sub(started.elapsed()), |image| {
                !image.partitions().any(|(_, p)| p.leader == me)
            })
            .await;
        tracing::info!(
            moved,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "controlled shutdown: leaderships moved off this broker"
        );
    }

    /// Stops the reconciler, the registration loop and the metadata node.
    pub async fn shutdown(&self) {
        self.reconciler.abort();
        self.isr_task.abort();
        self.replicas.shutdown();
        self.node.shutdown().await;
    }
}

/// Every 100 ms: the ISR changes due on the partitions led here go to the controller in
/// one AlterPartition; what it answers is applied (a refusal or no answer forgets the
/// proposal, and the next round proposes again).
async fn isr_loop(
    node: MetaNode,
    me: i32,
    broker_epoch: watch::Receiver<Option<i64>>,
    applied: watch::Receiver<Arc<MetadataImage>>,
    replicas: Arc<ReplicaManager>,
    lag_max_ms: u64,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(epoch) = *broker_epoch.borrow() else {
            continue;
        };
        let image = applied.borrow().clone();
        let changes = replicas.isr_changes(lag_max_ms, &|b| image.is_live(b));
        if changes.is_empty() {
            continue;
        }
        let cmd = Command::AlterPartition {
            broker_id: me,
            broker_epoch: epoch,
            changes: changes
                .iter()
                .map(|(topic_id, p, c)| IsrChange {
                    topic_id: *topic_id,
                    partition: p.index,
                    leader_epoch: c.leader_epoch,
                    partition_epoch: c.partition_epoch,
                    new_isr: c.new_isr.clone(),
                })
                .collect(),
        };
        let reply = tokio::time::timeout(Duration::from_secs(5), node.propose(cmd)).await;
        match reply {
            Ok(Ok(Reply::AlterPartition(results))) if results.len() == changes.len() => {
                for ((_, p, c), r) in changes.iter().zip(results) {
                    match r {
                        Ok(record) => {
                            tracing::info!(topic = %p.topic, partition = p.index, isr = ?record.isr, "ISR changed");
                            p.isr_committed(record.partition_epoch, &record.isr);
                        }
                        Err(e) => {
                            tracing::info!(topic = %p.topic, partition = p.index, isr = ?c.new_isr, error = %e, "ISR change refused");
                            p.isr_change_failed();
                        }
                    }
                }
            }
            other => {
                tracing::debug!(?other, "AlterPartition not answered");
                for (_, p, _) in &changes {
                    p.isr_change_failed();
                }
            }
        }
    }
}

/// The image's topics, as the registry describes them.
fn topic_specs(image: &MetadataImage) -> Vec<TopicSpec> {
    image
        .topics
        .values()
        .map(|t| TopicSpec {
            name: t.name.clone(),
            id: t.topic_id,
            partitions: t.partitions.len() as i32,
            configs: t.configs.clone(),
        })
        .collect()
}

/// A 22-character cluster id derived from the voters (FNV-1a over `id@addr,...`, both ways).
fn cluster_id_of(voters: &BTreeMap<i32, String>) -> String {
    let text: String = voters
        .iter()
        .map(|(id, addr)| format!("{id}@{addr},"))
        .collect();
    let fnv = |bytes: &mut dyn Iterator<Item = u8>| {
        bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let a = fnv(&mut text.bytes());
    let b = fnv(&mut text.bytes().rev());
    Uuid::from_u64_pair(a, b).simple().to_string()[..22].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_stable_and_depends_on_the_voters() {
        let v = |s: &str| -> BTreeMap<i32, String> {
            s.split(',')
                .map(|p| {
                    let (id, addr) = p.split_once('@').unwrap();
                    (id.parse().unwrap(), addr.to_string())
                })
                .collect()
        };
        let a = cluster_id_of(&v("1@h:1,2@h:2,3@h:3"));
        assert_eq!(a.len(), 22);
        assert_eq!(a, cluster_id_of(&v("3@h:3,1@h:1,2@h:2")));
        assert_ne!(a, cluster_id_of(&v("1@h:1,2@h:2,3@h:4")));
    }
}
