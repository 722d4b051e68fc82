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

use gregor_log::{batch::iter_batches, LogError};
use gregor_protocol::records::{validate_batch_records, RecordsError};
use gregor_txn::{ProducerBatch, ProducerError, TxnError, Verdict};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::sb;
use crate::config::FsyncPolicy;
use crate::state::{Broker, Partition};
use crate::transactions::TransactionService;

pub async fn produce(
    broker: &Arc<Broker>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    append_phase(broker, req, version).finish().await
}

/// A produce whose records are appended (in request order) and whose answer now waits only
/// for durability. The connection can start the next request meanwhile: several pipelined
/// produces then share one group-commit fsync, and their answers still go out in order.
pub struct PendingProduce {
    acks: i16,
    responses: Vec<TopicProduceResponse>,
    flushed: Option<tokio::sync::oneshot::Receiver<crate::flusher::FlushResult>>,
}

/// Validates and appends every partition's records and queues the durability work;
/// never waits.
pub fn append_phase(broker: &Arc<Broker>, req: ProduceRequest, _version: i16) -> PendingProduce {
    let acks = req.acks;
    let mut written: Vec<Arc<Partition>> = Vec::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for topic_data in req.topic_data {
        let topic = broker.get_or_auto_create(&topic_data.name, true);
        let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
        for pd in topic_data.partition_data {
            let mut r = PartitionProduceResponse::default()
                .with_index(pd.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let outcome = if !matches!(acks, -1..=1) {
                Err((
                    ResponseError::InvalidRequiredAcks,
                    format!("invalid acks {acks}"),
                ))
            } else {
                match &topic {
                    Err(e) => Err((e.code, e.message.clone())),
                    Ok(topic) if crate::state::is_internal_topic(&topic.name) => Err((
                        ResponseError::InvalidTopicException,
                        format!("Cannot append to internal topic {}", topic.name),
                    )),
                    Ok(topic) => match topic.partition(pd.index) {
                        None => Err((
                            ResponseError::UnknownTopicOrPartition,
                            format!("{}-{} does not exist", topic.name, pd.index),
                        )),
                        Some(partition) => append(
                            broker.txns.get().map(|t| &**t),
                            partition,
                            pd.records.as_deref(),
                            &Limits {
                                max_message_bytes: topic
                                    .max_message_bytes(broker.config.message_max_bytes),
                                max_decompressed_bytes: broker.config.max_decompressed_batch_bytes,
                            },
                        )
                        .map(|(base, start)| {
                            if !written.iter().any(|p| Arc::ptr_eq(p, partition)) {
                                written.push(partition.clone());
                            }
                            (base, start)
                        }),
                    },
                }
            };
            match outcome {
                Ok((base_offset, log_start_offset)) => {
                    r.base_offset = base_offset;
                    r.log_start_offset = log_start_offset;
                }
                Err((code, message)) => {
                    tracing::debug!(topic = %topic_data.name.as_str(), partition = pd.index, ?code, %message, "produce rejected");
                    r.error_code = code.code();
                    r.error_message = Some(sb(message));
                }
            }
            partition_responses.push(r);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partition_responses),
        );
    }
    if !written.is_empty() {
        broker.notify_appended();
    }
    let wait = acks != 0 && broker.config.fsync == FsyncPolicy::Always;
    let mut flushed = None;
    if !written.is_empty() {
        match broker.config.fsync {
            // Group commit: acks=0 data is queued too, just not waited for.
            FsyncPolicy::Always => flushed = broker.flusher.request(&written, wait),
            FsyncPolicy::Interval => {
                let due: Vec<_> = written
                    .iter()
                    .filter(|p| {
                        let limit = broker
                            .topic(&p.topic)
                            .map_or(i64::MAX, |t| t.log_settings(&broker.config).flush_messages);
                        p.log.read().expect("log lock").unflushed().0 >= limit
                    })
                    .cloned()
                    .collect();
                if !due.is_empty() {
                    broker.flusher.request(&due, false);
                }
            }
            FsyncPolicy::Never => {}
        }
    }
    PendingProduce {
        acks,
        responses,
        flushed,
    }
}

impl PendingProduce {
    /// Waits until the appended data meets the durability policy and builds the response
    /// (`None` for acks=0, which gets no response).
    pub async fn finish(self) -> Option<ProduceResponse> {
        let PendingProduce {
            acks,
            mut responses,
            flushed,
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
                for t in &mut responses {
                    for p in &mut t.partition_responses {
                        if p.error_code == 0 {
                            p.error_code = ResponseError::KafkaStorageError.code();
                            p.error_message = Some(sb(format!("fsync failed: {e}")));
                        }
                    }
                }
            }
        }
        Some(ProduceResponse::default().with_responses(responses))
    }
}

/// The size limits a produced batch must meet.
struct Limits {
    /// `max.message.bytes` of the topic: the largest batch as sent.
    max_message_bytes: usize,
    /// The largest a compressed batch may grow when decompressed for validation.
    max_decompressed_bytes: usize,
}

