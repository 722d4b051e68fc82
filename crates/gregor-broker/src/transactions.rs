//! The transaction coordinator service: `gregor_txn::TxnCoordinator` wired to the broker.
//!
//! * The state machine sits behind one mutex. A state change is decided as a *pending
//!   transition* (see `gregor_txn::coordinator`): the coordinator keeps the old state and
//!   answers CONCURRENT_TRANSACTIONS for the id meanwhile. Deciding and appending the record
//!   to `__transaction_state` happen under `write_order`, so records reach the log in the
//!   order the coordinator decided them ([`TransactionService::change`]). The caller then
//!   fsyncs and settles ([`TransactionService::settle`]): the transition is committed if its
//!   record is durable, aborted (the old state stays) if the append or the fsync failed.
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
//!   bumped epoch (the hung producer is fenced), rewrites the markers of transactions
//!   stuck in Prepare* (a failed marker or Complete write) after [`STUCK_RETRY_MS`], and
//!   every `transaction.remove.expired.transaction.cleanup.interval.ms` removes up to
//!   [`EXPIRED_IDS_PER_TICK`] transactional ids idle for `transactional.id.expiration.ms`
//!   (tombstones), continuing at the next tick while there are more.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gregor_client::BrokerConnection;
use gregor_txn::coordinator::{Ticket, Transition};
use gregor_txn::{MarkerJob, TxnConfig, TxnCoordinator, TxnError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::protocol::StrBytes;

use crate::appends::AppendSignal;
use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::groups::GroupService;
use crate::internal_topics::{self, encode_internal_batch, TXN_TOPIC};
use crate::markers::{Marker, MarkerWriter};
use crate::partition::Partition;
use crate::registry::{Topic, TopicRegistry};
use crate::replication::{LeadershipChange, TopicLeadership};
use gregor_os::SharedClock;

/// A transaction still preparing this long after its last change gets its markers
/// rewritten by the timer task.
const STUCK_RETRY_MS: i64 = 10_000;

/// WriteTxnMarkers is sent at this version (v1: flexible).
const WRITE_TXN_MARKERS_VERSION: i16 = 1;

/// Pause between rounds of marker writes whose partition leader was unknown or failed.
const MARKER_RETRY_BACKOFF_MS: u64 = 100;

/// Most transactional ids one timer tick removes (tombstones in one round of appends).
pub const EXPIRED_IDS_PER_TICK: usize = 1_000;

/// Why a transition's record did not become durable; the transition was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The `__transaction_state` partition is missing (Kafka: UNKNOWN_TOPIC_OR_PARTITION,
    /// answered as COORDINATOR_NOT_AVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The append or the fsync failed (Kafka: KAFKA_STORAGE_ERROR, answered as
    /// NOT_COORDINATOR).
    #[error("{0}")]
    Storage(String),
}

/// A decided transition whose record was appended (or not): hand it to
/// [`TransactionService::settle`]. Dropped unsettled (a handler that panicked or was
/// cancelled), it rolls the transition back, so the id is not left pending for ever.
#[must_use = "a pending transition blocks its transactional id until it is settled"]
pub struct Written {
    /// `None` once settled.
    ticket: Option<Ticket>,
    /// The partition and its log end (with the epoch this broker led it at) just after
    /// the append: what the ISR must have before the transition counts.
    appended: Result<(Arc<Partition>, i64, Option<i32>), WriteError>,
    coordinator: Arc<Mutex<TxnCoordinator>>,
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            tracing::warn!(transactional_id = %ticket.transactional_id(), "a {TXN_TOPIC} write was abandoned; transition rolled back");
            // Never dropped with a ticket while this thread holds the lock (`settle` takes
            // the tickets out first).
            let mut co = self
                .coordinator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            co.abort_pending(ticket);
        }
    }
}

pub struct TransactionService {
    coordinator: Arc<Mutex<TxnCoordinator>>,
    write_order: Mutex<()>,
    state_topic: Arc<Topic>,
    /// Where the markers go (the transaction's data partitions).
    registry: Arc<TopicRegistry>,
    /// Woken after markers are appended (read_committed fetches wait for them).
    appends: Arc<AppendSignal>,
    /// Completes pending transactional offsets (absent in some tests).
    groups: Option<Arc<GroupService>>,
    /// Wall-clock time.
    clock: SharedClock,
    /// In a cluster: who leads each transaction partition (markers go to other brokers
    /// with WriteTxnMarkers) and the leadership changes the coordinator follows.
    cluster: Option<Arc<Cluster>>,
    /// How long the ISR may take to have a `__transaction_state` record or a marker.
    write_timeout: Duration,
    /// Connections to other brokers for WriteTxnMarkers, by address.
    peers: Mutex<HashMap<String, Arc<BrokerConnection>>>,
    /// The loader, leadership and timer tasks, aborted by [`stop_timers`](Self::stop_timers).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Test hook: this many upcoming appends fail.
    #[cfg(test)]
    fail_appends: std::sync::atomic::AtomicUsize,
    /// Test hook: this many upcoming partition fsyncs fail (the log stays online).
    #[cfg(test)]
    fail_syncs: std::sync::atomic::AtomicUsize,
}

