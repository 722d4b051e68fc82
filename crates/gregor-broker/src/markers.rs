//! Transaction markers on the partitions this broker leads: the partition side of a
//! transaction's end. The local transaction coordinator calls [`write`] for the partitions
//! it leads itself; the WriteTxnMarkers handler (API 27) calls it for the markers another
//! broker's coordinator sends.
//!
//! A marker is a control batch (COMMIT or ABORT) of the producer at its epoch. It is
//! appended through the partition's normal path (so the producer state and the aborted
//! transaction index see it), made durable, and acknowledged once the ISR has it (a marker
//! is written with acks=all, as Kafka's coordinator writes them). A marker on a
//! `__consumer_offsets` partition also completes the producer's pending transactional
//! offsets in the group coordinator.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gregor_txn::records::{marker_key, marker_value};
use kafka_protocol::error::ResponseError;

use crate::appends::AppendSignal;
use crate::groups::GroupService;
use crate::internal_topics::{self, encode_internal_batch, OFFSETS_TOPIC};
use crate::partition::{Partition, ProduceError};
use crate::registry::TopicRegistry;
use gregor_txn::ProducerError;

/// One transaction's end, as a coordinator hands it to a partition leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// The leader epoch of the coordinator's `__transaction_state` partition.
    pub coordinator_epoch: i32,
}

/// Where markers are written: the broker's partitions and what an append wakes.
pub struct MarkerWriter<'a> {
    pub registry: &'a TopicRegistry,
    pub appends: &'a AppendSignal,
    pub groups: Option<&'a GroupService>,
    /// How long the ISR may take to have the markers.
    pub timeout: Duration,
}

impl MarkerWriter<'_> {
    /// Writes `marker` to each of `partitions`; one result per partition, in order. A
    /// partition this broker does not lead answers NOT_LEADER_OR_FOLLOWER, an unknown one
    /// UNKNOWN_TOPIC_OR_PARTITION, a failed append or fsync KAFKA_STORAGE_ERROR, an ISR that
    /// did not catch up in time REQUEST_TIMED_OUT, a marker of an older producer epoch
    /// INVALID_PRODUCER_EPOCH and one of an older coordinator (a zombie that lost its
    /// `__transaction_state` partition) TRANSACTION_COORDINATOR_FENCED. Writing a marker
    /// twice is harmless.
    pub async fn write(
        &self,
        marker: &Marker,
        partitions: &[(String, i32)],
        now: i64,
    ) -> Vec<Result<(), ResponseError>> {
        let mut results: Vec<Result<(), ResponseError>> = vec![Ok(()); partitions.len()];
        let batch = match encode(marker, now) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding a transaction marker failed");
                return vec![Err(ResponseError::UnknownServerError); partitions.len()];
            }
        };
        let mut written: Vec<(usize, Arc<Partition>)> = Vec::new();
        for (i, (topic, index)) in partitions.iter().enumerate() {
            let Some(partition) = self
                .registry
                .topic(topic)
                .and_then(|t| t.partition(*index).cloned())
            else {
                results[i] = Err(ResponseError::UnknownTopicOrPartition);
                continue;
            };
            match partition.append_marker(
                &batch,
                marker.producer_id,
                marker.producer_epoch,
                marker.coordinator_epoch,
            ) {
                Ok(_) => written.push((i, partition)),
                Err(e) => {
                    tracing::warn!(topic = %topic, partition = index, error = ?e, "appending a transaction marker failed");
                    results[i] = Err(match e {
                        ProduceError::Producer(ProducerError::CoordinatorFenced { .. }) => {
                            ResponseError::TransactionCoordinatorFenced
                        }
                        ProduceError::Producer(_) => ResponseError::InvalidProducerEpoch,
                        // A follower's log takes only its leader's batches.
                        _ if partition.isr_size().is_none() => ResponseError::NotLeaderOrFollower,
                        _ => ResponseError::KafkaStorageError,
                    });
                }
            }
        }
        if written.is_empty() {
            return results;
        }
        self.appends.notify();
        let partitions_written: Vec<Arc<Partition>> =
            written.iter().map(|(_, p)| p.clone()).collect();
        let targets = internal_topics::replication_targets(&partitions_written);
        if let Err(e) = internal_topics::sync(partitions_written).await {
            tracing::error!(error = %e, "making transaction markers durable failed");
            for (i, _) in &written {
                results[*i] = Err(ResponseError::KafkaStorageError);
            }
            return results;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut offsets_done = false;
        for ((i, partition), (p, end, epoch)) in written.iter().zip(targets) {
            results[*i] =
                match tokio::time::timeout_at(deadline, p.wait_replicated(end, epoch)).await {
                    Ok(true) => {
                        offsets_done |= partition.topic == OFFSETS_TOPIC;
                        Ok(())
                    }
                    Ok(false) => Err(ResponseError::NotLeaderOrFollower),
                    Err(_) => Err(ResponseError::RequestTimedOut),
                };
        }
        if offsets_done {
            if let Some(groups) = self.groups {
                groups.complete_txn(marker.producer_id, marker.commit);
            }
        }
        results
    }
}

/// The control batch of `marker`.
fn encode(marker: &Marker, now: i64) -> anyhow::Result<Bytes> {
    encode_internal_batch(
        vec![(
            Bytes::copy_from_slice(&marker_key(marker.commit)),
            Some(Bytes::copy_from_slice(&marker_value(
                marker.coordinator_epoch,
            ))),
        )],
        now,
        Some((marker.producer_id, marker.producer_epoch)),
        true,
    )
}
