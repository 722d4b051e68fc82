//! `gregor`: the broker and its command-line tools in one binary.

mod bench_storage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gregor_broker::{Broker, BrokerConfig};
use tokio::net::TcpListener;

mod cli;

/// See `gregor_protocol::alloc_guard`: keeps hostile wire counts from aborting the process.
#[global_allocator]
static ALLOCATOR: gregor_protocol::alloc_guard::GuardedAllocator =
    gregor_protocol::alloc_guard::GuardedAllocator;

#[derive(Parser)]
#[command(
    name = "gregor",
    version,
    about = "A Kafka-compatible event streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A client command group (`topic`, `group`, ...) with the client options (`--brokers`,
/// `--format`), which the broker's own `serve` does not take.
#[derive(clap::Args)]
struct ClientCmd<C: Subcommand> {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    cmd: C,
}

/// A single client command (`produce`, `consume`) with the client options.
#[derive(clap::Args)]
struct ClientArgs<A: clap::Args> {
    #[command(flatten)]
    global: cli::Global,
    #[command(flatten)]
    args: A,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, describe, delete topics and change their configs.
    Topic(ClientCmd<cli::topic::TopicCmd>),
    /// Write stdin lines to a topic, one record per line.
    Produce(ClientArgs<cli::produce::ProduceArgs>),
    /// Print records of a topic.
    Consume(ClientArgs<cli::consume::ConsumeArgs>),
    /// Consumer groups: list, describe (lag), delete, reset offsets.
    Group(ClientCmd<cli::group::GroupCmd>),
    /// Cluster information.
    Cluster(ClientCmd<cli::cluster::ClusterCmd>),
    /// Load generator: produce, consume and end-to-end benchmarks.
    Bench(ClientCmd<cli::bench::BenchCmd>),
    /// Storage benchmark: raw disk vs durable append throughput, fsync latency.
    #[command(hide = true)]
    BenchStorage(bench_storage::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port). Default 127.0.0.1:9092.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address advertised to clients (default: the bound address).
    #[arg(long)]
    advertised: Option<String>,
    /// Data directory, created if missing. Default ./gregor-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This broker's node id. Default 0.
    #[arg(long)]
    node_id: Option<i32>,
    /// TOML file with the same settings (and Kafka-named ones); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Durability: `always` (acks=1/all answered after a group-commit fsync), `interval`
    /// (topic flush.ms / flush.messages), `never`. Default always.
    #[arg(long)]
    fsync: Option<gregor_broker::config::FsyncPolicy>,
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object a
    /// line, for journald / log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line: clap's first line ("error: unexpected argument ...").
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("gregor: {first} (see gregor --help)");
            return std::process::ExitCode::from(2);
        }
    };
    let (default_level, log_format) = match &cli.command {
        Command::Serve(a) => ("info", a.log_format),
        _ => ("warn", LogFormat::Text),
    };
    init_logging(default_level, log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::BenchStorage(args) => bench_storage::run(args),
        Command::Topic(c) => cli::run(async { cli::topic::run(&c.global, c.cmd).await }),
        Command::Produce(a) => cli::run(async { cli::produce::run(&a.global, a.args).await }),
        Command::Consume(a) => cli::run(async { cli::consume::run(&a.global, a.args).await }),
        Command::Group(c) => cli::run(async { cli::group::run(&c.global, c.cmd).await }),
        Command::Cluster(c) => cli::run(async { cli::cluster::run(&c.global, c.cmd).await }),
        Command::Bench(c) => cli::run(async { cli::bench::run(&c.global, c.cmd).await }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the chain of causes joined with ': '.
            eprintln!("gregor: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; ANSI colour only when stderr is a terminal (never into files or
/// journald), JSON lines with `--log-format json`. `GREGOR_LOG` overrides the level filter.
fn init_logging(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GREGOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            BrokerConfig::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.advertised {
        config.advertised = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.fsync {
        config.fsync = v;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let bound = listener.local_addr()?;
        let advertised = match &config.advertised {
            Some(a) => parse_host_port(a)?,
            None => (bound.ip().to_string(), bound.port() as i32),
        };
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let data_dir = config.data_dir.clone();
        let broker = Arc::new(
            tokio::task::spawn_blocking(move || Broker::open(config, advertised))
                .await?
                .with_context(|| format!("opening data dir {}", data_dir.display()))?,
        );
        broker
            .start_groups()
            .context("starting the group coordinator")?;
        let background = gregor_broker::log_manager::spawn(broker.clone());
        gregor_broker::log_manager::spawn_cleaner(broker.clone());
        broker
            .start_transactions()
            .context("starting the transaction coordinator")?;
        println!("gregor listening on {bound}");
        tracing::info!(%bound, data_dir = %data_dir.display(), "broker ready");
        gregor_broker::server::serve(broker.clone(), listener, shutdown_signal()).await;
        tracing::info!("shutting down");
        background.abort();
        tokio::task::spawn_blocking(move || broker.shutdown()).await?;
        tracing::info!("clean shutdown complete");
        anyhow::Ok(())
    })
}

fn parse_host_port(s: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("advertised address {s} must be HOST:PORT"))?;
    Ok((host.to_string(), port.parse().context("advertised port")?))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
