//! Broker configuration: command-line flags and a TOML file map onto [`BrokerConfig`].
//! Kafka-named settings keep Kafka's names as TOML keys (`"socket.request.max.bytes" = ...`)
//! and accept the snake_case spelling too.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Every setting of a broker, with Kafka's defaults where Kafka has the setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address given to clients in Metadata; defaults to the bound address.
    pub advertised: Option<String>,
    pub data_dir: PathBuf,
    #[serde(alias = "node.id", alias = "broker.id")]
    pub node_id: i32,
    /// `controller.listener`: where this node's controller (Raft) listener binds. Required
    /// with `controller.quorum.voters` when this node is not a voter; a voter binds the
    /// address its own entry names by default.
    #[serde(alias = "controller.listener")]
    pub controller_listener: Option<String>,
    /// `controller.quorum.voters`: `id@host:port,...`. Unset: a single node.
    #[serde(alias = "controller.quorum.voters")]
    pub controller_quorum_voters: Option<String>,
    /// A broker not heard from for this long is fenced and loses its leaderships. 1.5 s, so
    /// that partitions of a killed broker get new leaders within 2 s (Kafka: 9 s).
    #[serde(alias = "broker.session.timeout.ms")]
    pub broker_session_timeout_ms: u64,
    /// How often a broker heartbeats to the controller (Kafka: 2 s).
    #[serde(alias = "broker.heartbeat.interval.ms")]
    pub broker_heartbeat_interval_ms: u64,
    /// A follower not caught up with its leader for this long leaves the ISR (Kafka: 30 s).
    #[serde(alias = "replica.lag.time.max.ms")]
    pub replica_lag_time_max_ms: u64,
    /// How long a follower's fetch waits at the leader for new data.
    #[serde(alias = "replica.fetch.wait.max.ms")]
    pub replica_fetch_wait_max_ms: u64,
    /// Bytes a follower's fetch asks per partition.
    #[serde(alias = "replica.fetch.max.bytes")]
    pub replica_fetch_max_bytes: usize,
    /// Bytes a follower's fetch response may hold in all.
    #[serde(alias = "replica.fetch.response.max.bytes")]
    pub replica_fetch_response_max_bytes: usize,
    /// How long a follower waits after a failed fetch before the next.
    #[serde(alias = "replica.fetch.backoff.ms")]
    pub replica_fetch_backoff_ms: u64,
    /// How long an offset commit waits for the ISR of its `__consumer_offsets` partition
    /// (REQUEST_TIMED_OUT after).
    #[serde(alias = "offsets.commit.timeout.ms")]
    pub offsets_commit_timeout_ms: u64,
    /// The default of the topic config `min.insync.replicas`: acks=all produce needs an ISR
    /// this large.
    #[serde(alias = "min.insync.replicas")]
    pub min_insync_replicas: i32,
    /// Replication factor of `__consumer_offsets` / `__transaction_state` in a cluster,
    /// capped by the brokers alive when they are created (min(3, brokers)).
    #[serde(alias = "offsets.topic.replication.factor")]
    pub offsets_topic_replication_factor: i16,
    /// The active controller moves leadership back to preferred leaders (first replicas)
    /// when a broker's leader imbalance exceeds `leader.imbalance.per.broker.percentage`.
    #[serde(alias = "auto.leader.rebalance.enable")]
    pub auto_leader_rebalance_enable: bool,
    /// How often the controller checks the leader imbalance (Kafka: 300 s).
    #[serde(alias = "leader.imbalance.check.interval.seconds")]
    pub leader_imbalance_check_interval_seconds: u64,
    /// The share (%) of a broker's preferred leaderships led elsewhere that triggers
    /// preferred elections (Kafka: 10).
    #[serde(alias = "leader.imbalance.per.broker.percentage")]
    pub leader_imbalance_per_broker_percentage: u32,
    /// Largest request frame accepted; larger frames close the connection.
    #[serde(alias = "socket.request.max.bytes")]
    pub socket_request_max_bytes: usize,
    /// Largest record batch accepted (topic default of `max.message.bytes`).
    #[serde(alias = "message.max.bytes")]
    pub message_max_bytes: usize,
    /// Largest size a compressed batch may decompress to when the broker validates it
    /// (zip-bomb guard). Larger batches are rejected with MESSAGE_TOO_LARGE.
    #[serde(alias = "message.max.decompressed.bytes")]
    pub max_decompressed_batch_bytes: usize,
    #[serde(alias = "auto.create.topics.enable")]
    pub auto_create_topics_enable: bool,
    #[serde(alias = "num.partitions")]
    pub num_partitions: i32,
    #[serde(alias = "default.replication.factor")]
    pub default_replication_factor: i16,
    #[serde(alias = "log.segment.bytes")]
    pub log_segment_bytes: u64,
    /// Requests read ahead of their responses on one connection (pipelining depth).
    #[serde(alias = "max.inflight.requests.per.connection")]
    pub max_inflight_requests_per_connection: usize,
    /// Connections accepted at once; more are closed right after accept.
    #[serde(alias = "max.connections")]
    pub max_connections: usize,
    /// Connections accepted at once from one IP address.
    #[serde(alias = "max.connections.per.ip")]
    pub max_connections_per_ip: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(alias = "connections.max.idle.ms")]
    pub connections_max_idle_ms: u64,
    /// At shutdown, how long to wait for connections to answer the requests they already
    /// accepted before they are closed anyway.
    #[serde(alias = "connections.shutdown.timeout.ms")]
    pub connections_shutdown_timeout_ms: u64,
    /// Bytes of requests read but not yet answered, across all connections. When reached,
    /// the broker stops reading from sockets until requests complete (backpressure).
    #[serde(alias = "queued.max.request.bytes")]
    pub queued_max_request_bytes: usize,
    /// Upper bound on the records in one Fetch response (the client's `max_bytes` is capped
    /// to it). Only the first batch of a response may exceed it, as in Kafka (KIP-74).
    #[serde(alias = "fetch.max.bytes")]
    pub fetch_max_bytes: usize,
    /// Most partitions (or topics, for topic-level APIs) one request may name; a request over
    /// it closes the connection.
    #[serde(alias = "max.partitions.per.request")]
    pub max_partitions_per_request: usize,
    /// Upper bound on a Fetch's `max_wait_ms`.
    #[serde(alias = "fetch.max.wait.ms")]
    pub fetch_max_wait_ms: u64,
    /// Partitions of `__consumer_offsets` when it is created (fixed afterwards). Kafka's
    /// default is 50; 10 keeps a fresh data dir small and startup fast on one node.
    #[serde(alias = "offsets.topic.num.partitions")]
    pub offsets_topic_num_partitions: i32,
    /// How long the first rebalance of an empty group waits for more members.
    #[serde(alias = "group.initial.rebalance.delay.ms")]
    pub group_initial_rebalance_delay_ms: i64,
    #[serde(alias = "group.min.session.timeout.ms")]
    pub group_min_session_timeout_ms: i32,
    #[serde(alias = "group.max.session.timeout.ms")]
    pub group_max_session_timeout_ms: i32,
    /// Most members (including those that still have to rejoin with their id) in one group.
    #[serde(alias = "group.max.size")]
    pub group_max_size: usize,
    /// Committed offsets of an empty group are removed this long after the later of the
    /// commit and the moment the group became empty.
    #[serde(alias = "offsets.retention.minutes")]
    pub offsets_retention_minutes: i64,
    #[serde(alias = "offsets.retention.check.interval.ms")]
    pub offsets_retention_check_interval_ms: i64,
    /// Largest `metadata` string of a committed offset.
    #[serde(alias = "offset.metadata.max.bytes")]
    pub offset_metadata_max_bytes: usize,
    // ---- storage (issue 5) ----
    /// When appended data is fsynced: `always` (acks=1/all answered after a group-commit
    /// fsync), `interval` (per topic `flush.messages` / `flush.ms`), `never` (the OS decides).
    pub fsync: FsyncPolicy,
    /// Broker-wide defaults of topic settings (`log.*` in Kafka). `None`: the topic default.
    /// Shown by DescribeConfigs as `STATIC_BROKER_CONFIG` when set.
    #[serde(alias = "log.roll.ms")]
    pub log_roll_ms: Option<i64>,
    #[serde(alias = "log.retention.ms")]
    pub log_retention_ms: Option<i64>,
    #[serde(alias = "log.retention.bytes")]
    pub log_retention_bytes: Option<i64>,
    #[serde(alias = "log.cleanup.policy")]
    pub log_cleanup_policy: Option<String>,
    #[serde(alias = "log.flush.interval.messages")]
    pub log_flush_interval_messages: Option<i64>,
    /// With `fsync = "interval"` and no topic `flush.ms`, 1000 ms.
    #[serde(alias = "log.flush.interval.ms")]
    pub log_flush_interval_ms: Option<i64>,
    #[serde(alias = "log.cleaner.delete.retention.ms")]
    pub log_cleaner_delete_retention_ms: Option<i64>,
    #[serde(alias = "log.cleaner.min.cleanable.ratio")]
    pub log_cleaner_min_cleanable_ratio: Option<f64>,
    #[serde(alias = "log.cleaner.min.compaction.lag.ms")]
    pub log_cleaner_min_compaction_lag_ms: Option<i64>,
    /// How often retention is checked (Kafka's default, 5 minutes). Retention works on
    /// record timestamps, so a short interval deletes old-timestamped data quickly.
    #[serde(alias = "log.retention.check.interval.ms")]
    pub log_retention_check_interval_ms: u64,
    /// Pause between compaction passes over all compacted topics (Kafka's default 15 s).
    #[serde(alias = "log.cleaner.backoff.ms")]
    pub log_cleaner_backoff_ms: u64,
    /// How often the recovery-point checkpoint is written (Kafka's
    /// `log.flush.offset.checkpoint.interval.ms`).
    #[serde(alias = "log.flush.offset.checkpoint.interval.ms")]
    pub log_flush_offset_checkpoint_interval_ms: u64,
    /// Largest amount of log one compaction pass reads into its key map, in bytes
    /// (bounds the cleaner's memory; Kafka's `log.cleaner.dedupe.buffer.size`).
    #[serde(alias = "log.cleaner.dedupe.buffer.size")]
    pub log_cleaner_dedupe_buffer_size: usize,
    /// Cleaner I/O cap in bytes per second (Kafka's `log.cleaner.io.max.bytes.per.second`).
    #[serde(alias = "log.cleaner.io.max.bytes.per.second")]
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Partitions of `__transaction_state` when it is created (fixed afterwards). Kafka's
    /// default is 50; 10 as for `__consumer_offsets`.
    #[serde(alias = "transaction.state.log.num.partitions")]
    pub transaction_state_log_num_partitions: i32,
    /// Largest `transaction.timeout.ms` a producer may ask for.
    #[serde(alias = "transaction.max.timeout.ms")]
    pub transaction_max_timeout_ms: i32,
    /// How often transactions past their timeout are looked for and aborted.
    #[serde(alias = "transaction.abort.timed.out.transaction.cleanup.interval.ms")]
    pub transaction_abort_check_interval_ms: u64,
    /// A transactional id with no transaction in progress (Empty, CompleteCommit,
    /// CompleteAbort) that has not changed for this long is removed (Kafka's default,
    /// 7 days). Its next InitProducerId gets a new producer id.
    #[serde(alias = "transactional.id.expiration.ms")]
    pub transactional_id_expiration_ms: i64,
    /// How often expired transactional ids are looked for (Kafka's default, 1 hour).
    #[serde(alias = "transaction.remove.expired.transaction.cleanup.interval.ms")]
    pub transaction_remove_expired_interval_ms: i64,
    /// A producer's state in a partition (epoch, last sequences) is removed once the
    /// timestamp of its last batch there is this old, unless it has a transaction open
    /// there (Kafka's default, 1 day). Its next write is accepted at any sequence.
    #[serde(alias = "producer.id.expiration.ms")]
    pub producer_id_expiration_ms: i64,
    /// How often every partition's producer state is scanned for expired producers
    /// (Kafka's default, 10 minutes).
    #[serde(alias = "producer.id.expiration.check.interval.ms")]
    pub producer_id_expiration_check_interval_ms: u64,
    /// The HTTP listener (`[http]`: metrics, health, console); off unless `listener` is set.
    pub http: HttpConfig,
}

