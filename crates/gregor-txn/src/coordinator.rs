//! The transaction coordinator as a sans-I/O state machine.
//!
//! Inputs: requests (InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn), replayed `__transaction_state` records and time. Outputs:
//! answers, records to append to `__transaction_state` ([`TxnRecord`]) and marker jobs
//! ([`MarkerJob`]: write COMMIT/ABORT control batches to these partitions, then call
//! [`TxnCoordinator::complete`]).
//!
//! State changes are applied in memory when decided; the caller persists the returned record
//! (and makes it durable) before answering. States and transitions follow Kafka's
//! `TransactionMetadata`:
//!
//! ```text
//! Empty/CompleteCommit/CompleteAbort --AddPartitions--> Ongoing
//! Ongoing --EndTxn(commit)--> PrepareCommit --markers written--> CompleteCommit
//! Ongoing --EndTxn(abort) / timeout / fencing InitProducerId--> PrepareAbort --> CompleteAbort
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
    pub value: Vec<u8>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Answer with this id and epoch after persisting the record.
    Ready {
        producer_id: i64,
        producer_epoch: i16,
        record: TxnRecord,
    },
    /// An ongoing transaction was fenced: persist the record, run the job, call
    /// `complete`, then call `init_producer_id` again.
    AbortFirst { job: MarkerJob, record: TxnRecord },
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
    let mut h: i32 = 0;
    for c in transactional_id.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(c as i32);
    }
    (h & 0x7fff_ffff) % partitions.max(1)
}

