//! The transaction coordinator as a sans-I/O state machine.
//!
//! Inputs: requests (InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn), replayed `__transaction_state` records and time. Outputs:
//! answers, records to append to `__transaction_state` ([`TxnRecord`]) and marker jobs
//! ([`MarkerJob`]: write COMMIT/ABORT control batches to these partitions, then call
//! [`TxnCoordinator::complete`]).
//!
//! Pending transitions (Kafka's `prepareTransitionTo` / `completeTransitionTo`): a request
//! that changes a transactional id's state does not change it in memory. It returns a
//! [`Transition`]: the record to append to `__transaction_state` and a [`Ticket`]. Until the
//! caller settles the ticket the id's observable state (`get`, `all`, `verify_write`) is the
//! old one and every other request for the id answers CONCURRENT_TRANSACTIONS. Once the
//! record is durable the caller calls [`TxnCoordinator::commit_pending`] (the new state
//! takes effect); if its append or fsync failed, [`TxnCoordinator::abort_pending`] (the old
//! state stays, as if the request had never come). A producer id allocated by a transition
//! that is aborted is simply never used (ids are never reused anyway).
//!
//! Transactional-id expiry (`transactional.id.expiration.ms`): an id in Empty /
//! CompleteCommit / CompleteAbort that has not changed for that long is removed
//! ([`TxnCoordinator::expire_transactional_ids`]) by a pending transition whose record is a
//! tombstone; ids with a transaction in progress never expire.
//!
//! States and transitions follow Kafka's `TransactionMetadata`:
//!
//! ```text
//! Empty/CompleteCommit/CompleteAbort --AddPartitions--> Ongoing
//! Ongoing --EndTxn(commit)--> PrepareCommit --markers written--> CompleteCommit
//! Ongoing --EndTxn(abort) / timeout / fencing InitProducerId--> PrepareAbort --> CompleteAbort
//! Empty/CompleteCommit/CompleteAbort --transactional.id.expiration.ms--> (removed)
//! ```
//!
//! Fencing (KIP-360/588): every InitProducerId bumps the epoch; an ongoing transaction is
//! aborted with the bumped epoch first (the old producer's later requests carry an older
//! epoch and get PRODUCER_FENCED). A timed-out transaction is aborted with a bumped epoch too.

use std::collections::{BTreeSet, HashMap};

use crate::records;

/// Transaction status, with Kafka's numeric codes (`TransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxnStatus {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnStatus {
    pub fn from_i8(v: i8) -> Option<TxnStatus> {
        Some(match v {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            6 => TxnStatus::Dead,
            7 => TxnStatus::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions/ListTransactions report.
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
            TxnStatus::Dead => "Dead",
            TxnStatus::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_preparing(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// Partitions in the current transaction (topic, partition).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the current transaction started (first partition added).
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// A record for `__transaction_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// Partition of `__transaction_state`.
    pub partition: i32,
    pub key: Vec<u8>,
    /// `None`: a tombstone (the transactional id was removed).
    pub value: Option<Vec<u8>>,
}

/// The right to settle one pending transition: pass it to exactly one of
/// [`TxnCoordinator::commit_pending`] (its record is durable) or
/// [`TxnCoordinator::abort_pending`] (its record could not be written).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pending transition blocks its transactional id until it is settled"]
pub struct Ticket {
    transactional_id: String,
    seq: u64,
}

impl Ticket {
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }
}

/// A decided state change: append `record` to `__transaction_state`, make it durable, then
/// settle `ticket`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pending transition blocks its transactional id until it is settled"]
pub struct Transition {
    pub ticket: Ticket,
    pub record: TxnRecord,
}

/// A transition waiting for its record to be durable.
#[derive(Debug)]
struct Pending {
    seq: u64,
    /// The state once committed; `None` removes the id (expiry).
    next: Option<TxnMetadata>,
}

/// Write a COMMIT (or ABORT) marker with this producer id and epoch to each partition, then
/// call [`TxnCoordinator::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerJob {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub partitions: Vec<(String, i32)>,
}

/// Errors, each mapping to one Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("the coordinator is loading")]
    LoadInProgress,
    #[error("a previous transaction is still completing")]
    ConcurrentTransactions,
    #[error("producer fenced by a newer epoch")]
    ProducerFenced,
    #[error("producer id does not match the transactional id")]
    InvalidProducerIdMapping,
    #[error("invalid transaction state for this request")]
    InvalidTxnState,
    #[error("transaction timeout out of range")]
    InvalidTransactionTimeout,
    #[error("no producer id available")]
    Unavailable,
}

/// What InitProducerId needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    /// Answer with this id and epoch once the transition is durable and committed.
    Ready {
        producer_id: i64,
        producer_epoch: i16,
        transition: Transition,
    },
    /// An ongoing transaction was fenced: persist and commit the transition, run the job,
    /// call `complete`, then call `init_producer_id` again.
    AbortFirst {
        job: MarkerJob,
        transition: Transition,
    },
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// Partitions of `__transaction_state`.
    pub state_partitions: i32,
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
}

/// Kafka's partition of a transactional id: `abs(javaHashCode(id)) % n`.
pub fn txn_partition(transactional_id: &str, partitions: i32) -> i32 {
    gregor_wire::coordinator_partition(transactional_id, partitions)
}

