//! Accepting connections and running each one.
//!
//! A connection has two tasks. The reader splits the byte stream into frames
//! ([`FrameDecoder`] enforces `socket.request.max.bytes` before a body is buffered) and queues
//! them, at most `max.inflight.requests.per.connection` ahead. The processor takes them in
//! order, decodes, handles and answers each one before the next, as Kafka does: pipelined
//! requests are answered in request order, and two pipelined produce requests to one
//! partition are appended in the order they were sent. A frame that cannot be framed or
//! decoded closes this connection only; it is logged and the broker keeps serving everyone.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gregor_protocol::codec::unsupported_api_versions_response;
use gregor_protocol::{decode_request, encode_response, DecodeError, FrameDecoder};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::handlers;
use crate::state::Broker;

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let broker = broker.clone();
                    tokio::spawn(async move { run_connection(broker, stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

async fn run_connection(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "connection opened");
    let (mut reader, mut writer) = stream.into_split();
    let (frames_tx, mut frames_rx) =
        mpsc::channel::<Bytes>(broker.config.max_inflight_requests_per_connection.max(1));
    let decoder = FrameDecoder::new(broker.config.socket_request_max_bytes);

    let read_task = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if frames_tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                        return;
                    }
                }
            }
            if let Ok(Some(len)) = decoder.peek_length(&buf) {
                buf.reserve((4 + len).saturating_sub(buf.len()));
            } else if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::debug!(%peer, pending = buf.len(), "peer closed mid-frame");
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed");
                    return;
                }
            }
        }
    });

    while let Some(frame) = frames_rx.recv().await {
        let response = match decode_request(frame) {
            Ok(request) => {
                let (api_key, version, correlation_id) = (
                    request.api_key,
                    request.api_version,
                    request.header.correlation_id,
                );
                let client_host = format!("/{}", peer.ip());
                let handled = crate::groups::CLIENT_HOST
                    .scope(client_host, handlers::handle(&broker, request))
                    .await;
                match handled {
                    Some(body) => match encode_response(api_key, version, correlation_id, &body) {
                        Ok(bytes) => Some(bytes),
                        Err(e) => {
                            tracing::error!(%peer, ?api_key, version, error = %e, "response failed to encode; closing");
                            break;
                        }
                    },
                    None => None,
                }
            }
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                api_version,
            }) => {
                tracing::debug!(%peer, api_version, "ApiVersions at unsupported version; answering v0");
                Some(unsupported_api_versions_response(correlation_id))
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        };
        if let Some(bytes) = response {
            if let Err(e) = writer.write_all(&bytes).await {
                tracing::debug!(%peer, error = %e, "write failed");
                break;
            }
        }
    }
    read_task.abort();
    let _ = writer.shutdown().await;
    tracing::debug!(%peer, "connection closed");
}
