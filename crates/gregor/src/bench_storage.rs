//! `gregor bench-storage`: durable append throughput vs the raw disk, in one run.
//!
//! 1. **Raw disk**: write `--mib` MiB sequentially to one file in `--dir`, fdatasync after
//!    every 1 MiB. This is the ceiling for "data on disk before you answer".
//! 2. **Gregor**: `--partitions` partition logs in the same directory, `--producers`
//!    tasks per partition (on a tokio runtime with a worker per core, as in the broker), each appending ~64 KB batches of 1 KB records and then waiting
//!    for the broker's group-commit flusher — the exact path of an acks=all produce with
//!    `fsync = always` (append under the partition lock, queue, one fsync round covers
//!    every batch appended meanwhile, wake). Same total bytes.
//! 3. Latency of each produce (append → durable) is recorded in an HDR histogram; a
//!    second, unloaded run with a single producer reports the latency of one fsync per
//!    produce.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use gregor_broker::flusher::Flusher;
use gregor_broker::partition::Partition;
use gregor_client::records::{encode_batch, Compression, OutRecord, ProducerIdentity};
use gregor_log::{LogConfig, PartitionLog};
use hdrhistogram::Histogram;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Directory on the disk to measure (a fresh subdirectory is created and removed).
    #[arg(long, default_value = "./gregor-bench")]
    dir: PathBuf,
    /// MiB written by each of the two phases.
    #[arg(long, default_value_t = 512)]
    mib: u64,
    /// Partitions written concurrently.
    #[arg(long, default_value_t = 4)]
    partitions: usize,
    /// Concurrent producers (in-flight requests) per partition. The default, 16 x 4
    /// partitions x 64 KB = 4 MiB in flight, is a loaded broker; with less in flight the
    /// throughput is bounded by in-flight bytes / fsync round latency (see README).
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Record size in bytes.
    #[arg(long, default_value_t = 1000)]
    record_bytes: usize,
    /// Records per batch (64 × 1 KB ≈ 64 KB batches).
    #[arg(long, default_value_t = 64)]
    batch_records: usize,
    /// Seconds of the unloaded single-producer latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Alternate raw and Gregor phases this many times (each writes mib / rounds), so
    /// both see the same background disk load on a shared machine.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
}

