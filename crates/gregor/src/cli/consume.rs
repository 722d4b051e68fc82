//! `gregor consume TOPIC`.

use std::io::Write;
use std::time::{Duration, Instant};

use gregor_client::admin::OffsetSpec;
use gregor_client::consumer::OffsetReset;
use gregor_client::{Consumer, ConsumerConfig, ConsumerRecord};
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Template (--format other than text/json): %t topic, %p partition, %o offset, \
%k key, %v value, %T timestamp (ms), %h headers (k=v,...), %K/%S key/value length, \\n \\t escapes. \
Default text format is '%v'."
)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Consume as a member of this group (subscribe, commit offsets).
    #[arg(long, short)]
    pub group: Option<String>,
    /// Start at the beginning of each partition (when no offset is committed).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start offset: a number, earliest or latest (with --partition, or for every partition).
    #[arg(long)]
    pub offset: Option<String>,
    /// Only these partitions (repeatable); not with --group.
    #[arg(long, short)]
    pub partition: Vec<i32>,
    /// Exit after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Exit when no record arrived for this long (ms); by default wait forever.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Do not commit offsets (with --group).
    #[arg(long)]
    pub no_commit: bool,
    /// Partition assignor with --group: range or cooperative-sticky.
    #[arg(long, default_value = "range")]
    pub assignor: String,
}

fn show(b: &Option<bytes::Bytes>) -> String {
    b.as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

pub fn render(template: &str, r: &ConsumerRecord) -> String {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.push_str(&r.topic),
                Some('p') => out.push_str(&r.partition.to_string()),
                Some('o') => out.push_str(&r.offset.to_string()),
                Some('k') => out.push_str(&show(&r.key)),
                Some('v') => out.push_str(&show(&r.value)),
                Some('T') => out.push_str(&r.timestamp.to_string()),
                Some('K') => {
                    out.push_str(&r.key.as_ref().map_or(-1, |k| k.len() as i64).to_string())
                }
                Some('S') => {
                    out.push_str(&r.value.as_ref().map_or(-1, |v| v.len() as i64).to_string())
                }
                Some('h') => out.push_str(
                    &r.headers
                        .iter()
                        .map(|h| format!("{}={}", h.key, show(&h.value)))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

pub fn to_json(r: &ConsumerRecord) -> serde_json::Value {
    json!({
        "topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
        "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        "headers": r.headers.iter().map(|h| json!([h.key, h.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())])).collect::<Vec<_>>(),
    })
}

pub async fn run(g: &Global, a: ConsumeArgs) -> anyhow::Result<()> {
    enum Out {
        Json,
        Template(String),
    }
    let out = match g.format.as_str() {
        "json" => Out::Json,
        "text" => Out::Template("%v\\n".into()),
        t => Out::Template(if t.ends_with("\\n") {
            t.to_string()
        } else {
            format!("{t}\\n")
        }),
    };
    if a.group.is_some() && !a.partition.is_empty() {
        anyhow::bail!("--partition cannot be combined with --group");
    }
    let client = g.client().await?;
    let md = client.topic_metadata(&a.topic).await?;
    let reset = if a.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    };
    let config = ConsumerConfig {
        group_id: a.group.clone(),
        auto_offset_reset: reset,
        enable_auto_commit: false, // the CLI commits exactly what it printed
        assignor: a.assignor.parse()?,
        auto_commit_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let mut consumer = Consumer::new(client, config);
    if a.group.is_some() {
        consumer.subscribe(std::slice::from_ref(&a.topic)).await?;
    } else {
        let parts: Vec<i32> = if a.partition.is_empty() {
            md.partitions.iter().map(|p| p.id).collect()
        } else {
            a.partition.clone()
        };
        let tps: Vec<_> = parts.iter().map(|p| (a.topic.clone(), *p)).collect();
        consumer.assign(&tps).await?;
        match a.offset.as_deref() {
            None if a.from_beginning => consumer.seek_to(OffsetSpec::Earliest).await?,
            None => consumer.seek_to(OffsetSpec::Latest).await?,
            Some("earliest") | Some("beginning") => consumer.seek_to(OffsetSpec::Earliest).await?,
            Some("latest") | Some("end") => consumer.seek_to(OffsetSpec::Latest).await?,
            Some(n) => {
                let off: i64 = n.parse().map_err(|_| {
                    anyhow::anyhow!("--offset must be a number, earliest or latest, not {n:?}")
                })?;
                for p in &parts {
                    consumer.seek(&a.topic, *p, off);
                }
            }
        }
    }
    let stdout = std::io::stdout();
    let mut seen = 0u64;
    let mut last = Instant::now();
    'outer: loop {
        let records = consumer.poll(Duration::from_millis(200)).await?;
        if records.is_empty() {
            if let Some(idle) = a.idle_timeout_ms {
                if last.elapsed() >= Duration::from_millis(idle) {
                    break;
                }
            }
            continue;
        }
        last = Instant::now();
        let mut lock = stdout.lock();
        for r in &records {
            let line = match &out {
                Out::Json => format!("{}\n", to_json(r)),
                Out::Template(t) => render(t, r),
            };
            if lock.write_all(line.as_bytes()).is_err() {
                break 'outer; // stdout closed (e.g. piped into head)
            }
            seen += 1;
            if a.count.is_some_and(|c| seen >= c) {
                let _ = lock.flush();
                drop(lock);
                if a.group.is_some() && !a.no_commit {
                    // Commit exactly what was printed: unprinted records of this poll stay.
                    let idx = records.iter().position(|x| std::ptr::eq(x, r)).unwrap_or(0);
                    let mut offs = consumer.positions();
                    for u in &records[idx + 1..] {
                        let e = offs
                            .entry((u.topic.clone(), u.partition))
                            .or_insert(u.offset);
                        *e = (*e).min(u.offset);
                    }
                    consumer.commit_offsets(&offs).await?;
                }
                if a.group.is_some() {
                    consumer.close().await?;
                }
                return Ok(());
            }
        }
        let _ = lock.flush();
        drop(lock);
        if a.group.is_some() && !a.no_commit {
            consumer.commit().await?;
        }
    }
    if a.group.is_some() {
        if !a.no_commit {
            consumer.commit().await?;
        }
        consumer.close().await?;
    }
    Ok(())
}
