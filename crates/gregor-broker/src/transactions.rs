//! The transaction coordinator service: `gregor_txn::TxnCoordinator` wired to the broker.
//!
//! * The state machine sits behind one mutex. A state change and the append of its record to
//!   `__transaction_state` happen under `write_order`, so records reach the log in the order
//!   the coordinator decided them; the caller then fsyncs before answering.
//! * EndTxn (and fencing InitProducerId, and the timeout) produce a [`MarkerJob`]: the
//!   PrepareCommit/PrepareAbort record is made durable, a control batch (COMMIT or ABORT
//!   marker) is appended to every partition of the transaction and fsynced, pending
//!   transactional offsets are completed in the group coordinator, and then the Complete
//!   record is written. A crash in between leaves a Prepare record, and the load on the next
//!   start rewrites the markers (writing a marker twice is harmless).
//! * Lock order: `write_order` → coordinator; a partition's `log` → coordinator (produce
//!   verification). The coordinator lock is never held while a data partition's log lock is
//!   taken.
//! * A timer task aborts transactions older than their `transaction.timeout.ms`, with a
//!   bumped epoch (the hung producer is fenced), and rewrites the markers of transactions
//!   stuck in Prepare* (a failed marker write) after [`STUCK_RETRY_MS`].

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use gregor_txn::records::{marker_key, marker_value};
use gregor_txn::{MarkerJob, TxnConfig, TxnCoordinator, TxnError, TxnRecord};
use kafka_protocol::records::RecordBatchDecoder;

use crate::groups::{now_ms, GroupService, OFFSETS_TOPIC};
use crate::state::{Broker, Partition, Topic};

/// The internal topic holding transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// A transaction still preparing this long after its last change gets its markers
/// rewritten by the timer task.
const STUCK_RETRY_MS: i64 = 10_000;

/// Coordinator epoch written into markers (single node: always 0).
const COORDINATOR_EPOCH: i32 = 0;

pub struct TransactionService {
    coordinator: Mutex<TxnCoordinator>,
    write_order: Mutex<()>,
    state_topic: Arc<Topic>,
    broker: Weak<Broker>,
}