/// `[http]`: the HTTP listener of `gregor-http` (`/metrics`, `/healthz`, `/readyz`, the
/// console and `/api/...`), and its limits against hostile clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `http.listener`: address to bind (port 0 picks a free port). Unset: no HTTP listener.
    pub listener: Option<SocketAddr>,
    /// Open HTTP connections at most; more are closed right after accept.
    pub max_connections: usize,
    /// A request's header must arrive complete within this long of the connection's start
    /// or of the previous response (slow or idle clients are closed).
    pub header_timeout_ms: u64,
    /// Largest request header (request line and fields); larger ones get 431 and a close.
    pub max_header_bytes: usize,
    /// A connection is closed (after its request in progress) once this old.
    pub max_connection_age_ms: u64,
    /// Allow the console's write actions (none yet: the console is read-only).
    pub allow_writes: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listener: None,
            max_connections: 256,
            header_timeout_ms: 10_000,
            max_header_bytes: 64 * 1024,
            max_connection_age_ms: 300_000,
            allow_writes: false,
        }
    }
}

/// Durability policy for appended data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    #[default]
    Always,
    Interval,
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "fsync must be always, interval or never, not {other}"
            )),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:9092".parse().expect("valid default address"),
            advertised: None,
            data_dir: PathBuf::from("./gregor-data"),
            node_id: 0,
            controller_listener: None,
            controller_quorum_voters: None,
            broker_session_timeout_ms: 1_500,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_fetch_response_max_bytes: 10 * 1024 * 1024,
            replica_fetch_backoff_ms: 1_000,
            min_insync_replicas: 1,
            offsets_commit_timeout_ms: 5_000,
            broker_heartbeat_interval_ms: 250,
            offsets_topic_replication_factor: 3,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_seconds: 300,
            leader_imbalance_per_broker_percentage: 10,
            socket_request_max_bytes: 100 * 1024 * 1024,
            message_max_bytes: 1024 * 1024 + 12,
            max_decompressed_batch_bytes: 64 * 1024 * 1024,
            auto_create_topics_enable: true,
            num_partitions: 1,
            default_replication_factor: 1,
            log_segment_bytes: 1 << 30,
            max_inflight_requests_per_connection: 64,
            fetch_max_wait_ms: 30_000,
            fetch_max_bytes: 55 * 1024 * 1024,
            max_partitions_per_request: 100_000,
            max_connections: 10_000,
            max_connections_per_ip: 10_000,
            connections_max_idle_ms: 600_000,
            connections_shutdown_timeout_ms: 10_000,
            queued_max_request_bytes: 512 * 1024 * 1024,
            offsets_topic_num_partitions: 10,
            group_initial_rebalance_delay_ms: 100,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 1_000,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            fsync: FsyncPolicy::Always,
            log_roll_ms: None,
            log_retention_ms: None,
            log_retention_bytes: None,
            log_cleanup_policy: None,
            log_flush_interval_messages: None,
            log_flush_interval_ms: None,
            log_cleaner_delete_retention_ms: None,
            log_cleaner_min_cleanable_ratio: None,
            log_cleaner_min_compaction_lag_ms: None,
            log_retention_check_interval_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            log_flush_offset_checkpoint_interval_ms: 10_000,
            log_cleaner_dedupe_buffer_size: 64 * 1024 * 1024,
            log_cleaner_io_max_bytes_per_second: 256 * 1024 * 1024,
            transaction_state_log_num_partitions: 10,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_check_interval_ms: 200,
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            transaction_remove_expired_interval_ms: 60 * 60 * 1000,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            producer_id_expiration_check_interval_ms: 10 * 60 * 1000,
            http: HttpConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Broker-level values of topic settings that the config file sets, as
    /// (topic config name, Kafka broker config name, value).
    pub fn static_topic_defaults(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if self.log_segment_bytes != BrokerConfig::default().log_segment_bytes {
            out.push((
                "segment.bytes",
                "log.segment.bytes",
                self.log_segment_bytes.to_string(),
            ));
        }
        let mut opt = |topic: &'static str, broker: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((topic, broker, v));
            }
        };
        let s = |v: Option<i64>| v.map(|v| v.to_string());
        opt("segment.ms", "log.roll.ms", s(self.log_roll_ms));
        opt("retention.ms", "log.retention.ms", s(self.log_retention_ms));
        opt(
            "retention.bytes",
            "log.retention.bytes",
            s(self.log_retention_bytes),
        );
        opt(
            "cleanup.policy",
            "log.cleanup.policy",
            self.log_cleanup_policy.clone(),
        );
        opt(
            "flush.messages",
            "log.flush.interval.messages",
            s(self.log_flush_interval_messages),
        );
        opt(
            "flush.ms",
            "log.flush.interval.ms",
            s(self.log_flush_interval_ms),
        );
        opt(
            "delete.retention.ms",
            "log.cleaner.delete.retention.ms",
            s(self.log_cleaner_delete_retention_ms),
        );
        opt(
            "min.cleanable.dirty.ratio",
            "log.cleaner.min.cleanable.ratio",
            self.log_cleaner_min_cleanable_ratio.map(|v| v.to_string()),
        );
        opt(
            "min.compaction.lag.ms",
            "log.cleaner.min.compaction.lag.ms",
            s(self.log_cleaner_min_compaction_lag_ms),
        );
        out
    }
}

