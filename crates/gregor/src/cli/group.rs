//! `gregor group list|describe|delete|reset-offsets`.

use std::collections::{BTreeMap, BTreeSet};

use gregor_client::admin::OffsetSpec;
use gregor_client::Admin;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum GroupCmd {
    /// List consumer groups.
    List,
    /// Per partition: committed offset, log end offset, lag and owning member.
    Describe { group: String },
    /// Delete groups (they must have no members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets (dry run unless --execute).
    ResetOffsets(ResetArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
pub struct ResetArgs {
    pub group: String,
    /// Topic whose offsets to reset (repeatable; default: every topic the group committed).
    #[arg(long)]
    pub topic: Vec<String>,
    #[arg(long)]
    pub to_earliest: bool,
    #[arg(long)]
    pub to_latest: bool,
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// RFC 3339 time, e.g. 2026-11-26T08:00:00Z: first offset at or after it.
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// Move every committed offset by N (negative goes back), clamped to the log.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Show the plan only (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Apply the plan.
    #[arg(long)]
    pub execute: bool,
}

/// One row of `group describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRow {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub log_end: i64,
    pub lag: Option<i64>,
    pub member: Option<String>,
    pub host: Option<String>,
    pub client_id: Option<String>,
}

/// Lag = log end offset - committed offset (never negative); unknown without a commit.
pub fn lag(committed: Option<i64>, log_end: i64) -> Option<i64> {
    committed.map(|c| (log_end - c).max(0))
}

pub async fn run(g: &Global, cmd: GroupCmd) -> anyhow::Result<()> {
    let json = g.json()?;
    let admin = Admin::new(g.client().await?);
    match cmd {
        GroupCmd::List => {
            let groups = admin.list_groups().await?;
            if json {
                super::print_json(&json!(groups.iter().map(|g| json!({"group": g.group_id, "state": g.state, "protocol_type": g.protocol_type})).collect::<Vec<_>>()));
            } else {
                for g in groups {
                    println!("{}\t{}\t{}", g.group_id, g.state, g.protocol_type);
                }
            }
        }
        GroupCmd::Describe { group } => {
            let desc = admin.describe_group(&group).await?;
            let committed = admin.fetch_offsets(&group, None).await?;
            let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
            for m in &desc.members {
                for tp in &m.assignment {
                    owner.insert(
                        tp.clone(),
                        (m.member_id.clone(), m.host.clone(), m.client_id.clone()),
                    );
                }
            }
            let tps: BTreeSet<(String, i32)> =
                committed.keys().chain(owner.keys()).cloned().collect();
            let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
            for t in tps.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>() {
                ends.insert(
                    t.clone(),
                    admin
                        .list_offsets(&t, &[], OffsetSpec::Latest)
                        .await
                        .unwrap_or_default(),
                );
            }
            let rows: Vec<LagRow> = tps
                .into_iter()
                .map(|(t, p)| {
                    let c = committed.get(&(t.clone(), p)).copied();
                    let end = ends.get(&t).and_then(|m| m.get(&p)).copied().unwrap_or(-1);
                    let o = owner.get(&(t.clone(), p));
                    LagRow {
                        lag: lag(c, end),
                        topic: t,
                        partition: p,
                        committed: c,
                        log_end: end,
                        member: o.map(|o| o.0.clone()),
                        host: o.map(|o| o.1.clone()),
                        client_id: o.map(|o| o.2.clone()),
                    }
                })
                .collect();
            if json {
                super::print_json(&json!({
                    "group": group, "state": desc.state, "protocol": desc.protocol,
                    "members": desc.members.iter().map(|m| json!({"member_id": m.member_id, "client_id": m.client_id, "host": m.host, "assignment": m.assignment.iter().map(|(t, p)| json!([t, p])).collect::<Vec<_>>()})).collect::<Vec<_>>(),
                    "partitions": rows.iter().map(|r| json!({"topic": r.topic, "partition": r.partition, "committed_offset": r.committed, "log_end_offset": r.log_end, "lag": r.lag, "member_id": r.member, "host": r.host, "client_id": r.client_id})).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "group {group} state {} ({} members)",
                    desc.state,
                    desc.members.len()
                );
                println!(
                    "{:<24} {:>9} {:>16} {:>16} {:>8}  {:<40} HOST",
                    "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID",
                );
                for r in rows {
                    println!(
                        "{:<24} {:>9} {:>16} {:>16} {:>8}  {:<40} {}",
                        r.topic,
                        r.partition,
                        r.committed.map_or("-".into(), |c| c.to_string()),
                        r.log_end,
                        r.lag.map_or("-".into(), |l| l.to_string()),
                        r.member.unwrap_or_else(|| "-".into()),
                        r.host.unwrap_or_else(|| "-".into()),
                    );
                }
            }
        }
        GroupCmd::Delete { groups } => {
            for gr in &groups {
                admin.delete_group(gr).await?;
            }
            if json {
                super::print_json(&json!({"deleted": groups}));
            } else {
                for gr in groups {
                    println!("deleted group {gr}");
                }
            }
        }
        GroupCmd::ResetOffsets(a) => reset(&admin, a, json).await?,
    }
    Ok(())
}

async fn reset(admin: &Admin, a: ResetArgs, json: bool) -> anyhow::Result<()> {
    let desc = admin.describe_group(&a.group).await?;
    if !desc.members.is_empty() {
        anyhow::bail!(
            "group {} has {} active member(s) (state {}); stop its consumers before resetting offsets",
            a.group, desc.members.len(), desc.state
        );
    }
    let committed = admin.fetch_offsets(&a.group, None).await?;
    let topics: Vec<String> = if a.topic.is_empty() {
        committed
            .keys()
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        a.topic.clone()
    };
    if topics.is_empty() {
        anyhow::bail!(
            "group {} has no committed offsets; name topics with --topic",
            a.group
        );
    }
    let mut plan: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in &topics {
        let start = admin.list_offsets(t, &[], OffsetSpec::Earliest).await?;
        let end = admin.list_offsets(t, &[], OffsetSpec::Latest).await?;
        let at = match &a.to_datetime {
            Some(dt) => {
                let ts = humantime::parse_rfc3339_weak(dt)
                    .map_err(|e| anyhow::anyhow!("--to-datetime {dt:?}: {e}"))?
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                Some(
                    admin
                        .list_offsets(t, &[], OffsetSpec::Timestamp(ts))
                        .await?,
                )
            }
            None => None,
        };
        for (&p, &s) in &start {
            let e = end[&p];
            let cur = committed.get(&(t.clone(), p)).copied();
            let target = if a.to_earliest {
                s
            } else if a.to_latest {
                e
            } else if let Some(o) = a.to_offset {
                o
            } else if let Some(at) = &at {
                at[&p]
            } else if let Some(n) = a.shift_by {
                cur.unwrap_or(e) + n
            } else {
                unreachable!("clap requires a target")
            };
            plan.insert((t.clone(), p), target.clamp(s, e));
        }
    }
    let execute = a.execute;
    if execute {
        admin.commit_offsets(&a.group, &plan).await?;
    }
    if json {
        super::print_json(&json!({
            "group": a.group, "executed": execute,
            "offsets": plan.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "previous_offset": committed.get(&(t.clone(), *p)), "new_offset": o})).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "{:<24} {:>9} {:>16} {:>16}",
            "TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"
        );
        for ((t, p), o) in &plan {
            println!(
                "{:<24} {:>9} {:>16} {:>16}",
                t,
                p,
                committed
                    .get(&(t.clone(), *p))
                    .map_or("-".into(), |c| c.to_string()),
                o
            );
        }
        if !execute {
            println!("(dry run: add --execute to apply)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_committed() {
        assert_eq!(lag(Some(3), 10), Some(7));
        assert_eq!(lag(Some(10), 10), Some(0));
        assert_eq!(lag(Some(12), 10), Some(0));
        assert_eq!(lag(None, 10), None);
    }
}
