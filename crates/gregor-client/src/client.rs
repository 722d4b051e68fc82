//! The cluster client: bootstrap, metadata, and a pool of one connection per broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::Mutex as AsyncMutex;

use crate::conn::Connection;
use crate::error::{Error, Result};

/// Settings shared by producers, consumers and the admin client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Comma-separated `host:port` list used to discover the cluster.
    pub bootstrap: String,
    /// Sent in every request header.
    pub client_id: String,
    /// How long to wait for any single response.
    pub request_timeout: Duration,
    /// Responses larger than this close the connection (protects against a hostile length).
    pub max_response_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `bootstrap` (client id `gregor`, 30 s timeout, 256 MiB response cap).
    pub fn new(bootstrap: impl Into<String>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into(),
            client_id: "gregor".into(),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 256 << 20,
        }
    }
}

/// A broker as listed in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub id: i32,
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Rack, if configured.
    pub rack: Option<String>,
}

impl BrokerInfo {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One partition in metadata.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    /// Partition index.
    pub id: i32,
    /// Leader node id (-1 if none).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Replica node ids.
    pub replicas: Vec<i32>,
    /// In-sync replica node ids.
    pub isr: Vec<i32>,
    /// Partition-level error code.
    pub error: i16,
}

/// One topic in metadata.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Topic id (zero if the broker has none).
    pub id: uuid::Uuid,
    /// Internal topic?
    pub internal: bool,
    /// Partitions by index.
    pub partitions: Vec<PartitionInfo>,
    /// Topic-level error code.
    pub error: i16,
}

/// A metadata snapshot.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    /// Cluster id.
    pub cluster_id: Option<String>,
    /// Controller node id.
    pub controller_id: i32,
    /// Brokers by id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
}

struct Inner {
    config: ClientConfig,
    bootstrap: Vec<String>,
    metadata: RwLock<ClusterMetadata>,
    conns: AsyncMutex<HashMap<String, Arc<Connection>>>,
}

