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
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::sb;
use crate::config::FsyncPolicy;
use crate::state::{Broker, Partition};

pub async fn produce(
    broker: &Arc<Broker>,
    req: ProduceRequest,
    _version: i16,
) -> Option<ProduceResponse> {
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
                    Ok(topic) => match topic.partition(pd.index) {
                        None => Err((
                            ResponseError::UnknownTopicOrPartition,
                            format!("{}-{} does not exist", topic.name, pd.index),
                        )),
                        Some(partition) => append(
                            partition,
                            pd.records.as_deref(),
                            topic.max_message_bytes(broker.config.message_max_bytes),
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

/// Validates and appends one partition's records; returns (base offset, log start offset).
fn append(
    partition: &Partition,
    records: Option<&[u8]>,
    max_message_bytes: usize,
) -> Result<(i64, i64), (ResponseError, String)> {
    let records = match records {
        Some(r) if !r.is_empty() => r,
        _ => return Err((ResponseError::InvalidRecord, "no records".to_string())),
    };
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
            Ok(_) => {}
            Err(e) => return Err((ResponseError::CorruptMessage, e.to_string())),
        }
    }
    let mut log = partition.log.write().expect("log lock");
    match log.append(records) {
        Ok(info) => Ok((info.base_offset, log.log_start_offset())),
        Err(e) => Err((log_error_code(&e), e.to_string())),
    }
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
