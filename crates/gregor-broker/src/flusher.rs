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
//!    when several partitions are dirty: the flusher runs one itself and hands the others
//!    to up to [`MAX_SYNC_THREADS`]` - 1` long-lived sync threads (spawning threads per
//!    round cost more CPU than the fsyncs on a fast disk);
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
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use gregor_log::SyncJob;
use tokio::sync::oneshot;

use crate::partition::Partition;

/// Outcome delivered to a waiting produce request.
pub type FlushResult = Result<(), String>;

/// Most threads a round uses to run fsyncs in parallel (the flusher and its helpers).
const MAX_SYNC_THREADS: usize = 4;

/// A sync job handed to a helper thread, with the channel its outcome goes back on.
type Work = (usize, SyncJob, mpsc::Sender<(usize, SyncJob, FlushResult)>);

/// The long-lived helper threads of the flusher; they exit when their sender is dropped.
struct SyncPool {
    workers: Vec<mpsc::Sender<Work>>,
}

impl SyncPool {
    fn start(n: usize) -> SyncPool {
        let workers = (0..n)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Work>();
                std::thread::Builder::new()
                    .name(format!("gregor-sync-{i}"))
                    .spawn(move || {
                        for (index, job, reply) in rx {
                            let r = job.run().map_err(|e| e.to_string());
                            let _ = reply.send((index, job, r));
                        }
                    })
                    .expect("spawn sync thread");
                tx
            })
            .collect();
        SyncPool { workers }
    }

    /// Runs every job, in parallel over the helpers and the calling thread; returns the
    /// jobs with their outcomes, in the order given.
    fn run_all(&self, jobs: Vec<SyncJob>) -> Vec<(SyncJob, FlushResult)> {
        let n = jobs.len();
        let mut out: Vec<Option<(SyncJob, FlushResult)>> = (0..n).map(|_| None).collect();
        let (reply, results) = mpsc::channel();
        let mut inline = Vec::new();
        let mut handed = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            // Job 0 and any beyond the helpers' count (round-robin) run here.
            let worker = (i % MAX_SYNC_THREADS)
                .checked_sub(1)
                .and_then(|w| self.workers.get(w));
            match worker {
                Some(w) => match w.send((i, job, reply.clone())) {
                    Ok(()) => handed += 1,
                    Err(mpsc::SendError((i, job, _))) => inline.push((i, job)),
                },
                None => inline.push((i, job)),
            }
        }
        drop(reply);
        for (i, job) in inline {
            let r = job.run().map_err(|e| e.to_string());
            out[i] = Some((job, r));
        }
        for _ in 0..handed {
            match results.recv() {
                Ok((i, job, r)) => out[i] = Some((job, r)),
                Err(_) => break, // a helper died; its job is reported as failed below
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| (SyncJob::default(), Err("sync thread died".into()))))
            .collect()
    }
}

/// Queues partitions for the flusher's next round, without waiting.
pub type QueueFn = Arc<dyn Fn(&[Arc<Partition>]) + Send + Sync>;

/// Adds the partitions not queued yet to the next round.
fn queue(p: &mut Pending, partitions: &[Arc<Partition>]) {
    for part in partitions {
        if part.mark_flush_queued() {
            p.partitions.push(part.clone());
        }
    }
}

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
            .spawn(move || run(&worker, &SyncPool::start(MAX_SYNC_THREADS - 1)))
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
        queue(&mut p, partitions);
        let rx = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            p.waiters.push(tx);
            rx
        });
        drop(p);
        self.inner.wake.notify_one();
        rx
    }

    /// A function that queues partitions for the next round without waiting (a follower's
    /// replicated appends: durable soon, nobody waits).
    pub fn queue_fn(&self) -> QueueFn {
        let inner = self.inner.clone();
        Arc::new(move |partitions| {
            queue(&mut inner.pending.lock().expect("flusher lock"), partitions);
            inner.wake.notify_one();
        })
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

fn run(inner: &Inner, pool: &SyncPool) {
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
                part.clear_flush_queued();
            }
            (parts, std::mem::take(&mut p.waiters))
        };
        let started = std::time::Instant::now();
        let result = flush_round(&partitions, pool);
        crate::metrics::metrics().observe_fsync(started.elapsed());
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
///
/// An offline partition (an earlier fsync failed) fails the round without a job: its
/// failed job already took its dirty segments, so a new job would be empty and "succeed",
/// answering a waiter (e.g. a retried batch) as if its data were durable.
fn flush_round(partitions: &[Arc<Partition>], pool: &SyncPool) -> FlushResult {
    let mut overall = Ok(());
    let (parts, jobs): (Vec<&Arc<Partition>>, Vec<SyncJob>) = partitions
        .iter()
        .filter(|p| match p.offline_error() {
            Some(e) => {
                overall = Err(e);
                false
            }
            None => true,
        })
        .map(|p| (p, p.take_sync_job()))
        .filter(|(_, j)| !j.is_empty())
        .unzip();
    let done = pool.run_all(jobs);
    for (p, (job, r)) in parts.into_iter().zip(done) {
        if let Err(e) = &r {
            tracing::error!(topic = %p.topic, partition = p.index, error = %e, "fsync failed");
            overall = Err(e.clone());
        }
        p.complete_sync(&job, r);
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

    /// A partition whose fsync failed fails every later round it is in, even with nothing
    /// new to sync: a waiter queued behind the failure (a retry answered from the producer
    /// state) is never told its data is durable.
    #[test]
    fn an_offline_partition_fails_every_later_round() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = PartitionLog::open(&dir.path().join("t-0"), LogConfig::default()).unwrap();
        let p = Arc::new(Partition::new(
            "t",
            0,
            dir.path().join("t-0"),
            log,
            Default::default(),
        ));
        p.append_internal(&batch()).unwrap();
        let job = p.take_sync_job();
        p.complete_sync(&job, Err("Input/output error".into()));
        let flusher = Flusher::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rx = flusher.request(std::slice::from_ref(&p), true).unwrap();
        assert!(rt.block_on(rx).unwrap().is_err());
        assert_eq!(p.durable_offset(), 0);
        flusher.stop();
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
                            p.append_internal(b).unwrap();
                            p.log_end_offset()
                        };
                        let rx = flusher.request(std::slice::from_ref(&p), true).unwrap();
                        rt.block_on(rx).unwrap().unwrap();
                        // Answered only once durable up to (at least) our append.
                        assert!(p.durable_offset() >= end);
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
            assert_eq!(p.durable_offset(), p.log_end_offset());
        }
    }
}
