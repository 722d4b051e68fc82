//! `gregor produce TOPIC`: one record per stdin line.

use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::Context;
use bytes::Bytes;
use gregor_client::producer::DeliveryFuture;
use gregor_client::{Compression, Header, Producer, ProducerConfig, ProducerRecord};
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Split each line into KEY<sep>VALUE at the first occurrence of this string.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record (repeatable; keys may repeat).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Write every record to this partition (default: murmur2 of the key, sticky if none).
    #[arg(long, short)]
    pub partition: Option<i32>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Batch linger in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

pub fn parse_acks(s: &str) -> anyhow::Result<i16> {
    match s {
        "all" | "-1" => Ok(-1),
        "0" => Ok(0),
        "1" => Ok(1),
        other => anyhow::bail!("--acks must be 0, 1 or all, not {other:?}"),
    }
}

pub async fn run(g: &Global, a: ProduceArgs) -> anyhow::Result<()> {
    let json = g.json()?;
    let headers: Vec<Header> = a
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once('=')
                .with_context(|| format!("--header must be KEY=VALUE, got {h:?}"))?;
            Ok(Header {
                key: k.to_string(),
                value: Some(Bytes::from(v.to_string())),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let config = ProducerConfig {
        acks: parse_acks(&a.acks)?,
        compression: a.compression.parse::<Compression>()?,
        linger: std::time::Duration::from_millis(a.linger_ms),
        ..Default::default()
    };
    let client = g.client().await?;
    client.topic_metadata(&a.topic).await?;
    let producer = Producer::new(client, config).await?;
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(10_000);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut pending: Vec<(Option<String>, DeliveryFuture)> = Vec::new();
    let mut results = Vec::new();
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut count = 0u64;
    async fn drain(
        pending: &mut Vec<(Option<String>, DeliveryFuture)>,
        results: &mut Vec<serde_json::Value>,
        per_partition: &mut BTreeMap<i32, u64>,
        keep: bool,
    ) -> anyhow::Result<()> {
        for (key, f) in pending.drain(..) {
            let md = f.await?;
            *per_partition.entry(md.partition).or_default() += 1;
            if keep {
                results.push(json!({"key": key, "partition": md.partition, "offset": md.offset}));
            }
        }
        Ok(())
    }
    while let Some(line) = line_rx.recv().await {
        let (key, value) = match &a.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        let mut rec = ProducerRecord::new(a.topic.clone(), value);
        rec.key = key.clone().map(Bytes::from);
        rec.partition = a.partition;
        rec.headers = headers.clone();
        pending.push((key, producer.send(rec).await?));
        count += 1;
        if pending.len() >= 10_000 {
            drain(&mut pending, &mut results, &mut per_partition, json).await?;
        }
    }
    producer.flush().await?;
    drain(&mut pending, &mut results, &mut per_partition, json).await?;
    if json {
        super::print_json(&json!({
            "topic": a.topic, "produced": count,
            "partitions": per_partition.iter().map(|(p, n)| (p.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "records": results,
        }));
    } else {
        eprintln!("produced {count} records to {}", a.topic);
    }
    Ok(())
}