/// One broker setting as DescribeConfigs answers it for the BROKER resource: Kafka's name,
/// the value in effect, Kafka's default and the config type code (DescribeConfigs v3+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSetting {
    pub name: &'static str,
    pub value: String,
    pub default: String,
    pub config_type: i8,
}

/// DescribeConfigs config types.
const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const SHORT: i8 = 4;
const LONG: i8 = 5;
const DOUBLE: i8 = 6;
const LIST: i8 = 7;

type Reader = fn(&BrokerConfig) -> String;

/// Every broker setting Gregor has, under its Kafka name (`fsync` is Gregor's own), with the
/// reader of its value. Settings whose value is unset (`None`) read as Kafka's default.
const SETTINGS: &[(&str, i8, Reader)] = &[
    ("listeners", STRING, |c| format!("PLAINTEXT://{}", c.listen)),
    ("advertised.listeners", STRING, |c| {
        c.advertised
            .as_ref()
            .map(|a| format!("PLAINTEXT://{a}"))
            .unwrap_or_default()
    }),
    ("node.id", INT, |c| c.node_id.to_string()),
    ("broker.id", INT, |c| c.node_id.to_string()),
    ("controller.listener", STRING, |c| {
        c.controller_listener.clone().unwrap_or_default()
    }),
    ("controller.quorum.voters", LIST, |c| {
        c.controller_quorum_voters.clone().unwrap_or_default()
    }),
    ("broker.session.timeout.ms", INT, |c| {
        c.broker_session_timeout_ms.to_string()
    }),
    ("replica.lag.time.max.ms", LONG, |c| {
        c.replica_lag_time_max_ms.to_string()
    }),
    ("replica.fetch.wait.max.ms", INT, |c| {
        c.replica_fetch_wait_max_ms.to_string()
    }),
    ("replica.fetch.max.bytes", INT, |c| {
        c.replica_fetch_max_bytes.to_string()
    }),
    ("replica.fetch.response.max.bytes", INT, |c| {
        c.replica_fetch_response_max_bytes.to_string()
    }),
    ("replica.fetch.backoff.ms", INT, |c| {
        c.replica_fetch_backoff_ms.to_string()
    }),
    ("min.insync.replicas", INT, |c| {
        c.min_insync_replicas.to_string()
    }),
    ("broker.heartbeat.interval.ms", INT, |c| {
        c.broker_heartbeat_interval_ms.to_string()
    }),
    ("offsets.topic.replication.factor", SHORT, |c| {
        c.offsets_topic_replication_factor.to_string()
    }),
    ("auto.leader.rebalance.enable", BOOLEAN, |c| {
        c.auto_leader_rebalance_enable.to_string()
    }),
    ("leader.imbalance.check.interval.seconds", LONG, |c| {
        c.leader_imbalance_check_interval_seconds.to_string()
    }),
    ("leader.imbalance.per.broker.percentage", INT, |c| {
        c.leader_imbalance_per_broker_percentage.to_string()
    }),
    ("log.dirs", STRING, |c| c.data_dir.display().to_string()),
    ("message.max.bytes", INT, |c| {
        c.message_max_bytes.to_string()
    }),
    ("message.max.decompressed.bytes", INT, |c| {
        c.max_decompressed_batch_bytes.to_string()
    }),
    ("socket.request.max.bytes", INT, |c| {
        c.socket_request_max_bytes.to_string()
    }),
    ("num.partitions", INT, |c| c.num_partitions.to_string()),
    ("default.replication.factor", SHORT, |c| {
        c.default_replication_factor.to_string()
    }),
    ("auto.create.topics.enable", BOOLEAN, |c| {
        c.auto_create_topics_enable.to_string()
    }),
    ("log.segment.bytes", INT, |c| {
        c.log_segment_bytes.to_string()
    }),
    ("max.inflight.requests.per.connection", INT, |c| {
        c.max_inflight_requests_per_connection.to_string()
    }),
    ("max.connections", INT, |c| c.max_connections.to_string()),
    ("max.connections.per.ip", INT, |c| {
        c.max_connections_per_ip.to_string()
    }),
    ("connections.max.idle.ms", LONG, |c| {
        c.connections_max_idle_ms.to_string()
    }),
    ("queued.max.request.bytes", LONG, |c| {
        c.queued_max_request_bytes.to_string()
    }),
    ("fetch.max.bytes", INT, |c| c.fetch_max_bytes.to_string()),
    ("max.partitions.per.request", INT, |c| {
        c.max_partitions_per_request.to_string()
    }),
    ("fetch.max.wait.ms", LONG, |c| {
        c.fetch_max_wait_ms.to_string()
    }),
    ("offsets.topic.num.partitions", INT, |c| {
        c.offsets_topic_num_partitions.to_string()
    }),
    ("group.initial.rebalance.delay.ms", INT, |c| {
        c.group_initial_rebalance_delay_ms.to_string()
    }),
    ("group.min.session.timeout.ms", INT, |c| {
        c.group_min_session_timeout_ms.to_string()
    }),
    ("group.max.session.timeout.ms", INT, |c| {
        c.group_max_session_timeout_ms.to_string()
    }),
    ("group.max.size", INT, |c| c.group_max_size.to_string()),
    ("offsets.retention.minutes", INT, |c| {
        c.offsets_retention_minutes.to_string()
    }),
    ("offsets.retention.check.interval.ms", LONG, |c| {
        c.offsets_retention_check_interval_ms.to_string()
    }),
    ("offset.metadata.max.bytes", INT, |c| {
        c.offset_metadata_max_bytes.to_string()
    }),
    ("fsync", STRING, |c| format!("{:?}", c.fsync).to_lowercase()),
    ("log.roll.ms", LONG, |c| opt_or(c.log_roll_ms, "604800000")),
    ("log.retention.ms", LONG, |c| {
        opt_or(c.log_retention_ms, "604800000")
    }),
    ("log.retention.bytes", LONG, |c| {
        opt_or(c.log_retention_bytes, "-1")
    }),
    ("log.cleanup.policy", LIST, |c| {
        c.log_cleanup_policy
            .clone()
            .unwrap_or_else(|| "delete".into())
    }),
    ("log.flush.interval.messages", LONG, |c| {
        opt_or(c.log_flush_interval_messages, "9223372036854775807")
    }),
    ("log.flush.interval.ms", LONG, |c| {
        opt_or(c.log_flush_interval_ms, "9223372036854775807")
    }),
    ("log.cleaner.delete.retention.ms", LONG, |c| {
        opt_or(c.log_cleaner_delete_retention_ms, "86400000")
    }),
    ("log.cleaner.min.cleanable.ratio", DOUBLE, |c| {
        opt_or(c.log_cleaner_min_cleanable_ratio, "0.5")
    }),
    ("log.cleaner.min.compaction.lag.ms", LONG, |c| {
        opt_or(c.log_cleaner_min_compaction_lag_ms, "0")
    }),
    ("log.retention.check.interval.ms", LONG, |c| {
        c.log_retention_check_interval_ms.to_string()
    }),
    ("log.cleaner.backoff.ms", LONG, |c| {
        c.log_cleaner_backoff_ms.to_string()
    }),
    ("log.flush.offset.checkpoint.interval.ms", INT, |c| {
        c.log_flush_offset_checkpoint_interval_ms.to_string()
    }),
    ("log.cleaner.dedupe.buffer.size", LONG, |c| {
        c.log_cleaner_dedupe_buffer_size.to_string()
    }),
    ("log.cleaner.io.max.bytes.per.second", DOUBLE, |c| {
        c.log_cleaner_io_max_bytes_per_second.to_string()
    }),
    ("transaction.state.log.num.partitions", INT, |c| {
        c.transaction_state_log_num_partitions.to_string()
    }),
    ("transaction.max.timeout.ms", INT, |c| {
        c.transaction_max_timeout_ms.to_string()
    }),
    (
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        INT,
        |c| c.transaction_abort_check_interval_ms.to_string(),
    ),
    ("transactional.id.expiration.ms", INT, |c| {
        c.transactional_id_expiration_ms.to_string()
    }),
    (
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        INT,
        |c| c.transaction_remove_expired_interval_ms.to_string(),
    ),
    ("producer.id.expiration.ms", INT, |c| {
        c.producer_id_expiration_ms.to_string()
    }),
    ("producer.id.expiration.check.interval.ms", INT, |c| {
        c.producer_id_expiration_check_interval_ms.to_string()
    }),
];

