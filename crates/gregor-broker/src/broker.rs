//! The broker: what a request handler reaches. It composes the pieces below it and adds
//! the rules that span them:
//!
//! * the topic registry ([`crate::registry`]), plus the rule that clients may not delete
//!   or repartition the internal topics ([`crate::internal_topics`]);
//! * the coordinators ([`crate::groups`], [`crate::transactions`]), started once
//!   ([`Broker::start_groups`], [`Broker::start_transactions`]) and reached through
//!   [`Broker::groups`] / [`Broker::txns`];
//! * the group-commit flusher ([`crate::flusher`]) and the append signal long-polling
//!   fetches wait on ([`crate::appends`]);
//! * the recovery-point checkpoint and the clean-shutdown marker ([`crate::checkpoint`]),
//!   and the shutdown that writes them ([`Broker::shutdown`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use gregor_os::{SharedClock, SystemClock};
use kafka_protocol::error::ResponseError;
use tokio::sync::watch;
use uuid::Uuid;

use crate::appends::AppendSignal;
use crate::checkpoint::{read_recovery_state, Checkpoints};
use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::flusher::Flusher;
use crate::groups::GroupService;
use crate::internal_topics::is_internal_topic;
use crate::registry::{MetaError, MetaResult, Topic, TopicRegistry};
use crate::transactions::TransactionService;

/// The broker's shared state.
pub struct Broker {
    pub config: BrokerConfig,
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Who may log in on SASL listeners: SCRAM credentials and PLAIN users.
    pub users: crate::security::sasl::Users,
    /// `sasl.enabled.mechanisms`, checked.
    pub sasl_mechanisms: Vec<String>,
    registry: Arc<TopicRegistry>,
    /// Bumped after every append; long-polling fetches wait on it.
    appends: Arc<AppendSignal>,
    /// Group commit for `fsync = always` (and the `interval` policy's flushes).
    flusher: Flusher,
    checkpoints: Checkpoints,
    /// Set at shutdown: background threads (the cleaner) stop at their next check.
    stopping: AtomicBool,
    /// The group coordinator, set once by [`Broker::start_groups`].
    groups: OnceLock<Arc<GroupService>>,
    /// The transaction coordinator, set once by [`Broker::start_transactions`].
    txns: OnceLock<Arc<TransactionService>>,
    /// Every "now" of the broker and what it drives (logs, coordinators, handlers).
    clock: SharedClock,
    /// Set once by [`Broker::join_cluster`]; without it the broker is a single node.
    cluster: OnceLock<Arc<Cluster>>,
}

impl Broker {
    /// Opens the data directory: loads persisted topics and reopens every partition log.
    pub fn open(config: BrokerConfig, advertised: (String, i32)) -> anyhow::Result<Broker> {
        Broker::open_with_clock(config, advertised, SystemClock::shared())
    }

    /// [`open`](Self::open) on `clock` (a `gregor_os::ManualClock` in tests): the broker
    /// and everything it starts take the time from it.
    pub fn open_with_clock(
        config: BrokerConfig,
        advertised: (String, i32),
        clock: SharedClock,
    ) -> anyhow::Result<Broker> {
        let recovery = read_recovery_state(&config.data_dir)?;
        let registry = TopicRegistry::open(config.clone(), &recovery, clock.clone())?;
        let checkpoints = Checkpoints::new(&config.data_dir);
        let users = crate::security::sasl::Users::load(
            config.sasl_plain_users_file.as_deref(),
            &config.data_dir,
        )?;
        let sasl_mechanisms = config.sasl_mechanisms().map_err(anyhow::Error::msg)?;
        // From here on the logs change: the marker must not survive a crash.
        if recovery.clean {
            checkpoints.remove_clean_marker()?;
        }
        let broker = Broker {
            advertised_host: advertised.0,
            advertised_port: advertised.1,
            users,
            sasl_mechanisms,
            registry: Arc::new(registry),
            appends: Arc::new(AppendSignal::default()),
            flusher: Flusher::start(),
            checkpoints,
            stopping: AtomicBool::new(false),
            groups: OnceLock::new(),
            txns: OnceLock::new(),
            clock,
            config,
            cluster: OnceLock::new(),
        };
        // Every log is durable up to its end after open: record that right away.
        broker.write_recovery_checkpoint()?;
        Ok(broker)
    }

