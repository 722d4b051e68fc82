//! Produce: validate each partition's batches, append them, and answer once the acks level
//! is met.
//!
//! Batches are appended as received (the log rewrites only their base offset). With
//! `fsync = always` and acks=1 or acks=all the response waits until the group-commit
//! flusher ([`crate::flusher`]) has fsynced every partition written by this request; on a
//! single node the leader is the whole ISR, so both levels mean "on disk". The partition
//! lock is released before waiting, so other appends join the same fsync. With
//! `interval`, a partition past its `flush.messages` is queued for a flush (not waited
//! for); with `never` nothing is fsynced. With acks=0 there is no response at all.

use std::sync::Arc;

use gregor_log::{BatchHeader, LogError, ValidateError, ValidatedBatches};
use gregor_protocol::records::{validate_batch_records_with, RecordsError};
use gregor_txn::{ProducerError, TxnError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::sb;
use crate::broker::Broker;
use crate::config::FsyncPolicy;
use crate::partition::{Partition, ProduceError};
use crate::registry::{MetaResult, Topic};
use crate::transactions::TransactionService;

/// A produce whose records are appended (in request order) and whose answer now waits only
/// for durability. The connection can start the next request meanwhile: several pipelined
/// produces then share one group-commit fsync, and their answers still go out in order.
pub struct PendingProduce {
    acks: i16,
    responses: Vec<TopicProduceResponse>,
    flushed: Option<tokio::sync::oneshot::Receiver<crate::flusher::FlushResult>>,
    /// acks=all in a cluster: the partitions whose high watermark must reach an offset.
    replication: Vec<ReplicationWait>,
    /// The request's `timeout_ms`: how long acks=all waits for the ISR.
    timeout_ms: i32,
}

/// acks=all: partition `partition` of topic `topic` (indexes into the response) is answered
/// once the ISR has everything up to `end_offset`, while this broker leads at `epoch`.
struct ReplicationWait {
    topic: usize,
    partition: usize,
    log: Arc<Partition>,
    end_offset: i64,
    epoch: Option<i32>,
    min_insync: usize,
}

/// Validates and appends every partition's records and queues the durability work;
/// never waits.
pub fn append_phase(broker: &Arc<Broker>, req: ProduceRequest, _version: i16) -> PendingProduce {
    let transactional_id = req.transactional_id.as_ref().map(|s| s.to_string());
    let acks = req.acks;
    let in_cluster = broker.cluster().is_some();
    let mut pending = Appends::new(acks == -1 && in_cluster);
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for topic_data in req.topic_data {
        let topic = broker.get_or_auto_create(&topic_data.name, true);
        let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
        for pd in topic_data.partition_data {
            let outcome = admit(broker, acks, in_cluster, &topic, pd.index).and_then(|target| {
                let appended = append_to(
                    broker,
                    transactional_id.as_deref(),
                    &target,
                    pd.records.as_deref(),
                )?;
                let at = (responses.len(), partition_responses.len());
                pending.add(at, &target, &appended);
                Ok((appended.base_offset, appended.log_start_offset))
            });
            if let Err(e) = &outcome {
                tracing::debug!(topic = %topic_data.name.as_str(), partition = pd.index, code = ?e.code, message = %e.message, "produce rejected");
            }
            partition_responses.push(partition_response(pd.index, outcome));
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partition_responses),
        );
    }
    let flushed = queue_durability(broker, &pending.written, acks);
    PendingProduce {
        acks,
        responses,
        flushed,
        replication: pending.replication,
        timeout_ms: req.timeout_ms,
    }
}