impl TransactionService {
    /// Creates `__transaction_state` if needed, loads it in the background (then completes
    /// transactions that were being committed/aborted) and starts the timeout task.
    pub fn start(broker: &Arc<Broker>) -> anyhow::Result<Arc<TransactionService>> {
        let config = &broker.config;
        let topic =
            broker.ensure_internal_topic(TXN_TOPIC, config.transaction_state_log_num_partitions)?;
        let txn_config = TxnConfig {
            state_partitions: topic.partitions.len() as i32,
            max_timeout_ms: config.transaction_max_timeout_ms,
        };
        let service = Arc::new(TransactionService {
            coordinator: Mutex::new(TxnCoordinator::new(txn_config)),
            write_order: Mutex::new(()),
            state_topic: topic,
            broker: Arc::downgrade(broker),
        });
        if broker.txns.set(service.clone()).is_err() {
            anyhow::bail!("transaction coordinator already started");
        }
        let svc = service.clone();
        let check_interval = config.transaction_abort_check_interval_ms.max(10);
        tokio::spawn(async move {
            let l = svc.clone();
            let jobs = match tokio::task::spawn_blocking(move || l.load()).await {
                Ok(Ok((records, jobs))) => {
                    tracing::info!(records, in_flight = jobs.len(), "loaded {TXN_TOPIC}");
                    jobs
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "loading {TXN_TOPIC} failed");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "loading {TXN_TOPIC} panicked");
                    return;
                }
            };
            for job in jobs {
                if let Err(e) = svc.complete_job(&job).await {
                    tracing::error!(transactional_id = %job.transactional_id, error = %e, "completing a transaction after load failed");
                }
            }
            svc.run_timer(check_interval).await;
        });
        Ok(service)
    }

    /// Replays `__transaction_state`; returns the record count and the transactions whose
    /// markers must be (re)written.
    fn load(&self) -> anyhow::Result<(u64, Vec<MarkerJob>)> {
        let mut count = 0u64;
        for partition in &self.state_topic.partitions {
            partition
                .replay(|_, mut batch| {
                    let set = RecordBatchDecoder::decode(&mut batch)?;
                    let mut co = self.coordinator.lock().expect("coordinator lock");
                    for r in &set.records {
                        if let Some(key) = &r.key {
                            if let Err(e) = co.replay(key, r.value.as_deref()) {
                                tracing::warn!(error = %e, "skipping a {TXN_TOPIC} record");
                            }
                            count += 1;
                        }
                    }
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("replay of {TXN_TOPIC}-{}: {e}", partition.index))?;
        }
        let jobs = self
            .coordinator
            .lock()
            .expect("coordinator lock")
            .finish_loading();
        Ok((count, jobs))
    }

    async fn run_timer(self: Arc<Self>, interval_ms: u64) {
        loop {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            let now = now_ms();
            let (expired, written) = self.change(|co| {
                let expired = co.expire(now);
                let records = expired.iter().map(|(_, r)| r.clone()).collect();
                (expired, records)
            });
            // Markers whose write failed earlier (EndTxn answered an error, or a timeout
            // abort failed) are retried.
            let stuck = self.read(|co| co.stuck(now, STUCK_RETRY_MS));
            for job in stuck {
                tracing::warn!(transactional_id = %job.transactional_id, "retrying transaction markers");
                if let Err(e) = self.complete_job(&job).await {
                    tracing::error!(transactional_id = %job.transactional_id, error = %e, "retrying transaction markers failed");
                }
            }
            if expired.is_empty() {
                continue;
            }
            if let Err(e) = self.durable(written).await {
                tracing::error!(error = %e, "persisting timed-out transactions failed");
                continue;
            }
            for (job, _) in expired {
                tracing::info!(transactional_id = %job.transactional_id, producer_id = job.producer_id, "aborting a transaction that exceeded its timeout");
                if let Err(e) = self.complete_job(&job).await {
                    tracing::error!(transactional_id = %job.transactional_id, error = %e, "aborting a timed-out transaction failed");
                }
            }
        }
    }

    /// Runs a state change and appends its records to `__transaction_state`, in order.
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut TxnCoordinator) -> (R, Vec<TxnRecord>),
    ) -> (R, Result<Vec<Arc<Partition>>, String>) {
        let _order = self.write_order.lock().expect("write order lock");
        let (result, records) = f(&mut self.coordinator.lock().expect("coordinator lock"));
        let written = self.append(records);
        (result, written)
    }

    /// Read access to the coordinator.
    pub fn read<R>(&self, f: impl FnOnce(&TxnCoordinator) -> R) -> R {
        f(&self.coordinator.lock().expect("coordinator lock"))
    }

    /// KIP-890 part 1: whether `producer_id` at `epoch` may write transactional data to this
    /// partition (it was added to the producer's ongoing transaction).
    pub fn verify_write(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        self.read(|co| co.verify_write(producer_id, epoch, topic, partition))
    }

    fn append(&self, records: Vec<TxnRecord>) -> Result<Vec<Arc<Partition>>, String> {
        let now = now_ms();
        let mut written: Vec<Arc<Partition>> = Vec::new();
        for r in records {
            let partition = self
                .state_topic
                .partition(r.partition)
                .ok_or_else(|| format!("{TXN_TOPIC}-{} does not exist", r.partition))?;
            let batch = encode(
                vec![(Bytes::from(r.key), Some(Bytes::from(r.value)))],
                now,
                None,
            )
            .map_err(|e| e.to_string())?;
            let mut log = partition.log.write().expect("log lock");
            let mut producers = partition.producers.lock().expect("producer state lock");
            partition
                .append_locked(&mut log, &mut producers, &batch)
                .map_err(|e| e.to_string())?;
            if !written.iter().any(|p| Arc::ptr_eq(p, partition)) {
                written.push(partition.clone());
            }
        }
        Ok(written)
    }

    /// Makes appended records durable.
    pub async fn durable(
        &self,
        written: Result<Vec<Arc<Partition>>, String>,
    ) -> Result<(), String> {
        GroupService::sync(written?).await
    }

    /// Writes the job's markers durably, completes pending group offsets, then records the
    /// transaction as complete.
    pub async fn complete_job(&self, job: &MarkerJob) -> Result<(), String> {
        let broker = self.broker.upgrade().ok_or("broker is gone")?;
        let now = now_ms();
        let batch = encode(
            vec![(
                Bytes::copy_from_slice(&marker_key(job.commit)),
                Some(Bytes::copy_from_slice(&marker_value(COORDINATOR_EPOCH))),
            )],
            now,
            Some((job.producer_id, job.producer_epoch)),
        )
        .map_err(|e| e.to_string())?;
        let mut written = Vec::new();
        let mut offsets_partitions = false;
        for (topic, index) in &job.partitions {
            let Some(partition) = broker
                .topic(topic)
                .and_then(|t| t.partition(*index).cloned())
            else {
                tracing::warn!(topic = %topic, partition = index, "transaction partition no longer exists; no marker");
                continue;
            };
            {
                let mut log = partition.log.write().expect("log lock");
                let mut producers = partition.producers.lock().expect("producer state lock");
                partition
                    .append_locked(&mut log, &mut producers, &batch)
                    .map_err(|e| e.to_string())?;
            }
            offsets_partitions |= topic == OFFSETS_TOPIC;
            written.push(partition);
        }
        broker.notify_appended();
        GroupService::sync(written).await?;
        if offsets_partitions {
            if let Some(groups) = broker.groups.get() {
                groups.complete_txn(job.producer_id, job.commit);
            }
        }
        let (_, written) = self.change(|co| {
            let record = co.complete(now_ms(), job);
            ((), record.into_iter().collect())
        });
        self.durable(written).await
    }
}

