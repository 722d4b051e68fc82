//! One follower fetcher per leader broker: a task that fetches every partition this broker
//! follows on that leader, in one Fetch request at a time, and appends what comes back.
//!
//! Per partition and response: a diverging epoch truncates the log (to the smaller of the
//! leader's end of that epoch and this log's, KIP-320) before the next fetch; records are
//! appended at their offsets ([`Partition::append_replicated`]); the leader's high watermark
//! is taken (capped by the local log end). An error (the leader does not lead it yet, or
//! any more, or at another epoch) pauses the partition for `replica.fetch.backoff.ms` or
//! until the next metadata image.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gregor_client::BrokerConnection;
use gregor_log::LogError;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::OnReplicated;
use crate::config::BrokerConfig;
use crate::partition::producer_state::LoadExpiry;
use crate::partition::Partition;

/// The Fetch version followers send: replica id in the body, `LastFetchedEpoch` and
/// `DivergingEpoch` (KIP-320), topics by name.
const REPLICA_FETCH_VERSION: i16 = 12;

/// What a fetcher needs of the broker config.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    pub wait_max_ms: u64,
    pub max_bytes: usize,
    pub response_max_bytes: usize,
    pub backoff_ms: u64,
}

impl FetcherConfig {
    pub fn from_broker(c: &BrokerConfig) -> FetcherConfig {
        FetcherConfig {
            wait_max_ms: c.replica_fetch_wait_max_ms,
            max_bytes: c.replica_fetch_max_bytes,
            response_max_bytes: c.replica_fetch_response_max_bytes,
            backoff_ms: c.replica_fetch_backoff_ms,
        }
    }
}

/// A partition to follow, at the leader epoch the image names.
pub struct FetchTarget {
    pub partition: Arc<Partition>,
    pub leader_epoch: i32,
}

struct Followed {
    partition: Arc<Partition>,
    leader_epoch: i32,
    /// Not fetched before this (after an error).
    retry_at: Option<Instant>,
}

type Key = (String, i32);

/// A running fetcher.
pub struct Fetcher {
    addr: String,
    targets: Arc<Mutex<BTreeMap<Key, Followed>>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Fetcher {
    /// Starts fetching from `leader` at `addr` (nothing until [`set_targets`](Self::set_targets)).
    pub fn start(
        me: i32,
        leader: i32,
        addr: String,
        config: FetcherConfig,
        on_replicated: OnReplicated,
        expiry: LoadExpiry,
    ) -> Fetcher {
        let targets: Arc<Mutex<BTreeMap<Key, Followed>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            me,
            leader,
            addr.clone(),
            config,
            targets.clone(),
            wake.clone(),
            on_replicated,
            expiry,
        ));
        Fetcher {
            addr,
            targets,
            wake,
            task,
        }
    }

    /// The leader's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Follows exactly `targets` from now on; a partition whose epoch changed is fetched
    /// again at once.
    pub fn set_targets(&self, targets: Vec<FetchTarget>) {
        let mut map = self.targets.lock().expect("targets lock");
        let mut next = BTreeMap::new();
        for t in targets {
            let key = (t.partition.topic.clone(), t.partition.index);
            let retry_at = map
                .get(&key)
                .filter(|f| {
                    f.leader_epoch == t.leader_epoch && Arc::ptr_eq(&f.partition, &t.partition)
                })
                .and_then(|f| f.retry_at);
            next.insert(
                key,
                Followed {
                    partition: t.partition,
                    leader_epoch: t.leader_epoch,
                    retry_at,
                },
            );
        }
        *map = next;
        drop(map);
        self.wake.notify_one();
    }

    /// Stops the task.
    pub fn stop(&self) {
        self.task.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    me: i32,
    leader: i32,
    addr: String,
    config: FetcherConfig,
    targets: Arc<Mutex<BTreeMap<Key, Followed>>>,
    wake: Arc<Notify>,
    on_replicated: OnReplicated,
    expiry: LoadExpiry,
) {
    let backoff = Duration::from_millis(config.backoff_ms.max(10));
    let mut conn: Option<BrokerConnection> = None;
    loop {
        let now = Instant::now();
        let (due, next_retry) = {
            let map = targets.lock().expect("targets lock");
            let due: Vec<(Arc<Partition>, i32)> = map
                .values()
                .filter(|f| f.retry_at.is_none_or(|t| t <= now))
                .map(|f| (f.partition.clone(), f.leader_epoch))
                .collect();
            let next_retry = map.values().filter_map(|f| f.retry_at).min();
            (due, next_retry)
        };
        if due.is_empty() {
            match next_retry {
                Some(t) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => wake.notified().await,
            }
            continue;
        }
        if conn.as_ref().is_none_or(|c| c.is_dead()) {
            let timeout = Duration::from_millis(config.wait_max_ms + 10_000);
            match BrokerConnection::open(
                &addr,
                &format!("gregor-replica-{me}"),
                timeout,
                config.response_max_bytes + (1 << 20),
            )
            .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(leader, %addr, error = %e, "replica fetcher cannot connect");
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            }
        }
        let c = conn.as_ref().expect("connected");
        let req = request(me, &due, &config);
        let resp: FetchResponse = match c.send_version(&req, REPLICA_FETCH_VERSION).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(leader, %addr, error = %e, "replica fetch failed");
                conn = None;
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        if resp.error_code != 0 {
            tracing::debug!(leader, code = resp.error_code, "replica fetch refused");
            tokio::time::sleep(backoff).await;
            continue;
        }
        let mut written = Vec::new();
        let mut failed = Vec::new();
        for t in resp.responses {
            for pd in t.partitions {
                let Some((partition, _)) = due
                    .iter()
                    .find(|(p, _)| p.topic == t.topic.as_str() && p.index == pd.partition_index)
                else {
                    continue;
                };
                match handle(partition, &pd, expiry).await {
                    Ok(true) => written.push(partition.clone()),
                    Ok(false) => {}
                    Err(why) => {
                        tracing::debug!(topic = %partition.topic, partition = partition.index, leader, %why, "replica fetch of a partition failed");
                        failed.push((partition.topic.clone(), partition.index));
                    }
                }
            }
        }
        if !failed.is_empty() {
            let at = Instant::now() + backoff;
            let mut map = targets.lock().expect("targets lock");
            for key in failed {
                if let Some(f) = map.get_mut(&key) {
                    f.retry_at = Some(at);
                }
            }
        }
        if !written.is_empty() {
            on_replicated(&written);
        }
    }
}

