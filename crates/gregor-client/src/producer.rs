//! The producer: batching, partitioning, compression, acks, retries.
//!
//! [`Producer::send`] takes `buffer.memory` bytes for the record (waiting at most
//! `max.block.ms` while earlier records fill it) and hands it through a channel to one
//! background task that owns the accumulator. The task partitions each record (explicit
//! partition, else murmur2 of the key like the Java client and librdkafka's
//! `murmur2_random`, else sticky) and appends it to the partition's open batch, as Kafka's
//! `RecordAccumulator` does: a batch is closed when the next record would take it past
//! `batch.size`, and is *ready* when closed, when it is `linger.ms` old, or on flush. A
//! batch is encoded (and, with idempotence, given its sequence numbers) only when it is
//! drained into a request, so records that arrive while a partition's requests are in flight
//! keep filling its open batch for the next request: with `linger.ms` 0 the batches grow with
//! the load instead of the queue. One `Produce` request per broker carries the next ready
//! batch of every partition it leads that may send; at most
//! `max.in.flight.requests.per.connection` requests are in flight per broker, and a
//! request is queued on the connection before the next is built, so requests reach the
//! broker in the order their batches were drained.
//!
//! **Ordering.** With idempotence, up to `max.in.flight.requests.per.connection` (at most 5,
//! the broker's deduplication window) batches of a partition may be in flight, ordered by
//! their sequence numbers. A partition sends one batch at a time until its first batch is
//! acknowledged (a broker without state for this producer accepts any first sequence) and
//! while it recovers from an error: a failed batch (and every later one, which the broker
//! refuses with OUT_OF_ORDER_SEQUENCE_NUMBER while the gap lasts) goes back to the queue in
//! sequence order with its sequence unchanged, and is re-sent alone after the partition's
//! in-flight batches have completed, so the broker deduplicates any batch that had in fact
//! been written and never sees the sequences out of order. A batch refused for good (e.g.
//! MESSAGE_TOO_LARGE, never written) fails, and the later batches' sequences move down to
//! close the gap before they are re-sent. Without idempotence one batch per partition is in
//! flight, so retries never reorder (but a batch whose acknowledgement was lost may be
//! written twice).
//!
//! **Idempotence.** On by default, but only used when the broker advertises
//! `InitProducerId` and `acks` is `all`. [`Producer::idempotent`] tells which mode is in use.
//! A batch that failed with an unknown outcome (delivery timeout after a lost response) is
//! not re-sequenced: later batches then fail with OUT_OF_ORDER_SEQUENCE_NUMBER if it was
//! not written (Kafka bumps the producer epoch there; this client does not).

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
    ApiKey, InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::client::Client;
use crate::conn::InFlight;
use crate::error::{Error, Result};
use crate::partitioner::{partition_for_key, StickyPartitioner};
use crate::records::{encode_batch, Compression, Header, OutRecord, ProducerIdentity};

/// The broker's idempotence window: batches of a producer it remembers per partition.
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// Producer settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `acks`: 0 (no response), 1 (leader) or -1 (all in-sync replicas). Default -1.
    pub acks: i16,
    /// `linger.ms`: how long a batch may wait for more records before it is ready.
    /// Default 5 ms (Kafka 4.0's). With 0, whatever accumulated while the partition could
    /// not send goes out together.
    pub linger: Duration,
    /// `batch.size`: a batch is closed when the next record would take it past this many
    /// bytes (a larger record gets a batch of its own). Default 1 MB (Kafka: 16384).
    pub batch_size: usize,
    /// `compression.type`. Default none.
    pub compression: Compression,
    /// `retries` of a batch on retriable errors. Default `u32::MAX` (bounded by
    /// `delivery_timeout`).
    pub retries: u32,
    /// `retry.backoff.ms`: pause before a retry. Default 100 ms.
    pub retry_backoff: Duration,
    /// `delivery.timeout.ms`: a record that is not acknowledged within this time fails.
    /// Default 120 s.
    pub delivery_timeout: Duration,
    /// `request.timeout.ms` sent to the broker for acks. Default 30 s.
    pub request_timeout_ms: i32,
    /// `enable.idempotence`, when the broker supports it and acks is all. Default true.
    pub idempotence: bool,
    /// `max.in.flight.requests.per.connection`: Produce requests in flight per broker.
    /// Default 5; at most [`MAX_IN_FLIGHT_IDEMPOTENT`] when idempotence is used.
    pub max_in_flight: usize,
    /// `buffer.memory`: bytes of records (estimated as in [`OutRecord::size_estimate`])
    /// sent but not yet acknowledged or failed. Default 32 MiB.
    pub buffer_memory: usize,
    /// `max.block.ms`: how long [`Producer::send`] waits for `buffer.memory` before it
    /// fails with [`Error::BufferExhausted`]. Default 60 s.
    pub max_block: Duration,
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
            buffer_memory: 32 << 20,
            max_block: Duration::from_secs(60),
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
    Record(ProducerRecord, Waiter, MemoryGrant),
    Flush(oneshot::Sender<()>),
}

