//! The consumer: manual assignment or group subscription, seek, fetch loop, commits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::admin::{Admin, OffsetSpec};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::group::{Assignor, Membership, Tp};
use crate::records::{decode_batches_with_next, ConsumerRecord};

/// Where to start when there is no committed (or a no longer valid) position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// Fail.
    None,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Group id (needed for `subscribe` and commits).
    pub group_id: Option<String>,
    /// Reset policy. Default earliest.
    pub auto_offset_reset: OffsetReset,
    /// Commit positions automatically in `poll` (and on close). Default true.
    pub enable_auto_commit: bool,
    /// How often auto-commit commits. Default 5 s.
    pub auto_commit_interval: Duration,
    /// Group session timeout. Default 10 s.
    pub session_timeout: Duration,
    /// Assignor for `subscribe`. Default range.
    pub assignor: Assignor,
    /// Longest time the broker holds a fetch waiting for data. Default 500 ms.
    pub fetch_max_wait: Duration,
    /// Bytes the broker waits for. Default 1.
    pub fetch_min_bytes: i32,
    /// Bytes per fetch response. Default 50 MiB.
    pub fetch_max_bytes: i32,
    /// Bytes per partition per fetch. Default 1 MiB.
    pub max_partition_fetch_bytes: i32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            assignor: Assignor::Range,
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 << 20,
            max_partition_fetch_bytes: 1 << 20,
        }
    }
}

/// A consumer.
///
/// Manual assignment:
/// ```no_run
/// # async fn f() -> gregor_client::Result<()> {
/// use gregor_client::{Client, ClientConfig, Consumer, ConsumerConfig};
/// let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
/// let mut consumer = Consumer::new(client, ConsumerConfig::default());
/// consumer.assign(&[("events".to_string(), 0)]).await?;
/// consumer.seek("events", 0, 42);
/// for r in consumer.poll(std::time::Duration::from_secs(1)).await? {
///     println!("{} {:?}", r.offset, r.value);
/// }
/// # Ok(()) }
/// ```
///
/// Group subscription (needs a broker with group coordination):
/// ```no_run
/// # async fn f() -> gregor_client::Result<()> {
/// use gregor_client::{Client, ClientConfig, Consumer, ConsumerConfig};
/// let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
/// let config = ConsumerConfig { group_id: Some("billing".into()), ..Default::default() };
/// let mut consumer = Consumer::new(client, config);
/// consumer.subscribe(&["events".to_string()]).await?;
/// let batch = consumer.poll(std::time::Duration::from_secs(1)).await?;
/// consumer.commit().await?;
/// consumer.close().await?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    client: Client,
    admin: Admin,
    config: ConsumerConfig,
    /// Next offset to fetch per assigned partition; `None` until resolved.
    positions: BTreeMap<Tp, Option<i64>>,
    /// Last known high watermark per partition.
    high_watermarks: BTreeMap<Tp, i64>,
    buffer: VecDeque<ConsumerRecord>,
    subscription: Vec<String>,
    membership: Option<Membership>,
    last_commit: Instant,
    committed: BTreeMap<Tp, i64>,
    /// This consumer's own connections (`<tag>-fetch`, `<tag>-group`): brokers answer one
    /// connection's requests in order, so consumers sharing a `Client` must not share the
    /// connections they long-poll or rebalance on.
    tag: String,
}