/// Validates and appends one partition's records; returns (base offset, log start offset).
///
/// Every batch is checked before anything is written: header, CRC and size by
/// `iter_batches`, then its records (bounded decompression, framing, count and offset deltas)
/// by `gregor_protocol::records`, as Kafka's log validator does. A bad batch rejects the whole
/// partition's records.
fn append(
    txns: Option<&TransactionService>,
    partition: &Partition,
    records: Option<&[u8]>,
    limits: &Limits,
) -> Result<(i64, i64), (ResponseError, String)> {
    let max_message_bytes = limits.max_message_bytes;
    let records = match records {
        Some(r) if !r.is_empty() => r,
        _ => return Err((ResponseError::InvalidRecord, "no records".to_string())),
    };
    let mut headers = Vec::new();
    for batch in iter_batches(records) {
        match batch {
            Ok((header, _)) if header.total_size() > max_message_bytes => {
                return Err((
                    ResponseError::MessageTooLarge,
                    format!(
                        "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                        header.total_size()
                    ),
                ))
            }
            Ok((header, range)) => {
                if header.is_control() {
                    // Only the transaction coordinator writes markers.
                    return Err((
                        ResponseError::InvalidRecord,
                        "clients may not write control batches".to_string(),
                    ));
                }
                if header.is_transactional() && header.producer_id < 0 {
                    return Err((
                        ResponseError::InvalidRecord,
                        "a transactional batch needs a producer id".to_string(),
                    ));
                }
                validate_batch_records(&records[range], limits.max_decompressed_bytes).map_err(
                    |e| match e {
                        RecordsError::TooLarge { .. } => {
                            (ResponseError::MessageTooLarge, e.to_string())
                        }
                        _ => (ResponseError::CorruptMessage, e.to_string()),
                    },
                )?;
                headers.push(header);
            }
            Err(e) => return Err((ResponseError::CorruptMessage, e.to_string())),
        }
    }
    let producer_batches: Vec<Option<ProducerBatch>> = headers
        .iter()
        .map(|h| {
            (h.producer_id >= 0).then(|| {
                ProducerBatch::new(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.last_offset_delta,
                )
            })
        })
        .collect();
    let mut log = partition.log.write().expect("log lock");
    // KIP-890 part 1: a transactional batch is written only if its partition was added to
    // the producer's ongoing transaction at this epoch. Checked under the log lock, which
    // marker writes also take, so no batch slips in after its transaction's marker.
    for h in headers.iter().filter(|h| h.is_transactional()) {
        let verified = match txns {
            None => Err(TxnError::InvalidTxnState),
            Some(t) => t.verify_write(
                h.producer_id,
                h.producer_epoch,
                &partition.topic,
                partition.index,
            ),
        };
        match verified {
            Ok(()) => {}
            Err(TxnError::ProducerFenced) => {
                return Err((
                    ResponseError::InvalidProducerEpoch,
                    format!(
                        "producer {} epoch {} is fenced",
                        h.producer_id, h.producer_epoch
                    ),
                ))
            }
            Err(e) => {
                return Err((
                    ResponseError::InvalidTxnState,
                    format!(
                        "producer {} has no ongoing transaction with {}-{}: {e}",
                        h.producer_id, partition.topic, partition.index
                    ),
                ))
            }
        }
    }
    let mut producers = partition.producers.lock().expect("producer state lock");
    // Idempotence: decide every batch before writing any. A lone batch that repeats one
    // already written is answered with its original offsets and not written again.
    // Several batches are checked against a scratch copy, so each sees its predecessors.
    let mut scratch = None;
    for (i, pb) in producer_batches.iter().enumerate() {
        let Some(pb) = pb else { continue };
        let verdict = if headers.len() == 1 {
            producers.check(pb)
        } else {
            let table = scratch.get_or_insert_with(|| producers.clone());
            let verdict = table.check(pb);
            if verdict == Ok(Verdict::Append) {
                table.record(pb, -1, -1, headers[i].max_timestamp);
            }
            verdict
        };
        match verdict {
            Ok(Verdict::Append) => {}
            Ok(Verdict::Duplicate { first_offset, .. }) if headers.len() == 1 => {
                tracing::debug!(
                    producer_id = pb.producer_id,
                    sequence = pb.first_sequence,
                    first_offset,
                    "duplicate batch"
                );
                return Ok((first_offset, log.log_start_offset()));
            }
            Ok(Verdict::Duplicate { .. }) => {
                return Err((
                    ResponseError::DuplicateSequenceNumber,
                    format!("batch {i} of a multi-batch request repeats a written batch"),
                ))
            }
            Err(e @ ProducerError::InvalidEpoch { .. }) => {
                return Err((ResponseError::InvalidProducerEpoch, e.to_string()))
            }
            Err(e @ ProducerError::OutOfOrder { .. }) => {
                return Err((ResponseError::OutOfOrderSequenceNumber, e.to_string()))
            }
        }
    }
    let info = partition
        .append_locked(&mut log, &mut producers, records)
        .map_err(|e| (log_error_code(&e), e.to_string()))?;
    Ok((info.base_offset, log.log_start_offset()))
}

pub(crate) fn log_error_code(e: &LogError) -> ResponseError {
    match e {
        LogError::CorruptBatch(_) => ResponseError::CorruptMessage,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Io(_) | LogError::StorageFailed(_) => ResponseError::KafkaStorageError,
    }
}
