//! `gregor cluster info|elect|reassign|log-dirs`.

use anyhow::Context;
use gregor_client::{Admin, PartitionOutcome};
use kafka_protocol::messages::ApiKey;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Brokers, controller, cluster id and the API versions the broker supports.
    Info,
    /// Leader election (ElectLeaders): preferred (leadership back to the first replica, if
    /// it is live and in the ISR) or unclean (a partition with no live ISR member gets a
    /// live replica outside the ISR). Without --topic: every partition.
    Elect {
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic (default: all of its partitions).
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        #[arg(long = "type", value_enum, default_value_t = ElectionKind::Preferred)]
        election_type: ElectionKind,
    },
    /// Move a partition's replicas (AlterPartitionReassignments), list the reassignments
    /// in progress (--list) or cancel one (--cancel).
    Reassign {
        #[arg(long, required_unless_present = "list")]
        topic: Option<String>,
        #[arg(long, required_unless_present = "list")]
        partition: Option<i32>,
        /// The target replicas, e.g. 1,2,4 (the first is the preferred leader).
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["list", "cancel"], required_unless_present_any = ["list", "cancel"])]
        replicas: Vec<i32>,
        /// List the reassignments in progress.
        #[arg(long, conflicts_with = "cancel")]
        list: bool,
        /// Cancel the reassignment of --topic/--partition.
        #[arg(long)]
        cancel: bool,
    },
    /// Each broker's log dirs with every partition's size (DescribeLogDirs).
    LogDirs {
        /// Only this broker (default: every broker).
        #[arg(long)]
        broker: Option<i32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ElectionKind {
    Preferred,
    Unclean,
}

/// Kafka's ELECTION_NOT_NEEDED: the partition already has that leader (not a failure).
const ELECTION_NOT_NEEDED: i16 = 84;

/// Prints per-partition outcomes; fails if any is an error other than `ok_code`.
fn report(
    json: bool,
    what: &str,
    outcomes: &[PartitionOutcome],
    ok_code: i16,
) -> anyhow::Result<()> {
    if json {
        super::print_json(&json!({
            what: outcomes.iter().map(|(t, p, code, msg)| json!({
                "topic": t, "partition": p, "error_code": code, "error": (*code != 0).then(|| gregor_client::error::KafkaCode(*code).name()), "message": msg,
            })).collect::<Vec<_>>(),
        }));
    } else {
        if outcomes.is_empty() {
            println!("{what}: nothing to do");
        }
        for (t, p, code, msg) in outcomes {
            match code {
                0 => println!("{t}-{p}: ok"),
                c => println!(
                    "{t}-{p}: {}{}",
                    gregor_client::error::KafkaCode(*c),
                    msg.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
                ),
            }
        }
    }
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, _, c, _)| *c != 0 && *c != ok_code)
        .collect();
    if let Some((t, p, c, msg)) = failed.first() {
        anyhow::bail!(
            "{} of {} partitions failed ({t}-{p}: {}{})",
            failed.len(),
            outcomes.len(),
            gregor_client::error::KafkaCode(*c),
            msg.as_ref().map(|m| format!(" {m}")).unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn run(g: &Global, cmd: ClusterCmd) -> anyhow::Result<()> {
    let json = g.json()?;
    match cmd {
        ClusterCmd::Info => {
            let client = g.client().await?;
            let admin = Admin::new(client.clone());
            let (cluster_id, controller, brokers) = admin.describe_cluster().await?;
            let versions = client.all_api_versions().await?;
            let quorum = admin.describe_quorum().await.ok().flatten();
            let named = |k: i16| {
                ApiKey::try_from(k)
                    .map(|a| format!("{a:?}"))
                    .unwrap_or_else(|_| k.to_string())
            };
            if json {
                super::print_json(&json!({
                    "cluster_id": cluster_id,
                    "controller_id": controller,
                    "brokers": brokers.iter().map(|b| json!({"id": b.id, "host": b.host, "port": b.port, "rack": b.rack})).collect::<Vec<_>>(),
                    "quorum": quorum.as_ref().map(|q| json!({
                        "leader_id": q.leader_id,
                        "leader_epoch": q.leader_epoch,
                        "high_watermark": q.high_watermark,
                        "voters": q.voters.iter().map(|(id, leo)| json!({"id": id, "log_end_offset": leo, "lag": lag(q.high_watermark, *leo)})).collect::<Vec<_>>(),
                        "observers": q.observers.iter().map(|(id, _)| json!({"id": id})).collect::<Vec<_>>(),
                    })),
                    "api_versions": versions.iter().map(|(k, a, b)| json!({"api_key": k, "name": named(*k), "min": a, "max": b})).collect::<Vec<_>>(),
                }));
            } else {
                println!("cluster id: {}", cluster_id.unwrap_or_default());
                println!("controller: {controller}");
                println!("brokers:");
                for b in &brokers {
                    println!(
                        "  {}  {}:{}{}",
                        b.id,
                        b.host,
                        b.port,
                        b.rack
                            .as_ref()
                            .map(|r| format!(" rack={r}"))
                            .unwrap_or_default()
                    );
                }
                if let Some(q) = &quorum {
                    println!(
                        "metadata quorum: leader {} epoch {} high watermark {}",
                        q.leader_id, q.leader_epoch, q.high_watermark
                    );
                    for (id, leo) in &q.voters {
                        let lag =
                            lag(q.high_watermark, *leo).map_or("?".to_string(), |l| l.to_string());
                        println!("  voter {id}  log end {leo}  lag {lag}");
                    }
                    for (id, _) in &q.observers {
                        println!("  observer {id}");
                    }
                }
                println!("api versions:");
                for (k, a, b) in &versions {
                    println!("  {:<28} {a}..{b}", named(*k));
                }
            }
        }
        ClusterCmd::Elect {
            topic,
            partition,
            election_type,
        } => {
            let client = g.client().await?;
            let admin = Admin::new(client.clone());
            let partitions = match (&topic, partition) {
                (None, _) => None,
                (Some(t), Some(p)) => Some(vec![(t.clone(), p)]),
                (Some(t), None) => {
                    client
                        .refresh_metadata(Some(std::slice::from_ref(t)))
                        .await?;
                    let md = client.topic_metadata(t).await?;
                    Some(md.partitions.iter().map(|p| (t.clone(), p.id)).collect())
                }
            };
            let outcomes = admin
                .elect_leaders(
                    election_type == ElectionKind::Unclean,
                    partitions.as_deref(),
                )
                .await?;
            report(json, "elections", &outcomes, ELECTION_NOT_NEEDED)?;
        }
        ClusterCmd::Reassign {
            topic,
            partition,
            replicas,
            list,
            cancel,
        } => {
            let admin = Admin::new(g.client().await?);
            if list {
                let ongoing = admin.list_reassignments().await?;
                if json {
                    super::print_json(&json!({
                        "reassignments": ongoing.iter().map(|r| json!({
                            "topic": r.topic, "partition": r.partition, "replicas": r.replicas,
                            "adding": r.adding, "removing": r.removing,
                        })).collect::<Vec<_>>(),
                    }));
                } else if ongoing.is_empty() {
                    println!("no reassignment in progress");
                } else {
                    for r in &ongoing {
                        println!(
                            "{}-{}: replicas {:?} adding {:?} removing {:?}",
                            r.topic, r.partition, r.replicas, r.adding, r.removing
                        );
                    }
                }
                return Ok(());
            }
            let topic = topic.context("--topic is required")?;
            let partition = partition.context("--partition is required")?;
            let target = (!cancel).then_some(replicas);
            let outcomes = admin
                .alter_reassignments(&[(topic, partition, target)])
                .await?;
            report(json, "reassignments", &outcomes, 0)?;
        }
        ClusterCmd::LogDirs { broker } => {
            let client = g.client().await?;
            let admin = Admin::new(client.clone());
            let brokers: Vec<i32> = match broker {
                Some(b) => vec![b],
                None => {
                    let md = client.refresh_metadata(Some(&[])).await?;
                    md.brokers.keys().copied().collect()
                }
            };
            let mut all = vec![];
            for b in brokers {
                all.push((b, admin.describe_log_dirs(b).await?));
            }
            if json {
                super::print_json(&json!({
                    "brokers": all.iter().map(|(b, dirs)| json!({
                        "broker": b,
                        "log_dirs": dirs.iter().map(|d| json!({
                            "path": d.path, "error_code": d.error_code,
                            "partitions": d.partitions.iter().map(|p| json!({
                                "topic": p.topic, "partition": p.partition,
                                "size": p.size, "offset_lag": p.offset_lag,
                            })).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for (b, dirs) in &all {
                    for d in dirs {
                        println!("broker {b} {}", d.path);
                        for p in &d.partitions {
                            println!(
                                "  {}-{}  size {}  offset lag {}",
                                p.topic, p.partition, p.size, p.offset_lag
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// How far a voter's log end is behind the commit point (`None` when unknown).
fn lag(high_watermark: i64, log_end: i64) -> Option<i64> {
    (log_end >= 0).then(|| (high_watermark - log_end).max(0))
}
