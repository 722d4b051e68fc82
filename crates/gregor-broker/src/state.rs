//! The broker's state: the topic registry (names, IDs, partitions, config overrides) and the
//! partitions' logs.
//!
//! Topic metadata is persisted as one JSON document, `<data-dir>/meta/state.json`, replaced
//! atomically (write to a temporary file, fsync, rename, fsync the directory) on every change.
//! Each partition's log lives in `<data-dir>/<topic>-<partition>/` and is owned by
//! [`gregor_log::PartitionLog`].
//!
//! Invariant: a topic is in the registry if and only if it is in `state.json`; partition
//! directories are created before the registry change is persisted and removed after it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use gregor_log::{batch::iter_batches, LogConfig, PartitionLog};
use gregor_log::{BatchHeader, RecoveryHint};
use gregor_txn::ProducerStateTable;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::flusher::Flusher;
use crate::topic_config::{self, LogSettings};

/// `<data-dir>/recovery-point-offset-checkpoint`: one line per partition,
/// `<topic> <partition> <offset>`, every record below `offset` was fsynced.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
/// The recovery-point checkpoint re-indexes an active segment once it grew this much.
const ACTIVE_INDEX_MIN_GROWTH: u64 = 1 << 20;
/// `<data-dir>/clean-shutdown`: present only between a clean shutdown and the next start.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// One partition of a topic, led by this broker.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: RwLock<PartitionLog>,
    /// Idempotent producers' sequence state. Lock order: `log` before `producers`.
    pub producers: Mutex<ProducerStateTable>,
    /// Queued for the group-commit flusher's next round (see [`crate::flusher`]).
    pub flush_queued: AtomicBool,
    /// The compaction cleaner is working on this partition.
    pub cleaning: AtomicBool,
    /// The partition's directory (producer snapshots live there).
    pub dir: PathBuf,
    /// Producer-state snapshots taken at segment rolls, waiting for the log to be durable
    /// past their offset (see [`crate::producer_state`]). A leaf lock.
    pub pending_snapshots: Mutex<Vec<(i64, ProducerStateTable)>>,
    /// Serializes snapshot writers; holds the newest snapshot offset on disk.
    pub snapshot_write: Mutex<Option<i64>>,
    /// Batches replayed into the producer state when the partition was opened.
    pub replayed_on_open: u64,
}

impl Partition {
    /// A partition over an opened log and its producer state.
    pub fn new(
        topic: &str,
        index: i32,
        dir: PathBuf,
        log: PartitionLog,
        producers: ProducerStateTable,
    ) -> Partition {
        Partition {
            topic: topic.to_string(),
            index,
            log: RwLock::new(log),
            producers: Mutex::new(producers),
            flush_queued: AtomicBool::new(false),
            cleaning: AtomicBool::new(false),
            dir,
            pending_snapshots: Mutex::new(Vec::new()),
            snapshot_write: Mutex::new(None),
            replayed_on_open: 0,
        }
    }

    /// The high watermark. On a single node every appended batch is committed, so it equals
    /// the log end offset. Replication will make this the ISR's minimum.
    pub fn high_watermark(&self) -> i64 {
        self.log.read().expect("log lock").log_end_offset()
    }

    /// The last stable offset given the high watermark: the first offset of the earliest
    /// open transaction, or the high watermark. read_committed consumers stop here.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.producers
            .lock()
            .expect("producer state lock")
            .first_unstable_offset()
            .map_or(high_watermark, |o| o.min(high_watermark))
    }
}

impl Partition {
    /// Calls `f` with every batch of this partition's log, from its start to its end at the
    /// time each chunk is read, in offset order. The read lock is taken per 1 MiB chunk, so
    /// appends proceed in between. Used by the coordinators to load their internal topics.
    pub fn replay(
        &self,
        f: impl FnMut(&BatchHeader, Bytes) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = self.log.read().expect("log lock").log_start_offset();
        replay_batches(
            start,
            |offset| {
                let log = self.log.read().expect("log lock");
                let end = log.log_end_offset();
                Ok(log.read(offset, 1 << 20, end)?.data)
            },
            f,
        )
    }
}