/// A handle to a Kafka cluster; cheap to clone. Producers, consumers and the admin client
/// are built on it.
///
/// ```no_run
/// # async fn f() -> gregor_client::Result<()> {
/// use gregor_client::{Client, ClientConfig};
/// let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
/// let md = client.metadata();
/// println!("{} brokers", md.brokers.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connect to the first reachable bootstrap broker and load cluster metadata.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let bootstrap: Vec<String> = config
            .bootstrap
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(Error::Config("no bootstrap brokers given".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                config,
                bootstrap,
                metadata: RwLock::default(),
                conns: AsyncMutex::default(),
            }),
        };
        client.refresh_metadata(Some(&[])).await?;
        Ok(client)
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The latest metadata snapshot.
    pub fn metadata(&self) -> ClusterMetadata {
        self.inner.metadata.read().unwrap().clone()
    }

    /// Metadata of one topic from the cache.
    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.inner
            .metadata
            .read()
            .unwrap()
            .topics
            .get(name)
            .cloned()
    }

    pub(crate) async fn conn_to(&self, addr: &str) -> Result<Arc<Connection>> {
        self.conn_keyed(addr, addr.to_string()).await
    }

    /// A connection to broker `id` dedicated to `tag` (e.g. `fetch`, `group`).
    ///
    /// Brokers answer the requests of one connection in order, so a long-polling Fetch
    /// parked by the broker would hold up produce requests, heartbeats and commits queued
    /// behind it. The consumer therefore fetches and talks to its coordinator on their own
    /// connections, as the Java client does.
    pub(crate) async fn conn_tagged(&self, id: i32, tag: &str) -> Result<Arc<Connection>> {
        let addr = {
            let md = self.inner.metadata.read().unwrap();
            md.brokers.get(&id).map(|b| b.addr())
        };
        match addr {
            Some(a) => {
                let key = format!("{a}#{tag}");
                self.conn_keyed(&a, key).await
            }
            None => Err(Error::Protocol(format!("broker {id} is not in metadata"))),
        }
    }

    /// Drop the pooled connections tagged `tag*` (a consumer's, when it closes).
    pub(crate) fn forget_tagged(&self, tag: &str) {
        let needle = format!("#{tag}");
        if let Ok(mut conns) = self.inner.conns.try_lock() {
            conns.retain(|k, _| !k.contains(&needle));
        }
    }

    async fn conn_keyed(&self, addr: &str, key: String) -> Result<Arc<Connection>> {
        let mut conns = self.inner.conns.lock().await;
        if let Some(c) = conns.get(&key) {
            if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        let cfg = &self.inner.config;
        let c = Arc::new(
            Connection::open(
                addr,
                &cfg.client_id,
                cfg.request_timeout,
                cfg.max_response_bytes,
            )
            .await?,
        );
        conns.insert(key, c.clone());
        Ok(c)
    }

    /// A connection to broker `id`.
    pub(crate) async fn conn(&self, id: i32) -> Result<Arc<Connection>> {
        let addr = {
            let md = self.inner.metadata.read().unwrap();
            md.brokers.get(&id).map(|b| b.addr())
        };
        match addr {
            Some(a) => self.conn_to(&a).await,
            None => Err(Error::Protocol(format!("broker {id} is not in metadata"))),
        }
    }

    /// A connection to any broker (a known one first, then the bootstrap list).
    pub(crate) async fn any_conn(&self) -> Result<Arc<Connection>> {
        let mut candidates: Vec<String> = {
            let md = self.inner.metadata.read().unwrap();
            md.brokers.values().map(|b| b.addr()).collect()
        };
        candidates.extend(self.inner.bootstrap.iter().cloned());
        let mut last = None;
        for addr in candidates {
            match self.conn_to(&addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no brokers".into())))
    }

    /// Send a request to broker `id` at the negotiated version.
    pub async fn send_to<R: Request>(&self, id: i32, req: &R) -> Result<R::Response> {
        self.conn(id).await?.send(req).await
    }

    /// Send a request to any broker at the negotiated version.
    pub async fn send_any<R: Request>(&self, req: &R) -> Result<R::Response> {
        self.any_conn().await?.send(req).await
    }

    /// The broker's advertised version range for `api` (asks any broker).
    pub async fn api_versions(&self, api: ApiKey) -> Result<Option<(i16, i16)>> {
        Ok(self.any_conn().await?.broker_versions(api))
    }

    /// Every API the broker advertises, as `(api key, min, max)`.
    pub async fn all_api_versions(&self) -> Result<Vec<(i16, i16, i16)>> {
        let c = self.any_conn().await?;
        let mut v: Vec<_> = (0..=i16::MAX)
            .take(100)
            .filter_map(|k| {
                ApiKey::try_from(k)
                    .ok()
                    .and_then(|api| c.broker_versions(api))
                    .map(|(a, b)| (k, a, b))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Refresh metadata. `None` asks for every topic, `Some(&[])` for brokers only,
    /// otherwise for the given topics (the broker may auto-create them if it allows).
    pub async fn refresh_metadata(&self, topics: Option<&[String]>) -> Result<ClusterMetadata> {
        let req = MetadataRequest::default().with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect()
        }));
        let conn = self.any_conn().await?;
        // v0 cannot ask for "no topics"; every broker worth talking to has v1+.
        let resp = conn
            .send_built(|v| {
                if v >= 4 {
                    req.with_allow_auto_topic_creation(false)
                } else {
                    req
                }
            })
            .await?;
        let mut md = self.inner.metadata.write().unwrap();
        md.cluster_id = resp.cluster_id.map(|s| s.to_string());
        md.controller_id = resp.controller_id.0;
        md.brokers = resp
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    BrokerInfo {
                        id: b.node_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        if topics.is_none() {
            md.topics.clear();
        }
        for t in resp.topics {
            let name = match &t.name {
                Some(n) => n.0.to_string(),
                None => continue,
            };
            if t.error_code != 0 {
                md.topics.remove(&name);
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    id: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b: &BrokerId| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    error: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.id);
            let info = TopicInfo {
                name: name.clone(),
                id: t.topic_id,
                internal: t.is_internal,
                partitions,
                error: t.error_code,
            };
            if t.error_code == 0 {
                md.topics.insert(name, info);
            }
        }
        Ok(md.clone())
    }

    /// Metadata for `topic`, refreshed if not cached; [`Error::UnknownTopic`] if it does
    /// not exist.
    pub async fn topic_metadata(&self, topic: &str) -> Result<TopicInfo> {
        if let Some(t) = self.topic(topic) {
            return Ok(t);
        }
        self.refresh_metadata(Some(&[topic.to_string()])).await?;
        self.topic(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))
    }

    /// Leader of `topic`/`partition` (from cache, refreshing once if unknown).
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32> {
        let t = self.topic_metadata(topic).await?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.id == partition)
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })?;
        if p.leader < 0 {
            return Err(Error::kafka(
                5,
                format!("{topic}/{partition} has no leader"),
                None,
            ));
        }
        Ok(p.leader)
    }
}