/// Step 1, per partition: may this request append to partition `index` of `topic` here?
/// Refused for invalid acks, an unknown or internal topic, an unknown partition, one this
/// broker does not lead, and (acks=all in a cluster) an ISR below `min.insync.replicas`.
fn admit<'t>(
    broker: &Broker,
    acks: i16,
    in_cluster: bool,
    topic: &'t MetaResult<Arc<Topic>>,
    index: i32,
) -> Result<Target<'t>, Refusal> {
    if !matches!(acks, -1..=1) {
        return Err((
            ResponseError::InvalidRequiredAcks,
            format!("invalid acks {acks}"),
        )
            .into());
    }
    let topic = topic
        .as_ref()
        .map_err(|e| Refusal::from((e.code, e.message.clone())))?;
    if crate::internal_topics::is_internal_topic(&topic.name) {
        return Err((
            ResponseError::InvalidTopicException,
            format!("Cannot append to internal topic {}", topic.name),
        )
            .into());
    }
    let Some(partition) = topic.partition(index) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("{}-{index} does not exist", topic.name),
        )
            .into());
    };
    if broker.check_leader(&topic.name, index).is_err() {
        return Err((
            ResponseError::NotLeaderOrFollower,
            format!("this broker does not lead {}-{index}", topic.name),
        )
            .into());
    }
    let min_insync = min_insync_replicas(broker, topic);
    match partition.isr_size() {
        Some(isr) if acks == -1 && in_cluster && isr < min_insync => Err((
            ResponseError::NotEnoughReplicas,
            format!(
                "{}-{index} has {isr} in-sync replicas, min.insync.replicas is {min_insync}",
                topic.name
            ),
        )
            .into()),
        _ => Ok(Target {
            topic,
            partition,
            min_insync,
        }),
    }
}

/// A partition admitted for a produce.
struct Target<'t> {
    topic: &'t Topic,
    partition: &'t Arc<Partition>,
    /// The topic's `min.insync.replicas`.
    min_insync: usize,
}

/// Step 2, per partition: validates and appends its records under the topic's limits.
fn append_to(
    broker: &Broker,
    transactional_id: Option<&str>,
    Target {
        topic, partition, ..
    }: &Target,
    records: Option<&[u8]>,
) -> Result<crate::partition::Appended, Refusal> {
    let limits = Limits {
        max_message_bytes: topic.max_message_bytes(broker.config.message_max_bytes),
        max_decompressed_bytes: broker.config.max_decompressed_batch_bytes,
        require_keys: topic.is_compacted(&broker.config),
    };
    append(
        broker.txns().map(|t| &**t),
        transactional_id,
        partition,
        records,
        &limits,
    )
}

/// Step 3: what the request's answer waits for, gathered as its partitions are appended.
struct Appends {
    /// acks=all in a cluster: each answer waits for the ISR.
    wait_for_isr: bool,
    /// The partitions written, each once, for the flusher.
    written: Vec<Arc<Partition>>,
    replication: Vec<ReplicationWait>,
}

impl Appends {
    fn new(wait_for_isr: bool) -> Self {
        Appends {
            wait_for_isr,
            written: Vec::new(),
            replication: Vec::new(),
        }
    }

    /// `target` got `appended`; its answer is response `(topic, partition)` (indexes).
    fn add(
        &mut self,
        (topic, index): (usize, usize),
        target: &Target,
        appended: &crate::partition::Appended,
    ) {
        let partition = target.partition;
        if !self.written.iter().any(|p| Arc::ptr_eq(p, partition)) {
            self.written.push(partition.clone());
        }
        if self.wait_for_isr {
            self.replication.push(ReplicationWait {
                topic,
                partition: index,
                log: partition.clone(),
                end_offset: appended.end_offset,
                epoch: partition.leader_epoch(),
                min_insync: target.min_insync,
            });
        }
    }
}

/// A partition's answer: its base offset and log start offset, or why it was refused.
fn partition_response(
    index: i32,
    outcome: Result<(i64, i64), Refusal>,
) -> PartitionProduceResponse {
    let r = PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1);
    match outcome {
        Ok((base_offset, log_start_offset)) => r
            .with_base_offset(base_offset)
            .with_log_start_offset(log_start_offset),
        Err(Refusal {
            code,
            message,
            record_errors,
        }) => r
            .with_error_code(code.code())
            .with_error_message(Some(sb(message)))
            .with_record_errors(record_errors),
    }
}

