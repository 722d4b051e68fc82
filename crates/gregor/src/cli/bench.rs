//! `gregor bench produce|consume|e2e`.
//!
//! Producers are tokio tasks sharing nothing but counters; each keeps its delivery futures
//! in a channel drained by a collector task that records send→ack latency (in µs) in its
//! own HdrHistogram. Histograms are merged at the end. Values are generated once and
//! shared (`Bytes` clones), so the bench costs little CPU per record.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use gregor_client::admin::{NewTopic, OffsetSpec};
use gregor_client::{
    Admin, Client, Compression, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};
use hdrhistogram::Histogram;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Produce as fast as allowed and report throughput and ack latency.
    Produce(BenchArgs),
    /// Read a topic from the start and report throughput.
    Consume(BenchArgs),
    /// Produce and consume at once; latency is produce → consume.
    E2e(BenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Topic (created with --partitions if missing).
    #[arg(long, default_value = "gregor-bench")]
    pub topic: String,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records in total (default 1,000,000 unless --duration is given).
    #[arg(long)]
    pub count: Option<u64>,
    /// Run for this many seconds instead of a count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Target records per second in total (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Partitions when creating the topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Concurrent consumers (partitions are split between them).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Use idempotence when the broker supports it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub idempotence: bool,
    /// Producer linger (ms).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Producer batch size (bytes).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// The broker's `--http` address (HOST:PORT): scrape its `/metrics` before and after a
    /// produce run and print where the broker spent each produce request's time.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker_metrics: Option<String>,
}

/// Fraction of `--rate` a run must achieve to count as having reached it.
const RATE_REACHED: f64 = 0.95;

struct Progress {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    total: Option<u64>,
}

