//! The internal topics, written only by the broker's own coordinators:
//! `__consumer_offsets` (the group coordinator, [`crate::groups`]) and
//! `__transaction_state` (the transaction coordinator, [`crate::transactions`]).
//! What both share lives here: their names, creating them ([`ensure`]), encoding the
//! batches they write ([`encode_internal_batch`]; transaction markers too), replaying them
//! on start ([`replay`]) and making written partitions durable ([`sync`]).

use std::sync::Arc;

use bytes::Bytes;
use gregor_protocol::batch_builder::BatchBuilder;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::partition::Partition;
use crate::registry::{Topic, TopicRegistry};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic holding transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Internal topics are written only by the broker's own coordinators: clients may read and
/// describe them, but not produce to, delete or repartition them (the coordinators' hash of
/// a key to a partition depends on the partition count).
pub fn is_internal_topic(name: &str) -> bool {
    matches!(name, OFFSETS_TOPIC | TXN_TOPIC)
}

/// Returns an internal topic, creating it compacted with `partitions` partitions if it
/// does not exist yet. An existing topic keeps its count: the coordinators'
/// key-to-partition hash depends on it.
pub fn ensure(registry: &TopicRegistry, name: &str, partitions: i32) -> anyhow::Result<Arc<Topic>> {
    debug_assert!(is_internal_topic(name));
    registry.get_or_create_compacted(name, partitions)
}

/// Calls `f` with the records of every batch of `partition`, in log order.
pub fn replay(
    partition: &Partition,
    mut f: impl FnMut(Vec<Record>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    partition
        .replay(|_, mut batch| f(RecordBatchDecoder::decode(&mut batch)?.records))
        .map_err(|e| anyhow::anyhow!("replay of {}-{}: {e}", partition.topic, partition.index))
}

/// Makes written partitions durable (fdatasync on a blocking thread), then writes their
/// due producer snapshots.
pub async fn sync(written: Vec<Arc<Partition>>) -> Result<(), String> {
    if written.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        for p in &written {
            p.flush().map_err(|e| e.to_string())?;
        }
        for p in &written {
            p.write_due_snapshots();
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Where each written partition's log ends now and the epoch this broker leads it at:
/// what [`replicated`] waits for.
pub fn replication_targets(written: &[Arc<Partition>]) -> Vec<(Arc<Partition>, i64, Option<i32>)> {
    written
        .iter()
        .map(|p| (p.clone(), p.log_end_offset(), p.leader_epoch()))
        .collect()
}

/// In a cluster: waits until the ISR has every target up to its offset (the records a
/// coordinator wrote), at most `timeout`. NOT_COORDINATOR when the leadership moved,
/// REQUEST_TIMED_OUT when the ISR did not catch up. At once on a single node.
pub async fn replicated(
    targets: Vec<(Arc<Partition>, i64, Option<i32>)>,
    timeout: std::time::Duration,
) -> Result<(), kafka_protocol::error::ResponseError> {
    use kafka_protocol::error::ResponseError;
    let deadline = tokio::time::Instant::now() + timeout;
    for (p, end, epoch) in targets {
        match tokio::time::timeout_at(deadline, p.wait_replicated(end, epoch)).await {
            Ok(true) => {}
            Ok(false) => return Err(ResponseError::NotCoordinator),
            Err(_) => return Err(ResponseError::RequestTimedOut),
        }
    }
    Ok(())
}

/// Encodes `(key, value)` records for an internal topic as uncompressed v2 batches (one per
/// record: see [`BatchBuilder`]), written by the broker itself. With `producer`, the batch is transactional for that
/// producer (and a control batch if `control`: a transaction marker).
pub fn encode_internal_batch(
    records: impl IntoIterator<Item = (Bytes, Option<Bytes>)>,
    now: i64,
    producer: Option<(i64, i16)>,
    control: bool,
) -> anyhow::Result<Bytes> {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    BatchBuilder::new()
        .producer(producer_id, producer_epoch)
        .transactional(producer.is_some())
        .control(control)
        .records(
            records
                .into_iter()
                .map(|(key, value)| (Some(key), value, now)),
        )
        .encode()
}