/// An asynchronous producer; cheap to clone (clones share the background task and its
/// `buffer.memory`).
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
    tx: mpsc::UnboundedSender<Msg>,
    memory: Memory,
    idempotent: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
}

impl Producer {
    /// Start a producer on `client`. Asks for a producer id when idempotence applies.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        if config.batch_size == 0 || config.max_in_flight == 0 || config.buffer_memory == 0 {
            return Err(Error::Config(
                "batch_size, max_in_flight and buffer_memory must be positive".into(),
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
            if config.max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
                return Err(Error::Config(format!(
                    "max.in.flight.requests.per.connection must be at most \
                     {MAX_IN_FLIGHT_IDEMPOTENT} with idempotence, not {}",
                    config.max_in_flight
                )));
            }
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
        let memory = Memory::new(config.buffer_memory, config.max_block);
        let (tx, rx) = mpsc::unbounded_channel();
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
            memory,
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

    /// Queue a record. Waits only while `buffer.memory` is full (failing with
    /// [`Error::BufferExhausted`] after `max.block.ms`). The returned future resolves when
    /// the record is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let size = crate::records::size_estimate(
            record.key.as_ref(),
            record.value.as_ref(),
            &record.headers,
        );
        let grant = self.memory.acquire(size).await?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, tx, grant))
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
        self.tx.send(Msg::Flush(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

/// `buffer.memory`: a semaphore of bytes, taken by `send` and given back when the record's
/// batch is acknowledged or fails (when its [`MemoryGrant`] drops).
#[derive(Clone)]
struct Memory {
    sem: Arc<Semaphore>,
    total: usize,
    max_block: Duration,
}

impl Memory {
    fn new(total: usize, max_block: Duration) -> Memory {
        let total = total.min(Semaphore::MAX_PERMITS);
        Memory {
            sem: Arc::new(Semaphore::new(total)),
            total,
            max_block,
        }
    }

    async fn acquire(&self, bytes: usize) -> Result<MemoryGrant> {
        if bytes > self.total || bytes > u32::MAX as usize {
            return Err(Error::BufferExhausted(format!(
                "a record of {bytes} bytes is larger than buffer.memory ({} bytes)",
                self.total
            )));
        }
        let n = bytes as u32;
        let permit = match self.sem.try_acquire_many(n) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(self.max_block, self.sem.acquire_many(n))
                .await
                .map_err(|_| {
                    Error::BufferExhausted(format!(
                        "no room for {bytes} bytes in buffer.memory ({} bytes) within \
                         max.block.ms ({:?})",
                        self.total, self.max_block
                    ))
                })?
                .map_err(|_| Error::Closed)?,
        };
        permit.forget();
        Ok(MemoryGrant {
            sem: self.sem.clone(),
            bytes,
        })
    }
}

/// Bytes of `buffer.memory` held until dropped.
struct MemoryGrant {
    sem: Arc<Semaphore>,
    bytes: usize,
}

impl MemoryGrant {
    fn absorb(&mut self, mut other: MemoryGrant) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for MemoryGrant {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.sem.add_permits(self.bytes);
        }
    }
}

/// A batch's wire bytes and the sequence of its first record (-1 without idempotence).
struct Encoded {
    data: Bytes,
    base_seq: i32,
}

/// Records of one partition that go out in one batch.
struct Batch {
    records: Vec<OutRecord>,
    waiters: Vec<(Waiter, i64)>,
    bytes: usize,
    created: Instant,
    attempts: u32,
    /// Set when the batch is first drained into a request; a retry sends the same bytes.
    encoded: Option<Encoded>,
    _memory: MemoryGrant,
}

impl Batch {
    fn new(record: OutRecord, waiter: Waiter, bytes: usize, memory: MemoryGrant) -> Batch {
        let ts = record.timestamp;
        Batch {
            records: vec![record],
            waiters: vec![(waiter, ts)],
            bytes,
            created: Instant::now(),
            attempts: 0,
            encoded: None,
            _memory: memory,
        }
    }

