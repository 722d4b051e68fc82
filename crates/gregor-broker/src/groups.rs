//! The group coordinator service: `gregor_group::Coordinator` wired to the broker.
//!
//! * The coordinator state machine sits behind one mutex. Every call runs under it and its
//!   [`Effects`] are applied before the lock is released: records are appended to
//!   `__consumer_offsets` (one batch per partition, in order), and waiting JoinGroup/SyncGroup
//!   requests are completed through their `oneshot` channels. A waiting request therefore
//!   parks only its own connection (which processes requests in order, as Kafka does) and
//!   never a thread.
//! * A timer task sleeps until the coordinator's next deadline (session expiry, end of a join
//!   phase or of the initial rebalance delay, offset retention) or until a call changed the
//!   deadlines, then calls `tick`.
//! * On start the `__consumer_offsets` topic is created if missing (`cleanup.policy=compact`,
//!   `offsets.topic.num.partitions` partitions) and replayed in the background; until a
//!   partition is replayed its groups answer COORDINATOR_LOAD_IN_PROGRESS.
//! * OffsetCommit is acknowledged only after the offsets partition is fsynced.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gregor_group::{Completion, Coordinator, Effects, GroupConfig, OffsetsRecord, Waiter};
use gregor_os::SharedClock;
use tokio::sync::{oneshot, Notify};

use crate::config::BrokerConfig;
use crate::internal_topics::{self, encode_internal_batch, OFFSETS_TOPIC};
use crate::partition::Partition;
use crate::registry::{Topic, TopicRegistry};
use crate::replication::{LeadershipChange, ReplicaManager, TopicLeadership};

