//! Background storage work: `interval` flushes (`flush.ms` / `flush.messages`), retention,
//! the recovery-point checkpoint, producer-id expiry and the compaction cleaner's
//! schedule.
//!
//! One tokio task ticks every 100 ms; anything that touches files runs on a blocking
//! thread and takes each partition's write lock only for the metadata change (a retention
//! pass unlinks whole segments; it never rewrites data under the lock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gregor_log::clean::CleanConfig;

use crate::broker::Broker;
use crate::config::FsyncPolicy;
use crate::partition::Partition;

const TICK: Duration = Duration::from_millis(100);

/// Starts the compaction cleaner thread: every `log.cleaner.backoff.ms` it runs a
/// pass (see `gregor_log::clean`) on each partition of each topic whose `cleanup.policy`
/// includes `compact`. One thread, so at most one partition is cleaned at a time; its I/O
/// is throttled and it holds a partition's write lock only to swap files in.
pub fn spawn_cleaner(broker: Arc<Broker>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("gregor-cleaner".into())
        .spawn(move || {
            let every = Duration::from_millis(broker.config.log_cleaner_backoff_ms.max(10));
            let mut last = Instant::now();
            while !broker.is_stopping() {
                // Short sleeps so shutdown is not delayed by the backoff.
                std::thread::sleep(every.min(Duration::from_millis(100)));
                if last.elapsed() >= every {
                    cleaner_pass(&broker);
                    last = Instant::now();
                }
            }
        })
        .expect("spawn cleaner thread")
}

/// One compaction pass over every compacted partition.
pub fn cleaner_pass(broker: &Broker) {
    for t in broker.all_topics() {
        let s = t.log_settings(&broker.config);
        if !s.compact {
            continue;
        }
        let cfg = CleanConfig {
            min_cleanable_dirty_ratio: s.min_cleanable_dirty_ratio,
            min_compaction_lag_ms: s.min_compaction_lag_ms,
            delete_retention_ms: s.delete_retention_ms,
            max_map_bytes: broker.config.log_cleaner_dedupe_buffer_size,
            io_bytes_per_sec: broker.config.log_cleaner_io_max_bytes_per_second,
            max_decompressed_bytes: broker.config.max_decompressed_batch_bytes,
            now_ms: gregor_log::now_ms(),
        };
        for p in &t.partitions {
            if broker.is_stopping() {
                return;
            }
            if let Err(e) = p.compact(&cfg) {
                tracing::error!(topic = %t.name, partition = p.index, error = %e, "compaction failed");
            }
        }
    }
}

/// Starts the background task; it runs until the runtime shuts down.
pub fn spawn(broker: Arc<Broker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let retention_every = Duration::from_millis(broker.config.log_retention_check_interval_ms);
        let checkpoint_every =
            Duration::from_millis(broker.config.log_flush_offset_checkpoint_interval_ms);
        let expiry_every =
            Duration::from_millis(broker.config.producer_id_expiration_check_interval_ms);
        let mut last_retention = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut last_expiry = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            if broker.config.fsync == FsyncPolicy::Interval {
                interval_flush(&broker);
            }
            if last_retention.elapsed() >= retention_every {
                last_retention = Instant::now();
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || retention_pass(&b)).await;
            }
            if last_expiry.elapsed() >= expiry_every {
                last_expiry = Instant::now();
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || producer_expiry_pass(&b)).await;
            }
            if last_checkpoint.elapsed() >= checkpoint_every {
                last_checkpoint = Instant::now();
                let b = broker.clone();
                let r = tokio::task::spawn_blocking(move || b.write_recovery_checkpoint()).await;
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e, "writing recovery-point checkpoint failed");
                }
            }
        }
    })
}

/// `fsync = interval`: queues partitions whose unflushed data is older than `flush.ms`
/// or more than `flush.messages` records.
pub fn interval_flush(broker: &Broker) {
    let now = gregor_log::now_ms();
    let mut due: Vec<Arc<Partition>> = Vec::new();
    for t in broker.all_topics() {
        let s = t.log_settings(&broker.config);
        for p in &t.partitions {
            let (records, since) = p.unflushed();
            if records > 0
                && (records >= s.flush_messages
                    || since.is_some_and(|t0| now.saturating_sub(t0) >= s.flush_ms))
            {
                due.push(p.clone());
            }
        }
    }
    if !due.is_empty() {
        broker.flusher().request(&due, false);
    }
}

/// `producer.id.expiration.ms`: removes from every partition's producer state the
/// producers idle that long without an open transaction there. Each partition's table is
/// scanned once under its own lock (no log lock, no I/O); snapshots taken afterwards
/// leave the removed producers out. Returns how many were removed.
pub fn producer_expiry_pass(broker: &Broker) -> usize {
    let now = gregor_log::now_ms();
    let expiration = broker.config.producer_id_expiration_ms;
    let mut removed = 0;
    for t in broker.all_topics() {
        for p in &t.partitions {
            let n = p.expire_producers(now, expiration);
            if n > 0 {
                tracing::debug!(topic = %t.name, partition = p.index, expired_producers = n, "producer state expired");
            }
            removed += n;
        }
    }
    if removed > 0 {
        tracing::info!(expired_producers = removed, "expired idle producer ids");
    }
    removed
}

/// Time and size retention for every topic whose `cleanup.policy` includes `delete`.
pub fn retention_pass(broker: &Broker) {
    let now = gregor_log::now_ms();
    for t in broker.all_topics() {
        let s = t.log_settings(&broker.config);
        if !s.delete || (s.retention_ms < 0 && s.retention_bytes < 0) {
            continue;
        }
        for p in &t.partitions {
            match p.apply_retention(s.retention_ms, s.retention_bytes, now) {
                Ok((0, _)) => {}
                Ok((n, log_start_offset)) => {
                    tracing::info!(
                        topic = %t.name,
                        partition = p.index,
                        segments_deleted = n,
                        log_start_offset,
                        "retention deleted old segments"
                    )
                }
                Err(e) => {
                    tracing::error!(topic = %t.name, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }
}
