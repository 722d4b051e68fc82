//! Accepting connections and running each one.
//!
//! A connection has two tasks. The reader splits the byte stream into frames
//! ([`FrameDecoder`] enforces `socket.request.max.bytes` before a body is buffered) and queues
//! them, at most `max.inflight.requests.per.connection` ahead. The processor takes them in
//! order, decodes, handles and answers each one before the next, as Kafka does: pipelined
//! requests are answered in request order, and two pipelined produce requests to one
//! partition are appended in the order they were sent. A frame that cannot be framed or
//! decoded closes this connection only; it is logged and the broker keeps serving everyone.
//!
//! Limits, each a named setting in [`crate::BrokerConfig`]:
//! - `max.connections` / `max.connections.per.ip`: a connection over either is closed right
//!   after accept;
//! - `connections.max.idle.ms`: a connection that sends nothing for that long is closed;
//! - `queued.max.request.bytes`: every byte read from a socket holds a permit of one
//!   broker-wide semaphore until its request has been answered. The reader takes permits
//!   *before* reading (at most one chunk at a time), so when the budget is spent the broker
//!   stops reading from sockets (TCP backpressure) instead of buffering more. A client that never
//!   reads its responses stalls only its own connection: its processor blocks on the write,
//!   its queue fills, its reader stops.
//!
//! Security (issue 19): the broker binds one TCP listener per entry of `listeners`, each
//! with its security protocol ([`BoundListener`]). On SSL / SASL_SSL listeners the
//! connection task first runs the TLS handshake (a client that does not speak TLS fails it
//! and is closed at once); with a client certificate the principal is its subject. On
//! SASL_PLAINTEXT / SASL_SSL listeners the processor answers only ApiVersions,
//! SaslHandshake and SaslAuthenticate ([`crate::security::sasl::Authenticator`]) until the
//! client authenticated; anything else closes the connection, and a failed authentication
//! is answered after `connection.failed.authentication.delay.ms`, then closed. The listener
//! and principal go to every handler in its [`RequestContext`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gregor_protocol::codec::unsupported_api_versions_response;
use gregor_protocol::{decode_request, encode_response, DecodeError, FrameDecoder};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::handlers::{self, RequestContext, Response};
use crate::metrics::{self, metrics, ProduceStage};
use crate::security::sasl::{Authenticator, Outcome};
use crate::security::{ListenerInfo, Principal};

