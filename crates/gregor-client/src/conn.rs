//! One TCP connection to one broker: pipelined requests matched to responses by
//! correlation id.
//!
//! A writer task sends frames in the order they were submitted (so requests to one broker
//! keep their order on the wire); a reader task reads length-prefixed responses, refuses
//! any longer than the configured maximum before buffering them, and completes the waiting
//! caller. When either side fails, every outstanding request fails with
//! [`Error::Disconnected`] and the connection is marked dead (the pool replaces it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<Result<Bytes>>>>>;

struct Outgoing {
    frame: Bytes,
    corr: i32,
    reply: Option<oneshot::Sender<Result<Bytes>>>,
}

/// The highest version of each API this client implements the semantics of.
pub(crate) fn client_max_version(api: ApiKey) -> i16 {
    match api {
        ApiKey::Produce => 11,  // v12+: KIP-890; v13: topic ids only
        ApiKey::Fetch => 12,    // v13+: topic ids
        ApiKey::Metadata => 12, // v13 adds nothing we use
        ApiKey::ListOffsets => 8,
        ApiKey::OffsetCommit => 8,    // v9+: KIP-848 member epochs
        ApiKey::OffsetFetch => 7,     // v8+: batched groups
        ApiKey::FindCoordinator => 3, // v4+: batched keys
        ApiKey::JoinGroup => 9,
        ApiKey::SyncGroup => 5,
        ApiKey::Heartbeat => 4,
        ApiKey::LeaveGroup => 5,
        ApiKey::ListGroups => 4,
        ApiKey::DescribeGroups => 5,
        ApiKey::DeleteGroups => 2,
        ApiKey::ApiVersions => 3,
        ApiKey::CreateTopics => 7,
        ApiKey::DeleteTopics => 6,
        ApiKey::DescribeConfigs => 4,
        ApiKey::IncrementalAlterConfigs => 1,
        ApiKey::CreatePartitions => 3,
        ApiKey::DescribeCluster => 1,
        ApiKey::InitProducerId => 4,
        ApiKey::OffsetDelete => 0,
        _ => api.valid_versions().max,
    }
}

