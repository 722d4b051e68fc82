//! The controller link: Raft RPCs (and commands forwarded to the leader) over plain TCP.
//!
//! A connection carries requests and responses one at a time, each a frame
//! `[len: u32 BE][JSON]` of at most [`MAX_FRAME`] bytes. Every call has a timeout; a failed or
//! timed-out connection is dropped and the next call reconnects. The server side is
//! [`serve_raft`], one task per connection; bad frames close the connection, never the node.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::controller::{Command, MetaError, Reply};
use crate::node::QuorumInfo;
use crate::TypeConfig;

type NodeId = u64;

/// Largest frame sent or accepted.
pub const MAX_FRAME: usize = 64 << 20;

/// A request on the controller link.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LinkRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command proposed on a node that is not the leader, for the leader.
    Forward(Command),
    /// A command from a node that does not know the leader (a broker that is not yet a
    /// learner): a voter that is not the leader forwards it, once, to the leader it knows.
    Relay(Command),
    /// DescribeQuorum, answered by the leader.
    Quorum,
}

/// The answer to a [`LinkRequest`], same variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LinkResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Forward(Result<Reply, MetaError>),
    Quorum(Result<QuorumInfo, MetaError>),
}

async fn write_frame<T: Serialize>(s: &mut TcpStream, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await
}

async fn read_frame<T: DeserializeOwned>(s: &mut TcpStream) -> io::Result<T> {
    let len = s.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Could not connect: the peer is down.
    Unreachable(io::Error),
    /// Connected, then failed or timed out.
    Network(io::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Network(e) => write!(f, "network: {e}"),
        }
    }
}

/// A client for one peer: one connection, reconnected on the next call after a failure.
pub(crate) struct LinkClient {
    addr: String,
    conn: Option<TcpStream>,
}

impl LinkClient {
    pub(crate) fn new(addr: String) -> Self {
        LinkClient { addr, conn: None }
    }

    /// Sends `req` and waits for the answer, all within `timeout`.
    pub(crate) async fn call(
        &mut self,
        req: &LinkRequest,
        timeout: Duration,
    ) -> Result<LinkResponse, CallError> {
        let res = tokio::time::timeout(timeout, async {
            if self.conn.is_none() {
                let s = TcpStream::connect(&self.addr)
                    .await
                    .map_err(CallError::Unreachable)?;
                // A connect to a local port nobody listens on can, rarely, connect the socket
                // to itself (simultaneous open on the same ephemeral port), holding the port
                // the peer needs when it restarts: treat it as refused.
                if s.local_addr().ok() == s.peer_addr().ok() {
                    return Err(CallError::Unreachable(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "connected to itself",
                    )));
                }
                let _ = s.set_nodelay(true);
                self.conn = Some(s);
            }
            let s = self.conn.as_mut().expect("connected above");
            write_frame(s, req).await.map_err(CallError::Network)?;
            read_frame(s).await.map_err(CallError::Network)
        })
        .await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(CallError::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {} in {timeout:?}", self.addr),
            ))),
        };
        if res.is_err() {
            self.conn = None;
        }
        res
    }
}

/// openraft's network factory: one [`LinkClient`] per target.
pub(crate) struct Network;

/// openraft's network: a [`LinkClient`] to one peer.
pub(crate) struct PeerLink {
    target: NodeId,
    client: LinkClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            client: LinkClient::new(node.addr.clone()),
        }
    }
}

fn to_rpc_error<E: std::error::Error>(e: CallError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&io::Error::new(
        io::ErrorKind::InvalidData,
        "unexpected response kind",
    )))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .client
            .call(&LinkRequest::Append(rpc), option.hard_ttl())
            .await
            .map_err(to_rpc_error)?
        {
            LinkResponse::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .client
            .call(&LinkRequest::Snapshot(rpc), option.hard_ttl())
            .await
            .map_err(to_rpc_error)?
        {
            LinkResponse::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .client
            .call(&LinkRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(to_rpc_error)?
        {
            LinkResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }
}

/// What the server does with forwarded commands and quorum queries (the node).
pub(crate) type ForwardFn = Arc<
    dyn Fn(Command, bool) -> Pin<Box<dyn Future<Output = Result<Reply, MetaError>> + Send>>
        + Send
        + Sync,
>;
pub(crate) type QuorumFn = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<QuorumInfo, MetaError>> + Send>> + Send + Sync,
>;

/// Serves the controller link on `listener`: Raft RPCs go to `raft`, forwarded commands to
/// `forward`, quorum queries to `quorum`. Runs until the task is dropped.
pub(crate) async fn serve_raft(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    forward: ForwardFn,
    quorum: QuorumFn,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("controller listener: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let forward = forward.clone();
        let quorum = quorum.clone();
        tokio::spawn(async move {
            loop {
                let req: LinkRequest = match read_frame(&mut stream).await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            tracing::debug!("controller link from {peer}: {e}");
                        }
                        return;
                    }
                };
                let resp = match req {
                    LinkRequest::Append(r) => LinkResponse::Append(raft.append_entries(r).await),
                    LinkRequest::Vote(r) => LinkResponse::Vote(raft.vote(r).await),
                    LinkRequest::Snapshot(r) => {
                        LinkResponse::Snapshot(raft.install_snapshot(r).await)
                    }
                    LinkRequest::Forward(c) => LinkResponse::Forward(forward(c, false).await),
                    LinkRequest::Relay(c) => LinkResponse::Forward(forward(c, true).await),
                    LinkRequest::Quorum => LinkResponse::Quorum(quorum().await),
                };
                if write_frame(&mut stream, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}