/// An uncompressed v2 batch of `n` records with `size`-byte values and a 8-byte key.
fn make_batch(n: usize, size: usize) -> Vec<u8> {
    let ts = gregor_log::now_ms();
    let value = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let records: Vec<OutRecord> = (0..n)
        .map(|i| OutRecord {
            key: Some(Bytes::from(format!("key{i:05}"))),
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: ts,
        })
        .collect();
    encode_batch(&records, Compression::None, ProducerIdentity::default())
        .expect("a batch of at least one record")
        .to_vec()
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn raw_disk(dir: &std::path::Path, total: u64) -> anyhow::Result<Duration> {
    let path = dir.join("raw.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: usize| (i * 7 % 253) as u8).collect();
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        f.write_all(&chunk)?;
        f.sync_data()?;
        written += chunk.len() as u64;
    }
    let d = start.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(d)
}

fn open_partitions(dir: &std::path::Path, n: usize) -> anyhow::Result<Vec<Arc<Partition>>> {
    (0..n)
        .map(|i| {
            let log = PartitionLog::open(&dir.join(format!("bench-{i}")), LogConfig::default())?;
            Ok(Arc::new(Partition::new(
                "bench",
                i as i32,
                dir.join(format!("bench-{i}")),
                log,
                Default::default(),
            )))
        })
        .collect()
}

/// Producers append + wait for group commit until `total` bytes are durable (or until
/// `deadline`); returns elapsed time, bytes and the latency histogram (µs).
fn gregor_durable(
    partitions: &[Arc<Partition>],
    producers: usize,
    batch: &[u8],
    total: u64,
    deadline: Option<Duration>,
) -> anyhow::Result<(Duration, u64, Histogram<u64>)> {
    let flusher = Arc::new(Flusher::start());
    let written = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    // The broker's model: produce requests are tasks on a multi-threaded runtime with a
    // worker per core; each appends under the partition lock, queues for the flusher and
    // awaits its round.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .build()?;
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for p in partitions {
            for _ in 0..producers {
                let (flusher, written, hist, p) =
                    (flusher.clone(), written.clone(), hist.clone(), p.clone());
                let batch = batch.to_vec();
                tasks.spawn(async move {
                    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let parts = [p];
                    loop {
                        let before = written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        if before >= total || deadline.is_some_and(|d| start.elapsed() >= d) {
                            break;
                        }
                        let t0 = Instant::now();
                        parts[0].append_internal(&batch)?;
                        let rx = flusher.request(&parts, true).expect("waiter");
                        rx.await?.map_err(anyhow::Error::msg)?;
                        local.record(t0.elapsed().as_micros().max(1) as u64)?;
                    }
                    hist.lock().expect("hist").add(local)?;
                    anyhow::Ok(())
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|_| anyhow::anyhow!("producer panicked"))??;
        }
        anyhow::Ok(())
    })?;
    let elapsed = start.elapsed();
    flusher.stop();
    let bytes: u64 = partitions.iter().map(|p| p.size_bytes()).sum();
    let hist = Arc::try_unwrap(hist)
        .map_err(|_| anyhow::anyhow!("histogram still shared"))?
        .into_inner()
        .expect("hist");
    Ok((elapsed, bytes, hist))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let total = args.mib << 20;
    let batch = make_batch(args.batch_records, args.record_bytes);
    println!(
        "bench-storage: {} MiB per phase, batch {} bytes ({} x {} B records), {} partitions x {} producers, dir {}",
        args.mib,
        batch.len(),
        args.batch_records,
        args.record_bytes,
        args.partitions,
        args.producers,
        dir.display()
    );

    let rounds = args.rounds.max(1);
    let per_round = (total / rounds).max(1 << 20);
    let (mut raw_t, mut raw_b, mut g_t, mut g_b) = (Duration::ZERO, 0u64, Duration::ZERO, 0u64);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for r in 0..rounds {
        let raw = raw_disk(dir, per_round)?;
        let parts = open_partitions(&dir.join(format!("loaded-{r}")), args.partitions)?;
        let (d, bytes, hist) = gregor_durable(&parts, args.producers, &batch, per_round, None)?;
        println!(
            "round {r}: raw {:7.1} MB/s   gregor {:7.1} MB/s",
            mb_per_s(per_round, raw),
            mb_per_s(bytes, d)
        );
        raw_t += raw;
        raw_b += per_round;
        g_t += d;
        g_b += bytes;
        all.add(hist)?;
        drop(parts);
        std::fs::remove_dir_all(dir.join(format!("loaded-{r}")))?;
    }
    let raw_mbs = mb_per_s(raw_b, raw_t);
    let g_mbs = mb_per_s(g_b, g_t);
    println!(
        "raw disk, fdatasync per 1 MiB:        {raw_mbs:8.1} MB/s ({} MiB in {:.2} s)",
        raw_b >> 20,
        raw_t.as_secs_f64()
    );
    println!(
        "gregor durable append (group commit): {g_mbs:8.1} MB/s ({} MiB in {:.2} s)",
        g_b >> 20,
        g_t.as_secs_f64()
    );
    println!(
        "ratio gregor / raw:                   {:8.3}",
        g_mbs / raw_mbs
    );
    let hist = all;
    println!(
        "produce->durable latency under load: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} produces)",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        hist.len()
    );

    let parts = open_partitions(&dir.join("single"), 1)?;
    let (_, _, hist) = gregor_durable(
        &parts,
        1,
        &batch,
        u64::MAX,
        Some(Duration::from_secs(args.latency_secs)),
    )?;
    println!(
        "fsync-per-produce latency, 1 producer: p50 {:.2} ms, p99 {:.2} ms ({} produces)",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.len()
    );
    Ok(())
}