fn opt_or<T: ToString>(v: Option<T>, kafka_default: &str) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| kafka_default.to_string())
}

impl BrokerConfig {
    /// Every broker setting under its Kafka name, with the value in effect and the default;
    /// a value that differs from the default was set by the config file or a flag.
    /// `advertised` is the address clients are told (the bound one when none was given).
    pub fn kafka_settings(&self, advertised: (&str, i32)) -> Vec<BrokerSetting> {
        let defaults = BrokerConfig::default();
        SETTINGS
            .iter()
            .map(|&(name, config_type, read)| {
                let mut value = read(self);
                if name == "advertised.listeners" && value.is_empty() {
                    value = format!("PLAINTEXT://{}:{}", advertised.0, advertised.1);
                }
                BrokerSetting {
                    name,
                    default: read(&defaults),
                    value,
                    config_type,
                }
            })
            .collect()
    }
}

impl BrokerConfig {
    /// Parses a TOML config file's contents.
    pub fn from_toml(text: &str) -> anyhow::Result<BrokerConfig> {
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_accepts_kafka_names_and_rejects_typos() {
        let c = BrokerConfig::from_toml(
            "listen = \"127.0.0.1:0\"\nnode_id = 3\n\"num.partitions\" = 4\n",
        )
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.num_partitions, 4);
        assert!(BrokerConfig::from_toml("num_partitons = 4").is_err());
    }