/// The transaction coordinator of this broker (every `__transaction_state` partition).
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    /// Committed (durable) state of every known transactional id.
    txns: HashMap<String, TxnMetadata>,
    by_producer: HashMap<i64, String>,
    /// Transitions decided but not yet settled, at most one per transactional id.
    pending: HashMap<String, Pending>,
    next_seq: u64,
    loaded: bool,
    /// In a cluster: the `__transaction_state` partitions whose ids this coordinator does not
    /// serve now (another broker leads them, or their replay is under way). Their ids answer
    /// COORDINATOR_LOAD_IN_PROGRESS and the timers leave them alone.
    unready: BTreeSet<i32>,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            txns: HashMap::new(),
            by_producer: HashMap::new(),
            pending: HashMap::new(),
            next_seq: 0,
            loaded: false,
            unready: BTreeSet::new(),
        }
    }

    /// A coordinator for a cluster member: nothing is served until a partition is loaded
    /// with [`unload_partition`](Self::unload_partition) + replay +
    /// [`finish_loading_partition`](Self::finish_loading_partition), as its leadership
    /// arrives.
    pub fn new_partitioned(config: TxnConfig) -> TxnCoordinator {
        let mut c = TxnCoordinator::new(config);
        c.loaded = true;
        c.unready = (0..c.config.state_partitions).collect();
        c
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The `__transaction_state` partition of an id.
    pub fn partition_of(&self, transactional_id: &str) -> i32 {
        txn_partition(transactional_id, self.config.state_partitions)
    }

    /// Whether requests for `transactional_id` are served now.
    fn ready(&self, transactional_id: &str) -> bool {
        self.loaded && !self.unready.contains(&self.partition_of(transactional_id))
    }

    /// Forgets every id of partition `p` (and its pending transitions: their settlement
    /// changes nothing) and stops serving them, until
    /// [`finish_loading_partition`](Self::finish_loading_partition). Called when another
    /// broker starts leading `p`, and before `p` is replayed again.
    pub fn unload_partition(&mut self, p: i32) {
        self.unready.insert(p);
        let ids: Vec<String> = self
            .txns
            .keys()
            .filter(|id| self.partition_of(id) == p)
            .cloned()
            .collect();
        for id in ids {
            self.remove(&id);
        }
        let pending: Vec<String> = self
            .pending
            .keys()
            .filter(|id| self.partition_of(id) == p)
            .cloned()
            .collect();
        for id in pending {
            self.pending.remove(&id);
        }
    }

    /// Partition `p` was replayed: its ids are served from now on. Returns its transactions
    /// that are between Prepare and Complete (their markers must be written again).
    pub fn finish_loading_partition(&mut self, p: i32) -> Vec<MarkerJob> {
        self.unready.remove(&p);
        self.txns
            .values()
            .filter(|m| m.status.is_preparing() && self.partition_of(&m.transactional_id) == p)
            .map(job_of)
            .collect()
    }

    /// Applies one replayed `__transaction_state` record (log order).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), records::RecordError> {
        let id = records::decode_key(key)?;
        match value {
            None => self.remove(&id),
            Some(v) => {
                let m = records::decode_value(&id, v)?;
                self.insert(m);
            }
        }
        Ok(())
    }

    fn remove(&mut self, transactional_id: &str) {
        if let Some(old) = self.txns.remove(transactional_id) {
            self.by_producer.remove(&old.producer_id);
        }
    }

    fn insert(&mut self, m: TxnMetadata) {
        if let Some(old) = self.txns.get(&m.transactional_id) {
            if old.producer_id != m.producer_id {
                self.by_producer.remove(&old.producer_id);
            }
        }
        self.by_producer
            .insert(m.producer_id, m.transactional_id.clone());
        self.txns.insert(m.transactional_id.clone(), m);
    }

    /// Replay done: returns the transactions that were between Prepare and Complete when the
    /// broker stopped; their markers must be (re)written.
    pub fn finish_loading(&mut self) -> Vec<MarkerJob> {
        self.loaded = true;
        self.txns
            .values()
            .filter(|m| m.status.is_preparing())
            .map(job_of)
            .collect()
    }

    /// Records `next` (`None`: removal) as the pending transition of `transactional_id`.
    fn prepare(&mut self, transactional_id: &str, next: Option<TxnMetadata>) -> Transition {
        debug_assert!(!self.pending.contains_key(transactional_id));
        let record = TxnRecord {
            partition: txn_partition(transactional_id, self.config.state_partitions),
            key: records::txn_key(transactional_id),
            value: next.as_ref().map(records::txn_value),
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        self.pending
            .insert(transactional_id.to_string(), Pending { seq, next });
        Transition {
            ticket: Ticket {
                transactional_id: transactional_id.to_string(),
                seq,
            },
            record,
        }
    }

    /// The ticket's record is durable: its transition takes effect. Returns false if the
    /// ticket is not the id's pending transition (nothing changes).
    pub fn commit_pending(&mut self, ticket: Ticket) -> bool {
        let Some(p) = self.take_pending(&ticket) else {
            return false;
        };
        match p.next {
            Some(m) => self.insert(m),
            None => self.remove(&ticket.transactional_id),
        }
        true
    }

    /// The ticket's record could not be written (or made durable): the transition is
    /// dropped and the id keeps its previous state. Returns false if the ticket is not the
    /// id's pending transition.
    pub fn abort_pending(&mut self, ticket: Ticket) -> bool {
        self.take_pending(&ticket).is_some()
    }

    fn take_pending(&mut self, ticket: &Ticket) -> Option<Pending> {
        match self.pending.get(&ticket.transactional_id) {
            Some(p) if p.seq == ticket.seq => self.pending.remove(&ticket.transactional_id),
            _ => None,
        }
    }

    /// Whether a transition of this id is waiting to be settled.
    pub fn is_pending(&self, transactional_id: &str) -> bool {
        self.pending.contains_key(transactional_id)
    }

    /// How many transitions are waiting to be settled.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    /// InitProducerId with a transactional id. `expected` is the (id, epoch) the producer
    /// sends (KIP-360), `None` for a fresh producer; `allocate` hands out a new producer id.
    pub fn init_producer_id(
        &mut self,
        now: i64,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        allocate: &mut dyn FnMut() -> Option<i64>,
    ) -> Result<InitOutcome, TxnError> {
        if !self.ready(transactional_id) {
            return Err(TxnError::LoadInProgress);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
        }
        if self.is_pending(transactional_id) {
            return Err(TxnError::ConcurrentTransactions);
        }
        let Some(current) = self.txns.get(transactional_id).cloned() else {
            let producer_id = allocate().ok_or(TxnError::Unavailable)?;
            let m = TxnMetadata {
                transactional_id: transactional_id.to_string(),
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                last_update_ms: now,
            };
            let transition = self.prepare(transactional_id, Some(m));
            return Ok(InitOutcome::Ready {
                producer_id,
                producer_epoch: 0,
                transition,
            });
        };
        if let Some((pid, epoch)) = expected {
            if pid != current.producer_id || epoch != current.producer_epoch {
                return Err(TxnError::ProducerFenced);
            }
        }
        match current.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                Err(TxnError::ConcurrentTransactions)
            }
            TxnStatus::Ongoing => {
                // Fence the old producer: abort its transaction with a bumped epoch.
                let mut m = current;
                m.producer_epoch = m.producer_epoch.saturating_add(1).min(i16::MAX - 1);
                m.status = TxnStatus::PrepareAbort;
                m.last_update_ms = now;
                let job = job_of(&m);
                let transition = self.prepare(transactional_id, Some(m));
                Ok(InitOutcome::AbortFirst { job, transition })
            }
            TxnStatus::Empty
            | TxnStatus::CompleteCommit
            | TxnStatus::CompleteAbort
            | TxnStatus::Dead => {
                let mut m = current;
                if m.producer_epoch >= i16::MAX - 1 {
                    // Epoch exhausted: a new producer id (KIP-360).
                    m.producer_id = allocate().ok_or(TxnError::Unavailable)?;
                    m.producer_epoch = 0;
                } else {
                    m.producer_epoch += 1;
                }
                m.status = TxnStatus::Empty;
                m.timeout_ms = timeout_ms;
                m.partitions.clear();
                m.start_ms = -1;
                m.last_update_ms = now;
                let (producer_id, producer_epoch) = (m.producer_id, m.producer_epoch);
                let transition = self.prepare(transactional_id, Some(m));
                Ok(InitOutcome::Ready {
                    producer_id,
                    producer_epoch,
                    transition,
                })
            }
        }
    }

    fn check_producer(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<&TxnMetadata, TxnError> {
        if !self.ready(transactional_id) {
            return Err(TxnError::LoadInProgress);
        }
        let m = self
            .txns
            .get(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if m.producer_id != producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if m.producer_epoch != epoch {
            return Err(TxnError::ProducerFenced);
        }
        if self.is_pending(transactional_id) {
            return Err(TxnError::ConcurrentTransactions);
        }
        Ok(m)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: returns the transition to persist, if anything
    /// changes.
    pub fn add_partitions(
        &mut self,
        now: i64,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Option<Transition>, TxnError> {
        let m = self.check_producer(transactional_id, producer_id, epoch)?;
        let mut m = match m.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                return Err(TxnError::ConcurrentTransactions)
            }
            TxnStatus::Dead => return Err(TxnError::InvalidTxnState),
            TxnStatus::Ongoing => {
                if partitions.iter().all(|p| m.partitions.contains(p)) {
                    return Ok(None);
                }
                m.clone()
            }
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                let mut m = m.clone();
                m.status = TxnStatus::Ongoing;
                m.partitions.clear();
                m.start_ms = now;
                m
            }
        };
        m.partitions.extend(partitions.iter().cloned());
        m.last_update_ms = now;
        Ok(Some(self.prepare(transactional_id, Some(m))))
    }

    /// EndTxn. `Ok(None)`: nothing to do (a retry of a completed EndTxn).
    pub fn end_txn(
        &mut self,
        now: i64,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<Option<(MarkerJob, Transition)>, TxnError> {
        let m = self.check_producer(transactional_id, producer_id, epoch)?;
        match (m.status, commit) {
            (TxnStatus::Ongoing, _) => {
                let mut m = m.clone();
                m.status = if commit {
                    TxnStatus::PrepareCommit
                } else {
                    TxnStatus::PrepareAbort
                };
                m.last_update_ms = now;
                let job = job_of(&m);
                Ok(Some((job, self.prepare(transactional_id, Some(m)))))
            }
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(None),
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The markers of `job` are written: the transaction is complete (once the returned
    /// transition is committed). `Ok(None)`: the job is not the id's current transaction
    /// (already completed, or superseded); `Err(ConcurrentTransactions)`: another
    /// transition of the id is pending (e.g. the same job's completion, run twice).
    pub fn complete(&mut self, now: i64, job: &MarkerJob) -> Result<Option<Transition>, TxnError> {
        let Some(m) = self.txns.get(&job.transactional_id) else {
            return Ok(None);
        };
        if m.producer_id != job.producer_id
            || m.producer_epoch != job.producer_epoch
            || !m.status.is_preparing()
        {
            return Ok(None);
        }
        if self.is_pending(&job.transactional_id) {
            return Err(TxnError::ConcurrentTransactions);
        }
        let mut m = m.clone();
        m.status = if m.status == TxnStatus::PrepareCommit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        m.partitions.clear();
        m.last_update_ms = now;
        Ok(Some(self.prepare(&job.transactional_id, Some(m))))
    }

    /// Aborts ongoing transactions older than their timeout, with a bumped epoch (so the
    /// producer is fenced). Ids with a pending transition are left for a later call.
    pub fn expire(&mut self, now: i64) -> Vec<(MarkerJob, Transition)> {
        if !self.loaded {
            return vec![];
        }
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.status == TxnStatus::Ongoing
                    && m.start_ms + m.timeout_ms as i64 <= now
                    && !self.pending.contains_key(&m.transactional_id)
                    && self.ready(&m.transactional_id)
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        let mut out = Vec::new();
        for id in expired {
            let Some(mut m) = self.txns.get(&id).cloned() else {
                continue;
            };
            m.producer_epoch = m.producer_epoch.saturating_add(1).min(i16::MAX - 1);
            m.status = TxnStatus::PrepareAbort;
            m.last_update_ms = now;
            let job = job_of(&m);
            out.push((job, self.prepare(&id, Some(m))));
        }
        out
    }

    /// `transactional.id.expiration.ms`: removes up to `limit` ids that are in Empty,
    /// CompleteCommit or CompleteAbort and unchanged for `expiration_ms` (Kafka's test:
    /// `last_update_ms <= now - expiration_ms`). Each removal is a pending transition whose
    /// record is a tombstone for the id's key. Ids with a transaction in progress or a
    /// pending transition are kept.
    pub fn expire_transactional_ids(
        &mut self,
        now: i64,
        expiration_ms: i64,
        limit: usize,
    ) -> Vec<Transition> {
        if !self.loaded || limit == 0 {
            return vec![];
        }
        let cutoff = now.saturating_sub(expiration_ms);
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                matches!(
                    m.status,
                    TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                ) && m.last_update_ms <= cutoff
                    && !self.pending.contains_key(&m.transactional_id)
                    && self.ready(&m.transactional_id)
            })
            .map(|m| m.transactional_id.clone())
            .take(limit)
            .collect();
        expired
            .into_iter()
            .map(|id| self.prepare(&id, None))
            .collect()
    }

    /// Transactions stuck between Prepare and Complete for `older_than_ms` (their marker
    /// write, or the write of their Complete record, failed): their markers must be written
    /// again. Markers are idempotent.
    pub fn stuck(&self, now: i64, older_than_ms: i64) -> Vec<MarkerJob> {
        self.txns
            .values()
            .filter(|m| {
                m.status.is_preparing()
                    && m.last_update_ms + older_than_ms <= now
                    && !self.pending.contains_key(&m.transactional_id)
                    && self.ready(&m.transactional_id)
            })
            .map(job_of)
            .collect()
    }

    /// The earliest time an ongoing transaction times out.
    pub fn next_expiry(&self) -> Option<i64> {
        self.txns
            .values()
            .filter(|m| m.status == TxnStatus::Ongoing)
            .map(|m| m.start_ms + m.timeout_ms as i64)
            .min()
    }

    /// KIP-890 part 1: may this producer write transactional data to this partition now?
    pub fn verify_write(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        let m = self
            .by_producer
            .get(&producer_id)
            .and_then(|id| self.txns.get(id))
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if epoch < m.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        if epoch != m.producer_epoch
            || m.status != TxnStatus::Ongoing
            || !m.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(TxnError::InvalidTxnState);
        }
        // A pending transition out of Ongoing (EndTxn, fencing, timeout, expiry) closes the
        // transaction to new data already, as Kafka's verification does.
        if let Some(p) = self.pending.get(&m.transactional_id) {
            let stays_open = p.next.as_ref().is_some_and(|n| {
                n.status == TxnStatus::Ongoing && n.producer_epoch == m.producer_epoch
            });
            if !stays_open {
                return Err(TxnError::InvalidTxnState);
            }
        }
        Ok(())
    }

    /// The transactional id of a producer id, if it has one.
    pub fn transactional_id_of(&self, producer_id: i64) -> Option<&str> {
        self.by_producer.get(&producer_id).map(String::as_str)
    }
}

fn job_of(m: &TxnMetadata) -> MarkerJob {
    MarkerJob {
        transactional_id: m.transactional_id.clone(),
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        commit: m.status == TxnStatus::PrepareCommit,
        partitions: m.partitions.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator() -> TxnCoordinator {
        let mut c = TxnCoordinator::new(TxnConfig {
            state_partitions: 3,
            max_timeout_ms: 900_000,
        });
        assert!(c.finish_loading().is_empty());
        c
    }

    fn init_at(
        c: &mut TxnCoordinator,
        now: i64,
        id: &str,
        next: &mut i64,
    ) -> Result<InitOutcome, TxnError> {
        c.init_producer_id(now, id, 1_000, None, &mut || {
            *next += 1;
            Some(*next)
        })
    }

    fn init(c: &mut TxnCoordinator, id: &str, next: &mut i64) -> Result<InitOutcome, TxnError> {
        init_at(c, 0, id, next)
    }

    /// InitProducerId whose record is written: commits it, returns (id, epoch) or the job.
    fn init_ok(c: &mut TxnCoordinator, id: &str, next: &mut i64) -> Result<(i64, i16), MarkerJob> {
        match init(c, id, next).unwrap() {
            InitOutcome::Ready {
                producer_id,
                producer_epoch,
                transition,
            } => {
                assert!(c.commit_pending(transition.ticket));
                Ok((producer_id, producer_epoch))
            }
            InitOutcome::AbortFirst { job, transition } => {
                assert!(c.commit_pending(transition.ticket));
                Err(job)
            }
        }
    }

    fn commit(c: &mut TxnCoordinator, t: Transition) -> TxnRecord {
        assert!(c.commit_pending(t.ticket));
        t.record
    }

    fn p(t: &str, i: i32) -> (String, i32) {
        (t.to_string(), i)
    }

    fn snapshot(c: &TxnCoordinator) -> Vec<TxnMetadata> {
        let mut v: Vec<_> = c.all().cloned().collect();
        v.sort_by(|x, y| x.transactional_id.cmp(&y.transactional_id));
        v
    }

    #[test]
    fn commit_cycle_and_fencing() {
        let mut c = coordinator();
        let mut next = 0;
        assert_eq!(init_ok(&mut c, "tx", &mut next), Ok((1, 0)));
        assert!(c.verify_write(1, 0, "a", 0).is_err());
        let t = c
            .add_partitions(10, "tx", 1, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        commit(&mut c, t);
        assert_eq!(c.verify_write(1, 0, "a", 0), Ok(()));
        assert_eq!(c.verify_write(1, 0, "a", 1), Err(TxnError::InvalidTxnState));
        let (job, t) = c.end_txn(20, "tx", 1, 0, true).unwrap().unwrap();
        commit(&mut c, t);
        assert!(job.commit);
        assert_eq!(job.partitions, vec![p("a", 0)]);
        assert_eq!(
            c.add_partitions(21, "tx", 1, 0, &[p("a", 0)]),
            Err(TxnError::ConcurrentTransactions)
        );
        let t = c.complete(22, &job).unwrap().unwrap();
        commit(&mut c, t);
        assert_eq!(c.complete(22, &job), Ok(None));
        assert_eq!(c.end_txn(23, "tx", 1, 0, true), Ok(None));
        // A second producer: epoch bump; the first is fenced.
        let t = c
            .add_partitions(30, "tx", 1, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        commit(&mut c, t);
        let job = init_ok(&mut c, "tx", &mut next).unwrap_err();
        assert!(!job.commit);
        assert_eq!(job.producer_epoch, 1);
        assert_eq!(
            init(&mut c, "tx", &mut next),
            Err(TxnError::ConcurrentTransactions)
        );
        let t = c.complete(31, &job).unwrap().unwrap();
        commit(&mut c, t);
        assert_eq!(init_ok(&mut c, "tx", &mut next), Ok((1, 2)));
        assert_eq!(
            c.add_partitions(40, "tx", 1, 0, &[p("a", 0)]),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(c.verify_write(1, 0, "a", 0), Err(TxnError::ProducerFenced));
        assert_eq!(c.pending_count(), 0);
    }

    #[test]
    fn timeouts_abort_with_a_bumped_epoch_and_replay_restores_state() {
        let mut c = coordinator();
        let mut next = 0;
        init_ok(&mut c, "tx", &mut next).unwrap();
        let t = c
            .add_partitions(100, "tx", 1, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        commit(&mut c, t);
        assert_eq!(c.next_expiry(), Some(1_100));
        assert!(c.expire(1_099).is_empty());
        let mut expired = c.expire(1_100);
        assert_eq!(expired.len(), 1);
        let (job, t) = expired.pop().unwrap();
        // Not expired twice while its abort is being written.
        assert!(c.expire(1_100).is_empty());
        let record = commit(&mut c, t);
        assert_eq!(job.producer_epoch, 1);
        assert!(c.stuck(1_100, 5_000).is_empty());
        assert_eq!(c.stuck(6_100, 5_000), vec![job.clone()]);
        // Replaying the last record restores a preparing transaction, whose markers must be
        // rewritten.
        let mut d = TxnCoordinator::new(c.config.clone());
        d.replay(&record.key, record.value.as_deref()).unwrap();
        assert_eq!(d.finish_loading(), vec![job.clone()]);
        assert_eq!(
            c.end_txn(1_200, "tx", 1, 0, true),
            Err(TxnError::ProducerFenced)
        );
    }

    /// Every kind of transition, when its write fails, leaves the coordinator as it was;
    /// while it is pending the id answers CONCURRENT_TRANSACTIONS and keeps its old state.
    #[test]
    fn failed_writes_leave_state_unchanged() {
        let mut c = coordinator();
        let mut next = 0;

        // A new id: nothing is remembered (the producer id is lost, which is fine).
        let before = snapshot(&c);
        let InitOutcome::Ready { transition, .. } = init(&mut c, "tx", &mut next).unwrap() else {
            panic!()
        };
        assert!(c.get("tx").is_none());
        assert_eq!(
            init(&mut c, "tx", &mut next),
            Err(TxnError::ConcurrentTransactions)
        );
        assert!(c.abort_pending(transition.ticket));
        assert_eq!(snapshot(&c), before);
        assert!(c.transactional_id_of(1).is_none());
        assert_eq!(init_ok(&mut c, "tx", &mut next), Ok((2, 0)));

        // An epoch bump.
        let before = snapshot(&c);
        let InitOutcome::Ready { transition, .. } = init(&mut c, "tx", &mut next).unwrap() else {
            panic!()
        };
        assert_eq!(c.get("tx").unwrap().producer_epoch, 0);
        assert!(c.abort_pending(transition.ticket));
        assert_eq!(snapshot(&c), before);

        // AddPartitions: the partition is not writable while pending, nor after a failure.
        let t = c
            .add_partitions(10, "tx", 2, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        assert_eq!(c.verify_write(2, 0, "a", 0), Err(TxnError::InvalidTxnState));
        assert_eq!(
            c.add_partitions(11, "tx", 2, 0, &[p("b", 0)]),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            c.end_txn(11, "tx", 2, 0, true),
            Err(TxnError::ConcurrentTransactions)
        );
        // Fencing is still checked first.
        assert_eq!(
            c.add_partitions(11, "tx", 2, 5, &[p("b", 0)]),
            Err(TxnError::ProducerFenced)
        );
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);
        assert_eq!(c.get("tx").unwrap().status, TxnStatus::Empty);
        assert_eq!(c.verify_write(2, 0, "a", 0), Err(TxnError::InvalidTxnState));
        let t = c
            .add_partitions(12, "tx", 2, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        commit(&mut c, t);
        assert_eq!(c.verify_write(2, 0, "a", 0), Ok(()));

        // Adding a partition to an ongoing transaction: the old ones stay writable.
        let before = snapshot(&c);
        let t = c
            .add_partitions(13, "tx", 2, 0, &[p("b", 0)])
            .unwrap()
            .unwrap();
        assert_eq!(c.verify_write(2, 0, "a", 0), Ok(()));
        assert_eq!(c.verify_write(2, 0, "b", 0), Err(TxnError::InvalidTxnState));
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);

        // EndTxn: the transaction is closed to data while pending; on failure it is Ongoing
        // again and the client's retry goes through.
        let (_, t) = c.end_txn(14, "tx", 2, 0, true).unwrap().unwrap();
        assert_eq!(c.verify_write(2, 0, "a", 0), Err(TxnError::InvalidTxnState));
        assert!(c.stuck(i64::MAX / 2, 0).is_empty());
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);
        assert_eq!(c.verify_write(2, 0, "a", 0), Ok(()));

        // A timeout abort (with its epoch bump).
        let mut expired = c.expire(100_000);
        let (_, t) = expired.pop().unwrap();
        assert_eq!(c.verify_write(2, 0, "a", 0), Err(TxnError::InvalidTxnState));
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);

        // A fencing InitProducerId.
        let InitOutcome::AbortFirst { transition, .. } = init(&mut c, "tx", &mut next).unwrap()
        else {
            panic!()
        };
        assert!(c.abort_pending(transition.ticket));
        assert_eq!(snapshot(&c), before);

        // The Complete record after the markers: the transaction stays in Prepare and its
        // markers are retried.
        let (job, t) = c.end_txn(15, "tx", 2, 0, false).unwrap().unwrap();
        commit(&mut c, t);
        let before = snapshot(&c);
        let t = c.complete(16, &job).unwrap().unwrap();
        assert_eq!(c.complete(16, &job), Err(TxnError::ConcurrentTransactions));
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);
        assert_eq!(c.stuck(16, 0), vec![job.clone()]);
        assert_eq!(
            c.end_txn(17, "tx", 2, 0, false),
            Err(TxnError::ConcurrentTransactions)
        );
        let t = c.complete(18, &job).unwrap().unwrap();
        commit(&mut c, t);
        assert_eq!(c.end_txn(19, "tx", 2, 0, false), Ok(None));

        // Expiry.
        let before = snapshot(&c);
        let mut removed = c.expire_transactional_ids(1_000, 100, 10);
        let t = removed.pop().unwrap();
        assert_eq!(t.record.value, None);
        assert!(c.get("tx").is_some());
        assert_eq!(
            init(&mut c, "tx", &mut next),
            Err(TxnError::ConcurrentTransactions)
        );
        assert!(c.abort_pending(t.ticket));
        assert_eq!(snapshot(&c), before);
        assert_eq!(c.transactional_id_of(2), Some("tx"));
        assert_eq!(c.pending_count(), 0);
    }

    #[test]
    fn a_ticket_settles_once() {
        let mut c = coordinator();
        let mut next = 0;
        let InitOutcome::Ready { transition, .. } = init(&mut c, "tx", &mut next).unwrap() else {
            panic!()
        };
        let stale = Ticket {
            transactional_id: "tx".into(),
            seq: transition.ticket.seq,
        };
        assert!(c.commit_pending(transition.ticket));
        assert!(!c.commit_pending(stale));
        let InitOutcome::Ready { transition, .. } = init(&mut c, "tx", &mut next).unwrap() else {
            panic!()
        };
        let older = Ticket {
            transactional_id: "tx".into(),
            seq: transition.ticket.seq - 1,
        };
        assert!(!c.abort_pending(older));
        assert!(c.is_pending("tx"));
        assert!(c.commit_pending(transition.ticket));
        assert_eq!(c.get("tx").unwrap().producer_epoch, 1);
    }

    #[test]
    fn idle_transactional_ids_expire_and_replay_drops_them() {
        let mut c = coordinator();
        let mut next = 0;
        let mut log = Vec::new();
        // "idle": Empty since t=0; "done": committed at t=50; "open": Ongoing since t=60;
        // "preparing": PrepareCommit since t=70.
        for (id, at) in [("idle", 0), ("done", 10), ("open", 20), ("preparing", 30)] {
            let InitOutcome::Ready { transition, .. } = init_at(&mut c, at, id, &mut next).unwrap()
            else {
                panic!()
            };
            log.push(commit(&mut c, transition));
        }
        let t = c
            .add_partitions(40, "done", 2, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        log.push(commit(&mut c, t));
        let (job, t) = c.end_txn(45, "done", 2, 0, true).unwrap().unwrap();
        log.push(commit(&mut c, t));
        let t = c.complete(50, &job).unwrap().unwrap();
        log.push(commit(&mut c, t));
        let t = c
            .add_partitions(60, "open", 3, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        log.push(commit(&mut c, t));
        let t = c
            .add_partitions(65, "preparing", 4, 0, &[p("a", 1)])
            .unwrap()
            .unwrap();
        log.push(commit(&mut c, t));
        let (_, t) = c.end_txn(70, "preparing", 4, 0, true).unwrap().unwrap();
        log.push(commit(&mut c, t));

        // Expiration 1000 ms: nothing before t=1000; "idle" at 1000 (last update 0).
        assert!(c.expire_transactional_ids(999, 1_000, 10).is_empty());
        let ts = c.expire_transactional_ids(1_000, 1_000, 10);
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].ticket.transactional_id(), "idle");
        assert_eq!(ts[0].record.key, records::txn_key("idle"));
        for t in ts {
            log.push(commit(&mut c, t));
        }
        assert!(c.get("idle").is_none());
        assert!(c.transactional_id_of(1).is_none());
        assert_eq!(
            c.verify_write(1, 0, "a", 0),
            Err(TxnError::InvalidProducerIdMapping)
        );
        // Much later only "done" goes; Ongoing and Prepare* ids never expire. The limit
        // bounds one call.
        assert!(c.expire_transactional_ids(1_000_000, 1_000, 0).is_empty());
        let ts = c.expire_transactional_ids(1_000_000, 1_000, 10);
        let ids: Vec<_> = ts
            .iter()
            .map(|t| t.ticket.transactional_id().to_string())
            .collect();
        assert_eq!(ids, vec!["done".to_string()]);
        for t in ts {
            log.push(commit(&mut c, t));
        }
        let mut ids: Vec<_> = c.all().map(|m| m.transactional_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, vec!["open".to_string(), "preparing".to_string()]);

        // Replay treats the tombstones as deletions.
        let mut d = TxnCoordinator::new(c.config.clone());
        for r in &log {
            d.replay(&r.key, r.value.as_deref()).unwrap();
        }
        assert_eq!(d.finish_loading().len(), 1);
        assert_eq!(snapshot(&d), snapshot(&c));

        // The id can be used again: a new producer id at epoch 0.
        assert_eq!(init_ok(&mut c, "idle", &mut next), Ok((5, 0)));
    }

    #[test]
    fn expiry_takes_at_most_limit_ids_per_call() {
        let mut c = coordinator();
        let mut next = 0;
        for i in 0..25 {
            init_ok(&mut c, &format!("tx{i}"), &mut next).unwrap();
        }
        let mut total = 0;
        loop {
            let ts = c.expire_transactional_ids(10_000, 1_000, 10);
            assert!(ts.len() <= 10);
            if ts.is_empty() {
                break;
            }
            total += ts.len();
            for t in ts {
                commit(&mut c, t);
            }
        }
        assert_eq!(total, 25);
        assert_eq!(c.all().count(), 0);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Init(u8),
        Add(u8, u8, bool),
        End(u8, bool, bool),
        Complete,
        Expire(u16),
        ExpireIds(u16),
        /// Settle the oldest pending transition: its write succeeded (true) or failed.
        Settle(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3).prop_map(Op::Init),
            (0u8..3, 0u8..4, any::<bool>()).prop_map(|(i, p, stale)| Op::Add(i, p, stale)),
            (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(i, c, stale)| Op::End(i, c, stale)),
            Just(Op::Complete),
            (0u16..3000).prop_map(Op::Expire),
            (0u16..3000).prop_map(Op::ExpireIds),
            any::<bool>().prop_map(Op::Settle),
            any::<bool>().prop_map(Op::Settle),
        ]
    }

    /// Observable state of one id: its metadata, and which (epoch, partition) of its
    /// producer may be written.
    fn observe(c: &TxnCoordinator, id: &str) -> (Option<TxnMetadata>, Vec<(i16, u8, bool)>) {
        let m = c.get(id).cloned();
        let mut writes = Vec::new();
        if let Some(m) = &m {
            for epoch in [m.producer_epoch - 1, m.producer_epoch] {
                for p in 0..4u8 {
                    let ok = c
                        .verify_write(m.producer_id, epoch, &format!("t{p}"), 0)
                        .is_ok();
                    writes.push((epoch, p, ok));
                }
            }
        }
        (m, writes)
    }

    proptest! {
        /// Random producers, requests, completions, timeouts, expiry and write outcomes:
        /// epochs never go back; only the current epoch of an Ongoing transaction may write
        /// to its partitions, and not while it is being closed; a decided transition changes
        /// nothing observable until it is committed, and a failed one (aborted) never does;
        /// an id with a pending transition answers CONCURRENT_TRANSACTIONS; replaying the
        /// committed records rebuilds exactly the coordinator's state.
        #[test]
        fn random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..100)) {
            let mut c = coordinator();
            let mut next = 0i64;
            let mut now = 0i64;
            let mut log: Vec<TxnRecord> = Vec::new();
            let mut jobs: Vec<MarkerJob> = Vec::new();
            // Decided, not yet settled: the transition, the job it starts once durable, and
            // what its id looked like before.
            type Observed = (Option<TxnMetadata>, Vec<(i16, u8, bool)>);
            let mut pending: Vec<(Transition, Option<MarkerJob>, Observed)> = Vec::new();
            let ids: Vec<String> = (0..3).map(|i| format!("tx{i}")).collect();
            let mut last_epoch: HashMap<String, (i64, i16)> = HashMap::new();
            for op in ops {
                now += 10;
                let id = |i: u8| format!("tx{i}");
                let current = |c: &TxnCoordinator, i: u8| {
                    c.get(&id(i)).map(|m| (m.producer_id, m.producer_epoch))
                };
                let before: Vec<Observed> = ids.iter().map(|i| observe(&c, i)).collect();
                let observed = |t: &Transition| {
                    before[ids.iter().position(|i| i == t.ticket.transactional_id()).unwrap()].clone()
                };
                let mut settled: Option<(bool, String)> = None;
                match op {
                    Op::Init(i) => match c.init_producer_id(now, &id(i), 1_000, None, &mut || { next += 1; Some(next) }) {
                        Ok(InitOutcome::Ready { transition, .. }) => { let o = observed(&transition); pending.push((transition, None, o)) },
                        Ok(InitOutcome::AbortFirst { job, transition }) => { let o = observed(&transition); pending.push((transition, Some(job), o)) },
                        Err(e) => if c.is_pending(&id(i)) {
                            prop_assert_eq!(e, TxnError::ConcurrentTransactions);
                        },
                    },
                    Op::Add(i, p, stale) => if let Some((pid, epoch)) = current(&c, i) {
                        let epoch = if stale { epoch - 1 } else { epoch };
                        match c.add_partitions(now, &id(i), pid, epoch, &[(format!("t{p}"), 0)]) {
                            Ok(Some(t)) => { let o = observed(&t); pending.push((t, None, o)) }
                            Ok(None) => {}
                            Err(e) => if c.is_pending(&id(i)) && !stale {
                                prop_assert_eq!(e, TxnError::ConcurrentTransactions);
                            },
                        }
                    },
                    Op::End(i, commit, stale) => if let Some((pid, epoch)) = current(&c, i) {
                        let epoch = if stale { epoch - 1 } else { epoch };
                        match c.end_txn(now, &id(i), pid, epoch, commit) {
                            Ok(Some((job, t))) => { let o = observed(&t); pending.push((t, Some(job), o)) }
                            Ok(None) => {}
                            Err(e) => if c.is_pending(&id(i)) && !stale {
                                prop_assert_eq!(e, TxnError::ConcurrentTransactions);
                            },
                        }
                    },
                    Op::Complete => if !jobs.is_empty() {
                        let job = jobs.remove(0);
                        if let Ok(Some(t)) = c.complete(now, &job) {
                            let o = observed(&t);
                            pending.push((t, None, o));
                        }
                    },
                    Op::Expire(dt) => {
                        now += dt as i64;
                        for (job, t) in c.expire(now) { let o = observed(&t); pending.push((t, Some(job), o)) }
                    }
                    Op::ExpireIds(dt) => {
                        now += dt as i64;
                        for t in c.expire_transactional_ids(now, 500, 2) { let o = observed(&t); pending.push((t, None, o)) }
                    }
                    Op::Settle(ok) => if !pending.is_empty() {
                        let (t, job, was) = pending.remove(0);
                        let tid = t.ticket.transactional_id().to_string();
                        if ok {
                            prop_assert!(c.commit_pending(t.ticket));
                            log.push(t.record);
                            jobs.extend(job);
                        } else {
                            prop_assert!(c.abort_pending(t.ticket));
                            // A failed write leaves the id exactly as before the request.
                            prop_assert_eq!(&observe(&c, &tid), &was);
                        }
                        settled = Some((ok, tid));
                    },
                }
                for (i, id) in ids.iter().enumerate() {
                    if settled.as_ref().is_some_and(|(_, s)| s == id) {
                        continue;
                    }
                    // Deciding a transition changes no id's metadata, and closes
                    // (never opens) writes.
                    let (m, writes) = observe(&c, id);
                    prop_assert_eq!(&m, &before[i].0);
                    for (w, b) in writes.iter().zip(&before[i].1) {
                        prop_assert!(!w.2 || b.2);
                    }
                }
                prop_assert_eq!(c.pending_count(), pending.len());
                for (t, _, _) in &pending {
                    let tid = t.ticket.transactional_id();
                    prop_assert!(c.is_pending(tid));
                    prop_assert_eq!(
                        c.init_producer_id(now, tid, 1_000, None, &mut || None),
                        Err(TxnError::ConcurrentTransactions)
                    );
                }
                for m in c.all() {
                    let key = m.transactional_id.clone();
                    if let Some(&(pid, epoch)) = last_epoch.get(&key) {
                        prop_assert!(m.producer_id != pid || m.producer_epoch >= epoch);
                    }
                    last_epoch.insert(key, (m.producer_id, m.producer_epoch));
                    let closing = pending.iter().any(|(t, job, _)| {
                        t.ticket.transactional_id() == m.transactional_id
                            && (job.is_some() || t.record.value.is_none())
                    });
                    for p in 0..4 {
                        let t = format!("t{p}");
                        let ok = c.verify_write(m.producer_id, m.producer_epoch, &t, 0).is_ok();
                        prop_assert_eq!(ok, m.status == TxnStatus::Ongoing && m.partitions.contains(&(t.clone(), 0)) && !closing);
                        if m.producer_epoch > 0 {
                            prop_assert!(c.verify_write(m.producer_id, m.producer_epoch - 1, &t, 0).is_err());
                        }
                    }
                }
            }
            for (t, _, was) in pending {
                let tid = t.ticket.transactional_id().to_string();
                prop_assert!(c.abort_pending(t.ticket));
                prop_assert_eq!(&observe(&c, &tid), &was);
            }
            let mut replayed = TxnCoordinator::new(c.config.clone());
            for r in &log {
                replayed.replay(&r.key, r.value.as_deref()).unwrap();
            }
            replayed.finish_loading();
            prop_assert_eq!(snapshot(&c), snapshot(&replayed));
        }
    }

    #[test]
    fn partition_of_an_id_matches_kafka() {
        // "hello".hashCode() == 99162322 in Java.
        assert_eq!(txn_partition("hello", 50), 99_162_322 % 50);
    }

    /// A cluster member serves only the partitions it loaded; unloading forgets their ids,
    /// reloading from the records rebuilds them and hands back the unfinished markers.
    #[test]
    fn partitions_load_and_unload_with_leadership() {
        let config = TxnConfig {
            state_partitions: 3,
            max_timeout_ms: 900_000,
        };
        let mut c = TxnCoordinator::new_partitioned(config.clone());
        let mut next = 0;
        let id = "tx";
        let part = c.partition_of(id);
        assert_eq!(
            init(&mut c, id, &mut next).err(),
            Some(TxnError::LoadInProgress)
        );
        c.unload_partition(part);
        assert!(c.finish_loading_partition(part).is_empty());
        assert_eq!(init_ok(&mut c, id, &mut next), Ok((1, 0)));
        let mut records = vec![];
        let t = c
            .add_partitions(10, id, 1, 0, &[p("a", 0)])
            .unwrap()
            .unwrap();
        records.push(commit(&mut c, t));
        let (job, t) = c.end_txn(20, id, 1, 0, true).unwrap().unwrap();
        records.push(commit(&mut c, t));
        // Another broker leads the partition now: the id is forgotten, not served, and the
        // timers leave it alone.
        c.unload_partition(part);
        assert_eq!(c.get(id), None);
        assert_eq!(
            c.end_txn(21, id, 1, 0, true).err(),
            Some(TxnError::LoadInProgress)
        );
        assert!(c.stuck(i64::MAX / 2, 0).is_empty());
        // Leading again: replaying the partition's records brings back the prepared commit,
        // whose markers are handed back.
        for r in &records {
            c.replay(&r.key, r.value.as_deref()).unwrap();
        }
        assert_eq!(c.finish_loading_partition(part), vec![job]);
        assert_eq!(c.get(id).unwrap().status, TxnStatus::PrepareCommit);
        assert_eq!(c.verify_write(1, 0, "a", 0), Err(TxnError::InvalidTxnState));
    }
}
