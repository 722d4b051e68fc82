//! Group commit: one thread fsyncs every partition that has been written since its last
//! round, then wakes all the produce requests that were waiting for that round.
//!
//! A produce request appends under the partition's write lock, releases it, and calls
//! [`Flusher::request`], which queues the partition (once) and, for acks=1/all with
//! `fsync = always`, a oneshot to wait on. The flusher thread loops:
//!
//! 1. take every queued partition and every waiter (one lock, one swap);
//! 2. per partition, briefly take the write lock to get a
//!    [`gregor_log::SyncJob`] — cloned `Arc<File>` handles of the dirty segments and
//!    the log end offset it covers;
//! 3. run the jobs with **no log lock held** (appends and fetches go on), in parallel
//!    over a few threads when several partitions are dirty;
//! 4. record each outcome in its log (durable offset, or offline on failure) and answer
//!    the waiters.
//!
//! Correctness: a waiter is queued only after its append returned, so its data is in
//! the page cache before the round that takes the waiter takes its sync jobs; hence the
//! round's fsyncs cover it. While a round runs, new appends queue up for the next one,
//! which is what makes one fsync cover every batch appended meanwhile. A waiter whose
//! partition was already queued for the round in progress may wait one extra round —
//! never too few.
//!
//! Simplification: if any fsync of a round fails, every waiter of that round gets the
//! error (failures take the failing log offline; they are not expected to be routine).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use gregor_log::SyncJob;
use tokio::sync::oneshot;

use crate::state::Partition;

/// Outcome delivered to a waiting produce request.
pub type FlushResult = Result<(), String>;

/// Most threads a round uses to run fsyncs in parallel.
const MAX_SYNC_THREADS: usize = 4;

#[derive(Default)]
struct Pending {
    partitions: Vec<Arc<Partition>>,
    waiters: Vec<oneshot::Sender<FlushResult>>,
    stop: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// fsync rounds completed (for tests and metrics).
    rounds: AtomicU64,
}

/// The group-commit flusher (one thread per broker).
pub struct Flusher {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Flusher {
    pub fn start() -> Flusher {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            rounds: AtomicU64::new(0),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("gregor-flusher".into())
            .spawn(move || run(&worker))
            .expect("spawn flusher thread");
        Flusher {
            inner,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues `partitions` for the next round; with `wait`, returns a receiver that
    /// completes when a round that covers everything appended to them so far is done.
    pub fn request(
        &self,
        partitions: &[Arc<Partition>],
        wait: bool,
    ) -> Option<oneshot::Receiver<FlushResult>> {
        let mut p = self.inner.pending.lock().expect("flusher lock");
        for part in partitions {
            if !part.flush_queued.swap(true, Ordering::AcqRel) {
                p.partitions.push(part.clone());
            }
        }
        let rx = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            p.waiters.push(tx);
            rx
        });
        drop(p);
        self.inner.wake.notify_one();
        rx
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.inner.rounds.load(Ordering::Relaxed)
    }

    /// Finishes the queued rounds and stops the thread.
    pub fn stop(&self) {
        self.inner.pending.lock().expect("flusher lock").stop = true;
        self.inner.wake.notify_one();
        if let Some(t) = self.thread.lock().expect("flusher thread").take() {
            let _ = t.join();
        }
    }
}

fn run(inner: &Inner) {
    loop {
        let (partitions, waiters) = {
            let mut p = inner.pending.lock().expect("flusher lock");
            while p.partitions.is_empty() && p.waiters.is_empty() && !p.stop {
                p = inner.wake.wait(p).expect("flusher lock");
            }
            if p.stop && p.partitions.is_empty() && p.waiters.is_empty() {
                return;
            }
            let parts = std::mem::take(&mut p.partitions);
            for part in &parts {
                part.flush_queued.store(false, Ordering::Release);
            }
            (parts, std::mem::take(&mut p.waiters))
        };
        let result = flush_round(&partitions);
        inner.rounds.fetch_add(1, Ordering::Relaxed);
        for w in waiters {
            let _ = w.send(result.clone());
        }
        // Producer snapshots of segments rolled since (rare: once per roll), after the
        // waiters are answered and with no log lock held.
        for p in &partitions {
            p.write_due_snapshots();
        }
    }
}

/// Takes a sync job from each partition, runs them without log locks, records outcomes.
fn flush_round(partitions: &[Arc<Partition>]) -> FlushResult {
    let jobs: Vec<(Arc<Partition>, SyncJob)> = partitions
        .iter()
        .map(|p| (p.clone(), p.log.write().expect("log lock").take_sync_job()))
        .filter(|(_, j)| !j.is_empty())
        .collect();
    let results: Vec<FlushResult> = if jobs.len() <= 1 {
        jobs.iter()
            .map(|(_, j)| j.run().map_err(|e| e.to_string()))
            .collect()
    } else {
        let threads = jobs.len().min(MAX_SYNC_THREADS);
        let chunk = jobs.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        c.iter()
                            .map(|(_, j)| j.run().map_err(|e| e.to_string()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err("fsync thread panicked".to_string())])
                })
                .collect()
        })
    };
    let mut overall = Ok(());
    for ((p, job), r) in jobs.iter().zip(results) {
        if let Err(e) = &r {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fsync failed");
            overall = Err(e.clone());
        }
        p.log.write().expect("log lock").complete_sync(job, r);
    }
    overall
}

#[cfg(test)]
mod tests {

    use gregor_log::{LogConfig, PartitionLog};

    use super::*;

    fn batch() -> Vec<u8> {
        // One uncompressed record with an empty value.
        let mut b = vec![0u8; 61];
        b[16] = 2;
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[57..61].copy_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&[7, 0, 0, 0, 1, 0, 0]);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn one_round_covers_many_concurrent_produces_across_partitions() {
        let dir = tempfile::TempDir::new().unwrap();
        let parts: Vec<Arc<Partition>> = (0..6)
            .map(|i| {
                let log =
                    PartitionLog::open(&dir.path().join(format!("t-{i}")), LogConfig::default())
                        .unwrap();
                Arc::new(Partition::new(
                    "t",
                    i,
                    dir.path().join(format!("t-{i}")),
                    log,
                    Default::default(),
                ))
            })
            .collect();
        let flusher = Flusher::start();
        let b = batch();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let produces = 48;
        std::thread::scope(|s| {
            for t in 0..produces {
                let (p, flusher, b, rt) = (parts[t % parts.len()].clone(), &flusher, &b, &rt);
                s.spawn(move || {
                    for _ in 0..5 {
                        let end = {
                            let mut log = p.log.write().unwrap();
                            log.append(b).unwrap();
                            log.log_end_offset()
                        };
                        let rx = flusher.request(std::slice::from_ref(&p), true).unwrap();
                        rt.block_on(rx).unwrap().unwrap();
                        // Answered only once durable up to (at least) our append.
                        assert!(p.log.read().unwrap().durable_offset() >= end);
                    }
                });
            }
        });
        let rounds = flusher.rounds();
        assert!(
            rounds < (produces * 5) as u64,
            "no grouping: {rounds} rounds"
        );
        flusher.stop();
        for p in &parts {
            let log = p.log.read().unwrap();
            assert_eq!(log.durable_offset(), log.log_end_offset());
        }
    }
}
