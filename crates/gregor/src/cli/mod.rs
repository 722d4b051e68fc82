//! The client-side subcommands: topic, produce, consume, group, cluster, bench.

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;
pub mod user;

use gregor_client::{Client, ClientConfig};

/// Options shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Bootstrap brokers, comma-separated HOST:PORT.
    #[arg(
        long,
        env = "GREGOR_BROKERS",
        default_value = "localhost:9092",
        global = true
    )]
    pub brokers: String,
    /// Output format: text or json. `consume` also takes a template such as
    /// '%p:%o %k=%v' (see `gregor consume --help`).
    #[arg(long, default_value = "text", global = true)]
    pub format: String,
}

impl Global {
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(ClientConfig::new(self.brokers.clone())).await?)
    }

    /// True for `--format json`; an error for anything but text/json.
    pub fn json(&self) -> anyhow::Result<bool> {
        match self.format.as_str() {
            "json" => Ok(true),
            "text" => Ok(false),
            other => anyhow::bail!("--format must be text or json for this command, not {other:?}"),
        }
    }
}

/// Print a JSON value on one line.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

/// Run an async command on a fresh runtime.
pub fn run<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
