//! WriteTxnMarkers (API 27): another broker's transaction coordinator ends a transaction
//! on the partitions this broker leads. Each marker is written by
//! [`crate::markers::MarkerWriter`] (appended, fsynced, then answered once the ISR has it);
//! errors are per partition, and the coordinator retries the ones that failed.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use crate::broker::Broker;
use crate::markers::Marker;

pub async fn write_txn_markers(
    broker: &Arc<Broker>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let writer = broker.marker_writer();
    let mut markers = Vec::with_capacity(req.markers.len());
    for m in &req.markers {
        let marker = Marker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        // Partitions another broker leads are refused before anything is written.
        let mut partitions = Vec::new();
        let mut codes: Vec<Result<(), ResponseError>> = Vec::new();
        for t in &m.topics {
            for &p in &t.partition_indexes {
                let topic = t.name.to_string();
                match broker.topic(&topic).and_then(|tp| tp.partition(p).cloned()) {
                    None => codes.push(Err(ResponseError::UnknownTopicOrPartition)),
                    Some(_) if broker.check_leader(&topic, p).is_err() => {
                        codes.push(Err(ResponseError::NotLeaderOrFollower))
                    }
                    Some(_) => {
                        codes.push(Ok(()));
                        partitions.push((topic, p));
                    }
                }
            }
        }
        let mut written = writer
            .write(&marker, &partitions, broker.now_ms())
            .await
            .into_iter();
        for c in codes.iter_mut() {
            if c.is_ok() {
                *c = written
                    .next()
                    .unwrap_or(Err(ResponseError::UnknownServerError));
            }
        }
        let mut codes = codes.into_iter();
        let topics = m
            .topics
            .iter()
            .map(|t| {
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| {
                                let code = codes.next().and_then(Result::err).map_or(0, |e| e.code());
                                if code != 0 {
                                    tracing::debug!(topic = %t.name.as_str(), partition = p, code, "WriteTxnMarkers partition refused");
                                }
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