/// A bound listener: its socket, its protocol and advertised endpoint, and the TLS
/// acceptor of SSL / SASL_SSL listeners.
pub struct BoundListener {
    pub socket: TcpListener,
    pub info: Arc<ListenerInfo>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Counts open connections, in total and per IP.
struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Holds a connection's place in [`ConnectionLimits`] until dropped.
struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut open = self.open.lock().expect("connection limits lock");
        if open.0 >= self.max_total {
            return Err("max.connections");
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err("max.connections.per.ip");
        }
        *per_ip += 1;
        open.0 += 1;
        metrics().connections_active.inc();
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("connection limits lock");
        open.0 -= 1;
        metrics().connections_active.dec();
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until `shutdown` resolves, then shuts the network down in order:
/// stops accepting (the listener is dropped), tells every connection to stop taking
/// requests, and waits up to `connections.shutdown.timeout.ms` for each to answer what it
/// already accepted (a produce waiting for its fsync is answered); connections still
/// running then are aborted. Returns when no connection task is left.
pub async fn serve(
    broker: Arc<Broker>,
    listeners: Vec<BoundListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = Arc::new(ConnectionLimits {
        max_total: broker.config.max_connections,
        max_per_ip: broker.config.max_connections_per_ip,
        open: Mutex::new((0, HashMap::new())),
    });
    let queued_bytes = Arc::new(Semaphore::new(
        broker
            .config
            .queued_max_request_bytes
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    // One accepting task per listener, all feeding this loop.
    let (accepted_tx, mut accepted_rx) = mpsc::channel::<(TcpStream, SocketAddr, usize)>(64);
    let mut acceptors = JoinSet::new();
    let mut infos = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        infos.push((listener.info, listener.tls));
        let socket = listener.socket;
        let tx = accepted_tx.clone();
        acceptors.spawn(async move {
            loop {
                match socket.accept().await {
                    Ok((stream, peer)) => {
                        if tx.send((stream, peer, index)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Typically EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    drop(accepted_tx);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connection tasks.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accepted_rx.recv() => match accepted {
                Some((stream, peer, index)) => match limits.try_open(peer.ip()) {
                    Ok(slot) => {
                        metrics().connections_accepted.inc();
                        let _ = stream.set_nodelay(true);
                        let broker = broker.clone();
                        let queued_bytes = queued_bytes.clone();
                        let stop = stop_rx.clone();
                        let (info, tls) = infos[index].clone();
                        connections.spawn(async move {
                            run_connection(broker, stream, peer, info, tls, queued_bytes, stop)
                                .await;
                            drop(slot);
                        });
                    }
                    Err(limit) => {
                        metrics().connections_refused.inc();
                        tracing::warn!(%peer, limit, "refusing connection: limit reached");
                        drop(stream);
                    }
                },
                None => break,
            }
        }
    }
    // Stop accepting: the accepting tasks own the listeners.
    acceptors.abort_all();
    while acceptors.join_next().await.is_some() {}
    let open = connections.len();
    tracing::info!(connections = open, "stopped accepting; closing connections");
    let _ = stop_tx.send(true);
    let timeout = Duration::from_millis(broker.config.connections_shutdown_timeout_ms);
    let drained = tokio::time::timeout(timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections still busy after connections.shutdown.timeout.ms; aborting them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// A frame and the share of `queued.max.request.bytes` it holds until answered.
/// A frame, the share of `queued.max.request.bytes` it holds until answered, and when it
/// was read whole.
type QueuedFrame = (Bytes, Option<OwnedSemaphorePermit>, Instant);

/// A response on its way to the socket, in request order. `Later` is a request whose
/// effects are done and whose answer is still pending (a produce waiting for its fsync);
/// the processor has moved on.
/// A produce's times (when its frame was read whole) are passed along for
/// [`metrics::ProduceStage`].
enum Outgoing {
    Ready(Option<Bytes>, Option<OwnedSemaphorePermit>, Option<Instant>),
    Later(
        tokio::task::JoinHandle<Option<Bytes>>,
        Option<OwnedSemaphorePermit>,
        Option<Instant>,
    ),
}

/// Why the processor stops reading requests from a connection (already logged).
struct Close;

/// A connection's security state, owned by its processor.
struct Session {
    listener: Arc<ListenerInfo>,
    principal: Principal,
    /// On SASL listeners: the exchange, until and after it succeeded.
    sasl: Option<Authenticator>,
    /// Set when the last response is the connection's last (failed authentication).
    closing: bool,
}

/// The reading half of a connection, plain or TLS.
enum Reader {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>),
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

async fn run_connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerInfo>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    queued_bytes: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, protocol = %listener.protocol, "connection opened");
    let mut principal = Principal::anonymous();
    let (reader, writer): (Reader, Writer) = match tls {
        None => {
            let (r, w) = stream.into_split();
            (Reader::Tcp(r), Box::new(w))
        }
        Some(acceptor) => {
            // Bounded: a client that opens the connection and sends nothing is closed.
            let limit =
                Duration::from_millis(broker.config.connections_max_idle_ms.clamp(1, 10_000));
            let handshake = tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => return,
                done = tokio::time::timeout(limit, acceptor.accept(stream)) => done,
            };
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics().tls_handshakes_failed.inc();
                    tracing::info!(%peer, error = %e, "closing connection: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics().tls_handshakes_failed.inc();
                    tracing::info!(%peer, "closing connection: no TLS handshake in time");
                    return;
                }
            };
            if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                match crate::security::tls::subject_name(cert) {
                    Some(subject) => principal = Principal::user(subject),
                    None => {
                        tracing::warn!(%peer, "closing connection: unreadable client certificate subject");
                        return;
                    }
                }
            }
            let (r, w) = tokio::io::split(tls);
            (Reader::Tls(r), Box::new(w))
        }
    };
    let mut session = Session {
        sasl: listener
            .protocol
            .sasl()
            .then(|| Authenticator::new(&broker.sasl_mechanisms)),
        listener,
        principal,
        closing: false,
    };
    let depth = broker.config.max_inflight_requests_per_connection.max(1);
    let (frames_tx, mut frames_rx) = mpsc::channel::<QueuedFrame>(depth);
    let read_task = tokio::spawn(read_frames(
        reader,
        peer,
        FrameDecoder::new(broker.config.socket_request_max_bytes),
        Duration::from_millis(broker.config.connections_max_idle_ms.max(1)),
        queued_bytes,
        frames_tx,
    ));
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(depth);
    let write_task = tokio::spawn(write_responses(writer, peer, out_rx));

    loop {
        // Shutdown: take no new request; what was accepted is still answered below.
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => None,
            frame = frames_rx.recv() => frame,
        };
        let Some((frame, permit, read_at)) = next else {
            break;
        };
        let Ok(outgoing) = process(&broker, &mut session, peer, frame, permit, read_at).await
        else {
            break;
        };
        if out_tx.send(outgoing).await.is_err() {
            break; // the writer stopped: the peer is gone
        }
        if session.closing {
            break;
        }
    }
    read_task.abort();
    // Answer what was already accepted, then close.
    drop(out_tx);
    let _ = write_task.await;
    tracing::debug!(%peer, "connection closed");
}

/// Decodes and handles one request, in the connection's request order; its answer (now,
/// or a task that completes it later) goes to the writer.
async fn process(
    broker: &Arc<Broker>,
    session: &mut Session,
    peer: SocketAddr,
    frame: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    read_at: Instant,
) -> Result<Outgoing, Close> {
    if let Some(capture) = capture_dir() {
        capture_frame(capture, &frame);
    }
    let request = match decode_request(frame) {
        Ok(request) => request,
        Err(DecodeError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            api_version,
        }) => {
            tracing::debug!(%peer, api_version, "ApiVersions at unsupported version; answering v0");
            return Ok(Outgoing::Ready(
                Some(unsupported_api_versions_response(correlation_id)),
                permit,
                None,
            ));
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "closing connection");
            return Err(Close);
        }
    };
    if let Some(capture) = capture_dir() {
        for records in handlers::record_batches(&request.body) {
            save_capture(&capture.join("batches"), records);
        }
    }
    let (api_key, version, correlation_id) = (
        request.api_key,
        request.api_version,
        request.header.correlation_id,
    );
    if let Some(body) = authenticate(broker, session, peer, &request.body).await? {
        let bytes = encode_response(api_key, version, correlation_id, &body).map_err(|e| {
            tracing::error!(%peer, ?api_key, version, error = %e, "response failed to encode; closing");
            Close
        })?;
        return Ok(Outgoing::Ready(Some(bytes), permit, None));
    }
    let named = handlers::partitions_named(&request.body);
    if named > broker.config.max_partitions_per_request {
        tracing::warn!(%peer, ?api_key, named, limit = broker.config.max_partitions_per_request,
            "closing connection: request names too many partitions (max.partitions.per.request)");
        return Err(Close);
    }
    let ctx = RequestContext::new(format!("/{}", peer.ip()), &request)
        .on(session.listener.clone(), session.principal.clone());
    let started = Instant::now();
    let is_produce = api_key == ApiKey::Produce;
    if is_produce {
        metrics().record_stage(ProduceStage::Queued, started - read_at);
    }
    let timing = is_produce.then_some(read_at);
    let produced = metrics::produced_partitions(&request.body);
    // Handlers run as their own tasks so that a bug that panics in one fails this request
    // and connection, logged with context, and never the broker.
    let handler_broker = broker.clone();
    let handled =
        tokio::spawn(async move { handlers::dispatch(&handler_broker, &ctx, request).await }).await;
    let response = match handled {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(%peer, ?api_key, version, correlation_id, error = %e,
                "request handler failed; closing connection");
            return Err(Close);
        }
    };
    let encode = move |body: Option<ResponseKind>| -> Result<Option<Bytes>, Close> {
        let Some(body) = body else { return Ok(None) };
        match encode_response(api_key, version, correlation_id, &body) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => {
                tracing::error!(%peer, ?api_key, version, error = %e, "response failed to encode; closing");
                Err(Close)
            }
        }
    };
    let observing = broker.clone();
    let observe = move |body: &Option<ResponseKind>| {
        metrics().observe_request(api_key, started.elapsed(), body.as_ref(), &produced, |id| {
            observing.topic_by_id(id).map(|t| t.name.clone())
        });
    };
    if is_produce {
        metrics().record_stage(ProduceStage::Append, started.elapsed());
    }
    match response {
        Response::Now(body) => {
            observe(&body);
            Ok(Outgoing::Ready(encode(body)?, permit, timing))
        }
        Response::Later(future) => {
            let answer = tokio::spawn(async move {
                let waiting = Instant::now();
                let body = future.await;
                if is_produce {
                    metrics().record_stage(ProduceStage::DurableWait, waiting.elapsed());
                }
                observe(&body);
                encode(body).ok().flatten()
            });
            Ok(Outgoing::Later(answer, permit, timing))
        }
    }
}

