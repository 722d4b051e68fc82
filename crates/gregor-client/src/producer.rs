//! The producer: batching, partitioning, compression, acks, retries.
//!
//! Records go through a channel to one background task that owns the accumulator. It
//! partitions each record (explicit partition, else murmur2 of the key like the Java client
//! and librdkafka's `murmur2_random`, else sticky), appends it to the partition's open batch,
//! seals a batch when it reaches `batch_size` bytes or is `linger` old (or on flush), and
//! sends sealed batches to partition leaders: one `Produce` request per broker carries the
//! next batch of every ready partition led by it, and several requests may be in flight on a
//! connection at once.
//!
//! **Ordering.** At most one batch per partition is in flight. A batch that fails with a
//! retriable error goes back to the head of its partition's queue (after a metadata refresh
//! and `retry_backoff`), so retries never reorder records within a partition.
//!
//! **Idempotence.** On by default, but only used when the broker advertises
//! `InitProducerId` and `acks` is `all`: then each batch carries the producer id, epoch and
//! sequence numbers, so a retried batch that had in fact been written is not duplicated.
//! Brokers without `InitProducerId` (Gregor today) get plain batches; retries may then
//! duplicate a batch whose response was lost, never reorder. [`Producer::idempotent`] tells
//! which mode is in use.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, ProduceRequest, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::partitioner::{partition_for_key, StickyPartitioner};
use crate::records::{encode_batch, Compression, Header, OutRecord, ProducerIdentity};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// 0 (no response), 1 (leader) or -1 (all in-sync replicas). Default -1.
    pub acks: i16,
    /// How long a batch may wait for more records. Default 5 ms.
    pub linger: Duration,
    /// A batch is sealed once its records reach this many bytes. Default 1 MB.
    pub batch_size: usize,
    /// Compression codec. Default none.
    pub compression: Compression,
    /// Retries of a batch on retriable errors. Default `u32::MAX` (bounded by
    /// `delivery_timeout`).
    pub retries: u32,
    /// Pause before a retry. Default 100 ms.
    pub retry_backoff: Duration,
    /// A record that is not acknowledged within this time fails. Default 120 s.
    pub delivery_timeout: Duration,
    /// Broker-side timeout for acks. Default 30 s.
    pub request_timeout_ms: i32,
    /// Use idempotence when the broker supports it. Default true.
    pub idempotence: bool,
    /// Produce requests in flight per broker connection. Default 5.
    pub max_in_flight: usize,
    /// Records buffered between `send` and the background task. Default 100 000.
    pub queue_records: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_size: 1_000_000,
            compression: Compression::None,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            request_timeout_ms: 30_000,
            idempotence: true,
            max_in_flight: 5,
            queue_records: 100_000,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: String,
    /// Explicit partition; otherwise the partitioner picks one.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers (keys may repeat).
    pub headers: Vec<Header>,
    /// Timestamp; defaults to now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and no key.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Set the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Set the partition.
    pub fn with_partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }

    /// Add a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (-1 with acks=0 or when the broker reported a duplicate).
    pub offset: i64,
    /// Timestamp used (create time, or the broker's log-append time).
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or has failed).
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(r) => r,
            Err(_) => Err(Error::Closed),
        })
    }
}

type Waiter = oneshot::Sender<Result<RecordMetadata>>;

enum Msg {
    Record(ProducerRecord, Waiter),
    Flush(oneshot::Sender<()>),
}

/// An asynchronous producer; cheap to clone (clones share the background task).
///
/// ```no_run
/// # async fn f() -> gregor_client::Result<()> {
/// use gregor_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord, Compression};
/// let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
/// let config = ProducerConfig { compression: Compression::Lz4, acks: 1, ..Default::default() };
/// let producer = Producer::new(client, config).await?;
/// let mut acks = Vec::new();
/// for i in 0..1000 {
///     acks.push(producer.send(ProducerRecord::new("events", format!("v{i}")).with_key(format!("k{i}"))).await?);
/// }
/// for a in acks {
///     let md = a.await?;
///     assert!(md.offset >= 0);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    idempotent: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
}