/// Calls `f` for every batch from offset `start` on, in offset order. `read` returns the
/// whole batches at an offset (nothing at the end of the log); the caller decides locking.
pub fn replay_batches(
    start: i64,
    mut read: impl FnMut(i64) -> anyhow::Result<Bytes>,
    mut f: impl FnMut(&BatchHeader, Bytes) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut offset = start;
    loop {
        let data = read(offset)?;
        if data.is_empty() {
            return Ok(());
        }
        let before = offset;
        for item in iter_batches(&data) {
            let (header, range) = item.map_err(|e| anyhow::anyhow!("{e}"))?;
            offset = header.next_offset();
            f(&header, data.slice(range))?;
        }
        if offset <= before {
            anyhow::bail!("log replay made no progress at offset {before}");
        }
    }
}

/// Encodes one uncompressed v2 batch of `(key, value)` records for an internal topic,
/// written by the broker itself. With `producer`, the batch is transactional for that
/// producer (and a control batch if `control`: a transaction marker).
pub fn encode_internal_batch(
    records: impl IntoIterator<Item = (Bytes, Option<Bytes>)>,
    now: i64,
    producer: Option<(i64, i16)>,
    control: bool,
) -> anyhow::Result<Bytes> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

/// A topic and its partitions.
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Arc<Partition>>,
    /// Overrides only; defaults come from [`topic_config`].
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    /// The topic's storage settings (overrides, broker `log.*` settings, defaults).
    pub fn log_settings(&self, broker: &BrokerConfig) -> LogSettings {
        LogSettings::resolve(&self.configs, broker)
    }

    /// The topic's `max.message.bytes`, or the broker's `message.max.bytes` if not overridden.
    pub fn max_message_bytes(&self, broker_default: usize) -> usize {
        self.configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(broker_default)
    }
}

