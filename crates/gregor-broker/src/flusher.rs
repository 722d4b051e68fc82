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

use std::sync::atomic::Ordering;
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
        for w in waiters {
            let _ = w.send(result.clone());
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
