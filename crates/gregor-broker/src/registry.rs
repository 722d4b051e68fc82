//! The topic registry: names, IDs, partition counts, config overrides, and the
//! producer-ID reservation, persisted as one JSON document, `<data-dir>/meta/state.json`,
//! replaced atomically on every change. Each partition's log lives in
//! `<data-dir>/<topic>-<partition>/` (see [`crate::partition`]).
//!
//! Invariant: a topic is in the registry if and only if it is in `state.json`; partition
//! directories are created before the registry change is persisted and removed after it.
//! Readers get an immutable `Arc<Topic>`; a change replaces the topic (copy, persist,
//! publish), so a reader never sees a half-applied change.
//!
//! The registry knows nothing of the coordinators or of which topics are internal: the
//! broker's rules about those ([`crate::broker`]) sit on top. Clustering turns this into a
//! view of the metadata log.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use gregor_log::{LogConfig, RecoveryHint};
use gregor_os::SharedClock;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::producer_state::LoadExpiry;
use crate::partition::Partition;
use crate::topic_config::{self, LogSettings};
use gregor_os::fs::replace_file as write_atomically;

/// A topic and its partitions.
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Arc<Partition>>,
    /// Overrides only; defaults come from [`topic_config`].
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    /// What a validate-only CreateTopics answers: the topic as it would be, without logs.
    pub fn validated(name: &str, configs: BTreeMap<String, String>) -> Arc<Topic> {
        Arc::new(Topic {
            name: name.to_string(),
            id: Uuid::nil(),
            partitions: vec![],
            configs,
        })
    }

    /// The topic's description, without the logs.
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            name: self.name.clone(),
            id: self.id,
            partitions: self.partitions.len() as i32,
            configs: self.configs.clone(),
        }
    }

    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    /// The topic's storage settings (overrides, broker `log.*` settings, defaults).
    pub fn log_settings(&self, broker: &BrokerConfig) -> LogSettings {
        LogSettings::resolve(&self.configs, broker)
    }

    /// The topic's `cleanup.policy` (or the broker's `log.cleanup.policy`) includes `compact`.
    pub fn is_compacted(&self, broker: &crate::config::BrokerConfig) -> bool {
        crate::topic_config::resolve(&self.configs, broker, "cleanup.policy")
            .is_some_and(|r| r.value.split(',').any(|p| p.trim() == "compact"))
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
struct PersistedState {
    cluster_id: String,
    topics: Vec<TopicSpec>,
    /// Producer IDs below this may have been handed out; a restart continues from here.
    #[serde(default)]
    producer_ids_reserved: i64,
    /// In a cluster: the metadata log index the topics reflect ([`TopicRegistry::apply_image`]).
    #[serde(default)]
    meta_index: u64,
}

/// A topic's description without its partitions' logs: what `state.json` stores, and what
/// the cluster metadata says for [`TopicRegistry::apply_image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
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

/// The topics this broker hosts and the producer IDs it handed out.
pub struct TopicRegistry {
    config: BrokerConfig,
    /// Handed to every partition opened (its log and producer expiry take time from it).
    clock: SharedClock,
    cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes metadata changes and their persistence.
    meta_write: Mutex<()>,
    producer_ids: Mutex<ProducerIds>,
    /// In a cluster: the metadata log index the topics reflect (persisted with them).
    meta_index: AtomicU64,
}

/// How the last process left the logs: per partition the offset below which everything
/// was fsynced, and whether it shut down cleanly.
#[derive(Debug, Default)]
pub struct RecoveryState {
    pub recovery_points: HashMap<(String, i32), i64>,
    pub clean: bool,
}

impl TopicRegistry {
    /// Loads `state.json` (creating it for a new data directory) and opens every
    /// partition's log.
    pub fn open(
        config: BrokerConfig,
        recovery: &RecoveryState,
        clock: SharedClock,
    ) -> anyhow::Result<TopicRegistry> {
        std::fs::create_dir_all(config.data_dir.join("meta"))?;
        let state_path = config.data_dir.join("meta").join("state.json");
        let persisted: PersistedState = if state_path.exists() {
            serde_json::from_slice(&std::fs::read(&state_path)?)?
        } else {
            let s = PersistedState {
                cluster_id: new_cluster_id(),
                topics: vec![],
                producer_ids_reserved: 0,
                meta_index: 0,
            };
            write_atomically(&state_path, &serde_json::to_vec_pretty(&s)?)?;
            s
        };
        let clean = recovery.clean;
        let started = std::time::Instant::now();
        let mut work = Vec::new();
        for t in &persisted.topics {
            for p in 0..t.partitions {
                let rp = recovery.recovery_points.get(&(t.name.clone(), p)).copied();
                work.push((t.name.clone(), p, t.configs.clone(), rp));
            }
        }
        let total = work.len();
        let opened = open_partitions_parallel(&config, &clock, work, clean)?;
        let scanned: u64 = opened.iter().map(|p| p.scanned_on_open()).sum();
        let replayed: u64 = opened.iter().map(|p| p.replayed_on_open()).sum();
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
        let producer_ids = ProducerIds {
            next: persisted.producer_ids_reserved,
            reserved: persisted.producer_ids_reserved,
        };
        Ok(TopicRegistry {
            config,
            clock,
            cluster_id: persisted.cluster_id,
            topics: RwLock::new(topics),
            meta_write: Mutex::new(()),
            producer_ids: Mutex::new(producer_ids),
            meta_index: AtomicU64::new(persisted.meta_index),
        })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
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
            return Ok(Topic::validated(name, configs));
        }
        let mut parts = Vec::new();
        for p in 0..partitions {
            parts.push(
                open_partition(&self.config, &self.clock, name, p, &configs).map_err(internal)?,
            );
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

    /// Returns the topic, or creates it compacted with `partitions` partitions (an
    /// existing topic keeps its partition count).
    pub fn get_or_create_compacted(
        &self,
        name: &str,
        partitions: i32,
    ) -> anyhow::Result<Arc<Topic>> {
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
            partitions.push(
                open_partition(&self.config, &self.clock, name, p, &topic.configs)
                    .map_err(internal)?,
            );
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
            p.set_log_config(log_config.clone());
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
            meta_index: self.meta_index.load(Ordering::SeqCst),
            topics: next.values().map(|t| t.spec()).collect(),
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

    /// In a cluster: the metadata log index the topics reflect (0 before the first image).
    pub fn meta_index(&self) -> u64 {
        self.meta_index.load(Ordering::SeqCst)
    }

    /// In a cluster, the registry is a view of the metadata image: this makes the local
    /// topics match `wanted` (the image's topics as of log index `index`). Topics the image no
    /// longer has, or has re-created under a new id, are removed (persisted first, then their
    /// directories deleted); new topics and partitions are opened (directories first, then
    /// persisted); config changes are applied live. An image older than the one the registry
    /// already reflects is ignored, so a node that restarts and replays its metadata log from
    /// an older snapshot never deletes a topic it still has.
    pub fn apply_image(&self, wanted: &[TopicSpec], index: u64) -> anyhow::Result<()> {
        let _guard = self.meta_write.lock().expect("meta lock");
        if index < self.meta_index() {
            return Ok(());
        }
        let wanted_by_name: HashMap<&str, &TopicSpec> =
            wanted.iter().map(|t| (t.name.as_str(), t)).collect();
        let current = self.topics.read().expect("topics lock").clone();
        let gone: Vec<Arc<Topic>> = current
            .values()
            .filter(|t| {
                wanted_by_name
                    .get(t.name.as_str())
                    .is_none_or(|w| w.id != t.id)
            })
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.commit_change(|topics| {
                for t in &gone {
                    topics.remove(&t.name);
                }
            })
            .map_err(|e| anyhow::anyhow!(e.message))?;
            for t in &gone {
                for p in &t.partitions {
                    let dir = partition_dir(&self.config.data_dir, &t.name, p.index);
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "could not remove partition directory");
                    }
                }
                tracing::info!(topic = %t.name, "removed topic (cluster metadata)");
            }
        }
        let mut changed: Vec<Arc<Topic>> = Vec::new();
        for w in wanted {
            let existing = self.topic(&w.name).filter(|t| t.id == w.id);
            let have = existing.as_ref().map_or(0, |t| t.partitions.len() as i32);
            if existing
                .as_ref()
                .is_some_and(|t| have >= w.partitions && t.configs == w.configs)
            {
                continue;
            }
            let mut partitions = existing
                .as_ref()
                .map(|t| t.partitions.clone())
                .unwrap_or_default();
            for p in have..w.partitions {
                partitions.push(open_partition(
                    &self.config,
                    &self.clock,
                    &w.name,
                    p,
                    &w.configs,
                )?);
            }
            let topic = Arc::new(Topic {
                name: w.name.clone(),
                id: w.id,
                partitions,
                configs: w.configs.clone(),
            });
            if existing.is_some_and(|t| t.configs != w.configs) {
                let lc = log_config(&self.config, &topic.configs);
                for p in &topic.partitions {
                    p.set_log_config(lc.clone());
                }
            }
            if have == 0 {
                tracing::info!(topic = %w.name, partitions = w.partitions, "created topic (cluster metadata)");
            }
            changed.push(topic);
        }
        // Persisting the index matters only with a change: topics are created at an index at
        // most the persisted one, so any later image still has them unless they were deleted.
        self.meta_index.store(index, Ordering::SeqCst);
        if changed.is_empty() {
            return Ok(());
        }
        self.commit_change(|topics| {
            for t in changed {
                topics.insert(t.name.clone(), t);
            }
        })
        .map_err(|e| anyhow::anyhow!(e.message))
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
    clock: &SharedClock,
    topic: &str,
    index: i32,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Partition>> {
    open_partition_with(
        config,
        clock,
        topic,
        index,
        overrides,
        RecoveryHint::default(),
    )
}

fn open_partition_with(
    config: &BrokerConfig,
    clock: &SharedClock,
    topic: &str,
    index: i32,
    overrides: &BTreeMap<String, String>,
    hint: RecoveryHint,
) -> anyhow::Result<Arc<Partition>> {
    let expiry = LoadExpiry {
        now_ms: clock.now_ms(),
        expiration_ms: config.producer_id_expiration_ms,
    };
    let dir = partition_dir(&config.data_dir, topic, index);
    let partition = Partition::open(
        topic,
        index,
        dir,
        log_config(config, overrides),
        hint,
        expiry,
        clock.clone(),
    )?;
    Ok(Arc::new(partition))
}

type OpenWork = (String, i32, BTreeMap<String, String>, Option<i64>);

/// Opens many partitions on a few threads (startup with 1,000s of partitions).
fn open_partitions_parallel(
    config: &BrokerConfig,
    clock: &SharedClock,
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
                            open_partition_with(config, clock, topic, *p, overrides, hint)
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

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22-character URL-safe base64 UUIDs; a hex UUID prefix is as unique.
    Uuid::new_v4().simple().to_string()[..22].to_string()
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