#[derive(Serialize, Deserialize)]
struct PersistedTopic {
    name: String,
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct PersistedState {
    cluster_id: String,
    topics: Vec<PersistedTopic>,
    /// Producer IDs below this may have been handed out; a restart continues from here.
    #[serde(default)]
    producer_ids_reserved: i64,
}

/// Producer IDs are reserved in blocks, persisted before any ID of a block is handed out,
/// so an ID is never given twice, even across a crash.
const PRODUCER_ID_BLOCK: i64 = 1000;

struct ProducerIds {
    next: i64,
    reserved: i64,
}

/// A failed metadata operation: the Kafka error and a message for the client.
#[derive(Debug)]
pub struct MetaError {
    pub code: ResponseError,
    pub message: String,
}

impl MetaError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        MetaError {
            code,
            message: message.into(),
        }
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// Internal topics are written only by the broker's own coordinators: clients may read and
/// describe them, but not produce to, delete or repartition them (the coordinators' hash of
/// a key to a partition depends on the partition count).
pub fn is_internal_topic(name: &str) -> bool {
    matches!(name, "__consumer_offsets" | "__transaction_state")
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

/// Kafka's topic name rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> MetaResult<()> {
    let bad = |why: &str| {
        Err(MetaError::new(
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal, {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it can't be empty");
    }
    if name == "." || name == ".." {
        return bad("it can't be '.' or '..'");
    }
    if name.len() > 249 {
        return bad("it can't be longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("it contains a character other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// The broker's shared state.
pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes metadata changes and their persistence.
    meta_write: Mutex<()>,
    /// Bumped after every append; long-polling fetches wait on it.
    appended: watch::Sender<u64>,
    producer_ids: Mutex<ProducerIds>,
    /// The group coordinator, set once by [`crate::groups::GroupService::start`].
    pub groups: std::sync::OnceLock<Arc<crate::groups::GroupService>>,
    /// Group commit for `fsync = always` (and the `interval` policy's flushes).
    pub flusher: Flusher,
    /// Serializes recovery-point checkpoint writes.
    checkpoint_write: Mutex<()>,
    /// Set at shutdown: background threads (the cleaner) stop at their next check.
    pub stopping: AtomicBool,
    /// The transaction coordinator, set once by
    /// [`crate::transactions::TransactionService::start`].
    pub txns: std::sync::OnceLock<Arc<crate::transactions::TransactionService>>,
}

impl Broker {
    /// Opens the data directory: loads persisted topics and reopens every partition log.
    pub fn open(config: BrokerConfig, advertised: (String, i32)) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(config.data_dir.join("meta"))?;
        let state_path = config.data_dir.join("meta").join("state.json");
        let persisted: PersistedState = if state_path.exists() {
            serde_json::from_slice(&std::fs::read(&state_path)?)?
        } else {
            let s = PersistedState {
                cluster_id: new_cluster_id(),
                topics: vec![],
                producer_ids_reserved: 0,
            };
            write_atomically(&state_path, &serde_json::to_vec_pretty(&s)?)?;
            s
        };
        // What the last process left: a clean-shutdown marker means every log was flushed
        // and indexed at exit; otherwise the recovery points say how much was fsynced.
        let clean_path = config.data_dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = clean_path.exists();
        let recovery_points = read_recovery_points(&config.data_dir)?;
        let started = std::time::Instant::now();
        let mut work = Vec::new();
        for t in &persisted.topics {
            for p in 0..t.partitions {
                let rp = recovery_points.get(&(t.name.clone(), p)).copied();
                work.push((t.name.clone(), p, t.configs.clone(), rp));
            }
        }
        let total = work.len();
        let opened = open_partitions_parallel(&config, work, clean)?;
        let scanned: u64 = opened
            .iter()
            .map(|p| p.log.read().expect("log lock").scanned_on_open())
            .sum();
        let replayed: u64 = opened.iter().map(|p| p.replayed_on_open).sum();
        let mut by_topic: HashMap<String, Vec<Arc<Partition>>> = HashMap::new();
        for part in opened {
            by_topic.entry(part.topic.clone()).or_default().push(part);
        }
        let mut topics = BTreeMap::new();
        for t in persisted.topics {
            let mut partitions = by_topic.remove(&t.name).unwrap_or_default();
            partitions.sort_by_key(|p| p.index);
            tracing::debug!(topic = %t.name, partitions = t.partitions, "loaded topic");
            topics.insert(
                t.name.clone(),
                Arc::new(Topic {
                    name: t.name,
                    id: t.id,
                    partitions,
                    configs: t.configs,
                }),
            );
        }
        tracing::info!(
            partitions = total,
            clean_shutdown = clean,
            scanned_bytes = scanned,
            replayed_batches = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened partition logs"
        );
        if clean {
            // From here on the logs change: the marker must not survive a crash.
            std::fs::remove_file(&clean_path)?;
            std::fs::File::open(&config.data_dir)?.sync_all()?;
        }
        let producer_ids = ProducerIds {
            next: persisted.producer_ids_reserved,
            reserved: persisted.producer_ids_reserved,
        };
        let broker = Broker {
            producer_ids: Mutex::new(producer_ids),
            cluster_id: persisted.cluster_id,
            advertised_host: advertised.0,
            advertised_port: advertised.1,
            topics: RwLock::new(topics),
            meta_write: Mutex::new(()),
            appended: watch::channel(0).0,
            groups: std::sync::OnceLock::new(),
            txns: std::sync::OnceLock::new(),
            config,
            flusher: Flusher::start(),
            checkpoint_write: Mutex::new(()),
            stopping: AtomicBool::new(false),
        };
        // Every log is durable up to its end after open: record that right away.
        broker.write_recovery_checkpoint()?;
        Ok(broker)
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Subscribes to append notifications (for long-polling fetches).
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Wakes every waiting fetch; called after appends.
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
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
        validate_topic_name(name)?;
        let partitions = if partitions == -1 {
            self.config.num_partitions
        } else {
            partitions
        };
        if partitions <= 0 {
            return Err(MetaError::new(
                ResponseError::InvalidPartitions,
                format!("Number of partitions must be larger than 0, got {partitions}."),
            ));
        }
        let replication = if replication == -1 {
            self.config.default_replication_factor
        } else {
            replication
        };
        if replication <= 0 || replication > 1 {
            return Err(MetaError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Replication factor must be between 1 and the number of live brokers (1), got {replication}."
                ),
            ));
        }
        for (k, v) in &configs {
            topic_config::validate(k, v)
                .map_err(|m| MetaError::new(ResponseError::InvalidConfig, m))?;
        }
        let _guard = self.meta_write.lock().expect("meta lock");
        if self.topic(name).is_some() {
            return Err(MetaError::new(
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if validate_only {
            return Ok(Arc::new(Topic {
                name: name.to_string(),
                id: Uuid::nil(),
                partitions: vec![],
                configs,
            }));
        }
        let mut parts = Vec::new();
        for p in 0..partitions {
            parts.push(open_partition(&self.config, name, p, &configs).map_err(internal)?);
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions: parts,
            configs,
        });
        self.commit_change(|topics| {
            topics.insert(name.to_string(), topic.clone());
        })?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Returns an internal topic (a coordinator's log), creating it compacted with
    /// `partitions` partitions if it does not exist yet. An existing topic keeps its count:
    /// the coordinators' key-to-partition hash depends on it.
    pub fn ensure_internal_topic(&self, name: &str, partitions: i32) -> anyhow::Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        self.create_topic(
            name,
            partitions.max(1),
            1,
            BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
            false,
        )
        .map_err(|e| anyhow::anyhow!("creating {name}: {}", e.message))
    }

    /// Returns the topic, creating it with broker defaults if auto-creation allows.
    pub fn get_or_auto_create(&self, name: &str, allow: bool) -> MetaResult<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        validate_topic_name(name)?;
        if !(allow && self.config.auto_create_topics_enable) {
            return Err(unknown_topic(name));
        }
        match self.create_topic(name, -1, -1, BTreeMap::new(), false) {
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {
                self.topic(name).ok_or_else(|| unknown_topic(name))
            }
            other => other,
        }
    }

    pub fn delete_topic(&self, name: &str) -> MetaResult<Uuid> {
        refuse_internal(name, "Deleting")?;
        let _guard = self.meta_write.lock().expect("meta lock");
        let topic = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        self.commit_change(|topics| {
            topics.remove(name);
        })?;
        for p in &topic.partitions {
            let dir = partition_dir(&self.config.data_dir, name, p.index);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove partition directory");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> MetaResult<()> {
        refuse_internal(name, "Adding partitions to")?;
        let _guard = self.meta_write.lock().expect("meta lock");
        let topic = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(MetaError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "Topic currently has {current} partitions, {count} would not be an increase."
                ),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let mut partitions = topic.partitions.clone();
        for p in current..count {
            partitions
                .push(open_partition(&self.config, name, p, &topic.configs).map_err(internal)?);
        }
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions,
            configs: topic.configs.clone(),
        });
        self.commit_change(|topics| {
            topics.insert(name.to_string(), updated);
        })
    }

    /// Writes the recovery-point checkpoint: each partition's durable offset.
    pub fn write_recovery_checkpoint(&self) -> std::io::Result<()> {
        let _guard = self.checkpoint_write.lock().expect("checkpoint lock");
        let mut text = String::new();
        for t in self.all_topics() {
            for p in &t.partitions {
                let durable = {
                    let mut log = p.log.write().expect("log lock");
                    // Index the active segment first, so that after a crash only what
                    // was appended since (beyond the recovery point) is rescanned.
                    if let Err(e) = log.checkpoint_active_index(ACTIVE_INDEX_MIN_GROWTH) {
                        tracing::warn!(topic = %t.name, partition = p.index, error = %e, "could not write active segment index");
                    }
                    log.durable_offset()
                };
                text.push_str(&format!("{} {} {}\n", t.name, p.index, durable));
            }
        }
        write_atomically(
            &self.config.data_dir.join(RECOVERY_POINT_FILE),
            text.as_bytes(),
        )
    }

    /// Replaces a topic's config overrides (already validated by the caller).
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> MetaResult<()> {
        let _guard = self.meta_write.lock().expect("meta lock");
        let topic = self.topic(name).ok_or_else(|| unknown_topic(name))?;
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partitions.clone(),
            configs,
        });
        let log_config = log_config(&self.config, &updated.configs);
        self.commit_change(|topics| {
            topics.insert(name.to_string(), updated.clone());
        })?;
        // Applied live: segment settings take effect from the next append; retention,
        // compaction and flush settings are read by the background tasks on every pass.
        for p in &updated.partitions {
            p.log
                .write()
                .expect("log lock")
                .set_config(log_config.clone());
        }
        Ok(())
    }

    /// Applies `change` to a copy of the registry, persists the copy, then publishes it.
    /// Callers hold `meta_write`.
    fn commit_change(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Arc<Topic>>),
    ) -> MetaResult<()> {
        let mut next = self.topics.read().expect("topics lock").clone();
        change(&mut next);
        let persisted = PersistedState {
            cluster_id: self.cluster_id.clone(),
            producer_ids_reserved: self
                .producer_ids
                .lock()
                .expect("producer ids lock")
                .reserved,
            topics: next
                .values()
                .map(|t| PersistedTopic {
                    name: t.name.clone(),
                    id: t.id,
                    partitions: t.partitions.len() as i32,
                    configs: t.configs.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&persisted).map_err(internal)?;
        write_atomically(
            &self.config.data_dir.join("meta").join("state.json"),
            &bytes,
        )
        .map_err(internal)?;
        *self.topics.write().expect("topics lock") = next;
        Ok(())
    }

    /// Hands out a producer ID that was never handed out before.
    pub fn allocate_producer_id(&self) -> MetaResult<i64> {
        {
            let mut ids = self.producer_ids.lock().expect("producer ids lock");
            if ids.next < ids.reserved {
                ids.next += 1;
                return Ok(ids.next - 1);
            }
        }
        let _guard = self.meta_write.lock().expect("meta lock");
        {
            let mut ids = self.producer_ids.lock().expect("producer ids lock");
            if ids.next < ids.reserved {
                ids.next += 1;
                return Ok(ids.next - 1);
            }
            ids.reserved += PRODUCER_ID_BLOCK;
        }
        // Persist the new reservation before handing out any ID from it.
        self.commit_change(|_| {})?;
        let mut ids = self.producer_ids.lock().expect("producer ids lock");
        ids.next += 1;
        Ok(ids.next - 1)
    }

    /// Flushes every partition log and writes its index files, the recovery-point
    /// checkpoint and, if all of that succeeded, the clean-shutdown marker.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.flusher.stop();
        let mut ok = true;
        for t in self.all_topics() {
            for p in &t.partitions {
                if let Err(e) = p.log.write().expect("log lock").flush_for_shutdown() {
                    ok = false;
                    tracing::error!(topic = %t.name, partition = p.index, error = %e, "flush on shutdown failed");
                }
                if let Err(e) = p.snapshot_at_shutdown() {
                    ok = false;
                    tracing::error!(topic = %t.name, partition = p.index, error = %e, "producer snapshot failed");
                }
            }
        }
        if let Err(e) = self.write_recovery_checkpoint() {
            ok = false;
            tracing::error!(error = %e, "writing recovery-point checkpoint failed");
        }
        if ok {
            let marker = self.config.data_dir.join(CLEAN_SHUTDOWN_FILE);
            if let Err(e) = write_atomically(&marker, b"") {
                tracing::error!(error = %e, "writing clean-shutdown marker failed");
            }
        }
    }
}

pub fn unknown_topic(name: &str) -> MetaError {
    MetaError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("This server does not host this topic-partition: {name}"),
    )
}

fn internal(e: impl std::fmt::Display) -> MetaError {
    tracing::error!(error = %e, "metadata operation failed");
    MetaError::new(ResponseError::UnknownServerError, e.to_string())
}

pub fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// The log tunables of a topic's partitions.
fn log_config(config: &BrokerConfig, overrides: &BTreeMap<String, String>) -> LogConfig {
    let s = LogSettings::resolve(overrides, config);
    LogConfig {
        segment_bytes: s.segment_bytes,
        segment_ms: s.segment_ms,
        max_batch_bytes: config.socket_request_max_bytes,
        ..LogConfig::default()
    }
}

fn open_partition(
    config: &BrokerConfig,
    topic: &str,
    index: i32,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Partition>> {
    open_partition_with(config, topic, index, overrides, RecoveryHint::default())
}

fn open_partition_with(
    config: &BrokerConfig,
    topic: &str,
    index: i32,
    overrides: &BTreeMap<String, String>,
    hint: RecoveryHint,
) -> anyhow::Result<Arc<Partition>> {
    let dir = partition_dir(&config.data_dir, topic, index);
    let mut log = PartitionLog::open_with(&dir, log_config(config, overrides), hint)?;
    let expiry = crate::producer_state::LoadExpiry {
        now_ms: gregor_log::now_ms(),
        expiration_ms: config.producer_id_expiration_ms,
    };
    let loaded = crate::producer_state::load(&dir, &mut log, expiry)?;
    if loaded.replayed_batches > 0 || !loaded.table.is_empty() || loaded.expired_producers > 0 {
        tracing::info!(
            topic,
            partition = index,
            snapshot_offset = loaded.snapshot_offset.unwrap_or(-1),
            replayed_batches = loaded.replayed_batches,
            producers = loaded.table.len(),
            expired_producers = loaded.expired_producers,
            aborted_txns = loaded.table.aborted_len(),
            "producer state loaded"
        );
    }
    let mut partition = Partition::new(topic, index, dir, log, loaded.table);
    partition.replayed_on_open = loaded.replayed_batches;
    // A snapshot without timestamps (earlier version) is not "already written": the
    // clean shutdown rewrites it even with nothing appended.
    *partition
        .snapshot_write
        .get_mut()
        .expect("snapshot write lock") = loaded
        .snapshot_offset
        .filter(|_| loaded.filled_timestamps == 0);
    Ok(Arc::new(partition))
}

type OpenWork = (String, i32, BTreeMap<String, String>, Option<i64>);

/// Opens many partitions on a few threads (startup with 1,000s of partitions).
fn open_partitions_parallel(
    config: &BrokerConfig,
    work: Vec<OpenWork>,
    clean: bool,
) -> anyhow::Result<Vec<Arc<Partition>>> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
        .min(work.len().max(1));
    let chunk = work.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|(topic, p, overrides, rp)| {
                            let hint = RecoveryHint {
                                recovery_point: *rp,
                                clean,
                            };
                            open_partition_with(config, topic, *p, overrides, hint)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("partition open thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// Reads the recovery-point checkpoint (missing file: no recovery points).
fn read_recovery_points(data_dir: &Path) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let text = match std::fs::read_to_string(data_dir.join(RECOVERY_POINT_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut it = line.split(' ');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(t), Some(p), Some(o), None) => match (p.parse(), o.parse()) {
                (Ok(p), Ok(o)) => {
                    out.insert((t.to_string(), p), o);
                }
                _ => tracing::warn!(line, "ignoring malformed recovery-point line"),
            },
            _ => tracing::warn!(line, "ignoring malformed recovery-point line"),
        }
    }
    Ok(out)
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22-character URL-safe base64 UUIDs; a hex UUID prefix is as unique.
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        for bad in ["", ".", "..", "has space", "bad!", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }
}
