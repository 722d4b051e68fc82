//! Fetch (with long polling), ListOffsets and DeleteRecords: the read side of a partition.
//!
//! A fetch reads whole batches from the log up to the high watermark and hands them to the
//! client as they are stored; nothing is decoded per record. When less than `min_bytes` is
//! available it parks on the broker's append notification until data arrives or
//! `max_wait_ms` passes; it never sleeps in a poll loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gregor_log::{BatchHeader, LogError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, ProducerId,
};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::time::Instant;

use super::produce::log_error_code;
use super::served_partition;
use crate::broker::Broker;
use crate::partition::Partition;
use crate::registry::Topic;

/// ListOffsets special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub async fn fetch(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> FetchResponse {
    let max_wait =
        Duration::from_millis((req.max_wait_ms.max(0) as u64).min(broker.config.fetch_max_wait_ms));
    let deadline = Instant::now() + max_wait;
    let mut appends = broker.subscribe_appends();
    loop {
        appends.borrow_and_update();
        let (resp, bytes, stop_early) = fetch_once(broker, &req, version);
        if stop_early || bytes >= req.min_bytes.max(0) as usize || Instant::now() >= deadline {
            return resp;
        }
        tokio::select! {
            changed = appends.changed() => {
                if changed.is_err() {
                    return resp;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return fetch_once(broker, &req, version).0;
            }
        }
    }
}

/// One pass over the requested partitions: (response, bytes of records, whether an error
/// means the client should hear back at once).
fn fetch_once(broker: &Broker, req: &FetchRequest, version: i16) -> (FetchResponse, usize, bool) {
    let by_id = version >= 13;
    // A follower (replica id >= 0) reads up to the log end and moves its position.
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let follower = replica_id >= 0 && broker.cluster().is_some();
    let now_ms = broker.clock().now_ms().max(0) as u64;
    let mut budget = if req.max_bytes > 0 {
        (req.max_bytes as usize).min(broker.config.fetch_max_bytes)
    } else {
        broker.config.fetch_max_bytes
    };
    let mut total = 0usize;
    let mut any_error = false;
    let mut responses = Vec::with_capacity(req.topics.len());
    for ft in &req.topics {
        let topic: Option<Arc<Topic>> = if by_id {
            broker.topic_by_id(ft.topic_id)
        } else {
            broker.topic(&ft.topic)
        };
        let unknown = if by_id {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let mut partitions = Vec::with_capacity(ft.partitions.len());
        for fp in &ft.partitions {
            let mut pd = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(Bytes::new()));
            if req.isolation_level == 1 {
                pd.aborted_transactions = Some(vec![]);
            }
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(fp.partition)) else {
                pd.error_code = unknown.code();
                any_error = true;
                partitions.push(pd);
                continue;
            };
            if broker.check_leader(&partition.topic, fp.partition).is_err() {
                pd.error_code = ResponseError::NotLeaderOrFollower.code();
                any_error = true;
                partitions.push(pd);
                continue;
            }
            let limit = (fp.partition_max_bytes.max(0) as usize).min(budget);
            // Nothing is read once the response is full (only its offsets are answered).
            let wanted = (limit > 0 || total == 0).then_some(limit);
            if follower {
                let hw_before = partition.high_watermark();
                let last_fetched_epoch = if version >= 12 {
                    fp.last_fetched_epoch
                } else {
                    -1
                };
                match partition.follower_fetch(
                    replica_id,
                    fp.fetch_offset,
                    fp.current_leader_epoch,
                    last_fetched_epoch,
                    now_ms,
                ) {
                    Err(code) => {
                        pd.error_code = code.code();
                        any_error = true;
                        partitions.push(pd);
                        continue;
                    }
                    Ok(Some((epoch, end_offset))) => {
                        pd.diverging_epoch.epoch = epoch;
                        pd.diverging_epoch.end_offset = end_offset;
                        let offsets = partition.offsets();
                        pd.high_watermark = offsets.high_watermark;
                        pd.last_stable_offset = offsets.last_stable;
                        pd.log_start_offset = offsets.log_start;
                        any_error = true;
                        partitions.push(pd);
                        continue;
                    }
                    Ok(None) => {}
                }
                if partition.high_watermark() > hw_before {
                    // Consumers waiting below the high watermark can read now.
                    broker.notify_appended();
                }
            }
            // read_committed never reads past the last stable offset.
            let (offsets, read) = if follower {
                let (offsets, read) =
                    partition.fetch_for_follower(fp.fetch_offset, wanted.unwrap_or(0));
                (offsets, wanted.map(|_| read))
            } else {
                partition.fetch(fp.fetch_offset, wanted, req.isolation_level == 1)
            };
            pd.high_watermark = offsets.high_watermark;
            pd.last_stable_offset = offsets.last_stable;
            pd.log_start_offset = offsets.log_start;
            let Some(read) = read else {
                partitions.push(pd);
                continue;
            };
            match read {
                Ok(read) => {
                    // KIP-74: only the first data of the response may exceed the limits.
                    if total > 0 && read.data.len() > limit {
                        partitions.push(pd);
                        continue;
                    }
                    if req.isolation_level == 1 && !read.data.is_empty() {
                        // The aborted transactions overlapping the returned batches, so the
                        // client drops their records. Headers only: the log validated these
                        // batches when it stored them (librdkafka reads read_committed by
                        // default, so a CRC pass here cost every fetch a second read).
                        let last = gregor_log::batch::next_offset_after(&read.data)
                            .map_or(fp.fetch_offset, |next| next - 1);
                        let aborted = partition.aborted_between(fp.fetch_offset, last);
                        pd.aborted_transactions = Some(
                            aborted
                                .into_iter()
                                .map(|a| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_first_offset(a.first_offset)
                                })
                                .collect(),
                        );
                    }
                    total += read.data.len();
                    budget = budget.saturating_sub(read.data.len());
                    pd.records = Some(read.data);
                }
                Err(e) => {
                    if !matches!(e, LogError::OffsetOutOfRange { .. }) {
                        tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "fetch read failed");
                    }
                    pd.error_code = log_error_code(&e).code();
                    any_error = true;
                }
            }
            partitions.push(pd);
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(ft.topic.clone())
                .with_topic_id(ft.topic_id)
                .with_partitions(partitions),
        );
    }
    let resp = FetchResponse::default().with_responses(responses);
    (resp, total, any_error)
}