static NEXT_CONSUMER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            admin: Admin::new(client.clone()),
            client,
            config,
            positions: BTreeMap::new(),
            high_watermarks: BTreeMap::new(),
            buffer: VecDeque::new(),
            subscription: Vec::new(),
            membership: None,
            last_commit: Instant::now(),
            committed: BTreeMap::new(),
            tag: format!(
                "consumer{}",
                NEXT_CONSUMER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        }
    }

    /// Consume exactly these partitions (replaces any previous assignment). Positions start
    /// at the group's committed offsets if a group is configured, else at the reset policy.
    pub async fn assign(&mut self, tps: &[Tp]) -> Result<()> {
        for (t, p) in tps {
            let md = self.client.topic_metadata(t).await?;
            if !md.partitions.iter().any(|x| x.id == *p) {
                return Err(Error::UnknownPartition {
                    topic: t.clone(),
                    partition: *p,
                });
            }
        }
        self.positions = tps.iter().map(|tp| (tp.clone(), None)).collect();
        self.buffer.clear();
        Ok(())
    }

    /// Join the consumer group and consume the partitions it assigns.
    pub async fn subscribe(&mut self, topics: &[String]) -> Result<()> {
        let group = self
            .config
            .group_id
            .clone()
            .ok_or_else(|| Error::Config("subscribe needs a group id".into()))?;
        for t in topics {
            self.client.topic_metadata(t).await?;
        }
        self.subscription = topics.to_vec();
        self.membership = Some(Membership::new(
            &group,
            self.config.assignor,
            self.config.session_timeout,
            format!("{}-group", self.tag),
        ));
        self.rejoin().await
    }

    async fn rejoin(&mut self) -> Result<()> {
        let Some(mut m) = self.membership.take() else {
            return Ok(());
        };
        // Commit what we have before giving partitions up.
        if self.config.enable_auto_commit && m.generation >= 0 {
            let offs = self.consumed_offsets();
            if !offs.is_empty() {
                if let Err(e) = crate::admin::commit_offsets(
                    &self.client,
                    &m.group,
                    m.generation,
                    &m.member_id,
                    &offs,
                    &format!("{}-group", self.tag),
                )
                .await
                {
                    tracing::debug!(error = %e, "commit before rebalance failed");
                }
            }
        }
        let owned: BTreeSet<Tp> = self.positions.keys().cloned().collect();
        let result = m.join(&self.client, &self.subscription, &owned).await;
        self.membership = Some(m);
        let assigned = result?;
        // Keep positions of partitions we keep; new ones start from committed offsets.
        self.positions.retain(|tp, _| assigned.contains(tp));
        self.buffer
            .retain(|r| assigned.contains(&(r.topic.clone(), r.partition)));
        for tp in assigned {
            self.positions.entry(tp).or_insert(None);
        }
        Ok(())
    }

    /// Current assignment.
    pub fn assignment(&self) -> Vec<Tp> {
        self.positions.keys().cloned().collect()
    }

    /// Member id in the group (empty without a group).
    pub fn member_id(&self) -> String {
        self.membership
            .as_ref()
            .map(|m| m.member_id.clone())
            .unwrap_or_default()
    }

    /// Set the next offset to read of an assigned partition.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        let tp = (topic.to_string(), partition);
        self.buffer
            .retain(|r| !(r.topic == topic && r.partition == partition));
        if let Some(p) = self.positions.get_mut(&tp) {
            *p = Some(offset);
        }
    }

    /// Seek every assigned partition to its earliest or latest offset.
    pub async fn seek_to(&mut self, spec: OffsetSpec) -> Result<()> {
        let tps = self.assignment();
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p) in tps {
            by_topic.entry(t).or_default().push(p);
        }
        for (t, ps) in by_topic {
            for (p, o) in self.admin.list_offsets(&t, &ps, spec).await? {
                self.seek(&t, p, o);
            }
        }
        Ok(())
    }

    /// The next offset to be returned per partition (resolved ones only).
    pub fn positions(&self) -> BTreeMap<Tp, i64> {
        self.positions
            .iter()
            .filter_map(|(tp, o)| o.map(|o| (tp.clone(), o)))
            .collect()
    }

    /// High watermarks seen in the last fetches.
    pub fn high_watermarks(&self) -> &BTreeMap<Tp, i64> {
        &self.high_watermarks
    }

    fn consumed_offsets(&self) -> BTreeMap<Tp, i64> {
        // Positions minus what is still buffered (not yet handed to the application).
        let mut offs = self.positions();
        for r in &self.buffer {
            let tp = (r.topic.clone(), r.partition);
            if let Some(o) = offs.get_mut(&tp) {
                *o = (*o).min(r.offset);
            }
        }
        offs
    }

    /// Commit the offsets of everything `poll` has returned.
    pub async fn commit(&mut self) -> Result<()> {
        let offs = self.consumed_offsets();
        self.commit_offsets(&offs).await
    }

    /// Commit explicit offsets (the next offset to read, as Kafka defines it).
    pub async fn commit_offsets(&mut self, offsets: &BTreeMap<Tp, i64>) -> Result<()> {
        let group = self
            .config
            .group_id
            .clone()
            .ok_or_else(|| Error::Config("commit needs a group id".into()))?;
        let (generation, member) = self
            .membership
            .as_ref()
            .map(|m| (m.generation, m.member_id.clone()))
            .unwrap_or((-1, String::new()));
        let changed: BTreeMap<Tp, i64> = offsets
            .iter()
            .filter(|(tp, o)| self.committed.get(*tp) != Some(*o))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        crate::admin::commit_offsets(
            &self.client,
            &group,
            generation,
            &member,
            &changed,
            &format!("{}-group", self.tag),
        )
        .await?;
        self.committed.extend(changed);
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn resolve_positions(&mut self) -> Result<()> {
        let unresolved: Vec<Tp> = self
            .positions
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if unresolved.is_empty() {
            return Ok(());
        }
        if let Some(g) = &self.config.group_id {
            let topics: Vec<String> = unresolved
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let committed = crate::admin::fetch_offsets(
                &self.client,
                g,
                Some(&topics),
                &format!("{}-group", self.tag),
            )
            .await?;
            for tp in &unresolved {
                if let Some(o) = committed.get(tp) {
                    self.positions.insert(tp.clone(), Some(*o));
                    self.committed.insert(tp.clone(), *o);
                }
            }
        }
        let unresolved: Vec<Tp> = unresolved
            .into_iter()
            .filter(|tp| self.positions.get(tp) == Some(&None))
            .collect();
        for tp in unresolved {
            self.reset(&tp).await?;
        }
        Ok(())
    }

    async fn reset(&mut self, tp: &Tp) -> Result<()> {
        let spec = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OffsetSpec::Earliest,
            OffsetReset::Latest => OffsetSpec::Latest,
            OffsetReset::None => {
                return Err(Error::Config(format!(
                    "no valid offset for {}/{} and auto_offset_reset is none",
                    tp.0, tp.1
                )))
            }
        };
        let o = self.admin.list_offsets(&tp.0, &[tp.1], spec).await?;
        self.positions.insert(tp.clone(), o.get(&tp.1).copied());
        Ok(())
    }

    /// Return buffered records, or fetch until some arrive or `timeout` passes.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        if self.membership.as_ref().is_some_and(|m| m.needs_rejoin()) {
            self.rejoin().await?;
        }
        if self.config.enable_auto_commit
            && self.config.group_id.is_some()
            && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "auto-commit failed");
            }
        }
        loop {
            if !self.buffer.is_empty() {
                return Ok(self.buffer.drain(..).collect());
            }
            let now = Instant::now();
            if now >= deadline && timeout > Duration::ZERO {
                return Ok(Vec::new());
            }
            if self.positions.is_empty() {
                tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                if self.membership.as_ref().is_some_and(|m| m.needs_rejoin()) {
                    self.rejoin().await?;
                }
                continue;
            }
            let wait = (deadline.saturating_duration_since(now)).min(self.config.fetch_max_wait);
            self.fetch_once(wait).await?;
            if timeout == Duration::ZERO {
                return Ok(self.buffer.drain(..).collect());
            }
        }
    }

    async fn fetch_once(&mut self, wait: Duration) -> Result<()> {
        self.resolve_positions().await?;
        let mut by_leader: BTreeMap<i32, Vec<(Tp, i64)>> = BTreeMap::new();
        for (tp, o) in &self.positions {
            let Some(o) = o else { continue };
            let leader = self.client.leader(&tp.0, tp.1).await?;
            by_leader.entry(leader).or_default().push((tp.clone(), *o));
        }
        let mut futs = Vec::new();
        for (leader, parts) in by_leader {
            let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
            for ((t, p), o) in &parts {
                topics.entry(t.clone()).or_default().push(
                    FetchPartition::default()
                        .with_partition(*p)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(*o)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(self.config.max_partition_fetch_bytes),
                );
            }
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(wait.as_millis() as i32)
                .with_min_bytes(self.config.fetch_min_bytes)
                .with_max_bytes(self.config.fetch_max_bytes)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            FetchTopic::default()
                                .with_topic(TopicName(StrBytes::from_string(t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            let client = self.client.clone();
            let tag = format!("{}-fetch", self.tag);
            futs.push(tokio::spawn(async move {
                client.conn_tagged(leader, &tag).await?.send(&req).await
            }));
        }
        let mut refresh = false;
        for f in futs {
            let resp = f
                .await
                .map_err(|e| Error::Protocol(format!("fetch task: {e}")))?;
            let resp = match resp {
                Ok(r) => r,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed; will retry");
                    refresh = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if resp.error_code != 0 {
                return Err(Error::kafka(resp.error_code, "fetch", None));
            }
            for t in resp.responses {
                let topic = t.topic.0.to_string();
                for p in t.partitions {
                    let tp = (topic.clone(), p.partition_index);
                    match p.error_code {
                        0 => {}
                        1 => {
                            // OFFSET_OUT_OF_RANGE
                            self.reset(&tp).await?;
                            continue;
                        }
                        code => {
                            let e = Error::kafka(code, format!("fetching {}/{}", tp.0, tp.1), None);
                            if e.is_retriable() {
                                refresh = true;
                                continue;
                            }
                            return Err(e);
                        }
                    }
                    self.high_watermarks.insert(tp.clone(), p.high_watermark);
                    let Some(pos) = self.positions.get(&tp).copied().flatten() else {
                        continue;
                    };
                    let Some(data) = p.records else { continue };
                    let (records, batch_end) = decode_batches_with_next(data)?;
                    // Past control batches and compacted-away offsets too.
                    let mut next = batch_end.unwrap_or(pos).max(pos);
                    for mut r in records {
                        if r.offset < pos {
                            continue; // a batch starts before the requested offset
                        }
                        r.topic = topic.clone();
                        r.partition = p.partition_index;
                        next = next.max(r.offset + 1);
                        self.buffer.push_back(r);
                    }
                    self.positions.insert(tp, Some(next));
                }
            }
        }
        if refresh {
            let topics: Vec<String> = self
                .positions
                .keys()
                .map(|(t, _)| t.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            self.client.refresh_metadata(Some(&topics)).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Commit (with auto-commit) and leave the group.
    pub async fn close(mut self) -> Result<()> {
        let mut result = Ok(());
        if self.config.enable_auto_commit && self.membership.is_some() {
            result = self.commit().await;
        }
        if let Some(mut m) = self.membership.take() {
            m.leave(&self.client).await;
        }
        result
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.client.forget_tagged(&self.tag);
    }
}