/// On SASL listeners: SaslHandshake and SaslAuthenticate, answered here with the
/// connection's state, and the gate: before authentication only ApiVersions passes.
/// `Ok(None)`: dispatch the request as usual.
async fn authenticate(
    broker: &Broker,
    session: &mut Session,
    peer: SocketAddr,
    body: &RequestKind,
) -> Result<Option<ResponseKind>, Close> {
    // Not a SASL listener: the handlers answer SaslHandshake / SaslAuthenticate with
    // ILLEGAL_SASL_STATE.
    let Some(auth) = session.sasl.as_mut() else {
        return Ok(None);
    };
    let (response, outcome) = match body {
        RequestKind::SaslHandshake(r) => {
            let (resp, outcome) = auth.handshake(r);
            (ResponseKind::SaslHandshake(resp), outcome)
        }
        RequestKind::SaslAuthenticate(r) => {
            let (resp, outcome) = auth.authenticate(r, &broker.users);
            (ResponseKind::SaslAuthenticate(resp), outcome)
        }
        RequestKind::ApiVersions(_) => return Ok(None),
        _ if auth.authenticated() => return Ok(None),
        _ => {
            tracing::warn!(%peer, "closing connection: request before SASL authentication");
            return Err(Close);
        }
    };
    match outcome {
        Outcome::Continue => {}
        Outcome::Authenticated(principal) => {
            metrics().authentications_succeeded.inc();
            tracing::debug!(%peer, %principal, "authenticated");
            session.principal = principal;
        }
        Outcome::Close {
            failed_authentication,
        } => {
            if failed_authentication {
                metrics().authentications_failed.inc();
                tracing::info!(%peer, "authentication failed; closing connection");
                let delay = broker.config.connection_failed_authentication_delay_ms;
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            session.closing = true;
        }
    }
    Ok(Some(response))
}

/// Writes responses in request order; a `Later` response is awaited in its turn.
async fn write_responses(
    mut writer: Writer,
    peer: SocketAddr,
    mut out_rx: mpsc::Receiver<Outgoing>,
) {
    while let Some(outgoing) = out_rx.recv().await {
        let (bytes, permit, timing) = match outgoing {
            Outgoing::Ready(bytes, permit, timing) => (bytes, permit, timing),
            Outgoing::Later(task, permit, timing) => match task.await {
                Ok(bytes) => (bytes, permit, timing),
                Err(e) => {
                    tracing::error!(%peer, error = %e, "request completion failed; closing connection");
                    break;
                }
            },
        };
        let ready = Instant::now();
        if let Some(bytes) = bytes {
            if let Err(e) = writer.write_all(&bytes).await {
                tracing::debug!(%peer, error = %e, "write failed");
                break;
            }
        }
        if let Some(read_at) = timing {
            metrics().record_stage(ProduceStage::ResponseWrite, ready.elapsed());
            metrics().record_stage(ProduceStage::Total, read_at.elapsed());
        }
        drop(permit);
    }
    let _ = writer.shutdown().await;
}

/// Bytes read at once when no frame is in progress, and the most read at once into a body.
const READ_START: usize = 4 * 1024;
const READ_CHUNK: usize = 256 * 1024;

/// The reader half: frames in, in order, each holding its bytes' permits.
///
/// Memory is accounted for bytes actually received, not for the length a frame claims: the
/// reader waits for readability holding nothing, then takes permits for at most one chunk,
/// reads, and keeps permits only for the bytes that arrived. A client that announces a
/// 100 MiB frame and then trickles one byte a second holds only what it sent; an idle
/// connection holds no buffer at all.
async fn read_frames(
    mut reader: Reader,
    peer: SocketAddr,
    decoder: FrameDecoder,
    idle: Duration,
    queued_bytes: Arc<Semaphore>,
    frames_tx: mpsc::Sender<QueuedFrame>,
) {
    use bytes::BufMut;
    let mut buf = BytesMut::new();
    // Permits for exactly the bytes in `buf` (None while it is empty).
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        // Hand every complete frame to the processor, with its share of the permits.
        let pending = loop {
            let len = match decoder.peek_length(&buf) {
                Ok(len) => len,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                    return;
                }
            };
            match len {
                Some(len) if buf.len() >= 4 + len => {
                    let frame = match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => frame,
                        // peek_length just accepted this frame and it is fully buffered.
                        other => {
                            tracing::error!(%peer, ?other, "frame decoder disagrees with itself; closing");
                            return;
                        }
                    };
                    let permit = held.as_mut().and_then(|h| h.split(4 + len));
                    if frames_tx
                        .send((frame, permit, Instant::now()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                other => break other,
            }
        };
        if buf.is_empty() {
            // Release the buffer of a connection that has nothing in progress.
            buf = BytesMut::new();
            held = None;
        }
        // A plain socket tells when it is readable, so permits are taken only then; a TLS
        // stream does not (a TLS record may hold no request bytes), so a TLS connection
        // holds permits for one start-sized read while it waits.
        if let Reader::Tcp(tcp) = &reader {
            match tokio::time::timeout(idle, tcp.readable()).await {
                Err(_) => {
                    tracing::debug!(%peer, "closing idle connection (connections.max.idle.ms)");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "socket error");
                    return;
                }
                Ok(Ok(())) => {}
            }
        }
        let want = match pending {
            Some(len) => (4 + len - buf.len()).min(READ_CHUNK),
            None => READ_START,
        };
        let Ok(mut permit) = queued_bytes
            .clone()
            .acquire_many_owned(want.min(Semaphore::MAX_PERMITS) as u32)
            .await
        else {
            return;
        };
        buf.reserve(want);
        let read = match &mut reader {
            Reader::Tcp(tcp) => tcp.try_read_buf(&mut (&mut buf).limit(want)),
            Reader::Tls(tls) => {
                match tokio::time::timeout(idle, tls.read_buf(&mut (&mut buf).limit(want))).await {
                    Ok(read) => read,
                    Err(_) => {
                        tracing::debug!(%peer, "closing idle connection (connections.max.idle.ms)");
                        return;
                    }
                }
            }
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    tracing::debug!(%peer, pending = buf.len(), "peer closed mid-frame");
                }
                return;
            }
            Ok(n) => {
                // Keep permits for the n bytes that arrived; the rest go back with `permit`.
                if let Some(used) = permit.split(n) {
                    match held.as_mut() {
                        Some(h) => h.merge(used),
                        None => held = Some(used),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed");
                return;
            }
        }
    }
}

/// Where to record received frames for the fuzzers' seed corpus: the directory named by
/// `GREGOR_CAPTURE_DIR`, read once at first use. Unset in normal operation.
fn capture_dir() -> Option<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("GREGOR_CAPTURE_DIR").map(Into::into))
        .as_deref()
}

/// Saves a request frame (with its length prefix, as it came off the wire) under a name
/// derived from its content, so repeated captures deduplicate.
fn capture_frame(dir: &std::path::Path, frame: &Bytes) {
    let mut bytes = Vec::with_capacity(frame.len() + 4);
    bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    bytes.extend_from_slice(frame);
    save_capture(&dir.join("frames"), &bytes);
}

fn save_capture(dir: &std::path::Path, bytes: &[u8]) {
    let name = format!("{:08x}-{}", crc32c::crc32c(bytes), bytes.len());
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(name), bytes))
    {
        tracing::warn!(error = %e, "capture failed");
    }
}