pub struct GroupService {
    coordinator: Mutex<Coordinator>,
    waiters: Mutex<HashMap<Waiter, oneshot::Sender<Completion>>>,
    next_waiter: AtomicU64,
    offsets: Arc<Topic>,
    /// Wakes the timer task after a call that may have moved the next deadline.
    deadlines_changed: Notify,
    /// Wall-clock time (commit timestamps are stored; session deadlines use the same clock
    /// for simplicity — a clock step changes when sessions expire, never correctness of
    /// offsets).
    clock: SharedClock,
    /// One partition replay at a time (the first load, and reloads on leadership changes).
    replay_lock: Mutex<()>,
    /// The loader and timer tasks, aborted by [`stop_timers`](Self::stop_timers).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Partitions written by a call, to fsync before acknowledging; or the write error.
pub type Written = Result<Vec<Arc<Partition>>, String>;

impl GroupService {
    /// Creates `__consumer_offsets` if needed, starts replaying it and starts the timer task.
    /// Must be called inside a tokio runtime (the broker calls it:
    /// [`crate::Broker::start_groups`]).
    pub fn start(
        config: &BrokerConfig,
        registry: &TopicRegistry,
        clock: SharedClock,
        replicas: Option<Arc<ReplicaManager>>,
    ) -> anyhow::Result<Arc<GroupService>> {
        let topic =
            internal_topics::ensure(registry, OFFSETS_TOPIC, config.offsets_topic_num_partitions)?;
        let group_config = GroupConfig {
            // Fixed once created, as in Kafka: the existing partition count wins.
            offsets_partitions: topic.partitions.len() as i32,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            max_size: config.group_max_size,
            offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
            retention_check_interval_ms: config.offsets_retention_check_interval_ms,
            offset_metadata_max_bytes: config.offset_metadata_max_bytes,
        };
        let service = Arc::new(GroupService {
            coordinator: Mutex::new(Coordinator::new(group_config)),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            offsets: topic,
            deadlines_changed: Notify::new(),
            clock,
            replay_lock: Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        });
        let loader = service.clone();
        // Subscribed before the load, so no change is missed between the two.
        let mut leadership = replicas.as_ref().map(|r| r.subscribe());
        let load = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let l = loader.clone();
            match tokio::task::spawn_blocking(move || l.load()).await {
                Ok(Ok(records)) => tracing::info!(
                    records,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "group coordinator loaded {OFFSETS_TOPIC}"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "loading {OFFSETS_TOPIC} failed"),
                Err(e) => tracing::error!(error = %e, "loading {OFFSETS_TOPIC} panicked"),
            }
            loader.deadlines_changed.notify_one();
            if let (Some(replicas), Some(rx)) = (replicas, leadership.as_mut()) {
                loader.follow_leadership(&replicas, rx).await;
            }
        });
        let timer = service.clone();
        let tick = tokio::spawn(async move { timer.run_timer().await });
        *service.tasks.lock().expect("tasks lock") = vec![load, tick];
        Ok(service)
    }

    /// Shutdown: stops the loader and the timer (no more session expiry or retention
    /// passes; what they wrote so far stays).
    pub fn stop_timers(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }

    /// In a cluster: the groups of a partition this broker starts leading are rebuilt from
    /// its log (replicated while it followed), and those of one it stops leading dropped.
    /// First for every partition as the leadership stands, then for every change.
    async fn follow_leadership(
        self: &Arc<Self>,
        replicas: &ReplicaManager,
        rx: &mut tokio::sync::broadcast::Receiver<LeadershipChange>,
    ) {
        let partitions = self.offsets.partitions.len() as i32;
        let mut leadership = TopicLeadership::new(replicas, rx, OFFSETS_TOPIC, partitions);
        while let Some(changes) = leadership.next().await {
            for (p, leader) in changes {
                let svc = self.clone();
                let done = tokio::task::spawn_blocking(move || {
                    if leader {
                        svc.reload_partition(p)
                    } else {
                        svc.drop_partition(p);
                        Ok(0)
                    }
                })
                .await;
                match done {
                    Ok(Ok(records)) if leader => {
                        tracing::info!(
                            partition = p,
                            records,
                            "group coordinator loaded a {OFFSETS_TOPIC} partition it now leads"
                        )
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(partition = p, error = %e, "reloading a {OFFSETS_TOPIC} partition failed")
                    }
                    Err(e) => tracing::error!(partition = p, error = %e, "reloading panicked"),
                }
            }
            self.deadlines_changed.notify_one();
        }
    }

    /// Drops the groups of partition `p` (another broker coordinates them now); the
    /// partition counts as loaded (ListGroups lists nothing of it).
    fn drop_partition(&self, p: i32) {
        let _one = self.replay_lock.lock().expect("replay lock");
        let mut co = self.coordinator.lock().expect("coordinator lock");
        co.unload_partition(p);
        co.finish_loading(p);
    }

    /// Rebuilds the groups of partition `p` from its log.
    fn reload_partition(&self, p: i32) -> anyhow::Result<u64> {
        let _one = self.replay_lock.lock().expect("replay lock");
        self.coordinator
            .lock()
            .expect("coordinator lock")
            .unload_partition(p);
        let Some(partition) = self.offsets.partition(p) else {
            return Ok(0);
        };
        let count = self.replay_partition(partition)?;
        self.coordinator
            .lock()
            .expect("coordinator lock")
            .finish_loading(p);
        Ok(count)
    }

    /// Replays every partition of `__consumer_offsets` into the coordinator.
    fn load(&self) -> anyhow::Result<u64> {
        let mut count = 0u64;
        for partition in &self.offsets.partitions {
            let _one = self.replay_lock.lock().expect("replay lock");
            count += self.replay_partition(partition)?;
            self.coordinator
                .lock()
                .expect("coordinator lock")
                .finish_loading(partition.index);
        }
        Ok(count)
    }

    /// Replays one partition's records into the coordinator; how many.
    fn replay_partition(&self, partition: &Partition) -> anyhow::Result<u64> {
        let mut count = 0u64;
        {
            internal_topics::replay(partition, |records| {
                let now = self.clock.now_ms();
                let mut co = self.coordinator.lock().expect("coordinator lock");
                for r in &records {
                    let Some(key) = &r.key else { continue };
                    if r.control {
                        // A transaction marker: the producer's pending offsets end.
                        if let Some(commit) = gregor_txn::records::decode_marker_key(key) {
                            co.complete_txn(r.producer_id, commit, now);
                        }
                    } else if r.transactional {
                        co.replay_txn(r.producer_id, key, r.value.as_deref());
                    } else {
                        co.replay(key, r.value.as_deref(), now);
                    }
                    count += 1;
                }
                Ok(())
            })?;
        }
        Ok(count)
    }

    async fn run_timer(self: Arc<Self>) {
        loop {
            let next = self
                .coordinator
                .lock()
                .expect("coordinator lock")
                .next_deadline();
            let wait = match next {
                Some(d) => (d - self.clock.now_ms()).clamp(0, 60_000),
                None => 60_000,
            };
            if wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = self.deadlines_changed.notified() => continue,
                }
            }
            let now = self.clock.now_ms();
            // Tick without notifying ourselves (that would spin).
            let _ = self.run_quiet(|co, fx| co.tick(now, fx));
        }
    }

    /// Every `__consumer_offsets` partition has been replayed.
    pub fn is_loaded(&self) -> bool {
        self.read(|co| co.is_loaded())
    }

    /// A fresh waiter id and the receiver of its completion.
    pub fn register(&self) -> (Waiter, oneshot::Receiver<Completion>) {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(id, tx);
        (id, rx)
    }

    /// Runs `f` on the coordinator and applies its effects; wakes the timer.
    pub fn run<R>(&self, f: impl FnOnce(&mut Coordinator, &mut Effects) -> R) -> (R, Written) {
        let out = self.run_quiet(f);
        self.deadlines_changed.notify_one();
        out
    }

    /// Like [`run`](Self::run) without waking the timer: for calls that can only move
    /// deadlines later (Heartbeat and OffsetCommit extend sessions), where a wake-up would
    /// only cost the timer a scan of every group.
    pub(crate) fn run_quiet<R>(
        &self,
        f: impl FnOnce(&mut Coordinator, &mut Effects) -> R,
    ) -> (R, Written) {
        let mut co = self.coordinator.lock().expect("coordinator lock");
        let mut fx = Effects::default();
        let result = f(&mut co, &mut fx);
        // Records first (under the lock, so the log order is the coordinator's order), then
        // the answers of waiting requests.
        let written = self.append(fx.records, None);
        if !fx.completions.is_empty() {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            for (w, completion) in fx.completions {
                if let Some(tx) = waiters.remove(&w) {
                    // The requester may be gone (connection closed); nothing to do then.
                    let _ = tx.send(completion);
                }
            }
        }
        drop(co);
        (result, written)
    }

    /// Runs `f` (a TxnOffsetCommit) and appends its records as one transactional batch of
    /// the producer, under the coordinator lock.
    pub fn run_txn<R>(
        &self,
        producer: (i64, i16),
        f: impl FnOnce(&mut Coordinator, &mut Effects) -> R,
    ) -> (R, Written) {
        let mut co = self.coordinator.lock().expect("coordinator lock");
        let mut fx = Effects::default();
        let result = f(&mut co, &mut fx);
        let written = self.append(fx.records, Some(producer));
        drop(co);
        (result, written)
    }

    /// The transaction of `producer_id` ended and its marker was written to
    /// `__consumer_offsets`: its pending offsets become visible (commit) or are dropped.
    pub fn complete_txn(&self, producer_id: i64, commit: bool) {
        self.coordinator
            .lock()
            .expect("coordinator lock")
            .complete_txn(producer_id, commit, self.clock.now_ms());
    }

    /// The `__consumer_offsets` partition of a group.
    pub fn partition_for(&self, group_id: &str) -> i32 {
        self.read(|co| co.partition_for(group_id))
    }

    /// Read access to the coordinator (no effects).
    pub fn read<R>(&self, f: impl FnOnce(&Coordinator) -> R) -> R {
        f(&self.coordinator.lock().expect("coordinator lock"))
    }

    fn append(&self, records: Vec<OffsetsRecord>, producer: Option<(i64, i16)>) -> Written {
        if records.is_empty() {
            return Ok(vec![]);
        }
        let now = self.clock.now_ms();
        let mut by_partition: BTreeMap<i32, Vec<OffsetsRecord>> = BTreeMap::new();
        for r in records {
            by_partition.entry(r.partition).or_default().push(r);
        }
        let mut written = Vec::new();
        let mut error = None;
        for (p, records) in by_partition {
            let Some(partition) = self.offsets.partition(p) else {
                error = Some(format!("{OFFSETS_TOPIC}-{p} does not exist"));
                continue;
            };
            match encode_batch(&records, now, producer) {
                Ok(batch) => match partition.append_internal(&batch) {
                    Ok(_) => written.push(partition.clone()),
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "append to {OFFSETS_TOPIC} failed");
                        error = Some(e.to_string());
                    }
                },
                Err(e) => error = Some(e.to_string()),
            }
        }
        match error {
            None => Ok(written),
            Some(e) => Err(e),
        }
    }
}

fn encode_batch(
    records: &[OffsetsRecord],
    now: i64,
    producer: Option<(i64, i16)>,
) -> anyhow::Result<Bytes> {
    encode_internal_batch(
        records.iter().map(|r| (r.key.clone(), r.value.clone())),
        now,
        producer,
        false,
    )
}