/// Step 4: wakes the readers waiting for new data and queues the fsync the policy asks
/// for; with `fsync = always` and acks ≠ 0, the receiver the answer waits on.
fn queue_durability(
    broker: &Broker,
    written: &[Arc<Partition>],
    acks: i16,
) -> Option<tokio::sync::oneshot::Receiver<crate::flusher::FlushResult>> {
    if written.is_empty() {
        return None;
    }
    broker.notify_appended();
    match broker.config.fsync {
        // Group commit: acks=0 data is queued too, just not waited for.
        FsyncPolicy::Always => broker.flusher().request(written, acks != 0),
        FsyncPolicy::Interval => {
            let due: Vec<_> = written
                .iter()
                .filter(|p| {
                    let limit = broker
                        .topic(&p.topic)
                        .map_or(i64::MAX, |t| t.log_settings(&broker.config).flush_messages);
                    p.unflushed().0 >= limit
                })
                .cloned()
                .collect();
            if !due.is_empty() {
                broker.flusher().request(&due, false);
            }
            None
        }
        FsyncPolicy::Never => None,
    }
}

/// The topic's `min.insync.replicas` (the broker's default when the topic sets none).
fn min_insync_replicas(broker: &Broker, topic: &Topic) -> usize {
    topic
        .configs
        .get("min.insync.replicas")
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(broker.config.min_insync_replicas)
        .max(1) as usize
}

impl PendingProduce {
    /// Waits until the appended data meets the durability policy and builds the response
    /// (`None` for acks=0, which gets no response).
    pub async fn finish(self) -> Option<ProduceResponse> {
        let PendingProduce {
            acks,
            mut responses,
            flushed,
            replication,
            timeout_ms,
        } = self;
        if acks == 0 {
            return None;
        }
        if let Some(rx) = flushed {
            let failure = match rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("flusher stopped".to_string()),
            };
            if let Some(e) = failure {
                tracing::error!(error = %e, "fsync failed; failing the produce");
                // The records are in the log but not known durable: "possibly written"
                // (NOT_ENOUGH_REPLICAS_AFTER_APPEND, Kafka's "appended, acks not met"),
                // so the client retries with the same sequence, which the idempotence
                // check then matches with this copy if it survives. KAFKA_STORAGE_ERROR
                // would tell it the records were not written.
                for t in &mut responses {
                    for p in &mut t.partition_responses {
                        if p.error_code == 0 {
                            p.error_code = ResponseError::NotEnoughReplicasAfterAppend.code();
                            p.error_message = Some(sb(format!("fsync failed: {e}")));
                        }
                    }
                }
            }
        }
        wait_for_isr(&mut responses, replication, timeout_ms).await;
        Some(ProduceResponse::default().with_responses(responses))
    }
}

/// acks=all in a cluster: each partition's answer waits until its high watermark reaches
/// the end of what was appended (every ISR member has it), up to `timeout_ms`
/// (REQUEST_TIMED_OUT), while this broker still leads at the same epoch
/// (NOT_LEADER_OR_FOLLOWER). With the ISR below `min.insync.replicas` by then the records
/// are committed but the answer is NOT_ENOUGH_REPLICAS_AFTER_APPEND, as in Kafka.
async fn wait_for_isr(
    responses: &mut [TopicProduceResponse],
    replication: Vec<ReplicationWait>,
    timeout_ms: i32,
) {
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.max(0) as u64);
    for w in replication {
        let r = &mut responses[w.topic].partition_responses[w.partition];
        if r.error_code != 0 {
            continue;
        }
        let outcome =
            tokio::time::timeout_at(deadline, w.log.wait_replicated(w.end_offset, w.epoch)).await;
        let (code, message) = match outcome {
            Ok(true) if w.log.isr_size().is_some_and(|n| n >= w.min_insync) => continue,
            Ok(true) => (
                ResponseError::NotEnoughReplicasAfterAppend,
                "the ISR shrank below min.insync.replicas".to_string(),
            ),
            Ok(false) => (
                ResponseError::NotLeaderOrFollower,
                "leadership moved before the ISR had the records".to_string(),
            ),
            Err(_) => (
                ResponseError::RequestTimedOut,
                format!("the ISR did not have the records within {timeout_ms} ms"),
            ),
        };
        r.error_code = code.code();
        r.error_message = Some(sb(message));
    }
}

