//! `gregor`: the broker and its command-line tools in one binary.

mod bench_storage;

use std::collections::BTreeMap;
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
    /// This broker's node id (`node.id`). Default 0.
    #[arg(long)]
    node_id: Option<i32>,
    /// Where this node's controller (Raft) listener binds (`controller.listener`). A voter
    /// defaults to the address of its own entry in the voters, a broker-only node to a free
    /// port on the `--listen` address.
    #[arg(long)]
    controller_listen: Option<String>,
    /// The metadata quorum (`controller.quorum.voters`): `1@HOST:PORT,2@HOST:PORT,...`. Every
    /// voter is controller and broker; a node not listed is a broker only. Without it the
    /// node is a single-node cluster.
    #[arg(long)]
    controller_quorum_voters: Option<String>,
    /// TOML file with the same settings (and Kafka-named ones); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Durability: `always` (acks=1/all answered after a group-commit fsync), `interval`
    /// (topic flush.ms / flush.messages), `never`. Default always.
    #[arg(long)]
    fsync: Option<gregor_broker::config::FsyncPolicy>,
    /// HTTP listener for /metrics, /healthz, /readyz, the web console and /api (TOML
    /// `[http] listener`). Off unless given.
    #[arg(long)]
    http: Option<SocketAddr>,
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
    if let Some(v) = args.controller_listen {
        config.controller_listener = Some(v);
    }
    if let Some(v) = args.controller_quorum_voters {
        config.controller_quorum_voters = Some(v);
    }
    let voters = match &config.controller_quorum_voters {
        Some(v) => Some(parse_voters(v)?),
        None => None,
    };
    if let Some(v) = args.fsync {
        config.fsync = v;
    }
    if let Some(v) = args.http {
        config.http.listener = Some(v);
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
        let background = gregor_broker::log_manager::spawn(broker.clone());
        let cleaner = gregor_broker::log_manager::spawn_cleaner(broker.clone());
        let coordinators = match voters {
            None => {
                start_coordinators(&broker)?;
                None
            }
            Some(voters) => {
                let node = start_metadata_node(&broker, voters).await?;
                broker.join_cluster(node)?;
                // The coordinators need the internal topics, which need a quorum: they start
                // in the background, and answer COORDINATOR_NOT_AVAILABLE until then.
                let b = broker.clone();
                Some(tokio::spawn(async move {
                    let started = async {
                        b.create_internal_topics().await?;
                        start_coordinators(&b)
                    };
                    if let Err(e) = started.await {
                        tracing::error!(error = %e, "starting the coordinators failed");
                    }
                }))
            }
        };
        let (http_stop, http_task) = match broker.config.http.listener {
            Some(addr) => {
                let http = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the HTTP listener {addr}"))?;
                let http_bound = http.local_addr()?;
                println!("gregor http listening on {http_bound}");
                tracing::info!(%http_bound, "HTTP listener (metrics, console) ready");
                let (tx, rx) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(gregor_http::serve(
                    broker.clone(),
                    http,
                    broker.config.http.clone(),
                    rx,
                ));
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        println!("gregor listening on {bound}");
        tracing::info!(%bound, data_dir = %data_dir.display(), "broker ready");
        // Ordered shutdown: stop accepting and drain the connections (bounded by
        // connections.shutdown.timeout.ms), stop the coordinators' timers, the background
        // task and the cleaner, then flush, checkpoint and write the clean-shutdown marker.
        let leaving = broker.clone();
        let shutdown = async move {
            shutdown_signal().await;
            // In a cluster the leaderships move first, while the listener still answers.
            if let Some(cluster) = leaving.cluster() {
                cluster
                    .controlled_shutdown(std::time::Duration::from_secs(10))
                    .await;
            }
        };
        gregor_broker::server::serve(broker.clone(), listener, shutdown).await;
        tracing::info!("connections closed; stopping background work");
        if let (Some(stop), Some(task)) = (http_stop, http_task) {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(c) = coordinators {
            c.abort();
        }
        if let Some(cluster) = broker.cluster() {
            cluster.shutdown().await;
        }
        broker.stop_background();
        background.abort();
        let _ = background.await;
        tokio::task::spawn_blocking(move || {
            let _ = cleaner.join();
            broker.shutdown();
        })
        .await?;
        tracing::info!("clean shutdown complete");
        anyhow::Ok(())
    })
}

fn start_coordinators(broker: &Broker) -> anyhow::Result<()> {
    broker
        .start_groups()
        .context("starting the group coordinator")?;
    broker
        .start_transactions()
        .context("starting the transaction coordinator")?;
    Ok(())
}

/// Binds the controller listener and starts this node's member of the metadata quorum
/// (log and snapshots in `<data-dir>/__cluster_metadata`).
async fn start_metadata_node(
    broker: &Broker,
    voters: BTreeMap<i32, String>,
) -> anyhow::Result<gregor_meta::MetaNode> {
    let config = &broker.config;
    let id = config.node_id;
    let listen = match (&config.controller_listener, voters.get(&id)) {
        (Some(l), _) => l.clone(),
        (None, Some(own)) => own.clone(),
        // A broker only: the voters reach it there to send it the metadata log (it is a
        // Raft learner); any free port on the client listener's address will do.
        (None, None) => format!("{}:0", config.listen.ip()),
    };
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the controller listener {listen}"))?;
    let mut mc = gregor_meta::MetaConfig::new(
        id,
        voters.clone(),
        config.data_dir.join("__cluster_metadata"),
    );
    if !voters.contains_key(&id) {
        mc.controller_addr = Some(listener.local_addr()?.to_string());
    }
    mc.controller.session_timeout_ms = config.broker_session_timeout_ms;
    mc.controller.heartbeat_interval_ms = config.broker_heartbeat_interval_ms;
    mc.controller.default_num_partitions = config.num_partitions;
    mc.controller.default_replication_factor = config.default_replication_factor;
    mc.controller.auto_leader_rebalance_enable = config.auto_leader_rebalance_enable;
    mc.controller.leader_imbalance_check_interval_ms = config
        .leader_imbalance_check_interval_seconds
        .saturating_mul(1000);
    mc.controller.leader_imbalance_per_broker_percentage =
        config.leader_imbalance_per_broker_percentage;
    std::fs::create_dir_all(&mc.dir)?;
    let node = gregor_meta::MetaNode::start(mc, listener)
        .await
        .context("starting the metadata quorum member")?;
    tracing::info!(node = id, controller_listener = %listen, voters = voters.len(), "joined the metadata quorum");
    Ok(node)
}

/// `controller.quorum.voters`: `id@host:port,...`.
fn parse_voters(s: &str) -> anyhow::Result<BTreeMap<i32, String>> {
    let mut voters = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .with_context(|| format!("voter {entry:?} must be ID@HOST:PORT"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("voter id in {entry:?}"))?;
        parse_host_port(addr)?;
        if voters.insert(id, addr.to_string()).is_some() {
            anyhow::bail!("voter {id} is listed twice");
        }
    }
    if voters.is_empty() {
        anyhow::bail!("controller.quorum.voters is empty");
    }
    Ok(voters)
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
