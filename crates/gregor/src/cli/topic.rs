//! `gregor topic create|list|describe|delete|alter-config`.

use std::collections::BTreeMap;

use anyhow::Context;
use gregor_client::admin::{ConfigOp, NewTopic, OffsetSpec};
use gregor_client::Admin;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        topic: String,
        /// Partition count.
        #[arg(long, short, default_value_t = 1)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, short, default_value_t = 1)]
        replicas: i16,
        /// Config override KEY=VALUE (repeatable).
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// List topics.
    List {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
    },
    /// Partitions, leaders, offsets and config overrides of a topic.
    Describe { topic: String },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Change configs (and/or grow the partition count).
    AlterConfig {
        topic: String,
        /// KEY=VALUE to set (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
        /// KEY to reset to the default (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// New partition count (only grows).
        #[arg(long)]
        partitions: Option<i32>,
    },
}

fn parse_kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(g: &Global, cmd: TopicCmd) -> anyhow::Result<()> {
    let json = g.json()?;
    let client = g.client().await?;
    let admin = Admin::new(client.clone());
    match cmd {
        TopicCmd::Create {
            topic,
            partitions,
            replicas,
            configs,
        } => {
            let configs: BTreeMap<String, String> = configs
                .iter()
                .map(|c| parse_kv(c))
                .collect::<anyhow::Result<_>>()?;
            admin
                .create_topics(&[NewTopic {
                    name: topic.clone(),
                    partitions,
                    replication_factor: replicas,
                    configs,
                }])
                .await?;
            if json {
                super::print_json(
                    &json!({"created": topic, "partitions": partitions, "replication_factor": replicas}),
                );
            } else {
                println!("created topic {topic} ({partitions} partitions, replication factor {replicas})");
            }
        }
        TopicCmd::List { internal } => {
            let md = client.refresh_metadata(None).await?;
            let topics: Vec<_> = md
                .topics
                .values()
                .filter(|t| internal || !t.internal)
                .collect();
            if json {
                super::print_json(&json!(topics.iter().map(|t| json!({"name": t.name, "partitions": t.partitions.len(), "internal": t.internal})).collect::<Vec<_>>()));
            } else {
                for t in topics {
                    println!("{}\t{} partitions", t.name, t.partitions.len());
                }
            }
        }
        TopicCmd::Describe { topic } => {
            client
                .refresh_metadata(Some(std::slice::from_ref(&topic)))
                .await?;
            let t = client.topic_metadata(&topic).await?;
            let start = admin
                .list_offsets(&topic, &[], OffsetSpec::Earliest)
                .await?;
            let end = admin.list_offsets(&topic, &[], OffsetSpec::Latest).await?;
            let configs = admin
                .describe_topic_configs(&topic)
                .await
                .unwrap_or_default();
            let overrides: Vec<_> = configs.iter().filter(|c| !c.is_default).collect();
            if json {
                super::print_json(&json!({
                    "name": t.name,
                    "id": t.id.to_string(),
                    "partitions": t.partitions.iter().map(|p| json!({
                        "partition": p.id, "leader": p.leader, "leader_epoch": p.leader_epoch, "replicas": p.replicas, "isr": p.isr,
                        "log_start_offset": start.get(&p.id), "log_end_offset": end.get(&p.id),
                    })).collect::<Vec<_>>(),
                    "configs": configs.iter().map(|c| (c.name.clone(), json!(c.value))).collect::<serde_json::Map<_, _>>(),
                    "overrides": overrides.iter().map(|c| (c.name.clone(), json!(c.value))).collect::<serde_json::Map<_, _>>(),
                }));
            } else {
                println!(
                    "topic {} id {} partitions {}",
                    t.name,
                    t.id,
                    t.partitions.len()
                );
                println!(
                    "  {:>9} {:>6} {:>5} {:>10} {:>10} {:>12} {:>12}",
                    "partition", "leader", "epoch", "replicas", "isr", "start", "end"
                );
                for p in &t.partitions {
                    println!(
                        "  {:>9} {:>6} {:>5} {:>10} {:>10} {:>12} {:>12}",
                        p.id,
                        p.leader,
                        p.leader_epoch,
                        format!("{:?}", p.replicas),
                        format!("{:?}", p.isr),
                        start.get(&p.id).copied().unwrap_or(-1),
                        end.get(&p.id).copied().unwrap_or(-1)
                    );
                }
                if !overrides.is_empty() {
                    println!("  config overrides:");
                    for c in overrides {
                        println!("    {}={}", c.name, c.value.clone().unwrap_or_default());
                    }
                }
            }
        }
        TopicCmd::Delete { topics } => {
            admin.delete_topics(&topics).await?;
            if json {
                super::print_json(&json!({"deleted": topics}));
            } else {
                for t in topics {
                    println!("deleted topic {t}");
                }
            }
        }
        TopicCmd::AlterConfig {
            topic,
            set,
            delete,
            partitions,
        } => {
            if set.is_empty() && delete.is_empty() && partitions.is_none() {
                anyhow::bail!(
                    "nothing to change: give --set KEY=VALUE, --delete KEY or --partitions N"
                );
            }
            let mut ops = Vec::new();
            for s in &set {
                let (k, v) = parse_kv(s)?;
                ops.push(ConfigOp::Set(k, v));
            }
            for k in &delete {
                ops.push(ConfigOp::Delete(k.clone()));
            }
            client.topic_metadata(&topic).await?;
            if !ops.is_empty() {
                admin.alter_topic_configs(&topic, &ops).await?;
            }
            if let Some(n) = partitions {
                admin.create_partitions(&topic, n).await?;
            }
            if json {
                super::print_json(
                    &json!({"topic": topic, "set": set, "deleted": delete, "partitions": partitions}),
                );
            } else {
                println!("altered topic {topic}");
            }
        }
    }
    Ok(())
}