/// One v2 batch of `records`; transactional control batch of `marker` producer if given.
fn encode(
    records: Vec<(Bytes, Option<Bytes>)>,
    now: i64,
    marker: Option<(i64, i16)>,
) -> anyhow::Result<Bytes> {
    crate::state::encode_internal_batch(records, now, marker, marker.is_some())
}

/// Reads whether a stored control batch is a COMMIT (`Some(true)`) or ABORT marker, from
/// the key of its first record (uncompressed, as markers are written).
pub fn marker_type(batch: &[u8]) -> Option<bool> {
    let mut pos = gregor_log::BatchHeader::SIZE;
    let _length = read_varint(batch, &mut pos)?;
    pos += 1; // attributes
    let _ts = read_varint(batch, &mut pos)?;
    let _delta = read_varint(batch, &mut pos)?;
    let key_len = read_varint(batch, &mut pos)?;
    let key_len = usize::try_from(key_len).ok()?;
    let key = batch.get(pos..pos.checked_add(key_len)?)?;
    gregor_txn::records::decode_marker_key(key)
}

/// A zigzag varint (up to 64 bits).
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_type_reads_what_encode_writes() {
        for commit in [true, false] {
            let b = encode(
                vec![(
                    Bytes::copy_from_slice(&marker_key(commit)),
                    Some(Bytes::copy_from_slice(&marker_value(0))),
                )],
                1,
                Some((7, 1)),
            )
            .unwrap();
            assert_eq!(marker_type(&b), Some(commit));
            let (h, _) = gregor_log::batch::iter_batches(&b).next().unwrap().unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (7, 1));
        }
        assert_eq!(marker_type(&[0u8; 70]), None);
    }
}
