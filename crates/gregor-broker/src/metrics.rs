//! Event metrics of the broker: what happens on the request path (requests, errors, latency,
//! bytes and records in and out, fsync rounds, connections). One process-wide set
//! ([`metrics`]), like Kafka's metrics registry; updated with a few atomic operations and
//! never read on the request path.
//!
//! State that can be read from the broker at any time (partitions, log sizes, offsets,
//! groups and their lag, the metadata quorum) is not kept here: the HTTP listener
//! (`gregor-http`) reads it from [`crate::Broker`] at scrape time. This module only depends
//! on `prometheus-client` types so the listener can register them as they are.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Buf;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Label set `{api="Produce"}`.
pub type ApiLabel = [(&'static str, &'static str); 1];
/// Label set `{api="Produce",code="6"}` (the Kafka error code).
pub type ApiErrorLabel = [(&'static str, String); 2];
/// Label set `{topic="orders"}`.
pub type TopicLabel = [(&'static str, String); 1];

/// The broker's event metrics (see the module doc).
pub struct BrokerMetrics {
    pub requests: Family<ApiLabel, Counter>,
    pub request_errors: Family<ApiErrorLabel, Counter>,
    pub request_duration: Family<ApiLabel, Histogram>,
    pub fsync_duration: Histogram,
    pub fsync_rounds: Counter,
    pub bytes_in: Family<TopicLabel, Counter>,
    pub records_in: Family<TopicLabel, Counter>,
    pub bytes_out: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub connections_active: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    /// SASL authentications that succeeded / failed (Kafka's successful-authentication /
    /// failed-authentication totals), and TLS handshakes that failed.
    pub authentications_succeeded: Counter,
    pub authentications_failed: Counter,
    pub tls_handshakes_failed: Counter,
    /// ISR changes committed for partitions led here that dropped members (Kafka's
    /// IsrShrinksPerSec) or added members (IsrExpandsPerSec).
    pub isr_shrinks: Counter,
    pub isr_expands: Counter,
    /// Where each produce request's time went (HDR histograms, see [`ProduceStage`]).
    pub produce_stages: ProduceStages,
}

fn latency_buckets() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl BrokerMetrics {
    fn new() -> Self {
        BrokerMetrics {
            requests: Family::default(),
            request_errors: Family::default(),
            request_duration: Family::new_with_constructor(latency_buckets),
            fsync_duration: latency_buckets(),
            fsync_rounds: Counter::default(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            connections_active: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            authentications_succeeded: Counter::default(),
            authentications_failed: Counter::default(),
            tls_handshakes_failed: Counter::default(),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
            produce_stages: ProduceStages::new(),
        }
    }

    /// Registers every metric (names without the `gregor_` prefix, which the registry adds).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Requests handled, by API",
            self.requests.clone(),
        );
        r.register(
            "request_errors",
            "Error codes in responses (per partition, group or topic where the API has them), by API and Kafka error code",
            self.request_errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's decoding to its response being ready (a produce includes its fsync wait), by API",
            self.request_duration.clone(),
        );
        r.register(
            "produce_fsync_duration_seconds",
            "Duration of one group-commit fsync round (fsync of every partition written since the last round)",
            self.fsync_duration.clone(),
        );
        r.register(
            "produce_fsync_rounds",
            "Group-commit fsync rounds run",
            self.fsync_rounds.clone(),
        );
        r.register(
            "topic_bytes_in",
            "Record batch bytes appended by produce requests, by topic (Kafka BytesInPerSec)",
            self.bytes_in.clone(),
        );
        r.register(
            "topic_records_in",
            "Records appended by produce requests, by topic (Kafka MessagesInPerSec)",
            self.records_in.clone(),
        );
        r.register(
            "topic_bytes_out",
            "Record batch bytes sent in fetch responses, by topic (Kafka BytesOutPerSec)",
            self.bytes_out.clone(),
        );
        r.register(
            "topic_records_out",
            "Records sent in fetch responses, by topic",
            self.records_out.clone(),
        );
        r.register(
            "connections_active",
            "Open client connections on the Kafka listener",
            self.connections_active.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted on the Kafka listener",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at accept by max.connections / max.connections.per.ip",
            self.connections_refused.clone(),
        );
        r.register(
            "authentications_succeeded",
            "SASL authentications that succeeded",
            self.authentications_succeeded.clone(),
        );
        r.register(
            "authentications_failed",
            "SASL authentications that failed (wrong password, unknown user, bad message)",
            self.authentications_failed.clone(),
        );
        r.register(
            "tls_handshakes_failed",
            "TLS handshakes that failed on SSL / SASL_SSL listeners (e.g. a plaintext client)",
            self.tls_handshakes_failed.clone(),
        );
        r.register(
            "isr_shrinks",
            "ISR changes committed for partitions led by this broker that removed a replica (Kafka IsrShrinksPerSec)",
            self.isr_shrinks.clone(),
        );
        r.register(
            "isr_expands",
            "ISR changes committed for partitions led by this broker that added a replica (Kafka IsrExpandsPerSec)",
            self.isr_expands.clone(),
        );
        r.register_collector(Box::new(ProduceStagesCollector));
    }

    /// A produce request spent `d` in `stage`.
    pub fn record_stage(&self, stage: ProduceStage, d: Duration) {
        self.produce_stages.record(stage, d);
    }

    /// One fsync round of the flusher took `d`.
    pub fn observe_fsync(&self, d: Duration) {
        self.fsync_rounds.inc();
        self.fsync_duration.observe(d.as_secs_f64());
        self.produce_stages.record(ProduceStage::FsyncRound, d);
    }

    /// A request of `api` was answered after `d` with `response` (`None`: no response,
    /// e.g. acks=0).
    pub fn observe_request(
        &self,
        api: ApiKey,
        d: Duration,
        response: Option<&ResponseKind>,
        produced: &[ProducedPartition],
        topic_name: impl Fn(uuid::Uuid) -> Option<String>,
    ) {
        let api_label = [("api", api_name(api))];
        self.requests.get_or_create(&api_label).inc();
        self.request_duration
            .get_or_create(&api_label)
            .observe(d.as_secs_f64());
        let mut codes = Vec::new();
        if let Some(r) = response {
            error_codes(r, &mut codes);
        }
        for code in codes.into_iter().filter(|c| *c != 0) {
            self.request_errors
                .get_or_create(&[
                    ("api", api_name(api).to_string()),
                    ("code", code.to_string()),
                ])
                .inc();
        }
        match response {
            Some(ResponseKind::Produce(r)) => {
                for p in produced {
                    let ok = r
                        .responses
                        .iter()
                        .filter(|t| t.name.as_str() == p.topic)
                        .flat_map(|t| t.partition_responses.iter())
                        .any(|pr| pr.index == p.partition && pr.error_code == 0);
                    if ok {
                        self.count_in(p);
                    }
                }
            }
            // acks=0: nothing is answered; what was sent is counted.
            None if api == ApiKey::Produce => produced.iter().for_each(|p| self.count_in(p)),
            Some(ResponseKind::Fetch(r)) => {
                for t in &r.responses {
                    let (mut bytes, mut records) = (0u64, 0u64);
                    for p in &t.partitions {
                        if let Some(data) = &p.records {
                            bytes += data.len() as u64;
                            records += batch_record_count(data);
                        }
                    }
                    if bytes > 0 {
                        // Fetch v13+ names topics by id only.
                        let name = match t.topic.as_str() {
                            "" => topic_name(t.topic_id).unwrap_or_default(),
                            name => name.to_string(),
                        };
                        let topic = [("topic", name)];
                        self.bytes_out.get_or_create(&topic).inc_by(bytes);
                        self.records_out.get_or_create(&topic).inc_by(records);
                    }
                }
            }
            _ => {}
        }
    }

    fn count_in(&self, p: &ProducedPartition) {
        let topic = [("topic", p.topic.clone())];
        self.bytes_in.get_or_create(&topic).inc_by(p.bytes);
        self.records_in.get_or_create(&topic).inc_by(p.records);
    }
}

/// One partition's data in a produce request, counted once the append is acknowledged.
#[derive(Debug, Clone)]
pub struct ProducedPartition {
    pub topic: String,
    pub partition: i32,
    pub bytes: u64,
    pub records: u64,
}

/// The partitions of a produce request and their sizes (empty for other requests).
pub fn produced_partitions(body: &kafka_protocol::messages::RequestKind) -> Vec<ProducedPartition> {
    let kafka_protocol::messages::RequestKind::Produce(r) = body else {
        return vec![];
    };
    r.topic_data
        .iter()
        .flat_map(|t| {
            t.partition_data.iter().map(|p| {
                let data = p.records.as_ref();
                ProducedPartition {
                    topic: t.name.as_str().to_string(),
                    partition: p.index,
                    bytes: data.map_or(0, |d| d.len() as u64),
                    records: data.map_or(0, |d| batch_record_count(d)),
                }
            })
        })
        .collect()
}

/// Records in a run of v2 record batches (the `records count` field of each header); stops
/// at the first truncated or older-format batch.
pub fn batch_record_count(data: &[u8]) -> u64 {
    // baseOffset(8) batchLength(4) partitionLeaderEpoch(4) magic(1) crc(4) attributes(2)
    // lastOffsetDelta(4) baseTimestamp(8) maxTimestamp(8) producerId(8) producerEpoch(2)
    // baseSequence(4) recordsCount(4)
    const COUNT_AT: usize = 57;
    let mut rest = data;
    let mut total = 0u64;
    while rest.len() >= COUNT_AT + 4 {
        let len = (&rest[8..12]).get_i32();
        let magic = rest[16];
        let Ok(len) = usize::try_from(len) else { break };
        if magic != 2 || rest.len() < 12 + len {
            break;
        }
        total += u64::try_from((&rest[COUNT_AT..COUNT_AT + 4]).get_i32()).unwrap_or(0);
        rest = &rest[12 + len..];
    }
    total
}

/// The API's name as Kafka spells it in its metrics (`Produce`, `Fetch`, ...).
pub fn api_name(api: ApiKey) -> &'static str {
    // One leaked string per API key (about 90), built once; read without a lock.
    static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        (0..512i16)
            .map(|k| match ApiKey::try_from(k) {
                Ok(api) => &*Box::leak(format!("{api:?}").into_boxed_str()),
                Err(_) => "Unknown",
            })
            .collect()
    });
    usize::try_from(api as i16)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

/// Every error code of a response, where the API has them per partition, topic or group.
fn error_codes(r: &ResponseKind, out: &mut Vec<i16>) {
    match r {
        ResponseKind::Produce(r) => out.extend(
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Fetch(r) => {
            out.push(r.error_code);
            out.extend(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            );
        }
        ResponseKind::ListOffsets(r) => out.extend(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Metadata(r) => {
            out.push(r.error_code);
            out.extend(r.topics.iter().map(|t| t.error_code));
        }
        ResponseKind::OffsetCommit(r) => out.extend(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::OffsetFetch(r) => {
            out.push(r.error_code);
            out.extend(r.groups.iter().map(|g| g.error_code));
        }
        ResponseKind::FindCoordinator(r) => {
            out.push(r.error_code);
            out.extend(r.coordinators.iter().map(|c| c.error_code));
        }
        ResponseKind::JoinGroup(r) => out.push(r.error_code),
        ResponseKind::SyncGroup(r) => out.push(r.error_code),
        ResponseKind::Heartbeat(r) => out.push(r.error_code),
        ResponseKind::LeaveGroup(r) => out.push(r.error_code),
        ResponseKind::DescribeGroups(r) => out.extend(r.groups.iter().map(|g| g.error_code)),
        ResponseKind::CreateTopics(r) => out.extend(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::DeleteTopics(r) => out.extend(r.responses.iter().map(|t| t.error_code)),
        ResponseKind::InitProducerId(r) => out.push(r.error_code),
        ResponseKind::EndTxn(r) => out.push(r.error_code),
        _ => {}
    }
}

/// The process-wide event metrics.
pub fn metrics() -> &'static BrokerMetrics {
    static METRICS: LazyLock<BrokerMetrics> = LazyLock::new(BrokerMetrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    #[test]
    fn stage_histograms_expose_per_bucket_counts_up_to_inf() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        h.record(5).unwrap(); // <= 10 µs
        h.record(10).unwrap(); // <= 10 µs
        h.record(1_200).unwrap(); // <= 1.5 ms
        h.record(20_000_000).unwrap(); // > 10 s
        let b = super::stage_buckets(&h);
        assert_eq!(b.len(), super::STAGE_BUCKETS_US.len() + 1);
        assert_eq!(b[0], (0.00001, 2));
        let at = |s: f64| b.iter().find(|(le, _)| (*le - s).abs() < 1e-12).unwrap().1;
        assert_eq!(at(0.0015), 1);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 4);
    }

    use super::*;

    #[test]
    fn counts_records_of_v2_batches_and_stops_at_garbage() {
        let mut batch = vec![0u8; 61];
        batch[8..12].copy_from_slice(&49i32.to_be_bytes()); // 61 - 12
        batch[16] = 2;
        batch[57..61].copy_from_slice(&7i32.to_be_bytes());
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        assert_eq!(batch_record_count(&batch), 7);
        assert_eq!(batch_record_count(&two), 14);
        assert_eq!(batch_record_count(&two[..100]), 7);
        assert_eq!(batch_record_count(&[1, 2, 3]), 0);
        let mut bad = batch.clone();
        bad[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(batch_record_count(&bad), 0);
    }

    #[test]
    fn api_names_are_kafkas() {
        assert_eq!(api_name(ApiKey::Produce), "Produce");
        assert_eq!(api_name(ApiKey::OffsetCommit), "OffsetCommit");
    }
}

/// The parts of a produce request's life on the broker, each timed per request into an HDR
/// histogram (microseconds, 3 significant digits) so that a percentile of the whole can be
/// attributed. `Queued + Append + DurableWait + ResponseWrite` is about `Total`; a response
/// waits in `ResponseWrite` for the responses before it on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceStage {
    /// From the frame read whole to its processing starting (behind earlier requests of the
    /// connection, `max.inflight.requests.per.connection` deep).
    Queued,
    /// Decoding done to the handler's append phase returning: validation, the partition
    /// locks, the idempotence check and the write into the page cache.
    Append,
    /// Appended to answer ready: waiting for the group-commit fsync round that covers the
    /// data (acks=1/all, `--fsync always`) and, in a cluster, for the ISR with acks=all.
    DurableWait,
    /// Answer ready to written to the socket (in request order: behind earlier answers).
    ResponseWrite,
    /// Frame read whole to answer written.
    Total,
    /// One group-commit fsync round of the flusher (per round, not per request).
    FsyncRound,
}

impl ProduceStage {
    /// Every stage, in the order above.
    pub const ALL: [ProduceStage; 6] = [
        ProduceStage::Queued,
        ProduceStage::Append,
        ProduceStage::DurableWait,
        ProduceStage::ResponseWrite,
        ProduceStage::Total,
        ProduceStage::FsyncRound,
    ];

    /// The `stage` label value.
    pub fn name(self) -> &'static str {
        match self {
            ProduceStage::Queued => "queued",
            ProduceStage::Append => "append",
            ProduceStage::DurableWait => "durable_wait",
            ProduceStage::ResponseWrite => "response_write",
            ProduceStage::Total => "total",
            ProduceStage::FsyncRound => "fsync_round",
        }
    }
}

/// Upper bounds (µs) of the buckets the stage histograms are exposed with in Prometheus's
/// format (1-1.5-2-3-5-7 per decade, 10 µs to 10 s, then +Inf).
pub const STAGE_BUCKETS_US: [u64; 37] = [
    10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000,
    10_000, 15_000, 20_000, 30_000, 50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000,
    700_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 7_000_000, 10_000_000,
];

/// One HDR histogram per [`ProduceStage`], since the broker started.
pub struct ProduceStages {
    hists: Mutex<Vec<hdrhistogram::Histogram<u64>>>,
}

impl ProduceStages {
    fn new() -> Self {
        let h = || {
            // 1 µs .. 1 hour; larger values are clamped.
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds")
        };
        ProduceStages {
            hists: Mutex::new(ProduceStage::ALL.iter().map(|_| h()).collect()),
        }
    }

    fn index(stage: ProduceStage) -> usize {
        ProduceStage::ALL
            .iter()
            .position(|s| *s == stage)
            .unwrap_or(0)
    }

    /// Record one request's (or round's) time in `stage`.
    pub fn record(&self, stage: ProduceStage, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        if let Ok(mut h) = self.hists.lock() {
            h[Self::index(stage)].saturating_record(us);
        }
    }

    /// A copy of `stage`'s histogram.
    pub fn snapshot(&self, stage: ProduceStage) -> hdrhistogram::Histogram<u64> {
        let h = self.hists.lock().unwrap_or_else(|e| e.into_inner());
        h[Self::index(stage)].clone()
    }
}

/// Per-bucket (not cumulative) counts of `h` over [`STAGE_BUCKETS_US`] plus +Inf, as
/// `(upper bound in seconds, count)`.
pub fn stage_buckets(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, u64)> {
    let mut counts = vec![0u64; STAGE_BUCKETS_US.len() + 1];
    for v in h.iter_recorded() {
        let value = h.highest_equivalent(v.value_iterated_to());
        let i = STAGE_BUCKETS_US.partition_point(|b| *b < value);
        counts[i] += v.count_at_value();
    }
    STAGE_BUCKETS_US
        .iter()
        .map(|b| *b as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(counts)
        .collect()
}

/// Exposes [`ProduceStages`] as `produce_stage_seconds{stage}` (a histogram: deltas of two
/// scrapes give a run's distribution) and `produce_stage_quantile_seconds{stage,quantile}`
/// (the HDR percentiles since the broker started).
#[derive(Debug)]
struct ProduceStagesCollector;

const STAGE_QUANTILES: [(f64, &str); 5] = [
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.99, "0.99"),
    (0.999, "0.999"),
    (1.0, "1"),
];

impl Collector for ProduceStagesCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stages = &metrics().produce_stages;
        let hists: Vec<_> = ProduceStage::ALL
            .iter()
            .map(|s| (*s, stages.snapshot(*s)))
            .collect();
        {
            let mut family = e.encode_descriptor(
                "produce_stage_seconds",
                "Time of each produce request in each stage (queued, append, durable_wait, response_write, total; fsync_round per flusher round), from HDR histograms",
                None,
                MetricType::Histogram,
            )?;
            for (stage, h) in &hists {
                let labels = [("stage", stage.name())];
                let mut metric = family.encode_family(&labels)?;
                let sum = h.mean() * h.len() as f64 / 1e6;
                metric.encode_histogram::<Vec<(String, String)>>(
                    sum,
                    h.len(),
                    &stage_buckets(h),
                    None,
                )?;
            }
        }
        let mut family = e.encode_descriptor(
            "produce_stage_quantile_seconds",
            "Percentiles (HDR, since the broker started) of each produce stage",
            None,
            MetricType::Gauge,
        )?;
        for (stage, h) in &hists {
            for (q, name) in STAGE_QUANTILES {
                let labels = [("stage", stage.name()), ("quantile", name)];
                let metric = family.encode_family(&labels)?;
                let v = if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1e6
                };
                ConstGauge::new(v).encode(metric)?;
            }
        }
        Ok(())
    }
}