impl Producer {
    /// Start a producer on `client`. Asks for a producer id when idempotence applies.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        if config.batch_size == 0 || config.max_in_flight == 0 {
            return Err(Error::Config(
                "batch_size and max_in_flight must be positive".into(),
            ));
        }
        if !matches!(config.acks, -1..=1) {
            return Err(Error::Config(format!(
                "acks must be 0, 1 or -1 (all), not {}",
                config.acks
            )));
        }
        let mut identity = None;
        if config.idempotence && config.acks == -1 {
            if client.api_versions(ApiKey::InitProducerId).await?.is_some() {
                let resp = client
                    .send_any(
                        // Default has transactional_id Some(""): an idempotent producer sends null.
                        &InitProducerIdRequest::default()
                            .with_transactional_id(None)
                            .with_transaction_timeout_ms(-1)
                            .with_producer_id(ProducerId(-1))
                            .with_producer_epoch(-1),
                    )
                    .await?;
                crate::error::check(resp.error_code, || "InitProducerId".into())?;
                identity = Some((resp.producer_id.0, resp.producer_epoch));
            } else {
                tracing::debug!("broker lacks InitProducerId: producing without idempotence");
            }
        }
        let idempotent = Arc::new(AtomicBool::new(identity.is_some()));
        let retries = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(config.queue_records.max(1));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let task = Task {
            client,
            config,
            identity,
            parts: HashMap::new(),
            sticky: StickyPartitioner::default(),
            broker_in_flight: HashMap::new(),
            flushers: Vec::new(),
            done_tx,
            in_flight_total: 0,
            retries: retries.clone(),
        };
        tokio::spawn(task.run(rx, done_rx));
        Ok(Producer {
            tx,
            idempotent,
            retries,
        })
    }

    /// How many times a batch has been retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Whether batches carry a producer id and sequence numbers.
    pub fn idempotent(&self) -> bool {
        self.idempotent.load(Ordering::Relaxed)
    }

    /// Queue a record; waits only if the queue is full. The returned future resolves when
    /// the record is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(DeliveryFuture { rx })
    }

    /// Send and wait for the acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record).await?.await
    }

    /// Send everything queued now and wait until all of it is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

struct Pending {
    record: OutRecord,
    waiter: Waiter,
}

struct Sealed {
    data: Bytes,
    waiters: Vec<(Waiter, i64)>,
    created: Instant,
    attempts: u32,
}

#[derive(Default)]
struct PartState {
    open: Vec<Pending>,
    open_bytes: usize,
    open_since: Option<Instant>,
    sealed: VecDeque<Sealed>,
    in_flight: bool,
    backoff_until: Option<Instant>,
    next_seq: i32,
}

type Key = (Arc<str>, i32);

struct Completion {
    key: Key,
    batch: Sealed,
    broker: i32,
    result: Result<(i64, i64)>,
}