/// A live connection.
pub(crate) struct Connection {
    pub(crate) addr: String,
    tx: mpsc::Sender<Outgoing>,
    pending: Pending,
    next_corr: AtomicI32,
    dead: Arc<AtomicBool>,
    client_id: StrBytes,
    timeout: Duration,
    /// Broker's advertised `(min, max)` per API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    /// Connect, start the I/O tasks and negotiate versions with ApiVersions.
    pub(crate) async fn open(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Connect {
                addr: addr.to_string(),
                reason: format!("timed out after {timeout:?}"),
            })?
            .map_err(|e| Error::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        // Connecting to a local port nobody listens on can, rarely, connect the socket to
        // itself (TCP simultaneous open when the kernel picks the same ephemeral port); it
        // would then hold the port the real server needs. Treat it as refused.
        if stream.local_addr().ok() == stream.peer_addr().ok() {
            return Err(Error::Connect {
                addr: addr.to_string(),
                reason: "connected to itself (nobody listens there)".into(),
            });
        }
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(1024);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));

        // Writer: registers the waiter, then writes; batches queued frames into one write.
        {
            let pending = pending.clone();
            let dead = dead.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Some(first) = rx.recv().await {
                    let mut next = Some(first);
                    while let Some(o) = next.take() {
                        if let Some(reply) = o.reply {
                            pending.lock().unwrap().insert(o.corr, reply);
                        }
                        buf.extend_from_slice(&o.frame);
                        if buf.len() < (1 << 20) {
                            next = rx.try_recv().ok();
                        }
                    }
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                    buf.clear();
                }
                dead.store(true, Ordering::SeqCst);
                fail_all(&pending);
            });
        }
        // Reader.
        {
            let pending = pending.clone();
            let dead = dead.clone();
            let addr = addr.to_string();
            tokio::spawn(async move {
                while let Ok(len) = rd.read_i32().await {
                    if len < 4 || len as usize > max_response_bytes {
                        tracing::warn!(%addr, len, "response length out of range; closing");
                        break;
                    }
                    let mut body = vec![0u8; len as usize];
                    if rd.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    let body = Bytes::from(body);
                    let corr = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let waiter = pending.lock().unwrap().remove(&corr);
                    match waiter {
                        Some(w) => {
                            let _ = w.send(Ok(body));
                        }
                        None => {
                            tracing::warn!(%addr, corr, "response for unknown correlation id");
                        }
                    }
                }
                dead.store(true, Ordering::SeqCst);
                fail_all(&pending);
            });
        }
        let mut conn = Connection {
            addr: addr.to_string(),
            tx,
            pending,
            next_corr: AtomicI32::new(1),
            dead,
            client_id: StrBytes::from_string(client_id.to_string()),
            timeout,
            versions: HashMap::new(),
        };
        conn.negotiate().await?;
        Ok(conn)
    }

    async fn negotiate(&mut self) -> Result<()> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("gregor-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut resp: ApiVersionsResponse = self.send_version(&req, 3).await?;
        if resp.error_code == 35 {
            resp = self.send_version(&ApiVersionsRequest::default(), 0).await?;
        }
        crate::error::check(resp.error_code, || {
            format!("ApiVersions from {}", self.addr)
        })?;
        self.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// Whether the connection has failed.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The broker's advertised range for `api`.
    pub(crate) fn broker_versions(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.versions.get(&(api as i16)).copied()
    }

    /// The version to use for `api`: min(client max, broker max), if the ranges overlap.
    pub(crate) fn version_for(&self, api: ApiKey) -> Result<i16> {
        let ours = api.valid_versions();
        let (bmin, bmax) = self
            .broker_versions(api)
            .ok_or_else(|| Error::Unsupported {
                api,
                addr: self.addr.clone(),
            })?;
        let v = client_max_version(api).min(bmax).min(ours.max);
        if v < bmin.max(ours.min) {
            return Err(Error::Unsupported {
                api,
                addr: self.addr.clone(),
            });
        }
        Ok(v)
    }

    /// Send `req` at the negotiated version and wait for the response.
    pub(crate) async fn send<R: Request>(&self, req: &R) -> Result<R::Response> {
        let api = api_of::<R>()?;
        let v = self.version_for(api)?;
        self.send_version(req, v).await
    }

    /// Build the request for the negotiated version (fields differ between versions and
    /// `kafka-protocol` refuses to encode a field the version lacks), send it and wait.
    pub(crate) async fn send_built<R: Request>(
        &self,
        build: impl FnOnce(i16) -> R,
    ) -> Result<R::Response> {
        let api = api_of::<R>()?;
        let v = self.version_for(api)?;
        self.send_version(&build(v), v).await
    }

    /// Send without waiting for a response (Produce with acks=0).
    pub(crate) async fn send_no_response<R: Request>(&self, req: &R) -> Result<()> {
        let api = api_of::<R>()?;
        let v = self.version_for(api)?;
        let (corr, frame) = self.frame(req, v)?;
        self.tx
            .send(Outgoing {
                frame,
                corr,
                reply: None,
            })
            .await
            .map_err(|_| Error::Disconnected(self.addr.clone()))
    }

    fn frame<R: Request>(&self, req: &R, version: i16) -> Result<(i32, Bytes)> {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| Error::Protocol(format!("encoding request header: {e:#}")))?;
        req.encode(&mut buf, version)
            .map_err(|e| Error::Protocol(format!("encoding request: {e:#}")))?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        Ok((corr, buf.freeze()))
    }

    pub(crate) async fn send_version<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<R::Response> {
        self.submit_version(req, version).await?.response().await
    }

    /// Queue `req` at the negotiated version for writing and return at once; requests
    /// submitted one after another reach the broker in that order. The response is awaited
    /// with [`InFlight::response`].
    pub(crate) async fn submit<R: Request>(&self, req: &R) -> Result<InFlight<R>> {
        let v = self.version_for(api_of::<R>()?)?;
        self.submit_version(req, v).await
    }

    pub(crate) async fn submit_version<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<InFlight<R>> {
        let api = api_of::<R>()?;
        if self.is_dead() {
            return Err(Error::Disconnected(self.addr.clone()));
        }
        let (corr, frame) = self.frame(req, version)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(Outgoing {
                frame,
                corr,
                reply: Some(reply_tx),
            })
            .await
            .map_err(|_| Error::Disconnected(self.addr.clone()))?;
        Ok(InFlight {
            rx: reply_rx,
            corr,
            version,
            api,
            addr: self.addr.clone(),
            timeout: self.timeout,
            pending: self.pending.clone(),
            _response: std::marker::PhantomData,
        })
    }
}