impl TransactionService {
    /// Creates `__transaction_state` if needed, loads it in the background (then completes
    /// transactions that were being committed/aborted) and starts the timeout task. Must be
    /// called inside a tokio runtime (the broker calls it:
    /// [`crate::Broker::start_transactions`]).
    pub fn start(
        config: &BrokerConfig,
        registry: Arc<TopicRegistry>,
        appends: Arc<AppendSignal>,
        groups: Option<Arc<GroupService>>,
        clock: SharedClock,
        cluster: Option<Arc<Cluster>>,
    ) -> anyhow::Result<Arc<TransactionService>> {
        let topic = internal_topics::ensure(
            &registry,
            TXN_TOPIC,
            config.transaction_state_log_num_partitions,
        )?;
        let txn_config = TxnConfig {
            state_partitions: topic.partitions.len() as i32,
            max_timeout_ms: config.transaction_max_timeout_ms,
        };
        // In a cluster each partition's ids are served once this broker leads it and has
        // replayed it (`follow_leadership`); a single node loads everything at start.
        let coordinator = match cluster {
            Some(_) => TxnCoordinator::new_partitioned(txn_config),
            None => TxnCoordinator::new(txn_config),
        };
        let service = Arc::new(TransactionService {
            coordinator: Arc::new(Mutex::new(coordinator)),
            write_order: Mutex::new(()),
            state_topic: topic,
            registry,
            appends,
            groups,
            clock,
            cluster,
            write_timeout: Duration::from_millis(config.offsets_commit_timeout_ms.max(1)),
            peers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            #[cfg(test)]
            fail_appends: Default::default(),
            #[cfg(test)]
            fail_syncs: Default::default(),
        });
        let timer = Timer {
            interval_ms: config.transaction_abort_check_interval_ms.max(10),
            id_expiration_ms: config.transactional_id_expiration_ms,
            id_expiry_interval_ms: config.transaction_remove_expired_interval_ms,
        };
        let mut tasks = Vec::new();
        if let Some(cluster) = service.cluster.clone() {
            // Subscribed before the first pass, so no change is missed between the two.
            let mut rx = cluster.replicas().subscribe();
            let svc = service.clone();
            tasks.push(tokio::spawn(async move {
                svc.follow_leadership(&cluster, &mut rx).await;
            }));
            let svc = service.clone();
            tasks.push(tokio::spawn(async move { svc.run_timer(timer).await }));
        } else {
            let svc = service.clone();
            tasks.push(tokio::spawn(async move {
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
                svc.run_timer(timer).await;
            }));
        }
        *service.tasks.lock().expect("tasks lock") = tasks;
        Ok(service)
    }