struct Task {
    client: Client,
    config: ProducerConfig,
    identity: Option<(i64, i16)>,
    parts: HashMap<Key, PartState>,
    sticky: StickyPartitioner,
    broker_in_flight: HashMap<i32, usize>,
    flushers: Vec<oneshot::Sender<()>>,
    done_tx: mpsc::UnboundedSender<Completion>,
    in_flight_total: usize,
    retries: Arc<AtomicU64>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut done_rx: mpsc::UnboundedReceiver<Completion>,
    ) {
        let mut topics: HashMap<String, (Arc<str>, i32)> = HashMap::new();
        let mut closed = false;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                msg = rx.recv(), if !closed => {
                    match msg {
                        None => closed = true,
                        Some(m) => {
                            self.handle(m, &mut topics).await;
                            let mut n = 0;
                            while n < 10_000 {
                                match rx.try_recv() {
                                    Ok(m) => self.handle(m, &mut topics).await,
                                    Err(_) => break,
                                }
                                n += 1;
                            }
                        }
                    }
                }
                Some(c) = done_rx.recv() => {
                    self.complete(c).await;
                    while let Ok(c) = done_rx.try_recv() {
                        self.complete(c).await;
                    }
                }
                _ = sleep_until(deadline) => {}
            }
            if closed && self.flushers.is_empty() {
                self.flushers.push(oneshot::channel().0);
            }
            self.seal_ready();
            self.dispatch().await;
            if !self.flushers.is_empty() && self.is_idle() {
                for f in self.flushers.drain(..) {
                    let _ = f.send(());
                }
                if closed {
                    return;
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight_total == 0
            && self
                .parts
                .values()
                .all(|p| p.open.is_empty() && p.sealed.is_empty())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        for p in self.parts.values() {
            if let Some(s) = p.open_since {
                let t = s + self.config.linger;
                d = Some(d.map_or(t, |x| x.min(t)));
            }
            if let (Some(b), false) = (p.backoff_until, p.sealed.is_empty()) {
                d = Some(d.map_or(b, |x| x.min(b)));
            }
        }
        d
    }

    async fn handle(&mut self, msg: Msg, topics: &mut HashMap<String, (Arc<str>, i32)>) {
        let (rec, waiter) = match msg {
            Msg::Flush(f) => {
                self.flushers.push(f);
                return;
            }
            Msg::Record(r, w) => (r, w),
        };
        let (name, count) = match topics.get(&rec.topic) {
            Some(t) => t.clone(),
            None => match self.client.topic_metadata(&rec.topic).await {
                Ok(t) => {
                    let v = (
                        Arc::<str>::from(rec.topic.as_str()),
                        t.partitions.len() as i32,
                    );
                    topics.insert(rec.topic.clone(), v.clone());
                    v
                }
                Err(e) => {
                    let _ = waiter.send(Err(e));
                    return;
                }
            },
        };
        if count == 0 {
            let _ = waiter.send(Err(Error::UnknownTopic(rec.topic)));
            return;
        }
        let partition = match (rec.partition, &rec.key) {
            (Some(p), _) if p < 0 || p >= count => {
                let _ = waiter.send(Err(Error::UnknownPartition {
                    topic: rec.topic,
                    partition: p,
                }));
                return;
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => self.sticky.partition(&name, count),
        };
        let record = OutRecord {
            key: rec.key,
            value: rec.value,
            headers: rec.headers,
            timestamp: rec.timestamp.unwrap_or_else(crate::now_ms),
        };
        let size = record.size_estimate();
        let key = (name.clone(), partition);
        let part = self.parts.entry(key).or_default();
        if part.open.is_empty() {
            part.open_since = Some(Instant::now());
        }
        part.open_bytes += size;
        part.open.push(Pending { record, waiter });
        if part.open_bytes >= self.config.batch_size {
            let unkeyed_sticky = true;
            if unkeyed_sticky {
                self.sticky.batch_sealed(&name, partition, count);
            }
            let key = (name, partition);
            self.seal(&key);
        }
    }

    fn seal(&mut self, key: &Key) {
        let compression = self.config.compression;
        let identity = self.identity;
        let Some(part) = self.parts.get_mut(key) else {
            return;
        };
        if part.open.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut part.open);
        part.open_bytes = 0;
        let created = part.open_since.take().unwrap_or_else(Instant::now);
        let (records, waiters): (Vec<OutRecord>, Vec<(Waiter, i64)>) = pending
            .into_iter()
            .map(|p| {
                let ts = p.record.timestamp;
                (p.record, (p.waiter, ts))
            })
            .unzip();
        let producer = match identity {
            Some((pid, epoch)) => {
                let seq = part.next_seq;
                part.next_seq = part.next_seq.wrapping_add(records.len() as i32) & i32::MAX;
                ProducerIdentity {
                    producer_id: pid,
                    producer_epoch: epoch,
                    base_sequence: seq,
                }
            }
            None => ProducerIdentity::default(),
        };
        match encode_batch(&records, compression, producer) {
            Ok(data) => part.sealed.push_back(Sealed {
                data,
                waiters,
                created,
                attempts: 0,
            }),
            Err(e) => {
                let msg = e.to_string();
                for (w, _) in waiters {
                    let _ = w.send(Err(Error::Protocol(msg.clone())));
                }
            }
        }
    }

    fn seal_ready(&mut self) {
        let now = Instant::now();
        let flushing = !self.flushers.is_empty();
        let linger = self.config.linger;
        let ready: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| {
                !p.open.is_empty()
                    && (flushing
                        || p.open_since.is_some_and(|s| s + linger <= now)
                        || p.open_bytes >= self.config.batch_size)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in ready {
            self.seal(&k);
        }
    }

    async fn dispatch(&mut self) {
        let now = Instant::now();
        // Partitions with a sendable batch, grouped by leader.
        let mut by_leader: HashMap<i32, Vec<Key>> = HashMap::new();
        let keys: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, p)| {
                !p.in_flight && !p.sealed.is_empty() && p.backoff_until.is_none_or(|b| b <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            // Expire batches older than the delivery timeout.
            let expired = {
                let p = self.parts.get_mut(&key).unwrap();
                let head = p.sealed.front().unwrap();
                head.created.elapsed() > self.config.delivery_timeout
            };
            if expired {
                let p = self.parts.get_mut(&key).unwrap();
                let b = p.sealed.pop_front().unwrap();
                fail(
                    b,
                    &Error::Config(format!(
                        "delivery timeout ({:?}) expired for {}/{}",
                        self.config.delivery_timeout, key.0, key.1
                    )),
                );
                continue;
            }
            match self.client.leader(&key.0, key.1).await {
                Ok(l) => by_leader.entry(l).or_default().push(key),
                Err(e) => {
                    if e.is_retriable() {
                        let p = self.parts.get_mut(&key).unwrap();
                        p.backoff_until = Some(now + self.config.retry_backoff);
                        let _ = self
                            .client
                            .refresh_metadata(Some(&[key.0.to_string()]))
                            .await;
                    } else {
                        let p = self.parts.get_mut(&key).unwrap();
                        while let Some(b) = p.sealed.pop_front() {
                            fail(b, &e);
                        }
                    }
                }
            }
        }
        for (leader, keys) in by_leader {
            let in_flight = self.broker_in_flight.entry(leader).or_default();
            if *in_flight >= self.config.max_in_flight {
                continue;
            }
            *in_flight += 1;
            self.in_flight_total += 1;
            let mut batches = Vec::with_capacity(keys.len());
            for key in keys {
                let p = self.parts.get_mut(&key).unwrap();
                p.in_flight = true;
                p.backoff_until = None;
                let mut b = p.sealed.pop_front().unwrap();
                b.attempts += 1;
                batches.push((key, b));
            }
            let client = self.client.clone();
            let acks = self.config.acks;
            let timeout_ms = self.config.request_timeout_ms;
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                send_request(client, leader, acks, timeout_ms, batches, done).await;
            });
        }
    }

    async fn complete(&mut self, c: Completion) {
        if let Some(n) = self.broker_in_flight.get_mut(&c.broker) {
            *n = n.saturating_sub(1);
            self.in_flight_total = self.in_flight_total.saturating_sub(1);
        }
        let part = self.parts.get_mut(&c.key).unwrap();
        part.in_flight = false;
        match c.result {
            Ok((base, log_append)) => {
                for (i, (w, ts)) in c.batch.waiters.into_iter().enumerate() {
                    let _ = w.send(Ok(RecordMetadata {
                        topic: c.key.0.to_string(),
                        partition: c.key.1,
                        offset: if base >= 0 { base + i as i64 } else { -1 },
                        timestamp: if log_append >= 0 { log_append } else { ts },
                    }));
                }
            }
            Err(e)
                if e.is_retriable()
                    && c.batch.attempts <= self.config.retries
                    && c.batch.created.elapsed() < self.config.delivery_timeout =>
            {
                tracing::debug!(topic = %c.key.0, partition = c.key.1, error = %e, attempt = c.batch.attempts, "retrying batch");
                self.retries.fetch_add(1, Ordering::Relaxed);
                part.sealed.push_front(c.batch);
                part.backoff_until = Some(Instant::now() + self.config.retry_backoff);
                let _ = self
                    .client
                    .refresh_metadata(Some(&[c.key.0.to_string()]))
                    .await;
            }
            Err(e) => fail(c.batch, &e),
        }
    }
}