impl Progress {
    fn new(total: Option<u64>, what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}} {{msg}}"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress { what, bar, total }
    }

    fn tick(&self, done: u64, bytes: u64, elapsed: Duration) {
        let mbps = bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(format!("{mbps:.1} MB/s"));
            }
            None => eprintln!(
                "{} {:>7.1}s {done}{} records, {:.0} records/s, {mbps:.1} MB/s",
                self.what,
                elapsed.as_secs_f64(),
                self.total.map(|t| format!("/{t}")).unwrap_or_default(),
                done as f64 / elapsed.as_secs_f64().max(1e-9)
            ),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn ensure_topic(client: &Client, a: &BenchArgs) -> anyhow::Result<i32> {
    if let Ok(t) = client.topic_metadata(&a.topic).await {
        return Ok(t.partitions.len() as i32);
    }
    Admin::new(client.clone())
        .create_topics(&[NewTopic {
            name: a.topic.clone(),
            partitions: a.partitions,
            replication_factor: 1,
            configs: Default::default(),
        }])
        .await?;
    for _ in 0..100 {
        client
            .refresh_metadata(Some(std::slice::from_ref(&a.topic)))
            .await?;
        if let Some(t) = client.topic(&a.topic) {
            if t.partitions.len() as i32 == a.partitions {
                return Ok(a.partitions);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("topic {} did not appear in metadata", a.topic)
}

struct Summary {
    kind: &'static str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
    errors: u64,
}

fn report(a: &BenchArgs, s: &Summary) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let lat = s.latency.as_ref().filter(|h| !h.is_empty()).map(|h| {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0,
        )
    });
    if a.json {
        super::print_json(&json!({
            "bench": s.kind, "topic": a.topic, "records": s.records, "bytes": s.bytes,
            "seconds": secs, "records_per_sec": s.records as f64 / secs, "mb_per_sec": s.bytes as f64 / 1e6 / secs,
            "record_size": a.record_size, "acks": a.acks, "compression": a.compression,
            "producers": a.producers, "consumers": a.consumers, "errors": s.errors,
            "target_records_per_sec": (a.rate > 0).then_some(a.rate),
            "target_reached": rate_check(a, s).map(|(_, reached)| reached),
            "latency_ms": lat.map(|(p50, p90, p99, p999, max, mean)| json!({"p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max, "mean": mean})),
        }));
    } else {
        println!(
            "{}: {} records, {:.1} MB in {:.2}s: {:.0} records/s, {:.1} MB/s{}",
            s.kind,
            s.records,
            s.bytes as f64 / 1e6,
            secs,
            s.records as f64 / secs,
            s.bytes as f64 / 1e6 / secs,
            if s.errors > 0 {
                format!(", {} errors", s.errors)
            } else {
                String::new()
            }
        );
        if let Some((p50, p90, p99, p999, max, mean)) = lat {
            println!("latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}  mean {mean:.2}");
        }
        if let Some((achieved, reached)) = rate_check(a, s) {
            let pct = 100.0 * achieved / a.rate as f64;
            if reached {
                println!(
                    "target rate reached: {achieved:.0} of {} records/s ({pct:.1} %)",
                    a.rate
                );
            } else {
                println!(
                    "TARGET RATE NOT REACHED: achieved {achieved:.0} records/s, target {} records/s ({pct:.1} %, below {:.0} %)",
                    a.rate,
                    RATE_REACHED * 100.0
                );
            }
        }
    }
}

/// With `--rate`: the achieved rate (acknowledged records over the run's wall time, which
/// includes the final flush) and whether it is at least [`RATE_REACHED`] of the target.
fn rate_check(a: &BenchArgs, s: &Summary) -> Option<(f64, bool)> {
    if a.rate == 0 || s.kind == "consume" {
        return None;
    }
    let achieved = s.records as f64 / s.elapsed.as_secs_f64().max(1e-9);
    Some((achieved, achieved >= RATE_REACHED * a.rate as f64))
}

pub async fn run(g: &Global, cmd: BenchCmd) -> anyhow::Result<()> {
    let (kind, a) = match &cmd {
        BenchCmd::Produce(a) => ("produce", a.clone()),
        BenchCmd::Consume(a) => ("consume", a.clone()),
        BenchCmd::E2e(a) => ("e2e", a.clone()),
    };
    if a.record_size < 8 && kind == "e2e" {
        anyhow::bail!("e2e needs --record-size of at least 8 (it carries a timestamp)");
    }
    if a.producers == 0 || a.consumers == 0 {
        anyhow::bail!("--producers and --consumers must be at least 1");
    }
    let client = g.client().await?;
    let partitions = ensure_topic(&client, &a).await?;
    let total = match (a.count, a.duration) {
        (Some(c), _) => Some(c),
        (None, None) => Some(1_000_000),
        (None, Some(_)) => None,
    };
    let deadline = a
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let before = match (&a.broker_metrics, kind) {
        (Some(addr), "produce") => Some(broker_stages::scrape(addr).await?),
        _ => None,
    };
    let summary = match kind {
        "produce" => produce(&client, &a, total, deadline, false, None).await?,
        "consume" => consume(&client, &a, partitions, total, deadline, false, None).await?,
        _ => {
            // Consumers take their start offsets first, then the producers start.
            let ready = Arc::new(tokio::sync::Notify::new());
            let produced = Arc::new(AtomicU64::new(u64::MAX));
            let ready_p = ready.clone();
            let (p, c) = tokio::join!(
                async {
                    let r = produce(&client, &a, total, deadline, true, Some(ready_p)).await;
                    if let Ok(s) = &r {
                        produced.store(s.records, Ordering::SeqCst);
                    }
                    r
                },
                consume(
                    &client,
                    &a,
                    partitions,
                    total,
                    deadline.map(|d| d + Duration::from_secs(10)),
                    true,
                    Some((ready, produced.clone()))
                )
            );
            let p = p?;
            let mut c = c?;
            c.kind = "e2e";
            if !a.json {
                report(&a, &p);
            }
            c
        }
    };
    report(&a, &summary);
    if let (Some(addr), Some(before)) = (&a.broker_metrics, before) {
        let after = broker_stages::scrape(addr).await?;
        broker_stages::report(&before, &after, a.json);
    }
    if summary.errors > 0 {
        anyhow::bail!("{} records failed", summary.errors);
    }
    Ok(())
}

async fn produce(
    client: &Client,
    a: &BenchArgs,
    total: Option<u64>,
    deadline: Option<Instant>,
    e2e: bool,
    ready: Option<Arc<tokio::sync::Notify>>,
) -> anyhow::Result<Summary> {
    if let Some(r) = ready {
        r.notified().await;
    }
    let config = ProducerConfig {
        acks: super::produce::parse_acks(&a.acks)?,
        compression: a.compression.parse::<Compression>()?,
        linger: Duration::from_millis(a.linger_ms),
        batch_size: a.batch_size,
        idempotence: a.idempotence,
        ..Default::default()
    };
    // Pseudo-random payload (compressible about as much as real data is not; fixed seed).
    let mut rng = fastrand::Rng::with_seed(7);
    let payload: Bytes = (0..a.record_size)
        .map(|_| rng.alphanumeric() as u8)
        .collect::<Vec<u8>>()
        .into();
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let progress = Progress::new(total, "produce");
    let mut tasks = Vec::new();
    for i in 0..a.producers {
        let producer = Producer::new(client.clone(), config.clone()).await?;
        if i == 0 && !producer.idempotent() && a.idempotence {
            tracing::info!("broker does not offer idempotence; producing without it");
        }
        let my_total =
            total.map(|t| t / a.producers as u64 + u64::from((i as u64) < t % a.producers as u64));
        let rate = if a.rate > 0 {
            Some(a.rate as f64 / a.producers as f64)
        } else {
            None
        };
        let (sent, acked, errors, stop) =
            (sent.clone(), acked.clone(), errors.clone(), stop.clone());
        let topic = a.topic.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(
                Instant,
                gregor_client::producer::DeliveryFuture,
            )>(200_000);
            let errors2 = errors.clone();
            let collector = tokio::spawn(async move {
                let errors = errors2;
                let mut h = hist();
                while let Some((t0, f)) = rx.recv().await {
                    match f.await {
                        Ok(_) => {
                            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("produce error: {e}");
                            }
                        }
                    }
                }
                h
            });
            let t_start = Instant::now();
            let mut woke = t_start;
            let mut n = 0u64;
            loop {
                if my_total.is_some_and(|t| n >= t)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                    || stop.load(Ordering::Relaxed)
                {
                    break;
                }
                // With --rate, latency counts from when the record was due, so time a send
                // waits (buffer.memory full, or this loop falling behind) is not left out, but
                // not from before the loop's last wake-up: the timer's millisecond granularity
                // is the bench's lateness, not the producer's.
                let mut due = None;
                if let Some(r) = rate {
                    let d = t_start + Duration::from_secs_f64(n as f64 / r);
                    if d > Instant::now() {
                        tokio::time::sleep_until(d.into()).await;
                        woke = Instant::now();
                    }
                    due = Some(d.max(woke));
                }
                let value = if e2e {
                    let mut b = BytesMut::with_capacity(payload.len());
                    b.put_u64(now_us());
                    b.extend_from_slice(&payload[8..]);
                    b.freeze()
                } else {
                    payload.clone()
                };
                let t0 = due.unwrap_or_else(Instant::now);
                match producer
                    .send(ProducerRecord {
                        topic: topic.clone(),
                        partition: None,
                        key: None,
                        value: Some(value),
                        headers: Vec::new(),
                        timestamp: None,
                    })
                    .await
                {
                    Ok(f) => {
                        if tx.send((t0, f)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("produce error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            let _ = producer.flush().await;
            drop(tx);
            collector.await.unwrap_or_else(|_| hist())
        }));
    }
    let ticker = {
        let acked = acked.clone();
        let size = a.record_size as u64;
        let progress_total = total;
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if last.elapsed() >= Duration::from_secs(1) || progress.bar.is_some() {
                    let done = acked.load(Ordering::Relaxed);
                    progress.tick(done, done * size, start.elapsed());
                    last = Instant::now();
                    if progress_total.is_some_and(|t| done >= t) {
                        break;
                    }
                }
            }
            progress.finish();
        })
    };
    let mut h = hist();
    for t in tasks {
        let th = t.await?;
        h.add(&th).ok();
    }
    let elapsed = start.elapsed();
    ticker.abort();
    let records = acked.load(Ordering::Relaxed);
    Ok(Summary {
        kind: "produce",
        records,
        bytes: records * a.record_size as u64,
        elapsed,
        latency: Some(h),
        errors: errors.load(Ordering::Relaxed),
    })
}

async fn consume(
    client: &Client,
    a: &BenchArgs,
    partitions: i32,
    total: Option<u64>,
    deadline: Option<Instant>,
    e2e: bool,
    sync: Option<(Arc<tokio::sync::Notify>, Arc<AtomicU64>)>,
) -> anyhow::Result<Summary> {
    let (ready, produced) = match sync {
        Some((r, p)) => (Some(r), Some(p)),
        None => (None, None),
    };
    let n = a.consumers.min(partitions as usize).max(1);
    let got = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = Progress::new(total, "consume");
    let mut tasks = Vec::new();
    for i in 0..n {
        let mine: Vec<(String, i32)> = (0..partitions)
            .filter(|p| *p as usize % n == i)
            .map(|p| (a.topic.clone(), p))
            .collect();
        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig {
                enable_auto_commit: false,
                ..Default::default()
            },
        );
        consumer.assign(&mine).await?;
        consumer
            .seek_to(if e2e {
                OffsetSpec::Latest
            } else {
                OffsetSpec::Earliest
            })
            .await?;
        let (got, bytes, produced) = (got.clone(), bytes.clone(), produced.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut last_progress = Instant::now();
            loop {
                let done = got.load(Ordering::Relaxed);
                if total.is_some_and(|t| done >= t)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                    || produced
                        .as_ref()
                        .is_some_and(|p| done >= p.load(Ordering::SeqCst))
                {
                    break;
                }
                if last_progress.elapsed() > Duration::from_secs(10) {
                    anyhow::bail!("no records for 10 s; {done} consumed so far");
                }
                let recs = consumer.poll(Duration::from_millis(500)).await?;
                let now = now_us();
                let mut b = 0u64;
                for r in &recs {
                    let v = r.value.as_ref().map_or(&[][..], |v| &v[..]);
                    b += v.len() as u64;
                    if e2e && v.len() >= 8 {
                        let sent = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                        let _ = h.record(now.saturating_sub(sent).max(1));
                    }
                }
                if !recs.is_empty() {
                    last_progress = Instant::now();
                }
                bytes.fetch_add(b, Ordering::Relaxed);
                got.fetch_add(recs.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(h)
        }));
    }
    if let Some(r) = ready {
        r.notify_one();
    }
    let ticker = {
        let (got, bytes) = (got.clone(), bytes.clone());
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if last.elapsed() >= Duration::from_secs(1) || progress.bar.is_some() {
                    progress.tick(
                        got.load(Ordering::Relaxed),
                        bytes.load(Ordering::Relaxed),
                        start.elapsed(),
                    );
                    last = Instant::now();
                }
            }
        })
    };
    let mut h = hist();
    for t in tasks {
        let th = t.await??;
        h.add(&th).ok();
    }
    ticker.abort();
    let elapsed = start.elapsed();
    let records = got.load(Ordering::Relaxed);
    Ok(Summary {
        kind: "consume",
        records,
        bytes: bytes.load(Ordering::Relaxed),
        elapsed,
        latency: e2e.then_some(h),
        errors: 0,
    })
}