    /// In a cluster: the transactional ids of a `__transaction_state` partition this broker
    /// starts leading are rebuilt from its replicated log, and the markers of transactions
    /// found between Prepare and Complete are written; a partition another broker leads now
    /// is forgotten. Ids of a partition answer COORDINATOR_LOAD_IN_PROGRESS until its replay
    /// is done.
    async fn follow_leadership(
        self: &Arc<Self>,
        cluster: &Cluster,
        rx: &mut tokio::sync::broadcast::Receiver<LeadershipChange>,
    ) {
        let partitions = self.state_topic.partitions.len() as i32;
        let mut leadership = TopicLeadership::new(cluster.replicas(), rx, TXN_TOPIC, partitions);
        while let Some(changes) = leadership.next().await {
            for (p, leader) in changes {
                let svc = self.clone();
                let done =
                    tokio::task::spawn_blocking(move || svc.reload_partition(p, leader)).await;
                let jobs = match done {
                    Ok(Ok((records, jobs))) => {
                        if leader {
                            tracing::info!(partition = p, records, in_flight = jobs.len(), "transaction coordinator loaded a {TXN_TOPIC} partition it now leads");
                        }
                        jobs
                    }
                    Ok(Err(e)) => {
                        tracing::error!(partition = p, error = %e, "loading a {TXN_TOPIC} partition failed");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "loading a {TXN_TOPIC} partition panicked");
                        continue;
                    }
                };
                for job in jobs {
                    let svc = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = svc.complete_job(&job).await {
                            tracing::error!(transactional_id = %job.transactional_id, error = %e, "completing a transaction after a leadership change failed; the timer retries");
                        }
                    });
                }
            }
        }
    }

    /// Forgets partition `p`'s ids and, if this broker leads it, replays them from its log.
    /// Returns the records replayed and the transactions whose markers must be written.
    fn reload_partition(&self, p: i32, leader: bool) -> anyhow::Result<(u64, Vec<MarkerJob>)> {
        {
            // Under the write order: a change decided before the unload has appended its
            // record before the replay starts; after it, none is decided for `p`'s ids.
            let _order = self.write_order.lock().expect("write order lock");
            self.coordinator
                .lock()
                .expect("coordinator lock")
                .unload_partition(p);
        }
        if !leader {
            return Ok((0, vec![]));
        }
        let Some(partition) = self.state_topic.partition(p) else {
            return Ok((0, vec![]));
        };
        let mut count = 0u64;
        internal_topics::replay(partition, |records| {
            let mut co = self.coordinator.lock().expect("coordinator lock");
            for r in &records {
                if let Some(key) = &r.key {
                    if let Err(e) = co.replay(key, r.value.as_deref()) {
                        tracing::warn!(error = %e, "skipping a {TXN_TOPIC} record");
                    }
                    count += 1;
                }
            }
            Ok(())
        })?;
        let jobs = self
            .coordinator
            .lock()
            .expect("coordinator lock")
            .finish_loading_partition(p);
        Ok((count, jobs))
    }

    /// Shutdown: stops the timer (no more timeouts, marker retries or id expiry). A
    /// transaction it was completing stays in Prepare*, and the next start completes it.
    pub fn stop_timers(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }

    /// Replays `__transaction_state`; returns the record count and the transactions whose
    /// markers must be (re)written.
    fn load(&self) -> anyhow::Result<(u64, Vec<MarkerJob>)> {
        let count = self.replay_records(|key, value| {
            let mut co = self.coordinator.lock().expect("coordinator lock");
            if let Err(e) = co.replay(key, value) {
                tracing::warn!(error = %e, "skipping a {TXN_TOPIC} record");
            }
        })?;
        let jobs = self
            .coordinator
            .lock()
            .expect("coordinator lock")
            .finish_loading();
        Ok((count, jobs))
    }

    /// Calls `apply` with every keyed record of `__transaction_state` (value `None`: a
    /// tombstone), partition by partition in log order; returns how many.
    fn replay_records(&self, mut apply: impl FnMut(&[u8], Option<&[u8]>)) -> anyhow::Result<u64> {
        let mut count = 0u64;
        for partition in &self.state_topic.partitions {
            internal_topics::replay(partition, |records| {
                for r in &records {
                    if let Some(key) = &r.key {
                        apply(key, r.value.as_deref());
                        count += 1;
                    }
                }
                Ok(())
            })?;
        }
        Ok(count)
    }

    async fn run_timer(self: Arc<Self>, timer: Timer) {
        let mut next_id_expiry = self
            .clock
            .now_ms()
            .saturating_add(timer.id_expiry_interval_ms);
        loop {
            tokio::time::sleep(Duration::from_millis(timer.interval_ms)).await;
            let now = self.clock.now_ms();
            self.abort_timed_out(now).await;
            if now >= next_id_expiry {
                let (removed, more) = self
                    .expire_transactional_ids(now, timer.id_expiration_ms)
                    .await;
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed transactional ids idle for transactional.id.expiration.ms"
                    );
                }
                // A full batch: there may be more, continue at the next tick.
                if !more {
                    next_id_expiry = now.saturating_add(timer.id_expiry_interval_ms);
                }
            }
        }
    }

    /// One timer tick's transaction work: abort the transactions past their timeout, and
    /// retry the markers of transactions stuck in Prepare*.
    async fn abort_timed_out(&self, now: i64) {
        let (jobs, written) = self.change(|co| -> (Vec<MarkerJob>, Vec<Transition>) {
            co.expire(now).into_iter().unzip()
        });
        // Settled first: until then requests for these ids answer CONCURRENT_TRANSACTIONS.
        let results = self.settle(written).await;
        // Markers whose write failed earlier (EndTxn answered an error, or a timeout
        // abort failed) are retried.
        let stuck = self.read(|co| co.stuck(now, STUCK_RETRY_MS));
        for job in stuck {
            tracing::warn!(transactional_id = %job.transactional_id, "retrying transaction markers");
            if let Err(e) = self.complete_job(&job).await {
                tracing::error!(transactional_id = %job.transactional_id, error = %e, "retrying transaction markers failed");
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            if let Err(e) = result {
                // Rolled back: still Ongoing and past its timeout, so retried next tick.
                tracing::error!(transactional_id = %job.transactional_id, error = %e, "persisting a timed-out transaction's abort failed");
                continue;
            }
            tracing::info!(transactional_id = %job.transactional_id, producer_id = job.producer_id, "aborting a transaction that exceeded its timeout");
            if let Err(e) = self.complete_job(&job).await {
                tracing::error!(transactional_id = %job.transactional_id, error = %e, "aborting a timed-out transaction failed");
            }
        }
    }

    /// Removes up to [`EXPIRED_IDS_PER_TICK`] transactional ids idle for `expiration_ms`:
    /// writes a tombstone for each and forgets those whose tombstone is durable (the others
    /// stay, for the next pass). Returns how many were removed and whether to continue at
    /// the next tick (a full batch that was written without error: there may be more).
    pub async fn expire_transactional_ids(&self, now: i64, expiration_ms: i64) -> (usize, bool) {
        let (full, written) = self.change(|co| {
            let ts = co.expire_transactional_ids(now, expiration_ms, EXPIRED_IDS_PER_TICK);
            (ts.len() == EXPIRED_IDS_PER_TICK, ts)
        });
        let results = self.settle(written).await;
        let removed = results.iter().filter(|r| r.is_ok()).count();
        let failed = results.len() - removed;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            tracing::error!(failed, error = %e, "writing transactional id tombstones failed; those ids stay until the next pass");
        }
        (removed, full && failed == 0)
    }

    /// Decides state changes and appends their records to `__transaction_state`, in the
    /// order decided. The transitions stay pending until [`settle`](Self::settle)d.
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut TxnCoordinator) -> (R, Vec<Transition>),
    ) -> (R, Vec<Written>) {
        let _order = self.write_order.lock().expect("write order lock");
        let (result, transitions) = f(&mut self.coordinator.lock().expect("coordinator lock"));
        let written = transitions
            .into_iter()
            .map(|t| Written {
                appended: self
                    .append(t.record)
                    .map(|p| (p.clone(), p.log_end_offset(), p.leader_epoch())),
                ticket: Some(t.ticket),
                coordinator: self.coordinator.clone(),
            })
            .collect();
        (result, written)
    }

    /// Makes appended records durable (one fsync per partition), then commits each
    /// transition whose record is durable and rolls back the others. One result per
    /// transition, in order.
    pub async fn settle(&self, written: Vec<Written>) -> Vec<Result<(), WriteError>> {
        if written.is_empty() {
            return vec![];
        }
        // Each partition once, with the furthest log end appended to it.
        let mut partitions: Vec<(Arc<Partition>, i64, Option<i32>)> = Vec::new();
        for w in &written {
            if let Ok((p, end, epoch)) = &w.appended {
                match partitions.iter_mut().find(|(q, _, _)| Arc::ptr_eq(p, q)) {
                    Some(t) => t.1 = t.1.max(*end),
                    None => partitions.push((p.clone(), *end, *epoch)),
                }
            }
        }
        let mut synced = self
            .sync(partitions.iter().map(|(p, _, _)| p.clone()).collect())
            .await;
        // In a cluster a record counts once the ISR has it: a new leader of the partition
        // then replays it.
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        for ((p, end, epoch), result) in partitions.iter().zip(synced.iter_mut()) {
            if result.is_ok() {
                *result = match tokio::time::timeout_at(deadline, p.wait_replicated(*end, *epoch))
                    .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(WriteError::Storage(format!(
                        "{}-{} is no longer led here",
                        p.topic, p.index
                    ))),
                    Err(_) => Err(WriteError::Storage(format!(
                        "the ISR of {}-{} did not catch up in {:?}",
                        p.topic, p.index, self.write_timeout
                    ))),
                };
            }
        }
        // Tickets and outcomes out of `written` before locking: a `Written` dropped with its
        // ticket locks the coordinator.
        let settled: Vec<(Ticket, Result<(), WriteError>)> = written
            .into_iter()
            .filter_map(|mut w| {
                let outcome = w.appended.clone().and_then(|(p, _, _)| {
                    let i = partitions
                        .iter()
                        .position(|(q, _, _)| Arc::ptr_eq(&p, q))
                        .expect("partition was synced");
                    synced[i].clone()
                });
                w.ticket.take().map(|t| (t, outcome))
            })
            .collect();
        let mut co = self.coordinator.lock().expect("coordinator lock");
        settled
            .into_iter()
            .map(|(ticket, outcome)| {
                match &outcome {
                    Ok(()) => {
                        co.commit_pending(ticket);
                    }
                    Err(e) => {
                        tracing::warn!(transactional_id = %ticket.transactional_id(), error = %e, "{TXN_TOPIC} write failed; transition rolled back");
                        co.abort_pending(ticket);
                    }
                }
                outcome
            })
            .collect()
    }

    /// [`settle`](Self::settle), answering the first failure.
    pub async fn persist(&self, written: Vec<Written>) -> Result<(), WriteError> {
        self.settle(written).await.into_iter().collect()
    }

    /// fsyncs each partition; one result per partition.
    async fn sync(&self, partitions: Vec<Arc<Partition>>) -> Vec<Result<(), WriteError>> {
        let n = partitions.len();
        #[cfg(test)]
        let injected: Vec<bool> = (0..n).map(|_| take_one(&self.fail_syncs)).collect();
        #[cfg(not(test))]
        let injected = vec![false; n];
        let joined = tokio::task::spawn_blocking(move || {
            partitions
                .iter()
                .zip(injected)
                .map(|(p, fail)| {
                    if fail {
                        return Err(WriteError::Storage("injected fsync failure".into()));
                    }
                    p.flush().map_err(|e| WriteError::Storage(e.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .await;
        joined.unwrap_or_else(|e| vec![Err(WriteError::Storage(e.to_string())); n])
    }

    /// Read access to the coordinator.
    pub fn read<R>(&self, f: impl FnOnce(&TxnCoordinator) -> R) -> R {
        f(&self.coordinator.lock().expect("coordinator lock"))
    }

    /// Whether this broker coordinates `transactional_id`: on a single node always; in a
    /// cluster when it leads the id's `__transaction_state` partition.
    pub fn coordinates(&self, transactional_id: &str) -> bool {
        match &self.cluster {
            None => true,
            Some(c) => {
                let p = self.read(|co| co.partition_of(transactional_id));
                c.replicas().leads(TXN_TOPIC, p)
            }
        }
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

    fn append(&self, record: gregor_txn::TxnRecord) -> Result<Arc<Partition>, WriteError> {
        #[cfg(test)]
        if take_one(&self.fail_appends) {
            return Err(WriteError::Storage("injected append failure".into()));
        }
        let partition = self
            .state_topic
            .partition(record.partition)
            .ok_or_else(|| {
                WriteError::Unavailable(format!("{TXN_TOPIC}-{} does not exist", record.partition))
            })?;
        let batch = encode(
            vec![(Bytes::from(record.key), record.value.map(Bytes::from))],
            self.clock.now_ms(),
            None,
        )
        .map_err(|e| WriteError::Storage(e.to_string()))?;
        partition
            .append_internal(&batch)
            .map_err(|e| WriteError::Storage(e.to_string()))?;
        Ok(partition.clone())
    }

    /// Writes the job's markers (durably, and replicated to each partition's ISR) on the
    /// partitions' leaders: this broker's own through [`MarkerWriter`], other brokers' with
    /// WriteTxnMarkers. Partitions whose leader is unknown or failed are retried until the
    /// write timeout. Then records the transaction as complete.
    pub async fn complete_job(&self, job: &MarkerJob) -> Result<(), String> {
        let marker = Marker {
            producer_id: job.producer_id,
            producer_epoch: job.producer_epoch,
            commit: job.commit,
            coordinator_epoch: self.coordinator_epoch(&job.transactional_id),
        };
        let deadline = tokio::time::Instant::now() + self.write_timeout * 2;
        let mut remaining = job.partitions.clone();
        loop {
            remaining = self.write_markers(&marker, remaining).await;
            if remaining.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "markers not written to {remaining:?} in {:?}",
                    self.write_timeout * 2
                ));
            }
            tokio::time::sleep(Duration::from_millis(MARKER_RETRY_BACKOFF_MS)).await;
        }
        let (result, written) = self.change(|co| match co.complete(self.clock.now_ms(), job) {
            Ok(t) => (Ok(()), t.into_iter().collect()),
            Err(e) => (Err(e), vec![]),
        });
        result.map_err(|e| format!("completing the transaction: {e}"))?;
        // On failure the transaction stays in Prepare* and the timer retries it.
        self.persist(written).await.map_err(|e| e.to_string())
    }

    /// One round of marker writes; returns the partitions to try again.
    async fn write_markers(
        &self,
        marker: &Marker,
        partitions: Vec<(String, i32)>,
    ) -> Vec<(String, i32)> {
        let mut local = Vec::new();
        let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        let mut retry = Vec::new();
        for tp in partitions {
            match self.cluster.as_ref().map(|c| c.check_leader(&tp.0, tp.1)) {
                None | Some(Ok(())) => local.push(tp),
                Some(Err((leader, _))) if leader >= 0 => remote.entry(leader).or_default().push(tp),
                Some(Err(_)) => retry.push(tp),
            }
        }
        let writer = MarkerWriter {
            registry: &self.registry,
            appends: &self.appends,
            groups: self.groups.as_deref(),
            timeout: self.write_timeout,
        };
        let results = writer.write(marker, &local, self.clock.now_ms()).await;
        for (tp, result) in local.into_iter().zip(results) {
            self.keep_for_retry(tp, result, &mut retry);
        }
        for (broker, tps) in remote {
            match self.send_markers(broker, marker, &tps).await {
                Ok(results) => {
                    for (tp, result) in tps.into_iter().zip(results) {
                        self.keep_for_retry(tp, result, &mut retry);
                    }
                }
                Err(e) => {
                    tracing::debug!(broker, error = %e, "WriteTxnMarkers failed");
                    retry.extend(tps);
                }
            }
        }
        retry
    }

    /// A partition whose marker failed goes back for another round, unless it is gone.
    fn keep_for_retry(
        &self,
        tp: (String, i32),
        result: Result<(), ResponseError>,
        retry: &mut Vec<(String, i32)>,
    ) {
        match result {
            Ok(()) => {}
            Err(ResponseError::UnknownTopicOrPartition) if self.registry.topic(&tp.0).is_none() => {
                tracing::warn!(topic = %tp.0, partition = tp.1, "transaction partition no longer exists; no marker");
            }
            Err(e) => {
                tracing::debug!(topic = %tp.0, partition = tp.1, error = ?e, "transaction marker not written yet");
                retry.push(tp);
            }
        }
    }

    /// Sends one marker for `partitions` to `broker` (their leader); one result each.
    async fn send_markers(
        &self,
        broker: i32,
        marker: &Marker,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Result<(), ResponseError>>, String> {
        let cluster = self.cluster.as_ref().ok_or("not in a cluster")?;
        let addr = cluster
            .broker_addr(broker)
            .ok_or_else(|| format!("broker {broker} has no endpoint"))?;
        let conn = self.peer(&addr).await?;
        let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
        for (topic, p) in partitions {
            match topics.iter_mut().find(|t| t.name.as_str() == topic) {
                Some(t) => t.partition_indexes.push(*p),
                None => topics.push(
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_indexes(vec![*p]),
                ),
            }
        }
        let req =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(marker.producer_id))
                .with_producer_epoch(marker.producer_epoch)
                .with_transaction_result(marker.commit)
                .with_coordinator_epoch(marker.coordinator_epoch)
                .with_topics(topics)]);
        let resp = match conn.send_version(&req, WRITE_TXN_MARKERS_VERSION).await {
            Ok(r) => r,
            Err(e) => {
                self.peers.lock().expect("peers lock").remove(&addr);
                return Err(e.to_string());
            }
        };
        let codes: HashMap<(String, i32), i16> = resp
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| ((t.name.to_string(), p.partition_index), p.error_code))
            })
            .collect();
        Ok(partitions
            .iter()
            .map(|tp| match codes.get(tp) {
                Some(0) => Ok(()),
                Some(&code) => {
                    Err(ResponseError::try_from_code(code)
                        .unwrap_or(ResponseError::UnknownServerError))
                }
                None => Err(ResponseError::UnknownServerError),
            })
            .collect())
    }

    /// A connection to `addr`, opened if there is none or it died.
    async fn peer(&self, addr: &str) -> Result<Arc<BrokerConnection>, String> {
        let cached = self.peers.lock().expect("peers lock").get(addr).cloned();
        if let Some(c) = cached.filter(|c| !c.is_dead()) {
            return Ok(c);
        }
        let cluster_id = self.cluster.as_ref().map_or(-1, |c| c.broker_id());
        let conn = BrokerConnection::open(
            addr,
            &format!("gregor-txn-coordinator-{cluster_id}"),
            self.write_timeout + Duration::from_secs(10),
            1 << 20,
        )
        .await
        .map_err(|e| e.to_string())?;
        let conn = Arc::new(conn);
        self.peers
            .lock()
            .expect("peers lock")
            .insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// The leader epoch of the id's `__transaction_state` partition here (0 on a single
    /// node): the coordinator epoch its markers carry.
    fn coordinator_epoch(&self, transactional_id: &str) -> i32 {
        let p = self.read(|co| co.partition_of(transactional_id));
        self.state_topic
            .partition(p)
            .and_then(|p| p.leader_epoch())
            .unwrap_or(0)
    }
}