/// The transaction coordinator of this broker (every `__transaction_state` partition).
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    txns: HashMap<String, TxnMetadata>,
    by_producer: HashMap<i64, String>,
    loaded: bool,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            txns: HashMap::new(),
            by_producer: HashMap::new(),
            loaded: false,
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Applies one replayed `__transaction_state` record (log order).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), records::RecordError> {
        let id = records::decode_key(key)?;
        match value {
            None => {
                if let Some(old) = self.txns.remove(&id) {
                    self.by_producer.remove(&old.producer_id);
                }
            }
            Some(v) => {
                let m = records::decode_value(&id, v)?;
                self.insert(m);
            }
        }
        Ok(())
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

    fn record(&self, m: &TxnMetadata) -> TxnRecord {
        TxnRecord {
            partition: txn_partition(&m.transactional_id, self.config.state_partitions),
            key: records::txn_key(&m.transactional_id),
            value: records::txn_value(m),
        }
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
        if !self.loaded {
            return Err(TxnError::LoadInProgress);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
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
            let record = self.record(&m);
            self.insert(m);
            return Ok(InitOutcome::Ready {
                producer_id,
                producer_epoch: 0,
                record,
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
                let record = self.record(&m);
                self.insert(m);
                Ok(InitOutcome::AbortFirst { job, record })
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
                let record = self.record(&m);
                let (producer_id, producer_epoch) = (m.producer_id, m.producer_epoch);
                self.insert(m);
                Ok(InitOutcome::Ready {
                    producer_id,
                    producer_epoch,
                    record,
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
        if !self.loaded {
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
        Ok(m)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: returns the record to persist, if anything
    /// changed.
    pub fn add_partitions(
        &mut self,
        now: i64,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Option<TxnRecord>, TxnError> {
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
        let record = self.record(&m);
        self.insert(m);
        Ok(Some(record))
    }

    /// EndTxn. `Ok(None)`: nothing to do (a retry of a completed EndTxn).
    pub fn end_txn(
        &mut self,
        now: i64,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<Option<(MarkerJob, TxnRecord)>, TxnError> {
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
                let record = self.record(&m);
                self.insert(m);
                Ok(Some((job, record)))
            }
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(None),
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            _ => Err(TxnError::InvalidTxnState),
        }
    }

    /// The markers of `job` are written: the transaction is complete.
    pub fn complete(&mut self, now: i64, job: &MarkerJob) -> Option<TxnRecord> {
        let m = self.txns.get(&job.transactional_id)?;
        if m.producer_id != job.producer_id
            || m.producer_epoch != job.producer_epoch
            || !m.status.is_preparing()
        {
            return None;
        }
        let mut m = m.clone();
        m.status = if m.status == TxnStatus::PrepareCommit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        m.partitions.clear();
        m.last_update_ms = now;
        let record = self.record(&m);
        self.insert(m);
        Some(record)
    }

    /// Aborts ongoing transactions older than their timeout, with a bumped epoch (so the
    /// producer is fenced).
    pub fn expire(&mut self, now: i64) -> Vec<(MarkerJob, TxnRecord)> {
        if !self.loaded {
            return vec![];
        }
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| m.status == TxnStatus::Ongoing && m.start_ms + m.timeout_ms as i64 <= now)
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
            let record = self.record(&m);
            self.insert(m);
            out.push((job, record));
        }
        out
    }

    /// Transactions stuck between Prepare and Complete for `older_than_ms` (their marker
    /// write failed): their markers must be written again. Markers are idempotent.
    pub fn stuck(&self, now: i64, older_than_ms: i64) -> Vec<MarkerJob> {
        self.txns
            .values()
            .filter(|m| m.status.is_preparing() && m.last_update_ms + older_than_ms <= now)
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

    fn init(c: &mut TxnCoordinator, id: &str, next: &mut i64) -> Result<InitOutcome, TxnError> {
        c.init_producer_id(0, id, 1_000, None, &mut || {
            *next += 1;
            Some(*next)
        })
    }

    fn p(t: &str, i: i32) -> (String, i32) {
        (t.to_string(), i)
    }

    #[test]
    fn commit_cycle_and_fencing() {
        let mut c = coordinator();
        let mut next = 0;
        let InitOutcome::Ready {
            producer_id,
            producer_epoch,
            ..
        } = init(&mut c, "tx", &mut next).unwrap()
        else {
            panic!()
        };
        assert_eq!((producer_id, producer_epoch), (1, 0));
        assert!(c.verify_write(1, 0, "a", 0).is_err());
        c.add_partitions(10, "tx", 1, 0, &[p("a", 0)]).unwrap();
        assert_eq!(c.verify_write(1, 0, "a", 0), Ok(()));
        assert_eq!(c.verify_write(1, 0, "a", 1), Err(TxnError::InvalidTxnState));
        let (job, _) = c.end_txn(20, "tx", 1, 0, true).unwrap().unwrap();
        assert!(job.commit);
        assert_eq!(job.partitions, vec![p("a", 0)]);
        assert_eq!(
            c.add_partitions(21, "tx", 1, 0, &[p("a", 0)]),
            Err(TxnError::ConcurrentTransactions)
        );
        assert!(c.complete(22, &job).is_some());
        assert_eq!(c.end_txn(23, "tx", 1, 0, true), Ok(None));
        // A second producer: epoch bump; the first is fenced.
        c.add_partitions(30, "tx", 1, 0, &[p("a", 0)]).unwrap();
        let InitOutcome::AbortFirst { job, .. } = init(&mut c, "tx", &mut next).unwrap() else {
            panic!()
        };
        assert!(!job.commit);
        assert_eq!(job.producer_epoch, 1);
        assert_eq!(
            init(&mut c, "tx", &mut next),
            Err(TxnError::ConcurrentTransactions)
        );
        c.complete(31, &job).unwrap();
        let InitOutcome::Ready { producer_epoch, .. } = init(&mut c, "tx", &mut next).unwrap()
        else {
            panic!()
        };
        assert_eq!(producer_epoch, 2);
        assert_eq!(
            c.add_partitions(40, "tx", 1, 0, &[p("a", 0)]),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(c.verify_write(1, 0, "a", 0), Err(TxnError::ProducerFenced));
    }

    #[test]
    fn timeouts_abort_with_a_bumped_epoch_and_replay_restores_state() {
        let mut c = coordinator();
        let mut next = 0;
        init(&mut c, "tx", &mut next).unwrap();
        let r = c.add_partitions(100, "tx", 1, 0, &[p("a", 0)]).unwrap();
        assert!(r.is_some());
        assert_eq!(c.next_expiry(), Some(1_100));
        assert!(c.expire(1_099).is_empty());
        let expired = c.expire(1_100);
        assert_eq!(expired.len(), 1);
        let (job, record) = &expired[0];
        assert_eq!(job.producer_epoch, 1);
        assert!(c.stuck(1_100, 5_000).is_empty());
        assert_eq!(c.stuck(6_100, 5_000), vec![job.clone()]);
        // Replaying the last record restores a preparing transaction, whose markers must be
        // rewritten.
        let mut d = TxnCoordinator::new(c.config.clone());
        d.replay(&record.key, Some(&record.value)).unwrap();
        assert_eq!(d.finish_loading(), vec![job.clone()]);
        assert_eq!(
            c.end_txn(1_200, "tx", 1, 0, true),
            Err(TxnError::ProducerFenced)
        );
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Init(u8),
        Add(u8, u8, bool),
        End(u8, bool, bool),
        Complete,
        Expire(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3).prop_map(Op::Init),
            (0u8..3, 0u8..4, any::<bool>()).prop_map(|(i, p, stale)| Op::Add(i, p, stale)),
            (0u8..3, any::<bool>(), any::<bool>()).prop_map(|(i, c, stale)| Op::End(i, c, stale)),
            Just(Op::Complete),
            (0u16..3000).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Random producers, requests, completions and timeouts: epochs never go back, only
        /// the current epoch of an Ongoing transaction may write to its partitions, and
        /// replaying the emitted records rebuilds exactly the coordinator's state.
        #[test]
        fn random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..80)) {
            let mut c = coordinator();
            let mut next = 0i64;
            let mut now = 0i64;
            let mut log: Vec<TxnRecord> = Vec::new();
            let mut jobs: Vec<MarkerJob> = Vec::new();
            let mut last_epoch: HashMap<String, (i64, i16)> = HashMap::new();
            for op in ops {
                now += 10;
                let id = |i: u8| format!("tx{i}");
                let current = |c: &TxnCoordinator, i: u8| {
                    c.get(&id(i)).map(|m| (m.producer_id, m.producer_epoch))
                };
                match op {
                    Op::Init(i) => match c.init_producer_id(now, &id(i), 1_000, None, &mut || { next += 1; Some(next) }) {
                        Ok(InitOutcome::Ready { record, .. }) => log.push(record),
                        Ok(InitOutcome::AbortFirst { job, record }) => { log.push(record); jobs.push(job) }
                        Err(_) => {}
                    },
                    Op::Add(i, p, stale) => if let Some((pid, epoch)) = current(&c, i) {
                        let epoch = if stale { epoch - 1 } else { epoch };
                        if let Ok(Some(r)) = c.add_partitions(now, &id(i), pid, epoch, &[(format!("t{p}"), 0)]) {
                            log.push(r);
                        }
                    },
                    Op::End(i, commit, stale) => if let Some((pid, epoch)) = current(&c, i) {
                        let epoch = if stale { epoch - 1 } else { epoch };
                        if let Ok(Some((job, r))) = c.end_txn(now, &id(i), pid, epoch, commit) {
                            log.push(r);
                            jobs.push(job);
                        }
                    },
                    Op::Complete => if !jobs.is_empty() {
                        let job = jobs.remove(0);
                        if let Some(r) = c.complete(now, &job) { log.push(r) }
                    },
                    Op::Expire(dt) => {
                        now += dt as i64;
                        for (job, r) in c.expire(now) { log.push(r); jobs.push(job) }
                    }
                }
                for m in c.all() {
                    let key = m.transactional_id.clone();
                    if let Some(&(pid, epoch)) = last_epoch.get(&key) {
                        prop_assert!(m.producer_id != pid || m.producer_epoch >= epoch);
                    }
                    last_epoch.insert(key, (m.producer_id, m.producer_epoch));
                    for p in 0..4 {
                        let t = format!("t{p}");
                        let ok = c.verify_write(m.producer_id, m.producer_epoch, &t, 0).is_ok();
                        prop_assert_eq!(ok, m.status == TxnStatus::Ongoing && m.partitions.contains(&(t.clone(), 0)));
                        if m.producer_epoch > 0 {
                            prop_assert!(c.verify_write(m.producer_id, m.producer_epoch - 1, &t, 0).is_err());
                        }
                    }
                }
            }
            let mut replayed = TxnCoordinator::new(c.config.clone());
            for r in &log {
                replayed.replay(&r.key, Some(&r.value)).unwrap();
            }
            replayed.finish_loading();
            let mut a: Vec<_> = c.all().cloned().collect();
            let mut b: Vec<_> = replayed.all().cloned().collect();
            a.sort_by(|x, y| x.transactional_id.cmp(&y.transactional_id));
            b.sort_by(|x, y| x.transactional_id.cmp(&y.transactional_id));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn partition_of_an_id_matches_kafka() {
        // "hello".hashCode() == 99162322 in Java.
        assert_eq!(txn_partition("hello", 50), 99_162_322 % 50);
    }
}