    fn push(&mut self, record: OutRecord, waiter: Waiter, bytes: usize, memory: MemoryGrant) {
        self.waiters.push((waiter, record.timestamp));
        self.records.push(record);
        self.bytes += bytes;
        self._memory.absorb(memory);
    }

    fn count(&self) -> i32 {
        self.records.len() as i32
    }

    fn seq(&self) -> i32 {
        self.encoded.as_ref().map_or(-1, |e| e.base_seq)
    }

    fn encode(
        &mut self,
        identity: Option<(i64, i16)>,
        base_seq: i32,
        compression: Compression,
    ) -> Result<()> {
        let producer = match identity {
            Some((producer_id, producer_epoch)) => ProducerIdentity {
                producer_id,
                producer_epoch,
                base_sequence: base_seq,
            },
            None => ProducerIdentity::default(),
        };
        let data = encode_batch(&self.records, compression, producer)?;
        self.encoded = Some(Encoded {
            data,
            base_seq: if identity.is_some() { base_seq } else { -1 },
        });
        Ok(())
    }
}

/// One partition's accumulator: the open batch, closed and retried batches waiting to be
/// sent, and the sequences in flight. Sequence numbers are compared without wrap-around
/// (2^31 records per partition and producer).
#[derive(Default)]
struct PartState {
    /// Takes records until the next would take it past `batch.size`.
    open: Option<Batch>,
    /// Closed batches in send order: retried batches (in sequence order) first.
    queue: VecDeque<Batch>,
    /// Base sequences (-1 without idempotence) of the batches in flight.
    in_flight: Vec<i32>,
    backoff_until: Option<Instant>,
    next_seq: i32,
    /// A batch of this partition was acknowledged by this producer.
    acked_any: bool,
    /// An error hit a batch: send one batch at a time until the retried ones are through.
    recovering: bool,
    /// `(base sequence, count)` of sequenced batches refused for good (never written): the
    /// later sequences move down by `count` once nothing is in flight.
    shifts: Vec<(i32, i32)>,
}

/// The settings [`PartState`] decides with.
#[derive(Clone, Copy)]
struct Limits {
    linger: Duration,
    max_in_flight: usize,
    idempotent: bool,
}

impl PartState {
    /// Append a record; returns whether a batch was closed for size.
    fn append(
        &mut self,
        record: OutRecord,
        waiter: Waiter,
        memory: MemoryGrant,
        batch_size: usize,
    ) -> bool {
        let size = record.size_estimate();
        let mut closed = false;
        if let Some(open) = self.open.take_if(|b| b.bytes + size > batch_size) {
            self.queue.push_back(open);
            closed = true;
        }
        match &mut self.open {
            Some(b) => b.push(record, waiter, size, memory),
            None => self.open = Some(Batch::new(record, waiter, size, memory)),
        }
        if let Some(open) = self.open.take_if(|b| b.bytes >= batch_size) {
            self.queue.push_back(open);
            closed = true;
        }
        closed
    }

    /// Whether a batch is ready to go (Kafka's `RecordAccumulator.ready`): a closed or
    /// retried batch, or an open one that lingered long enough (or everything, on flush).
    fn ready(&self, now: Instant, l: Limits, flushing: bool) -> bool {
        if self.backoff_until.is_some_and(|b| b > now) {
            return false;
        }
        !self.queue.is_empty()
            || self
                .open
                .as_ref()
                .is_some_and(|b| flushing || b.created + l.linger <= now)
    }

    /// Whether one more batch may be in flight.
    fn may_send(&self, l: Limits) -> bool {
        if !l.idempotent || self.recovering || !self.acked_any || !self.shifts.is_empty() {
            self.in_flight.is_empty()
        } else {
            self.in_flight.len() < l.max_in_flight.min(MAX_IN_FLIGHT_IDEMPOTENT)
        }
    }