/// The timer task's settings.
struct Timer {
    interval_ms: u64,
    id_expiration_ms: i64,
    id_expiry_interval_ms: i64,
}

/// Test hook: takes one from a failure counter.
#[cfg(test)]
fn take_one(counter: &std::sync::atomic::AtomicUsize) -> bool {
    use std::sync::atomic::Ordering;
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// One v2 batch of `records`; transactional control batch of `marker` producer if given.
fn encode(
    records: Vec<(Bytes, Option<Bytes>)>,
    now: i64,
    marker: Option<(i64, i16)>,
) -> anyhow::Result<Bytes> {
    encode_internal_batch(records, now, marker, marker.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::handlers::txn;
    use crate::partition::producer_state::read_marker;
    use gregor_txn::records::{marker_key, marker_value};
    use gregor_txn::{TxnMetadata, TxnStatus};
    use kafka_protocol::error::ResponseError;
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, EndTxnRequest, InitProducerIdRequest, ProducerId, TopicName,
        TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    use std::sync::atomic::Ordering;

    const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
    const CONCURRENT_TRANSACTIONS: i16 = ResponseError::ConcurrentTransactions.code();

    struct Fixture {
        _dir: tempfile::TempDir,
        broker: Arc<Broker>,
        svc: Arc<TransactionService>,
        topic: Arc<Topic>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            // The timer stays out of the way: the test drives it.
            transaction_abort_check_interval_ms: 3_600_000,
            transaction_state_log_num_partitions: 2,
            ..BrokerConfig::default()
        };
        let broker = Arc::new(Broker::open(config, ("127.0.0.1".into(), 9092)).unwrap());
        let topic = broker
            .create_topic("t", 1, 1, None, Default::default(), false)
            .await
            .unwrap();
        let svc = broker.start_transactions().unwrap();
        while !svc.read(|co| co.is_loaded()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Fixture {
            _dir: dir,
            broker,
            svc,
            topic,
        }
    }

    impl Fixture {
        async fn init(&self) -> (i16, i64, i16) {
            let req = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let r = txn::init_producer_id(&self.broker, req, 4).await;
            (r.error_code, r.producer_id.0, r.producer_epoch)
        }

        async fn add(&self, pid: i64, epoch: i16) -> i16 {
            let req = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str(
                    "tx",
                )))
                .with_v3_and_below_producer_id(ProducerId(pid))
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![0])]);
            let r = txn::add_partitions_to_txn(&self.broker, req, 3).await;
            r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
        }

        async fn end(&self, pid: i64, epoch: i16, commit: bool) -> i16 {
            let req = EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(commit);
            txn::end_txn(&self.broker, req, 3).await.error_code
        }

        fn state(&self) -> Option<TxnMetadata> {
            self.svc.read(|co| co.get("tx").cloned())
        }

        fn state_log_end(&self) -> i64 {
            self.svc
                .state_topic
                .partitions
                .iter()
                .map(|p| p.log_end_offset())
                .sum()
        }

        fn markers(&self) -> i64 {
            self.topic.partitions[0].log_end_offset()
        }

        /// What a restart would load from `__transaction_state`.
        fn replayed(&self) -> Vec<TxnMetadata> {
            let mut co = TxnCoordinator::new(TxnConfig {
                state_partitions: self.svc.state_topic.partitions.len() as i32,
                max_timeout_ms: 900_000,
            });
            self.svc
                .replay_records(|k, v| co.replay(k, v).unwrap())
                .unwrap();
            co.finish_loading();
            co.all().cloned().collect()
        }
    }

    /// Each write path with a failing append or fsync: the request answers NOT_COORDINATOR,
    /// the coordinator keeps its previous state, and the client's retry succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_state_writes_roll_back() {
        let f = fixture().await;
        let fail_append = || f.svc.fail_appends.store(1, Ordering::SeqCst);
        let fail_sync = || f.svc.fail_syncs.store(1, Ordering::SeqCst);

        // InitProducerId of a new id: nothing is remembered, nothing written.
        fail_append();
        assert_eq!(f.init().await, (NOT_COORDINATOR, -1, -1));
        assert_eq!(f.state(), None);
        assert_eq!(f.state_log_end(), 0);
        let (err, pid, epoch) = f.init().await;
        assert_eq!((err, epoch), (0, 0));

        // An epoch bump whose fsync fails.
        let before = f.state();
        fail_sync();
        assert_eq!(f.init().await.0, NOT_COORDINATOR);
        assert_eq!(f.state(), before);
        assert_eq!(f.init().await, (0, pid, 1));
        let epoch = 1;

        // AddPartitionsToTxn: still Empty, and the partition is not writable.
        fail_append();
        assert_eq!(f.add(pid, epoch).await, NOT_COORDINATOR);
        assert_eq!(f.state().unwrap().status, TxnStatus::Empty);
        assert!(f.svc.verify_write(pid, epoch, "t", 0).is_err());
        assert_eq!(f.add(pid, epoch).await, 0);
        assert_eq!(f.svc.verify_write(pid, epoch, "t", 0), Ok(()));

        // EndTxn: the PrepareCommit record fails, the transaction is still Ongoing and no
        // marker was written; the retry commits.
        let before = f.state();
        let markers = f.markers();
        fail_sync();
        assert_eq!(f.end(pid, epoch, true).await, NOT_COORDINATOR);
        assert_eq!(f.state(), before);
        assert_eq!(f.markers(), markers);
        assert_eq!(f.end(pid, epoch, true).await, 0);
        assert_eq!(f.state().unwrap().status, TxnStatus::CompleteCommit);
        assert_eq!(f.markers(), markers + 1);

        // The Complete record after the markers fails: the transaction stays PrepareAbort
        // (EndTxn answers CONCURRENT_TRANSACTIONS meanwhile) until the markers are retried.
        assert_eq!(f.add(pid, epoch).await, 0);
        let (job, written) = f.svc.change(|co| {
            let (job, t) = co
                .end_txn(gregor_log::now_ms(), "tx", pid, epoch, false)
                .unwrap()
                .unwrap();
            (job, vec![t])
        });
        f.svc.persist(written).await.unwrap();
        fail_append();
        assert!(f.svc.complete_job(&job).await.is_err());
        assert_eq!(f.state().unwrap().status, TxnStatus::PrepareAbort);
        assert_eq!(f.end(pid, epoch, false).await, CONCURRENT_TRANSACTIONS);
        f.svc.complete_job(&job).await.unwrap();
        assert_eq!(f.state().unwrap().status, TxnStatus::CompleteAbort);
        assert_eq!(f.end(pid, epoch, false).await, 0);

        // A timeout abort: the transaction stays Ongoing at its epoch, the next tick aborts.
        assert_eq!(f.add(pid, epoch).await, 0);
        let before = f.state();
        let later = gregor_log::now_ms() + 120_000;
        fail_append();
        f.svc.abort_timed_out(later).await;
        assert_eq!(f.state(), before);
        f.svc.abort_timed_out(later).await;
        let m = f.state().unwrap();
        assert_eq!(
            (m.status, m.producer_epoch),
            (TxnStatus::CompleteAbort, epoch + 1)
        );

        // Transactional-id expiry: a failed tombstone keeps the id; then it goes.
        let before = f.state();
        fail_append();
        assert_eq!(f.svc.expire_transactional_ids(later, 1).await, (0, false));
        assert_eq!(f.state(), before);
        assert_eq!(f.replayed(), vec![before.unwrap()]);
        assert_eq!(f.svc.expire_transactional_ids(later, 1).await, (1, false));
        assert_eq!(f.state(), None);
        assert_eq!(f.replayed(), vec![]);
        // The id is new again: a new producer id at epoch 0.
        let (err, new_pid, epoch) = f.init().await;
        assert_eq!((err, epoch), (0, 0));
        assert_ne!(new_pid, pid);
        assert_eq!(f.replayed(), vec![f.state().unwrap()]);
        assert_eq!(f.svc.read(|co| co.pending_count()), 0);

        // A transition abandoned before it is settled (its handler panicked) is rolled
        // back: the id is not blocked.
        let before = f.state();
        let (_, written) = f.svc.change(|co| {
            let t = co.add_partitions(gregor_log::now_ms(), "tx", new_pid, 0, &[("t".into(), 0)]);
            ((), t.unwrap().into_iter().collect())
        });
        assert!(f.svc.read(|co| co.is_pending("tx")));
        drop(written);
        assert!(!f.svc.read(|co| co.is_pending("tx")));
        assert_eq!(f.state(), before);
        assert_eq!(f.add(new_pid, 0).await, 0);
    }

    #[test]
    fn marker_type_reads_what_encode_writes() {
        for commit in [true, false] {
            let b = encode(
                vec![(
                    Bytes::copy_from_slice(&marker_key(commit)),
                    Some(Bytes::copy_from_slice(&marker_value(9))),
                )],
                1,
                Some((7, 1)),
            )
            .unwrap();
            assert_eq!(read_marker(&b), Some((commit, 9)));
            let (h, _) = gregor_log::batch::iter_batches(&b).next().unwrap().unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (7, 1));
        }
        assert_eq!(read_marker(&[0u8; 70]), None);
    }
}