/// The size limits a produced batch must meet.
struct Limits {
    /// `max.message.bytes` of the topic: the largest batch as sent.
    max_message_bytes: usize,
    /// The largest a compressed batch may grow when decompressed for validation.
    max_decompressed_bytes: usize,
    /// The topic is compacted (`cleanup.policy` has `compact`): every record needs a key.
    require_keys: bool,
}

/// Validates and appends one partition's records; returns (base offset, log start offset).
///
/// Every batch is checked before anything is written: header, CRC and size by
/// `iter_batches`, then its records (bounded decompression, framing, count and offset deltas)
/// by `gregor_protocol::records`, as Kafka's log validator does. A bad batch rejects the whole
/// partition's records.
fn append(
    txns: Option<&TransactionService>,
    transactional_id: Option<&str>,
    partition: &Partition,
    records: Option<&[u8]>,
    limits: &Limits,
) -> Result<crate::partition::Appended, Refusal> {
    let records = match records {
        Some(r) if !r.is_empty() => r,
        _ => return Err((ResponseError::InvalidRecord, "no records".to_string()).into()),
    };
    // One walk: framing and CRC (once per batch), then this request's checks, batch by
    // batch, so the first bad batch decides the error.
    let batches =
        ValidatedBatches::validate(records, |header, batch| check_batch(header, batch, limits))
            .map_err(|e| match e {
                ValidateError::Batch(e) => (ResponseError::CorruptMessage, e.to_string()).into(),
                ValidateError::Check(e) => e,
            })?;
    let verify_txn = |h: &BatchHeader| match txns {
        None => Err(TxnError::InvalidTxnState),
        // Coordinated by another broker: not verified here (as Kafka before KIP-890's
        // broker-to-broker verification).
        Some(t) if transactional_id.is_some_and(|id| !t.coordinates(id)) => Ok(()),
        Some(t) => t.verify_write(
            h.producer_id,
            h.producer_epoch,
            &partition.topic,
            partition.index,
        ),
    };
    partition
        .append_produced(&batches, verify_txn)
        .map_err(|e| Refusal::from(produce_error(partition, e)))
}

/// A produced batch (framing and CRC already checked) meets this request's rules: its size
/// is within `max.message.bytes`, it is not a control batch, a transactional batch has a
/// producer id, and its records are well formed (`gregor_protocol::records`).
fn check_batch(header: &BatchHeader, batch: &[u8], limits: &Limits) -> Result<(), Refusal> {
    let max_message_bytes = limits.max_message_bytes;
    if header.total_size() > max_message_bytes {
        return Err((
            ResponseError::MessageTooLarge,
            format!(
                "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                header.total_size()
            ),
        )
            .into());
    }
    if header.is_control() {
        // Only the transaction coordinator writes markers.
        return Err((
            ResponseError::InvalidRecord,
            "clients may not write control batches".to_string(),
        )
            .into());
    }
    if header.is_transactional() && header.producer_id < 0 {
        return Err((
            ResponseError::InvalidRecord,
            "a transactional batch needs a producer id".to_string(),
        )
            .into());
    }
    validate_batch_records_with(batch, limits.max_decompressed_bytes, limits.require_keys).map_err(
        |e| match e {
            RecordsError::TooLarge { .. } => (ResponseError::MessageTooLarge, e.to_string()).into(),
            RecordsError::MissingKeys(indexes) => Refusal {
                code: ResponseError::InvalidRecord,
                message: "One or more records have been rejected".to_string(),
                record_errors: indexes
                    .into_iter()
                    .map(|i| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(i)
                            .with_batch_index_error_message(Some(sb(
                                "Compacted topic cannot accept message without key.",
                            )))
                    })
                    .collect(),
            },
            _ => (ResponseError::CorruptMessage, e.to_string()).into(),
        },
    )
}