    /// When the partition next becomes ready by itself (linger or backoff), if later than now.
    fn deadline(&self, now: Instant, l: Limits) -> Option<Instant> {
        if self.open.is_none() && self.queue.is_empty() {
            return None;
        }
        let mut d = self.backoff_until.filter(|b| *b > now);
        if let Some(b) = &self.open {
            let t = b.created + l.linger;
            if t > now {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        }
        d
    }

    /// Take the next batch for a request, encoding it (and assigning its sequences) if it
    /// was never sent. An encoding failure hands the batch back with the error.
    fn drain(
        &mut self,
        identity: Option<(i64, i16)>,
        compression: Compression,
    ) -> Option<std::result::Result<Batch, (Batch, Error)>> {
        let mut b = match self.queue.pop_front() {
            Some(b) => b,
            None => self.open.take()?,
        };
        if b.encoded.is_none() {
            if let Err(e) = b.encode(identity, self.next_seq, compression) {
                return Some(Err((b, e)));
            }
            if identity.is_some() {
                self.next_seq = self.next_seq.wrapping_add(b.count()) & i32::MAX;
            }
        }
        b.attempts += 1;
        self.in_flight.push(b.seq());
        self.backoff_until = None;
        Some(Ok(b))
    }

    /// A batch's request completed: it is no longer in flight.
    fn landed(&mut self, seq: i32) {
        if let Some(i) = self.in_flight.iter().position(|s| *s == seq) {
            self.in_flight.swap_remove(i);
        }
    }

    /// Put a failed batch back to be sent again, before every batch with a higher sequence
    /// (idempotent) or first (one batch in flight without idempotence).
    fn requeue(&mut self, b: Batch, idempotent: bool) {
        if !idempotent {
            self.queue.push_front(b);
            return;
        }
        self.recovering = true;
        let seq = b.seq();
        let at = self
            .queue
            .iter()
            .position(|q| q.encoded.is_none() || q.seq() > seq)
            .unwrap_or(self.queue.len());
        self.queue.insert(at, b);
    }

    /// Close the gaps of batches refused for good, once nothing is in flight: every queued
    /// batch after a gap is re-encoded with its sequence moved down. Returns batches whose
    /// re-encoding failed.
    fn resequence(
        &mut self,
        identity: Option<(i64, i16)>,
        compression: Compression,
    ) -> Vec<(Batch, Error)> {
        if !self.in_flight.is_empty() || self.shifts.is_empty() {
            return Vec::new();
        }
        let shifts = std::mem::take(&mut self.shifts);
        let mut failed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for mut b in self.queue.drain(..) {
            let seq = b.seq();
            let down: i32 = shifts
                .iter()
                .filter(|(s, _)| *s < seq)
                .map(|(_, c)| *c)
                .sum();
            if b.encoded.is_some() && down > 0 {
                if let Err(e) = b.encode(identity, seq - down, compression) {
                    failed.push((b, e));
                    continue;
                }
            }
            kept.push_back(b);
        }
        self.queue = kept;
        let total: i32 = shifts.iter().map(|(_, c)| *c).sum();
        self.next_seq = (self.next_seq - total).max(0);
        // Batches that failed to re-encode leave gaps of their own.
        for (b, _) in &failed {
            self.shifts.push((b.seq(), b.count()));
        }
        failed
    }

    /// Leave recovery once the retried batches are through.
    fn settle(&mut self) {
        if self.recovering
            && self.in_flight.is_empty()
            && self.shifts.is_empty()
            && self.queue.front().is_none_or(|b| b.encoded.is_none())
        {
            self.recovering = false;
        }
    }

    fn is_empty(&self) -> bool {
        self.open.is_none() && self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// The oldest unsent batch, if it is older than `timeout`.
    fn pop_expired(&mut self, timeout: Duration) -> Option<Batch> {
        if self
            .queue
            .front()
            .is_some_and(|b| b.created.elapsed() > timeout)
        {
            return self.queue.pop_front();
        }
        if self.queue.is_empty() {
            return self.open.take_if(|b| b.created.elapsed() > timeout);
        }
        None
    }
}

/// How a batch's request ended.
enum Outcome {
    /// Written at this base offset (-1: unknown) with this log-append time (-1: none).
    Written(i64, i64),
    Failed(Error),
}

type Key = (Arc<str>, i32);

/// The answer to one Produce request (or its failure), with the batches it carried.
struct RequestDone {
    broker: i32,
    batches: Vec<(Key, Batch)>,
    result: Result<Option<ProduceResponse>>,
}

struct Task {
    client: Client,
    config: ProducerConfig,
    identity: Option<(i64, i16)>,
    parts: HashMap<Key, PartState>,
    sticky: StickyPartitioner,
    broker_in_flight: HashMap<i32, usize>,
    flushers: Vec<oneshot::Sender<()>>,
    done_tx: mpsc::UnboundedSender<RequestDone>,
    in_flight_total: usize,
    retries: Arc<AtomicU64>,
}

impl Task {
    fn limits(&self) -> Limits {
        Limits {
            linger: self.config.linger,
            max_in_flight: self.config.max_in_flight,
            idempotent: self.identity.is_some(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut done_rx: mpsc::UnboundedReceiver<RequestDone>,
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
                Some(d) = done_rx.recv() => {
                    self.complete(d).await;
                    while let Ok(d) = done_rx.try_recv() {
                        self.complete(d).await;
                    }
                }
                _ = sleep_until(deadline) => {}
            }
            if closed && self.flushers.is_empty() {
                self.flushers.push(oneshot::channel().0);
            }
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
        self.in_flight_total == 0 && self.parts.values().all(|p| p.is_empty())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let (now, l) = (Instant::now(), self.limits());
        self.parts.values().filter_map(|p| p.deadline(now, l)).min()
    }

    async fn handle(&mut self, msg: Msg, topics: &mut HashMap<String, (Arc<str>, i32)>) {
        let (rec, waiter, memory) = match msg {
            Msg::Flush(f) => {
                self.flushers.push(f);
                return;
            }
            Msg::Record(r, w, m) => (r, w, m),
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
        let batch_size = self.config.batch_size;
        let part = self.parts.entry((name.clone(), partition)).or_default();
        if part.append(record, waiter, memory, batch_size) {
            self.sticky.batch_sealed(&name, partition, count);
        }
    }

    async fn dispatch(&mut self) {
        let now = Instant::now();
        let l = self.limits();
        let flushing = !self.flushers.is_empty();
        let (identity, compression) = (self.identity, self.config.compression);
        let timeout = self.config.delivery_timeout;
        let mut keys = Vec::new();
        for (key, p) in self.parts.iter_mut() {
            for (b, e) in p.resequence(identity, compression) {
                fail(b, &e);
            }
            p.settle();
            while let Some(b) = p.pop_expired(timeout) {
                fail(
                    b,
                    &Error::Config(format!(
                        "delivery timeout ({timeout:?}) expired for {}/{}",
                        key.0, key.1
                    )),
                );
            }
            if p.ready(now, l, flushing) && p.may_send(l) {
                keys.push(key.clone());
            }
        }
        // Partitions with a sendable batch, grouped by leader.
        let mut by_leader: HashMap<i32, Vec<Key>> = HashMap::new();
        for key in keys {
            match self.client.leader(&key.0, key.1).await {
                Ok(leader) => by_leader.entry(leader).or_default().push(key),
                Err(e) => {
                    let p = self.parts.get_mut(&key).unwrap();
                    if e.is_retriable() {
                        p.backoff_until = Some(now + self.config.retry_backoff);
                        let _ = self
                            .client
                            .refresh_metadata(Some(&[key.0.to_string()]))
                            .await;
                    } else {
                        while let Some(b) = p.queue.pop_front() {
                            fail(b, &e);
                        }
                        if let Some(b) = p.open.take() {
                            fail(b, &e);
                        }
                    }
                }
            }
        }
        for (leader, mut keys) in by_leader {
            let in_flight = self.broker_in_flight.entry(leader).or_default();
            if *in_flight >= self.config.max_in_flight {
                continue;
            }
            keys.sort();
            let mut batches = Vec::with_capacity(keys.len());
            for key in keys {
                let p = self.parts.get_mut(&key).unwrap();
                match p.drain(identity, compression) {
                    Some(Ok(b)) => batches.push((key, b)),
                    Some(Err((b, e))) => fail(b, &e),
                    None => {}
                }
            }
            if batches.is_empty() {
                continue;
            }
            *in_flight += 1;
            self.in_flight_total += 1;
            let req = produce_request(&batches, self.config.acks, self.config.request_timeout_ms);
            // Queued on the connection here, in drain order; answered in a task.
            let submitted = submit(&self.client, leader, &req).await;
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let result = match submitted {
                    Err(e) => Err(e),
                    Ok(None) => Ok(None),
                    Ok(Some(f)) => f.response().await.map(Some),
                };
                let _ = done.send(RequestDone {
                    broker: leader,
                    batches,
                    result,
                });
            });
        }
    }

    async fn complete(&mut self, d: RequestDone) {
        if let Some(n) = self.broker_in_flight.get_mut(&d.broker) {
            *n = n.saturating_sub(1);
        }
        self.in_flight_total = self.in_flight_total.saturating_sub(1);
        let outcomes = outcomes(d.result, d.batches);
        let mut refresh: Vec<String> = Vec::new();
        for (key, batch, outcome) in outcomes {
            if self.complete_batch(&key, batch, outcome) && !refresh.iter().any(|t| **t == *key.0) {
                refresh.push(key.0.to_string());
            }
        }
        if !refresh.is_empty() {
            let _ = self.client.refresh_metadata(Some(&refresh)).await;
        }
    }

    /// Settle one batch; returns whether it is retried (metadata should be refreshed).
    fn complete_batch(&mut self, key: &Key, batch: Batch, outcome: Outcome) -> bool {
        let idempotent = self.identity.is_some();
        let Some(part) = self.parts.get_mut(key) else {
            return false;
        };
        let seq = batch.seq();
        part.landed(seq);
        match outcome {
            Outcome::Written(base, log_append) => {
                part.acked_any = true;
                for (i, (w, ts)) in batch.waiters.into_iter().enumerate() {
                    let _ = w.send(Ok(RecordMetadata {
                        topic: key.0.to_string(),
                        partition: key.1,
                        offset: if base >= 0 { base + i as i64 } else { -1 },
                        timestamp: if log_append >= 0 { log_append } else { ts },
                    }));
                }
                false
            }
            Outcome::Failed(e) => {
                // OUT_OF_ORDER_SEQUENCE_NUMBER behind a failed or unanswered batch: the gap
                // is the earlier batch's, which will be re-sent first.
                let behind_gap = idempotent
                    && e.code() == Some(45)
                    && (part.recovering
                        || !part.shifts.is_empty()
                        || part.in_flight.iter().any(|s| *s < seq));
                if (e.is_retriable() || behind_gap)
                    && batch.attempts <= self.config.retries
                    && batch.created.elapsed() < self.config.delivery_timeout
                {
                    tracing::debug!(topic = %key.0, partition = key.1, error = %e, attempt = batch.attempts, seq, "retrying batch");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    part.requeue(batch, idempotent);
                    part.backoff_until = Some(Instant::now() + self.config.retry_backoff);
                    return true;
                }
                // Refused by the broker for good: never written, so its sequences are free.
                if idempotent && !e.is_retriable() && e.code().is_some_and(|c| c != 45) {
                    part.shifts.push((seq, batch.count()));
                    part.recovering = true;
                }
                fail(batch, &e);
                false
            }
        }
    }
}

fn fail(b: Batch, e: &Error) {
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

fn produce_request(batches: &[(Key, Batch)], acks: i16, timeout_ms: i32) -> ProduceRequest {
    let mut topic_data: Vec<TopicProduceData> = Vec::new();
    for ((topic, partition), b) in batches {
        let data = b.encoded.as_ref().map(|e| e.data.clone());
        let pd = PartitionProduceData::default()
            .with_index(*partition)
            .with_records(data);
        match topic_data.iter_mut().find(|t| *t.name.0 == **topic) {
            Some(t) => t.partition_data.push(pd),
            None => topic_data.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![pd]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topic_data)
}

/// Queue `req` on the leader's connection (nothing to await with acks=0).
async fn submit(
    client: &Client,
    leader: i32,
    req: &ProduceRequest,
) -> Result<Option<InFlight<ProduceRequest>>> {
    let conn = client.conn(leader).await?;
    if req.acks == 0 {
        conn.send_no_response(req).await?;
        Ok(None)
    } else {
        Ok(Some(conn.submit(req).await?))
    }
}

/// error code, base offset, log append time, error message
type PartitionOutcome = (i16, i64, i64, Option<String>);

/// Each batch's outcome from its request's result.
fn outcomes(
    result: Result<Option<ProduceResponse>>,
    batches: Vec<(Key, Batch)>,
) -> Vec<(Key, Batch, Outcome)> {
    match result {
        Err(e) => {
            let msg = e.to_string();
            let retriable = e.is_retriable();
            batches
                .into_iter()
                .map(|(k, b)| {
                    let err = if retriable {
                        Error::Disconnected(msg.clone())
                    } else {
                        Error::Protocol(msg.clone())
                    };
                    (k, b, Outcome::Failed(err))
                })
                .collect()
        }
        Ok(None) => batches
            .into_iter()
            .map(|(k, b)| (k, b, Outcome::Written(-1, -1)))
            .collect(),
        Ok(Some(resp)) => {
            let mut results: HashMap<(String, i32), PartitionOutcome> =
                HashMap::with_capacity(batches.len());
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
            batches
                .into_iter()
                .map(|(key, batch)| {
                    let outcome = match results.remove(&(key.0.to_string(), key.1)) {
                        None => Outcome::Failed(Error::Protocol(format!(
                            "no produce response for {}/{}",
                            key.0, key.1
                        ))),
                        Some((0, base, la, _)) => Outcome::Written(base, la),
                        // DUPLICATE_SEQUENCE_NUMBER: already written by an earlier attempt.
                        Some((46, _, _, _)) => Outcome::Written(-1, -1),
                        Some((code, _, _, msg)) => Outcome::Failed(Error::kafka(
                            code,
                            format!("producing to {}/{}", key.0, key.1),
                            msg,
                        )),
                    };
                    (key, batch, outcome)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::decode_batches;

    const PID: Option<(i64, i16)> = Some((7, 0));

    fn limits(linger_ms: u64) -> Limits {
        Limits {
            linger: Duration::from_millis(linger_ms),
            max_in_flight: 5,
            idempotent: true,
        }
    }

    fn record(i: usize) -> OutRecord {
        OutRecord {
            key: None,
            value: Some(Bytes::from(format!("value-{i:04}"))),
            headers: Vec::new(),
            timestamp: 1_000 + i as i64,
        }
    }

    /// Appends record `i` with its own memory grant; returns the ack receiver.
    async fn append(
        p: &mut PartState,
        mem: &Memory,
        i: usize,
        batch_size: usize,
    ) -> oneshot::Receiver<Result<RecordMetadata>> {
        let r = record(i);
        let grant = mem.acquire(r.size_estimate()).await.unwrap();
        let (tx, rx) = oneshot::channel();
        p.append(r, tx, grant, batch_size);
        rx
    }

    fn base_seq(b: &Batch) -> i32 {
        let d = &b.encoded.as_ref().unwrap().data;
        i32::from_be_bytes(d[53..57].try_into().unwrap())
    }

    fn values(b: &Batch) -> Vec<String> {
        let data = b.encoded.as_ref().unwrap().data.clone();
        decode_batches(data)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_arriving_while_in_flight_go_out_together_in_the_next_batch() {
        let mem = Memory::new(1 << 20, Duration::from_secs(1));
        let mut p = PartState::default();
        let l = limits(0);
        let _a = append(&mut p, &mem, 0, 1 << 20).await;
        assert!(p.ready(Instant::now(), l, false) && p.may_send(l));
        let first = p.drain(PID, Compression::None).unwrap().ok().unwrap();
        assert_eq!((first.count(), base_seq(&first)), (1, 0));
        // Until the first batch is acknowledged only one is in flight; meanwhile records
        // accumulate in one open batch.
        let mut acks = Vec::new();
        for i in 1..50 {
            acks.push(append(&mut p, &mem, i, 1 << 20).await);
        }
        assert!(!p.may_send(l));
        p.landed(first.seq());
        p.acked_any = true;
        assert!(p.may_send(l));
        let second = p.drain(PID, Compression::None).unwrap().ok().unwrap();
        assert_eq!((second.count(), base_seq(&second)), (49, 1));
        assert_eq!(values(&second)[0], "value-0001");
        assert!(p.drain(PID, Compression::None).is_none());
    }

    #[tokio::test]
    async fn linger_holds_an_open_batch_and_batch_size_closes_it() {
        let mem = Memory::new(1 << 20, Duration::from_secs(1));
        let mut p = PartState::default();
        let l = limits(50);
        let now = Instant::now();
        let _a = append(&mut p, &mem, 0, 1 << 20).await;
        assert!(!p.ready(now, l, false), "lingering");
        assert!(p.ready(now, l, true), "flush makes it ready");
        assert!(p.ready(now + Duration::from_millis(60), l, false));
        assert!(p.deadline(now, l).is_some());
        // A record is 26 bytes by the estimate: 3 fit in 80 bytes, the 4th opens a new batch.
        let mut q = PartState::default();
        for i in 0..4 {
            append(&mut q, &mem, i, 80).await;
        }
        assert_eq!(q.queue.len(), 1);
        assert_eq!(q.queue[0].count(), 3);
        assert!(q.ready(now, l, false), "a closed batch does not linger");
        assert_eq!(q.open.as_ref().unwrap().count(), 1);
    }

    #[tokio::test]
    async fn up_to_five_in_flight_after_the_first_ack_then_one_at_a_time_while_recovering() {
        let mem = Memory::new(1 << 20, Duration::from_secs(1));
        let mut p = PartState::default();
        let mut l = limits(0);
        l.max_in_flight = 5;
        p.acked_any = true;
        let mut sent = Vec::new();
        for i in 0..7 {
            append(&mut p, &mem, i, 1 << 20).await;
            if p.may_send(l) {
                sent.push(p.drain(PID, Compression::None).unwrap().ok().unwrap());
            }
        }
        assert_eq!(sent.len(), 5);
        assert_eq!(
            sent.iter().map(base_seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        // Batch 1 fails (retriable), so 2..4 come back OUT_OF_ORDER; they complete out of order.
        let mut it = sent.into_iter();
        let b0 = it.next().unwrap();
        p.landed(b0.seq());
        let rest: Vec<Batch> = it.collect();
        for b in rest.into_iter().rev() {
            p.landed(b.seq());
            p.requeue(b, true);
        }
        assert!(p.recovering);
        let seqs: Vec<i32> = p.queue.iter().map(|b| b.seq()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "retries in sequence order");
        assert_eq!(
            p.open.as_ref().unwrap().count(),
            2,
            "new records wait behind them"
        );
        // One at a time, with the sequences they had.
        for want in 1..=4 {
            assert!(p.may_send(l));
            let b = p.drain(PID, Compression::None).unwrap().ok().unwrap();
            assert_eq!(base_seq(&b), want);
            assert!(!p.may_send(l));
            p.landed(b.seq());
            p.settle();
        }
        assert!(!p.recovering, "the retried batches are through");
        let b = p.drain(PID, Compression::None).unwrap().ok().unwrap();
        assert_eq!(
            (base_seq(&b), b.count()),
            (5, 2),
            "new records continue the sequence"
        );
    }

    #[tokio::test]
    async fn a_batch_refused_for_good_moves_the_later_sequences_down() {
        let mem = Memory::new(1 << 20, Duration::from_secs(1));
        let mut p = PartState::default();
        let l = limits(0);
        p.acked_any = true;
        let mut sent = Vec::new();
        for i in 0..3 {
            append(&mut p, &mem, i, 1 << 20).await;
            sent.push(p.drain(PID, Compression::None).unwrap().ok().unwrap());
        }
        // seq 0 acked, seq 1 refused (e.g. MESSAGE_TOO_LARGE), seq 2 OUT_OF_ORDER.
        let b2 = sent.pop().unwrap();
        let b1 = sent.pop().unwrap();
        p.landed(sent.pop().unwrap().seq());
        p.landed(b1.seq());
        p.shifts.push((b1.seq(), b1.count()));
        p.recovering = true;
        // Nothing moves while seq 2 is still in flight.
        assert!(p.resequence(PID, Compression::None).is_empty());
        assert_eq!(p.shifts.len(), 1);
        p.landed(b2.seq());
        p.requeue(b2, true);
        assert!(p.resequence(PID, Compression::None).is_empty());
        assert_eq!(base_seq(&p.queue[0]), 1);
        assert_eq!(values(&p.queue[0]), vec!["value-0002"]);
        assert!(p.may_send(l));
        append(&mut p, &mem, 3, 1 << 20).await;
        let b = p.drain(PID, Compression::None).unwrap().ok().unwrap();
        assert_eq!(base_seq(&b), 1);
        p.landed(b.seq());
        p.settle();
        let b = p.drain(PID, Compression::None).unwrap().ok().unwrap();
        assert_eq!(base_seq(&b), 2, "the next sequence follows the moved one");
    }

    #[tokio::test]
    async fn buffer_memory_blocks_send_then_fails_after_max_block() {
        let mem = Memory::new(100, Duration::from_millis(50));
        let held = mem.acquire(80).await.unwrap();
        let err = mem.acquire(30).await.err().unwrap();
        assert!(matches!(err, Error::BufferExhausted(_)), "{err}");
        assert!(matches!(
            mem.acquire(101).await,
            Err(Error::BufferExhausted(_))
        ));
        // Freed memory lets a waiting send through.
        let waiting = tokio::spawn({
            let mem = mem.clone();
            async move { mem.acquire(30).await.map(|g| g.bytes) }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 30);
        // A batch gives back the memory of all its records when it is dropped.
        let mut p = PartState::default();
        for i in 0..3 {
            append(&mut p, &mem, i, 1 << 20).await;
        }
        assert_eq!(mem.sem.available_permits(), 100 - 3 * 26);
        drop(p);
        assert_eq!(mem.sem.available_permits(), 100);
    }
}
