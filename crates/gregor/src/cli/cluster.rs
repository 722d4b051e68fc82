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
                println!("api versions:");
                for (k, a, b) in &versions {
                    println!("  {:<28} {a}..{b}", named(*k));
                }
            }
        }
    }
    Ok(())
}