fn request(me: i32, due: &[(Arc<Partition>, i32)], config: &FetcherConfig) -> FetchRequest {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (p, epoch) in due {
        let latest = p.latest_log_epoch();
        topics.entry(p.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(p.index)
                .with_current_leader_epoch(*epoch)
                .with_fetch_offset(p.log_end_offset())
                .with_last_fetched_epoch(latest)
                .with_log_start_offset(p.log_start_offset())
                .with_partition_max_bytes(i32::try_from(config.max_bytes).unwrap_or(i32::MAX)),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(i32::try_from(config.wait_max_ms).unwrap_or(i32::MAX))
        .with_min_bytes(1)
        .with_max_bytes(i32::try_from(config.response_max_bytes).unwrap_or(i32::MAX))
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// Applies one partition's part of a fetch response: Ok(true) when records were appended.
async fn handle(
    partition: &Arc<Partition>,
    pd: &kafka_protocol::messages::fetch_response::PartitionData,
    expiry: LoadExpiry,
) -> Result<bool, String> {
    if pd.error_code == ResponseError::OffsetOutOfRange.code()
        && pd.log_start_offset > partition.log_end_offset()
    {
        // The leader no longer has what this follower needs next (retention or
        // DeleteRecords moved its log start past our end): start again at its start.
        let (p, start) = (partition.clone(), pd.log_start_offset);
        tokio::task::spawn_blocking(move || p.truncate_fully_and_start_at(start, expiry))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("full truncation to {start} failed: {e:#}"))?;
        return Ok(false);
    }
    if pd.error_code != 0 {
        let e = ResponseError::try_from_code(pd.error_code)
            .map_or_else(|| format!("error {}", pd.error_code), |e| format!("{e:?}"));
        return Err(e);
    }
    if pd.diverging_epoch.epoch >= 0 || pd.diverging_epoch.end_offset >= 0 {
        let (epoch, leader_end) = (pd.diverging_epoch.epoch, pd.diverging_epoch.end_offset);
        let (_, own_end) = partition.end_offset_for_leader_epoch(epoch);
        let target = if leader_end < 0 {
            partition.high_watermark()
        } else {
            leader_end.min(own_end)
        };
        let p = partition.clone();
        tokio::task::spawn_blocking(move || p.truncate_to(target, expiry))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("truncation to {target} failed: {e:#}"))?;
        return Ok(false);
    }
    let mut appended = false;
    if let Some(records) = pd.records.as_ref().filter(|r| !r.is_empty()) {
        match append(partition, records) {
            Ok(a) => appended = a,
            Err(LogError::OffsetMismatch { expected, found })
                if found < expected && partition.log_start_offset() == expected =>
            {
                // An empty log started at the leader's log start, which lies inside a batch
                // (DeleteRecords does not split batches): start at that batch's base
                // instead, then follow the leader's start again below.
                let p = partition.clone();
                tokio::task::spawn_blocking(move || p.truncate_fully_and_start_at(found, expiry))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("full truncation to {found} failed: {e:#}"))?;
                appended = append(partition, records).map_err(|e| e.to_string())?;
            }
            Err(LogError::OffsetMismatch { expected, found }) => {
                tracing::debug!(topic = %partition.topic, partition = partition.index, expected, found, "replicated batches not at the log end; fetching again");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    partition.set_follower_high_watermark(pd.high_watermark);
    if pd.log_start_offset > partition.log_start_offset() {
        partition
            .follow_log_start(pd.log_start_offset)
            .map_err(|e| format!("moving the log start to {}: {e}", pd.log_start_offset))?;
    }
    Ok(appended)
}

/// Appends the whole batches of `records` (a fetch may end in a partial batch: dropped).
fn append(partition: &Partition, records: &Bytes) -> Result<bool, LogError> {
    let whole = whole_batches_len(records);
    if whole == 0 {
        return Ok(false);
    }
    Ok(partition.append_replicated(&records[..whole])?.is_some())
}

/// Length of the leading whole v2 batches of `data`.
fn whole_batches_len(data: &[u8]) -> usize {
    let mut pos = 0;
    while data.len() - pos >= 12 {
        let len = i32::from_be_bytes(data[pos + 8..pos + 12].try_into().expect("4 bytes"));
        if len <= 0 {
            break;
        }
        let size = 12 + len as usize;
        if data.len() - pos < size {
            break;
        }
        pos += size;
    }
    pos
}
