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

use kafka_protocol::error::ResponseError;
use tokio::sync::watch;
use uuid::Uuid;

use crate::appends::AppendSignal;
use crate::checkpoint::{read_recovery_state, Checkpoints};
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
}

impl Broker {
    /// Opens the data directory: loads persisted topics and reopens every partition log.
    pub fn open(config: BrokerConfig, advertised: (String, i32)) -> anyhow::Result<Broker> {
        let recovery = read_recovery_state(&config.data_dir)?;
        let registry = TopicRegistry::open(config.clone(), &recovery)?;
        let checkpoints = Checkpoints::new(&config.data_dir);
        // From here on the logs change: the marker must not survive a crash.
        if recovery.clean {
            checkpoints.remove_clean_marker()?;
        }
        let broker = Broker {
            advertised_host: advertised.0,
            advertised_port: advertised.1,
            registry: Arc::new(registry),
            appends: Arc::new(AppendSignal::default()),
            flusher: Flusher::start(),
            checkpoints,
            stopping: AtomicBool::new(false),
            groups: OnceLock::new(),
            txns: OnceLock::new(),
            config,
        };
        // Every log is durable up to its end after open: record that right away.
        broker.write_recovery_checkpoint()?;
        Ok(broker)
    }

    pub fn cluster_id(&self) -> &str {
        self.registry.cluster_id()
    }

    // ---- coordinators

    /// Starts the group coordinator (creates and replays `__consumer_offsets`). Must be
    /// called inside a tokio runtime, once.
    pub fn start_groups(&self) -> anyhow::Result<Arc<GroupService>> {
        let service = GroupService::start(&self.config, &self.registry)?;
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

    /// Creates a topic. `partitions`/`replication` of -1 mean the broker defaults.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> MetaResult<Arc<Topic>> {
        self.registry
            .create_topic(name, partitions, replication, configs, validate_only)
    }

    /// Returns the topic, creating it with broker defaults if auto-creation allows.
    pub fn get_or_auto_create(&self, name: &str, allow: bool) -> MetaResult<Arc<Topic>> {
        self.registry.get_or_auto_create(name, allow)
    }

    /// Deletes a topic (not an internal one).
    pub fn delete_topic(&self, name: &str) -> MetaResult<Uuid> {
        refuse_internal(name, "Deleting")?;
        self.registry.delete_topic(name)
    }

    /// Grows a topic to `count` partitions (not an internal one).
    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> MetaResult<()> {
        refuse_internal(name, "Adding partitions to")?;
        self.registry.create_partitions(name, count, validate_only)
    }

    /// Replaces a topic's config overrides (already validated by the caller).
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> MetaResult<()> {
        self.registry.set_topic_configs(name, configs)
    }

    /// Hands out a producer ID that was never handed out before.
    pub fn allocate_producer_id(&self) -> MetaResult<i64> {
        self.registry.allocate_producer_id()
    }

    // ---- shutdown

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

fn refuse_internal(name: &str, what: &str) -> MetaResult<()> {
    if is_internal_topic(name) {
        return Err(MetaError::new(
            ResponseError::InvalidRequest,
            format!("{what} the internal topic {name} is not allowed"),
        ));
    }
    Ok(())
}