/// Why a partition's records were refused: the error code and message, and (KIP-467) the
/// records at fault, by index in their batch; the client fails those and retries the rest.
pub(crate) struct Refusal {
    code: ResponseError,
    message: String,
    record_errors: Vec<BatchIndexAndErrorMessage>,
}

impl From<(ResponseError, String)> for Refusal {
    fn from((code, message): (ResponseError, String)) -> Self {
        Refusal {
            code,
            message,
            record_errors: Vec::new(),
        }
    }
}

/// The Kafka error code and message for a refused append.
fn produce_error(partition: &Partition, e: ProduceError) -> (ResponseError, String) {
    match e {
        ProduceError::Fenced { producer_id, epoch } => (
            ResponseError::InvalidProducerEpoch,
            format!("producer {producer_id} epoch {epoch} is fenced"),
        ),
        ProduceError::NotInTransaction { producer_id, error } => (
            ResponseError::InvalidTxnState,
            format!(
                "producer {producer_id} has no ongoing transaction with {}-{}: {error}",
                partition.topic, partition.index
            ),
        ),
        ProduceError::DuplicateInMultiBatch { index } => (
            ResponseError::DuplicateSequenceNumber,
            format!("batch {index} of a multi-batch request repeats a written batch"),
        ),
        ProduceError::Producer(e @ ProducerError::InvalidEpoch { .. }) => {
            (ResponseError::InvalidProducerEpoch, e.to_string())
        }
        ProduceError::Producer(e @ ProducerError::OutOfOrder { .. }) => {
            (ResponseError::OutOfOrderSequenceNumber, e.to_string())
        }
        ProduceError::Producer(e @ ProducerError::CoordinatorFenced { .. }) => {
            (ResponseError::TransactionCoordinatorFenced, e.to_string())
        }
        ProduceError::Log(e) => (log_error_code(&e), e.to_string()),
        ProduceError::NotDurable { first_offset } => (
            ResponseError::NotEnoughReplicasAfterAppend,
            format!("written at offset {first_offset}, but its fsync failed"),
        ),
    }
}

pub(crate) fn log_error_code(e: &LogError) -> ResponseError {
    match e {
        LogError::CorruptBatch(_) => ResponseError::CorruptMessage,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        // Replication only (a follower's append); never the answer to a produce.
        LogError::OffsetMismatch { .. } => ResponseError::UnknownServerError,
        LogError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        LogError::Io(_) | LogError::StorageFailed(_) => ResponseError::KafkaStorageError,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gregor_log::batch::crc_count;
    use gregor_protocol::batch_builder::BatchBuilder;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::config::BrokerConfig;

    fn batch(pid: i64, seq: i32) -> Bytes {
        BatchBuilder::new()
            .producer(pid, 0)
            .base_sequence(seq)
            .records((0..3).map(|_| (None, Some(Bytes::from_static(b"value")), 1000)))
            .encode()
            .unwrap()
    }

    fn request(records: Bytes) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records))])])
    }

    /// A produce computes each batch's CRC once (validation), not again in the log, and
    /// the records are stored.
    #[test]
    fn produce_checksums_each_batch_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        let broker = Arc::new(Broker::open(config, ("127.0.0.1".into(), 9092)).unwrap());
        let topic = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(broker.create_topic("t", 1, 1, None, Default::default(), false))
            .unwrap();
        let cases = [
            (vec![batch(-1, 0)], 0),
            (vec![batch(-1, 0), batch(-1, 0), batch(-1, 0)], 3),
            (vec![batch(7, 0), batch(7, 3)], 12),
        ];
        for (batches, base) in cases {
            let n = batches.len() as u64;
            let records: Vec<u8> = batches.iter().flat_map(|b| b.to_vec()).collect();
            let before = crc_count::get();
            let pending = append_phase(&broker, request(Bytes::from(records)), 9);
            assert_eq!(crc_count::get() - before, n, "CRCs for {n} batches");
            let r = &pending.responses[0].partition_responses[0];
            assert_eq!((r.error_code, r.base_offset), (0, base));
        }
        assert_eq!(topic.partitions[0].log_end_offset(), 18);
        broker.shutdown();
    }
}