/// error code, base offset, log append time, error message
type PartitionOutcome = (i16, i64, i64, Option<String>);

fn fail(b: Sealed, e: &Error) {
    let msg = e.to_string();
    let code = e.code();
    for (w, _) in b.waiters {
        let err = match code {
            Some(c) => Error::kafka(c, msg.clone(), None),
            None => Error::Protocol(msg.clone()),
        };
        let _ = w.send(Err(err));
    }
}

async fn sleep_until(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn send_request(
    client: Client,
    leader: i32,
    acks: i16,
    timeout_ms: i32,
    batches: Vec<(Key, Sealed)>,
    done: mpsc::UnboundedSender<Completion>,
) {
    let mut topic_data: Vec<TopicProduceData> = Vec::new();
    for ((topic, partition), b) in &batches {
        let pd = PartitionProduceData::default()
            .with_index(*partition)
            .with_records(Some(b.data.clone()));
        match topic_data.iter_mut().find(|t| *t.name.0 == **topic) {
            Some(t) => t.partition_data.push(pd),
            None => topic_data.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![pd]),
            ),
        }
    }
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topic_data);
    let n = batches.len();
    let send_result: Result<Option<_>> = async {
        let conn = client.conn(leader).await?;
        if acks == 0 {
            conn.send_no_response(&req).await?;
            Ok(None)
        } else {
            Ok(Some(conn.send(&req).await?))
        }
    }
    .await;
    // Only one Completion per batch decrements the per-broker counter: the first.
    let mut first = true;
    let mut finish = |key: Key, batch: Sealed, result: Result<(i64, i64)>| {
        let broker = if first { leader } else { i32::MIN };
        first = false;
        let _ = done.send(Completion {
            key,
            batch,
            broker,
            result,
        });
    };
    match send_result {
        Err(e) => {
            let msg = e.to_string();
            let retriable = e.is_retriable();
            for (key, batch) in batches {
                let err = if retriable {
                    Error::Disconnected(msg.clone())
                } else {
                    Error::Protocol(msg.clone())
                };
                finish(key, batch, Err(err));
            }
        }
        Ok(None) => {
            for (key, batch) in batches {
                finish(key, batch, Ok((-1, -1)));
            }
        }
        Ok(Some(resp)) => {
            let mut results: HashMap<(String, i32), PartitionOutcome> = HashMap::with_capacity(n);
            for t in resp.responses {
                for p in t.partition_responses {
                    results.insert(
                        (t.name.0.to_string(), p.index),
                        (
                            p.error_code,
                            p.base_offset,
                            p.log_append_time_ms,
                            p.error_message.map(|m| m.to_string()),
                        ),
                    );
                }
            }
            for (key, batch) in batches {
                let r = results.remove(&(key.0.to_string(), key.1));
                let result = match r {
                    None => Err(Error::Protocol(format!(
                        "no produce response for {}/{}",
                        key.0, key.1
                    ))),
                    Some((0, base, la, _)) => Ok((base, la)),
                    // DUPLICATE_SEQUENCE_NUMBER: already written by an earlier attempt.
                    Some((46, _, _, _)) => Ok((-1, -1)),
                    Some((code, _, _, msg)) => Err(Error::kafka(
                        code,
                        format!("producing to {}/{}", key.0, key.1),
                        msg,
                    )),
                };
                finish(key, batch, result);
            }
        }
    }
}