    /// Wall-clock milliseconds from the broker's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The broker's clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn cluster_id(&self) -> &str {
        match self.cluster() {
            Some(c) => c.cluster_id(),
            None => self.registry.cluster_id(),
        }
    }

    // ---- the cluster

    /// Makes this broker a member of the cluster whose metadata `node` replicates: from now
    /// on its topics are a view of the metadata image. Must be called inside a tokio
    /// runtime, once, before the coordinators start.
    pub fn join_cluster(&self, node: gregor_meta::MetaNode) -> anyhow::Result<Arc<Cluster>> {
        let port = u16::try_from(self.advertised_port)?;
        if self.registry.meta_index() == 0 && !self.registry.all_topics().is_empty() {
            anyhow::bail!(
                "{} holds the topics of a single-node broker; moving them into a cluster is not \
                 supported yet: give the cluster node an empty data directory",
                self.config.data_dir.display()
            );
        }
        let replicas = Arc::new(crate::replication::ReplicaManager::new(
            node.node_id(),
            self.registry.clone(),
            self.clock.clone(),
            &self.config,
            self.flusher.queue_fn(),
        ));
        let cluster = Arc::new(Cluster::start(
            node,
            self.registry.clone(),
            (self.advertised_host.clone(), port),
            replicas,
            self.config.replica_lag_time_max_ms,
        ));
        if self.cluster.set(cluster.clone()).is_err() {
            anyhow::bail!("already joined a cluster");
        }
        Ok(cluster)
    }

    /// In a cluster: creates `__consumer_offsets` and `__transaction_state` through the
    /// controller if they do not exist yet (compacted; replication factor
    /// `offsets.topic.replication.factor` capped by the live brokers, waiting up to 10 s for
    /// min(3, voters) brokers to register first) and waits until they are in the local view.
    /// Retries through elections and lost quorums until it succeeds.
    pub async fn create_internal_topics(&self) -> anyhow::Result<()> {
        use crate::internal_topics::{OFFSETS_TOPIC, TXN_TOPIC};
        let cluster = self
            .cluster()
            .ok_or_else(|| anyhow::anyhow!("not in a cluster"))?;
        let want = self.config.offsets_topic_replication_factor.max(1) as usize;
        let voters = cluster.node().voters().len().max(1);
        cluster
            .wait_applied(std::time::Duration::from_secs(10), |i| {
                i.live_brokers().len() >= want.min(voters)
            })
            .await;
        for (name, partitions) in [
            (OFFSETS_TOPIC, self.config.offsets_topic_num_partitions),
            (TXN_TOPIC, self.config.transaction_state_log_num_partitions),
        ] {
            loop {
                if cluster.image().topic_by_name(name).is_some()
                    && self.registry.topic(name).is_some()
                {
                    break;
                }
                let live = cluster.image().live_brokers().len().max(1);
                let replication = want.min(live) as i16;
                let configs =
                    BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
                match self
                    .create_topic(name, partitions.max(1), replication, None, configs, false)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.code == ResponseError::TopicAlreadyExists => {
                        cluster
                            .wait_applied(std::time::Duration::from_secs(5), |i| {
                                i.topic_by_name(name).is_some()
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::info!(topic = name, error = %e.message, "creating internal topic; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// The cluster this broker is a member of (`None`: a single node).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Whether this broker may serve `topic`/`partition` (produce, fetch, list offsets): on a
    /// single node always; in a cluster when the metadata names it the leader. `Err` carries
    /// the current leader and its epoch (-1 when unknown).
    pub fn check_leader(&self, topic: &str, partition: i32) -> Result<(), (i32, i32)> {
        match self.cluster() {
            Some(c) => c.check_leader(topic, partition),
            None => Ok(()),
        }
    }

    /// In a cluster, makes sure a producer id is available from this broker's block (asking
    /// the controller for one if needed); a no-op on a single node.
    pub async fn reserve_producer_ids(&self) -> MetaResult<()> {
        match self.cluster() {
            Some(c) => c.reserve_producer_ids().await.map_err(|e| {
                MetaError::new(
                    ResponseError::CoordinatorLoadInProgress,
                    format!("no producer ids available yet: {e}"),
                )
            }),
            None => Ok(()),
        }
    }

    // ---- coordinators

    /// Starts the group coordinator (creates and replays `__consumer_offsets`). Must be
    /// called inside a tokio runtime, once.
    pub fn start_groups(&self) -> anyhow::Result<Arc<GroupService>> {
        let service = GroupService::start(
            &self.config,
            &self.registry,
            self.clock.clone(),
            self.cluster().map(|c| c.replicas().clone()),
        )?;
        if self.groups.set(service.clone()).is_err() {
            anyhow::bail!("group coordinator already started");
        }
        Ok(service)
    }

    /// Starts the transaction coordinator (creates and replays `__transaction_state`),
    /// wired to the group coordinator if that was started first. Must be called inside a
    /// tokio runtime, once.
    pub fn start_transactions(&self) -> anyhow::Result<Arc<TransactionService>> {
        let service = TransactionService::start(
            &self.config,
            self.registry.clone(),
            self.appends.clone(),
            self.groups.get().cloned(),
            self.clock.clone(),
            self.cluster().cloned(),
        )?;
        if self.txns.set(service.clone()).is_err() {
            anyhow::bail!("transaction coordinator already started");
        }
        Ok(service)
    }

    /// The group coordinator, once started.
    pub fn groups(&self) -> Option<&Arc<GroupService>> {
        self.groups.get()
    }

    /// Writes transaction markers to this broker's partitions (WriteTxnMarkers).
    pub fn marker_writer(&self) -> crate::markers::MarkerWriter<'_> {
        crate::markers::MarkerWriter {
            registry: &self.registry,
            appends: &self.appends,
            groups: self.groups().map(|g| &**g),
            timeout: std::time::Duration::from_millis(self.config.offsets_commit_timeout_ms.max(1)),
        }
    }

    /// The transaction coordinator, once started.
    pub fn txns(&self) -> Option<&Arc<TransactionService>> {
        self.txns.get()
    }

    // ---- appends and durability

    /// Subscribes to append notifications (for long-polling fetches).
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appends.subscribe()
    }

    /// Wakes every waiting fetch; called after appends.
    pub fn notify_appended(&self) {
        self.appends.notify();
    }

    /// The group-commit flusher.
    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// Shutdown has begun: background work stops at its next check.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Writes the recovery-point checkpoint: each partition's durable offset.
    pub fn write_recovery_checkpoint(&self) -> std::io::Result<()> {
        self.checkpoints
            .write_recovery_points(&self.registry.all_topics())
    }

    // ---- the topic registry

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.registry.topic(name)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.registry.topic_by_id(id)
    }

    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.registry.all_topics()
    }

    /// Creates a topic. `partitions`/`replication` of -1 mean the broker defaults;
    /// `assignments` (replicas per partition) replace both. In a cluster the controller
    /// decides and the quorum commits; this returns once the topic is in the local view.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i16,
        assignments: Option<Vec<Vec<i32>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> MetaResult<Arc<Topic>> {
        if self.cluster().is_none() {
            return self.registry.create_topic(
                name,
                partitions,
                replication,
                configs,
                validate_only,
            );
        }
        crate::registry::validate_topic_name(name)?;
        for (k, v) in &configs {
            crate::topic_config::validate(k, v)
                .map_err(|m| MetaError::new(ResponseError::InvalidConfig, m))?;
        }
        let topic = gregor_meta::NewTopic {
            name: name.to_string(),
            num_partitions: if partitions == -1 {
                self.config.num_partitions
            } else {
                partitions
            },
            replication_factor: if replication == -1 {
                self.config.default_replication_factor
            } else {
                replication
            },
            assignments,
            configs: configs.clone(),
        };
        let id = self
            .propose_topics(gregor_meta::Command::CreateTopics {
                topics: vec![topic],
                validate_only,
            })
            .await?;
        if validate_only {
            return Ok(Topic::validated(name, configs));
        }
        self.wait_applied(|i| i.topic_ids.get(name) == id.as_ref())
            .await?;
        self.registry
            .topic(name)
            .ok_or_else(|| crate::registry::unknown_topic(name))
    }

    /// Returns the topic, creating it with broker defaults if auto-creation allows. In a
    /// cluster the creation is proposed to the controller and this answers
    /// LEADER_NOT_AVAILABLE meanwhile (retriable), as Kafka does.
    pub fn get_or_auto_create(&self, name: &str, allow: bool) -> MetaResult<Arc<Topic>> {
        let Some(cluster) = self.cluster() else {
            return self.registry.get_or_auto_create(name, allow);
        };
        if let Some(t) = self.registry.topic(name) {
            return Ok(t);
        }
        crate::registry::validate_topic_name(name)?;
        if !(allow && self.config.auto_create_topics_enable) || is_internal_topic(name) {
            return Err(crate::registry::unknown_topic(name));
        }
        let c = cluster.clone();
        let topic = gregor_meta::NewTopic {
            name: name.to_string(),
            num_partitions: self.config.num_partitions,
            replication_factor: self.config.default_replication_factor,
            assignments: None,
            configs: BTreeMap::new(),
        };
        tokio::spawn(async move {
            let _ = c
                .propose(gregor_meta::Command::CreateTopics {
                    topics: vec![topic],
                    validate_only: false,
                })
                .await;
        });
        Err(MetaError::new(
            ResponseError::LeaderNotAvailable,
            format!("topic {name} is being created"),
        ))
    }

    /// Deletes a topic (not an internal one).
    pub async fn delete_topic(&self, name: &str) -> MetaResult<Uuid> {
        refuse_internal(name, "Deleting")?;
        let Some(_) = self.cluster() else {
            return self.registry.delete_topic(name);
        };
        let id = self
            .propose_topics(gregor_meta::Command::DeleteTopics {
                names: vec![name.to_string()],
            })
            .await?;
        self.wait_applied(|i| !i.topic_ids.contains_key(name))
            .await?;
        Ok(id.unwrap_or_default())
    }

    /// Grows a topic to `count` partitions (not an internal one).
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> MetaResult<()> {
        refuse_internal(name, "Adding partitions to")?;
        let Some(_) = self.cluster() else {
            return self.registry.create_partitions(name, count, validate_only);
        };
        self.propose_topics(gregor_meta::Command::CreatePartitions {
            topics: vec![(name.to_string(), count)],
            validate_only,
        })
        .await?;
        if !validate_only {
            self.wait_applied(|i| {
                i.topic_by_name(name)
                    .is_some_and(|t| t.partitions.len() as i32 >= count)
            })
            .await?;
        }
        Ok(())
    }

    /// Replaces a topic's config overrides (already validated by the caller).
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> MetaResult<()> {
        let Some(cluster) = self.cluster() else {
            return self.registry.set_topic_configs(name, configs);
        };
        let current = cluster
            .image()
            .topic_by_name(name)
            .map(|t| t.configs.clone())
            .ok_or_else(|| crate::registry::unknown_topic(name))?;
        let resource = gregor_meta::ConfigResource::Topic(name.to_string());
        let mut ops: Vec<gregor_meta::ConfigOp> = configs
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| gregor_meta::ConfigOp {
                resource: resource.clone(),
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect();
        ops.extend(
            current
                .keys()
                .filter(|k| !configs.contains_key(*k))
                .map(|k| gregor_meta::ConfigOp {
                    resource: resource.clone(),
                    key: k.clone(),
                    value: None,
                }),
        );
        if ops.is_empty() {
            return Ok(());
        }
        match cluster
            .propose(gregor_meta::Command::AlterConfigs {
                ops,
                validate_only: false,
            })
            .await
            .map_err(meta_error)?
        {
            gregor_meta::Reply::Configs(results) => {
                if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                    return Err(meta_error(e));
                }
            }
            _ => return Err(meta_error(gregor_meta::MetaError::NotController)),
        }
        self.wait_applied(|i| i.topic_by_name(name).is_some_and(|t| t.configs == configs))
            .await
    }

    /// The replication factor of `name` (1 on a single node).
    pub fn replication_factor(&self, name: &str) -> i16 {
        self.cluster()
            .and_then(|c| {
                let image = c.image();
                let t = image.topic_by_name(name)?;
                t.partitions
                    .values()
                    .next()
                    .map(|p| p.replicas.len() as i16)
            })
            .unwrap_or(1)
    }

    /// Proposes a topic command and answers the first (only) topic's outcome: its id.
    async fn propose_topics(&self, cmd: gregor_meta::Command) -> MetaResult<Option<Uuid>> {
        let cluster = self.cluster().expect("cluster mode");
        match cluster.propose(cmd).await.map_err(meta_error)? {
            gregor_meta::Reply::Topics(results) => match results.into_iter().next() {
                Some(gregor_meta::TopicResult { error: Some(e), .. }) => Err(meta_error(e)),
                Some(r) => Ok(r.topic_id),
                None => Ok(None),
            },
            _ => Err(meta_error(gregor_meta::MetaError::NotController)),
        }
    }

    /// Waits until the local view of the cluster metadata satisfies `done` (a committed
    /// change reaches every broker within a Raft heartbeat or so).
    async fn wait_applied(
        &self,
        done: impl Fn(&gregor_meta::MetadataImage) -> bool,
    ) -> MetaResult<()> {
        let cluster = self.cluster().expect("cluster mode");
        if cluster
            .wait_applied(std::time::Duration::from_secs(10), done)
            .await
        {
            Ok(())
        } else {
            Err(MetaError::new(
                ResponseError::RequestTimedOut,
                "the change was committed but has not reached this broker yet",
            ))
        }
    }

    /// Hands out a producer ID that was never handed out before (in a cluster: from the
    /// block the controller gave this broker; call [`Self::reserve_producer_ids`] first).
    pub fn allocate_producer_id(&self) -> MetaResult<i64> {
        match self.cluster() {
            Some(c) => c.take_producer_id().ok_or_else(|| {
                MetaError::new(
                    ResponseError::CoordinatorLoadInProgress,
                    "no producer ids available yet",
                )
            }),
            None => self.registry.allocate_producer_id(),
        }
    }

    // ---- shutdown, in this order (see `gregor serve`): the server stops accepting and
    // drains its connections; then `stop_background`; then `shutdown`.

    /// Stops the coordinators' timers and tells the background threads (the cleaner) to
    /// stop at their next check.
    pub fn stop_background(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(g) = self.groups() {
            g.stop_timers();
        }
        if let Some(t) = self.txns() {
            t.stop_timers();
        }
    }

    /// Flushes every partition log and writes its index files, the recovery-point
    /// checkpoint and, if all of that succeeded, the clean-shutdown marker.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.flusher.stop();
        let mut ok = true;
        for t in self.all_topics() {
            for p in &t.partitions {
                ok &= p.close_for_shutdown();
            }
        }
        if let Err(e) = self.write_recovery_checkpoint() {
            ok = false;
            tracing::error!(error = %e, "writing recovery-point checkpoint failed");
        }
        if ok {
            if let Err(e) = self.checkpoints.write_clean_marker() {
                tracing::error!(error = %e, "writing clean-shutdown marker failed");
            }
        }
    }
}

/// A metadata error from the controller as the broker answers it.
fn meta_error(e: gregor_meta::MetaError) -> MetaError {
    let code = ResponseError::try_from_code(e.code()).unwrap_or(ResponseError::UnknownServerError);
    MetaError::new(code, e.to_string())
}

fn refuse_internal(name: &str, what: &str) -> MetaResult<()> {
    if is_internal_topic(name) {
        return Err(MetaError::new(
            ResponseError::InvalidRequest,
            format!("{what} the internal topic {name} is not allowed"),
        ));
    }
    Ok(())
}
