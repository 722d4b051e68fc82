//! `gregor cluster info`.

use gregor_client::Admin;
use kafka_protocol::messages::ApiKey;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Brokers, controller, cluster id and the API versions the broker supports.
    Info,
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
    }
    Ok(())
}

/// How far a voter's log end is behind the commit point (`None` when unknown).
fn lag(high_watermark: i64, log_end: i64) -> Option<i64> {
    (log_end >= 0).then(|| (high_watermark - log_end).max(0))
}
