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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use gregor_log::{batch::iter_batches, LogConfig, PartitionLog};
use gregor_txn::{ProducerBatch, ProducerStateTable};
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::topic_config;

/// One partition of a topic, led by this broker.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: RwLock<PartitionLog>,
    /// Idempotent producers' sequence state. Lock order: `log` before `producers`.
    pub producers: Mutex<ProducerStateTable>,
}

impl Partition {
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
        let mut topics = BTreeMap::new();
        for t in persisted.topics {
            let mut partitions = Vec::new();
            for p in 0..t.partitions {
                partitions.push(open_partition(&config, &t.name, p, &t.configs)?);
            }
            tracing::info!(topic = %t.name, partitions = t.partitions, "loaded topic");
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
        let producer_ids = ProducerIds {
            next: persisted.producer_ids_reserved,
            reserved: persisted.producer_ids_reserved,
        };
        Ok(Broker {
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
        })
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
        self.commit_change(|topics| {
            topics.insert(name.to_string(), updated);
        })
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

    /// Flushes and closes every partition log (clean shutdown).
    pub fn shutdown(&self) {
        for t in self.all_topics() {
            for p in &t.partitions {
                if let Err(e) = p.log.write().expect("log lock").flush() {
                    tracing::error!(topic = %t.name, partition = p.index, error = %e, "flush on shutdown failed");
                }
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

fn open_partition(
    config: &BrokerConfig,
    topic: &str,
    index: i32,
    overrides: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Partition>> {
    let segment_bytes = topic_config::effective(overrides, "segment.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.log_segment_bytes);
    let log_config = LogConfig {
        segment_bytes,
        max_batch_bytes: config.socket_request_max_bytes,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(&partition_dir(&config.data_dir, topic, index), log_config)?;
    let producers = rebuild_producer_state(&log)?;
    if !producers.is_empty() {
        tracing::info!(
            topic,
            partition = index,
            producers = producers.len(),
            "rebuilt producer state"
        );
    }
    Ok(Arc::new(Partition {
        topic: topic.to_string(),
        index,
        log: RwLock::new(log),
        producers: Mutex::new(producers),
    }))
}

/// Replays the batch headers of the whole log into a producer state table: sequences,
/// open transactions (transactional batches not yet followed by their marker) and the
/// aborted-transaction index (from ABORT markers).
///
/// Reads every batch once (headers only are parsed). TODO(issue 7): producer state
/// snapshots, so a start replays only the tail written after the last snapshot.
fn rebuild_producer_state(log: &PartitionLog) -> anyhow::Result<ProducerStateTable> {
    let mut table = ProducerStateTable::new();
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    while offset < end {
        let read = log.read(offset, 1 << 20, end)?;
        let mut next = offset;
        for (header, range) in iter_batches(&read.data).flatten() {
            if header.is_control() {
                match crate::transactions::marker_type(&read.data[range]) {
                    Some(commit) => table.record_marker(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_offset,
                        commit,
                    ),
                    None => tracing::warn!(
                        offset = header.base_offset,
                        "unreadable control batch skipped"
                    ),
                }
            } else if header.producer_id >= 0 {
                if header.is_transactional() {
                    table.record_transactional(header.producer_id, header.base_offset);
                }
                let batch = ProducerBatch::new(
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    header.last_offset_delta,
                );
                table.record(&batch, header.base_offset, header.last_offset());
            }
            next = header.last_offset() + 1;
        }
        if next <= offset {
            anyhow::bail!("log read made no progress at offset {offset}");
        }
        offset = next;
    }
    Ok(table)
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