/// A request queued on a [`Connection`], waiting for its response.
pub(crate) struct InFlight<R: Request> {
    rx: oneshot::Receiver<Result<Bytes>>,
    corr: i32,
    version: i16,
    api: ApiKey,
    addr: String,
    timeout: Duration,
    pending: Pending,
    _response: std::marker::PhantomData<fn() -> R>,
}

impl<R: Request> InFlight<R> {
    /// Wait (at most the connection's request timeout) for the response and decode it.
    pub(crate) async fn response(self) -> Result<R::Response> {
        let (api, version) = (self.api, self.version);
        let body = match tokio::time::timeout(self.timeout, self.rx).await {
            Err(_) => {
                self.pending.lock().unwrap().remove(&self.corr);
                return Err(Error::Timeout {
                    api,
                    addr: self.addr,
                    after: self.timeout,
                });
            }
            Ok(Err(_)) => return Err(Error::Disconnected(self.addr)),
            Ok(Ok(r)) => r.map_err(|_| Error::Disconnected(self.addr.clone()))?,
        };
        let mut body = body;
        let hv = <R::Response as HeaderVersion>::header_version(version);
        ResponseHeader::decode(&mut body, hv)
            .map_err(|e| Error::Protocol(format!("{api:?} v{version} response header: {e:#}")))?;
        let resp = R::Response::decode(&mut body, version)
            .map_err(|e| Error::Protocol(format!("{api:?} v{version} response: {e:#}")))?;
        if body.has_remaining() {
            tracing::debug!(?api, left = body.remaining(), "trailing bytes in response");
        }
        Ok(resp)
    }
}

fn api_of<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|_| Error::Protocol(format!("unknown api key {}", R::KEY)))
}

fn fail_all(pending: &Pending) {
    let drained: Vec<_> = pending.lock().unwrap().drain().collect();
    for (_, w) in drained {
        let _ = w.send(Err(Error::Disconnected(String::new())));
    }
}

/// One pipelined connection to one broker, for programs that build their own requests
/// (a broker's replica fetcher): the same I/O, response-size cap and version negotiation
/// as the client's pool uses.
pub struct BrokerConnection(Connection);

impl BrokerConnection {
    /// Connects to `addr` and negotiates versions (ApiVersions). Each request waits at most
    /// `timeout`; responses above `max_response_bytes` fail the connection.
    pub async fn open(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<BrokerConnection> {
        Connection::open(addr, client_id, timeout, max_response_bytes)
            .await
            .map(BrokerConnection)
    }

    /// Sends `req` at `version` and waits for its response.
    pub async fn send_version<R: Request>(&self, req: &R, version: i16) -> Result<R::Response> {
        self.0.send_version(req, version).await
    }

    /// Whether the connection failed (it is not reused then).
    pub fn is_dead(&self) -> bool {
        self.0.is_dead()
    }

    /// The broker's `(min, max)` version of `api`, if it offers it.
    pub fn broker_versions(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.0.broker_versions(api)
    }
}