    #[test]
    fn kafka_settings_name_every_setting_once_with_its_default() {
        let c = BrokerConfig::from_toml("\"num.partitions\" = 4\n").unwrap();
        let all = c.kafka_settings(("h", 9));
        let names: std::collections::HashSet<_> = all.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), all.len(), "a setting listed twice");
        let get = |n: &str| all.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(get("num.partitions").value, "4");
        assert_eq!(get("num.partitions").default, "1");
        assert_eq!(get("advertised.listeners").value, "PLAINTEXT://h:9");
        assert_eq!(
            get("log.retention.ms").value,
            get("log.retention.ms").default
        );
    }

    #[test]
    fn storage_settings_parse() {
        let c = BrokerConfig::from_toml(
            "fsync = \"interval\"\n\"log.retention.ms\" = 5000\n\"log.cleanup.policy\" = \"compact\"\n",
        )
        .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Interval);
        let d = c.static_topic_defaults();
        assert!(d.contains(&("retention.ms", "log.retention.ms", "5000".to_string())));
        assert!(d.contains(&(
            "cleanup.policy",
            "log.cleanup.policy",
            "compact".to_string()
        )));
        assert_eq!(BrokerConfig::default().fsync, FsyncPolicy::Always);
        assert!(BrokerConfig::from_toml("fsync = \"sometimes\"").is_err());
    }

    #[test]
    fn transactional_id_expiry_settings_parse() {
        let d = BrokerConfig::default();
        assert_eq!(d.transactional_id_expiration_ms, 604_800_000);
        assert_eq!(d.transaction_remove_expired_interval_ms, 3_600_000);
        let c = BrokerConfig::from_toml(
            "\"transactional.id.expiration.ms\" = 2000\n\"transaction.remove.expired.transaction.cleanup.interval.ms\" = 100\n",
        )
        .unwrap();
        assert_eq!(c.transactional_id_expiration_ms, 2_000);
        assert_eq!(c.transaction_remove_expired_interval_ms, 100);
    }

    #[test]
    fn producer_id_expiry_settings_parse() {
        let d = BrokerConfig::default();
        assert_eq!(d.producer_id_expiration_ms, 86_400_000);
        assert_eq!(d.producer_id_expiration_check_interval_ms, 600_000);
        let c = BrokerConfig::from_toml(
            "\"producer.id.expiration.ms\" = 1500\n\"producer.id.expiration.check.interval.ms\" = 200\n",
        )
        .unwrap();
        assert_eq!(c.producer_id_expiration_ms, 1_500);
        assert_eq!(c.producer_id_expiration_check_interval_ms, 200);
        let c = BrokerConfig::from_toml(
            "producer_id_expiration_ms = 7\nproducer_id_expiration_check_interval_ms = 8\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.producer_id_expiration_ms,
                c.producer_id_expiration_check_interval_ms
            ),
            (7, 8)
        );
    }
}