pub fn list_offsets(
    broker: &Arc<Broker>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let read_committed = version >= 2 && req.isolation_level == 1;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1)
                        // Not in the schema before v4; encoding refuses a non-default value.
                        .with_leader_epoch(if version >= 4 { 0 } else { -1 });
                    match served_partition(broker, topic.as_ref(), p.partition_index) {
                        Err(e) => r.error_code = e.code(),
                        Ok(partition) => match offset_for(partition, p.timestamp, read_committed) {
                            Ok(Some((offset, ts))) => {
                                r.offset = offset;
                                r.timestamp = ts;
                            }
                            Ok(None) => {}
                            Err(e) => r.error_code = log_error_code(&e).code(),
                        },
                    }
                    r
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// The (offset, timestamp) ListOffsets answers for `timestamp`; None means "no such offset"
/// (Kafka answers offset -1, timestamp -1).
fn offset_for(
    partition: &Partition,
    timestamp: i64,
    read_committed: bool,
) -> Result<Option<(i64, i64)>, LogError> {
    match timestamp {
        EARLIEST | EARLIEST_LOCAL => Ok(Some((partition.log_start_offset(), -1))),
        // read_committed: the last stable offset.
        LATEST if read_committed => Ok(Some((partition.offsets().last_stable, -1))),
        // The high watermark: a consumer never sees an offset the ISR does not have yet
        // (the log end on a single node).
        LATEST => Ok(Some((partition.offsets().high_watermark, -1))),
        MAX_TIMESTAMP => {
            let (batch, start) = partition.find_max_timestamp_batch()?;
            Ok(batch.and_then(|(h, bytes)| record_at(&h, bytes, start, |ts, best| ts > best)))
        }
        ts if ts >= 0 => {
            let (batch, start) = partition.find_batch_by_timestamp(ts)?;
            Ok(batch.and_then(|(h, bytes)| first_record_at_or_after(&h, bytes, start, ts)))
        }
        _ => Ok(None),
    }
}

/// Decodes one stored batch and returns the first record (offset >= `start`) with
/// timestamp >= `ts`.
fn first_record_at_or_after(
    h: &BatchHeader,
    bytes: Bytes,
    start: i64,
    ts: i64,
) -> Option<(i64, i64)> {
    records_of(h, bytes)
        .into_iter()
        .find(|&(o, t)| o >= start && t >= ts)
}

/// Decodes one stored batch and returns the record chosen by `better` over timestamps.
fn record_at(
    h: &BatchHeader,
    bytes: Bytes,
    start: i64,
    better: impl Fn(i64, i64) -> bool,
) -> Option<(i64, i64)> {
    let mut best: Option<(i64, i64)> = None;
    for (o, t) in records_of(h, bytes) {
        if o >= start && best.is_none_or(|(_, bt)| better(t, bt)) {
            best = Some((o, t));
        }
    }
    best
}

/// (offset, timestamp) of every record in a stored batch. Falls back to the batch's own
/// last offset and max timestamp if the batch cannot be decoded.
fn records_of(h: &BatchHeader, mut bytes: Bytes) -> Vec<(i64, i64)> {
    match RecordBatchDecoder::decode(&mut bytes) {
        Ok(set) => set
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp))
            .collect(),
        Err(e) => {
            tracing::warn!(base_offset = h.base_offset, error = %e, "could not decode stored batch");
            vec![(h.last_offset(), h.max_timestamp)]
        }
    }
}

pub fn delete_records(broker: &Arc<Broker>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    match served_partition(broker, topic.as_ref(), p.partition_index) {
                        Err(e) => r.error_code = e.code(),
                        Ok(partition) => match partition.delete_records_before(p.offset) {
                            Ok(Some(low)) => r.low_watermark = low,
                            Ok(None) => r.error_code = ResponseError::OffsetOutOfRange.code(),
                            Err(e) => r.error_code = log_error_code(&e).code(),
                        },
                    }
                    r
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