/// The broker's account of produce latency: `gregor_produce_stage_seconds{stage}` from its
/// `/metrics`, scraped before and after a run; the difference is the run's distribution.
mod broker_stages {
    use std::collections::BTreeMap;

    use anyhow::Context;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const FAMILY: &str = "gregor_produce_stage_seconds";
    const STAGES: [&str; 6] = [
        "queued",
        "append",
        "durable_wait",
        "response_write",
        "total",
        "fsync_round",
    ];

    /// stage → (upper bound in seconds, cumulative count), in bound order.
    pub type Stages = BTreeMap<String, Vec<(f64, u64)>>;

    /// GET http://ADDR/metrics (HTTP/1.0, so the answer ends with the connection).
    pub async fn scrape(addr: &str) -> anyhow::Result<Stages> {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the broker's metrics at {addr}"))?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.read_to_string(&mut body),
        )
        .await
        .context("reading /metrics timed out")??;
        if !body.starts_with("HTTP/1.") || body.split(' ').nth(1).is_none_or(|c| c != "200") {
            anyhow::bail!(
                "GET http://{addr}/metrics: {}",
                body.lines().next().unwrap_or("")
            );
        }
        Ok(parse(&body))
    }

    /// The `_bucket` lines of [`FAMILY`].
    pub fn parse(text: &str) -> Stages {
        let mut out = Stages::new();
        let prefix = format!("{FAMILY}_bucket{{");
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    kv.strip_prefix(name)
                        .and_then(|v| v.strip_prefix("=\""))
                        .and_then(|v| v.strip_suffix('"'))
                })
            };
            let (Some(stage), Some(le)) = (label("stage"), label("le")) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            let Ok(count) = value.trim().parse::<f64>() else {
                continue;
            };
            out.entry(stage.to_string())
                .or_default()
                .push((le, count as u64));
        }
        for v in out.values_mut() {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }

    /// Upper bound of the bucket holding quantile `q` of `buckets` (cumulative counts).
    pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
        let total = buckets.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
    }

    /// `after - before`, bucket by bucket.
    pub fn delta(before: &Stages, after: &Stages, stage: &str) -> Vec<(f64, u64)> {
        let b = before.get(stage);
        after
            .get(stage)
            .map(|a| {
                a.iter()
                    .map(|(le, c)| {
                        let old = b
                            .and_then(|b| b.iter().find(|(l, _)| l == le))
                            .map_or(0, |(_, c)| *c);
                        (*le, c.saturating_sub(old))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ms(v: Option<f64>) -> String {
        match v {
            None => "-".into(),
            Some(v) if v.is_infinite() => ">10000".into(),
            Some(v) => {
                let s = format!("{:.3}", v * 1e3);
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        }
    }

    pub fn report(before: &Stages, after: &Stages, as_json: bool) {
        let rows: Vec<_> = STAGES
            .iter()
            .map(|stage| {
                let d = delta(before, after, stage);
                let count = d.last().map_or(0, |x| x.1);
                let qs: Vec<Option<f64>> = [0.5, 0.9, 0.99, 0.999, 1.0]
                    .iter()
                    .map(|q| quantile(&d, *q))
                    .collect();
                (*stage, count, qs)
            })
            .collect();
        if as_json {
            let v: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(stage, count, qs)| {
                    let f = |q: Option<f64>| q.filter(|v| v.is_finite()).map(|v| v * 1e3);
                    (
                        stage.to_string(),
                        json!({"count": count, "p50_le_ms": f(qs[0]), "p90_le_ms": f(qs[1]),
                               "p99_le_ms": f(qs[2]), "p99_9_le_ms": f(qs[3]), "max_le_ms": f(qs[4])}),
                    )
                })
                .collect();
            super::super::print_json(&json!({ "broker_produce_stages": v }));
            return;
        }
        println!(
            "broker produce stages during the run (per request; fsync_round per flusher round), ms, as bucket upper bounds:"
        );
        println!(
            "  {:<15} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "stage", "count", "p50≤", "p90≤", "p99≤", "p99.9≤", "max≤"
        );
        for (stage, count, qs) in rows {
            println!(
                "  {:<15} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                stage,
                count,
                ms(qs[0]),
                ms(qs[1]),
                ms(qs[2]),
                ms(qs[3]),
                ms(qs[4])
            );
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn run_percentiles_come_from_the_difference_of_two_scrapes() {
            let before = parse(concat!(
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"0.001\"} 10\n",
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"0.01\"} 10\n",
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"+Inf\"} 10\n",
            ));
            let after = parse(concat!(
                "# HELP gregor_produce_stage_seconds x\n",
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"0.001\"} 60\n",
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"0.01\"} 109\n",
                "gregor_produce_stage_seconds_bucket{stage=\"total\",le=\"+Inf\"} 110\n",
                "gregor_produce_stage_seconds_count{stage=\"total\"} 110\n",
            ));
            let d = delta(&before, &after, "total");
            assert_eq!(d, vec![(0.001, 50), (0.01, 99), (f64::INFINITY, 100)]);
            assert_eq!(quantile(&d, 0.5), Some(0.001));
            assert_eq!(quantile(&d, 0.9), Some(0.01));
            assert_eq!(quantile(&d, 1.0), Some(f64::INFINITY));
            assert_eq!(quantile(&delta(&before, &before, "total"), 0.5), None);
        }
    }
}
