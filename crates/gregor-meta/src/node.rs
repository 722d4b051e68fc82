//! [`MetaNode`]: one member of the metadata quorum (a controller, Kafka's combined mode), with
//! what the broker needs from it:
//! - [`MetaNode::image`]: a watch of the applied [`MetadataImage`] (Metadata, DescribeCluster,
//!   FindCoordinator, which partitions this broker leads or follows);
//! - [`MetaNode::propose`]: a [`Command`] decided by the active controller and committed by the
//!   quorum (CreateTopics & co., AlterPartition), forwarded to the leader when this node is not;
//! - [`MetaNode::start_broker`]: the broker's registration and heartbeat loop;
//! - [`MetaNode::leader_id`] and [`MetaNode::quorum_info`] (DescribeQuorum).
//!
//! The active controller is the Raft leader. Before it decides anything in a new term it waits
//! until its state machine has applied everything committed (`ensure_linearizable`); it then
//! decides one command at a time on the applied image, and every commit returns after it is
//! applied, so each decision sees the previous ones.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::controller::{Command, Controller, ControllerConfig, MetaError, Reply};
use crate::image::MetadataImage;
use crate::net::{serve_raft, CallError, LinkClient, LinkRequest, LinkResponse, Network};
use crate::records::{BrokerId, Endpoint, RecordBatch};
use crate::store::{LogStore, StateMachine};
use crate::TypeConfig;

/// Runs `attempt` (given the attempt number, from 1) until it answers anything but a
/// retriable error, pausing `pause` between tries; a retriable error at `deadline` becomes
/// [`MetaError::RequestTimedOut`].
async fn retrying<T, F, Fut>(
    deadline: tokio::time::Instant,
    pause: Duration,
    mut attempt: F,
) -> Result<T, MetaError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, MetaError>>,
{
    let mut n = 0usize;
    loop {
        n += 1;
        match attempt(n).await {
            Err(e) if e.is_retriable() => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(MetaError::RequestTimedOut);
                }
                tokio::time::sleep(pause).await;
            }
            r => return r,
        }
    }
}

/// Milliseconds from a monotonic clock: the controller's only notion of time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// [`Clock`] from `std::time::Instant`.
pub struct MonotonicClock(std::time::Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(std::time::Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// How to run a [`MetaNode`].
#[derive(Clone)]
pub struct MetaConfig {
    /// `node.id`.
    pub node_id: BrokerId,
    /// `controller.quorum.voters`: voter id → `host:port` of its controller listener.
    pub voters: BTreeMap<BrokerId, String>,
    /// This node's controller listener as others reach it: a voter's entry in `voters`; a
    /// node that is not a voter (a broker only) must set it, to receive the metadata log as a
    /// Raft learner.
    pub controller_addr: Option<String>,
    /// Where the Raft log, vote and snapshots live (e.g. `<data-dir>/__cluster_metadata`).
    pub dir: PathBuf,
    pub controller: ControllerConfig,
    /// Raft heartbeat interval (ms).
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout range (ms): a follower that hears nothing for this long runs for
    /// leader.
    pub election_timeout_ms: (u64, u64),
    /// How long [`MetaNode::propose`] tries (through leader changes) before
    /// [`MetaError::RequestTimedOut`].
    pub propose_timeout: Duration,
    pub clock: Arc<dyn Clock>,
}

impl MetaConfig {
    /// Defaults: Raft heartbeats every 50 ms and an election timeout of 250–500 ms (openraft
    /// adds a leader lease of the maximum, so a follower runs for leader 0.75–1 s after the
    /// last word from a dead leader); broker sessions of 1.5 s with heartbeats every 250 ms
    /// ([`ControllerConfig::default`]), so a killed broker loses its leaderships in under 2 s
    /// (when it was the controller too, its silence towards the new leader ends its session
    /// early: [`Controller::expire_unreachable`]); proposals give up after 5 s.
    pub fn new(node_id: BrokerId, voters: BTreeMap<BrokerId, String>, dir: PathBuf) -> Self {
        MetaConfig {
            node_id,
            controller_addr: voters.get(&node_id).cloned(),
            voters,
            dir,
            controller: ControllerConfig::default(),
            raft_heartbeat_ms: 50,
            election_timeout_ms: (250, 500),
            propose_timeout: Duration::from_secs(5),
            clock: Arc::new(MonotonicClock::default()),
        }
    }
}

/// One voter as DescribeQuorum reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterState {
    pub id: BrokerId,
    /// Index of the last log entry known to be replicated to it (`None`: nothing yet).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's log end.
    pub lag: Option<u64>,
}

/// The quorum as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumInfo {
    pub leader_id: BrokerId,
    /// The Raft term (Kafka's leader epoch of the metadata quorum).
    pub term: u64,
    /// Index of the leader's last log entry.
    pub log_end_index: u64,
    /// Index of the last entry applied by the leader (committed).
    pub applied_index: u64,
    pub voters: Vec<VoterState>,
}

struct Inner {
    id: u64,
    config: MetaConfig,
    raft: Raft<TypeConfig>,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// The active controller, with the Raft term it was started in.
    controller: tokio::sync::Mutex<Option<(u64, Controller)>>,
    /// For the active controller's term: when it started and the log end then, to find voters
    /// that never acknowledge the new leader (see [`Controller::expire_unreachable`]).
    term_start: Mutex<Option<(u64, tokio::time::Instant, u64)>>,
    /// Idle connections to other voters, for forwarding.
    clients: Mutex<BTreeMap<u64, Vec<LinkClient>>>,
    runtime: Handle,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running member of the metadata quorum. Cheap to clone; usable from any runtime (its work
/// runs on the runtime it was started on).
#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

/// The broker side of registration: its current broker epoch (`None` while unregistered).
pub struct BrokerHandle {
    pub epoch: watch::Receiver<Option<i64>>,
    /// When (the node's [`Clock`], ms) the controller last accepted a registration or
    /// heartbeat; `u64::MAX` before the first.
    last_ack_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The metadata log index this broker must have applied before it acts on its image:
    /// the controller's at the first acknowledgement after registering or after a gap of a
    /// session timeout (when leaderships may have moved without this broker hearing of it).
    catch_up_index: Arc<std::sync::atomic::AtomicU64>,
    clock: Arc<dyn Clock>,
    session_timeout_ms: u64,
    task: JoinHandle<()>,
}

impl BrokerHandle {
    /// Stops registering and heartbeating (before a controlled shutdown: a heartbeat would
    /// unfence the broker again).
    pub fn stop_heartbeats(&self) {
        self.task.abort();
    }

    /// Whether this broker is in session with the controller and up to date: its last
    /// heartbeat was accepted within the broker session timeout, and its image (at
    /// `applied_index`) has caught up with the metadata log as of its registration or its
    /// return from a gap. A broker out of touch for a session timeout has been fenced (or soon
    /// will be) and its partitions led elsewhere; one that is back has not heard of that
    /// until its image catches up. Neither may serve as leader.
    pub fn in_session(&self, applied_index: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let last = self.last_ack_ms.load(SeqCst);
        last != u64::MAX
            && self.clock.now_ms().saturating_sub(last) < self.session_timeout_ms
            && applied_index >= self.catch_up_index.load(SeqCst)
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetaNode {
    /// Starts the node with its controller listener already bound (so that tests can use
    /// ephemeral ports). On a pristine directory a voter initializes the quorum with all the
    /// voters (every voter may do so: openraft accepts the same initial membership more than
    /// once). Must be called within a tokio runtime, which then runs the node.
    pub async fn start(config: MetaConfig, listener: TcpListener) -> io::Result<MetaNode> {
        let id = u64::try_from(config.node_id)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative node id"))?;
        let log = LogStore::open(&config.dir)?;
        let pristine = log.is_pristine();
        let (sm, image) = StateMachine::open(&config.dir)?;
        let raft_config = Config {
            cluster_name: "gregor".into(),
            heartbeat_interval: config.raft_heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            install_snapshot_timeout: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let raft = Raft::new(id, Arc::new(raft_config), Network, log, sm)
            .await
            .map_err(io::Error::other)?;
        if pristine && config.voters.contains_key(&config.node_id) {
            let members: BTreeMap<u64, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id as u64, BasicNode::new(addr)))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!("metadata quorum already initialized: {e}");
            }
        }
        let node = MetaNode {
            inner: Arc::new(Inner {
                id,
                config,
                raft: raft.clone(),
                image,
                controller: tokio::sync::Mutex::new(None),
                term_start: Mutex::new(None),
                clients: Mutex::new(BTreeMap::new()),
                runtime: Handle::current(),
                tasks: Mutex::new(vec![]),
            }),
        };
        let n = node.clone();
        let forward: crate::net::ForwardFn = Arc::new(move |cmd, relay| {
            let n = n.clone();
            Box::pin(async move {
                let t = n.inner.config.propose_timeout;
                let leader = n.inner.raft.metrics().borrow().current_leader;
                match leader {
                    Some(l) if relay && l != n.inner.id => {
                        let deadline = tokio::time::Instant::now() + t;
                        match n.call(l, &LinkRequest::Forward(cmd), deadline).await {
                            Ok(LinkResponse::Forward(r)) => r,
                            _ => Err(MetaError::NotController),
                        }
                    }
                    _ => tokio::time::timeout(t, n.propose_local(&cmd))
                        .await
                        .unwrap_or(Err(MetaError::RequestTimedOut)),
                }
            })
        });
        let n = node.clone();
        let quorum: crate::net::QuorumFn =
            Arc::new(move || Box::pin(std::future::ready(n.local_quorum())));
        let server = tokio::spawn(serve_raft(listener, raft, forward, quorum));
        let n = node.clone();
        let ticker = tokio::spawn(async move { n.tick_loop().await });
        node.inner
            .tasks
            .lock()
            .expect("tasks lock")
            .extend([server, ticker]);
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> BrokerId {
        self.inner.config.node_id
    }

    /// The applied metadata image; changes after every applied log entry.
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image.clone()
    }

    /// The active controller (Raft leader), if one is known.
    pub fn leader_id(&self) -> Option<BrokerId> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .current_leader
            .map(|l| l as BrokerId)
    }

    /// Index of the last entry in this node's Raft log (Kafka's raft-metrics
    /// `log-end-offset`); 0 while the log is empty. Entries past the applied image's index
    /// are not yet committed or not yet applied here.
    pub fn log_end_index(&self) -> u64 {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    }

    /// On the active controller: for every other node it replicates to, how many entries of
    /// the leader's log that node does not have yet (the quorum's replication lag); empty
    /// on any other node.
    pub fn follower_lags(&self) -> Vec<(BrokerId, u64)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let end = m.last_log_index.unwrap_or(0);
        let Some(replication) = m.replication.as_ref() else {
            return Vec::new();
        };
        replication
            .iter()
            .filter(|(id, _)| **id != self.inner.id)
            .map(|(id, matched)| {
                let have = matched.as_ref().map_or(0, |l| l.index);
                (*id as BrokerId, end.saturating_sub(have))
            })
            .collect()
    }

    /// The voters (`controller.quorum.voters`).
    pub fn voters(&self) -> &BTreeMap<BrokerId, String> {
        &self.inner.config.voters
    }

    /// Decides and commits `cmd` on the active controller; retries through leader changes
    /// for up to `propose_timeout`, then answers [`MetaError::RequestTimedOut`].
    pub async fn propose(&self, cmd: Command) -> Result<Reply, MetaError> {
        self.propose_within(cmd, self.inner.config.propose_timeout)
            .await
    }

    /// [`Self::propose`] with its own time limit.
    pub async fn propose_within(&self, cmd: Command, limit: Duration) -> Result<Reply, MetaError> {
        let n = self.clone();
        self.inner
            .runtime
            .spawn(async move { n.propose_loop(cmd, limit).await })
            .await
            .unwrap_or(Err(MetaError::NotController))
    }

    /// DescribeQuorum: asked of the leader (forwarded when this node is not).
    pub async fn quorum_info(&self) -> Result<QuorumInfo, MetaError> {
        let n = self.clone();
        self.inner
            .runtime
            .spawn(async move {
                let deadline = tokio::time::Instant::now() + n.inner.config.propose_timeout;
                retrying(deadline, Duration::from_millis(50), |_| async {
                    match n.leader_id().map(|l| l as u64) {
                        Some(l) if l == n.inner.id => n.local_quorum(),
                        Some(l) => match n.call(l, &LinkRequest::Quorum, deadline).await {
                            Ok(LinkResponse::Quorum(r)) => r,
                            _ => Err(MetaError::NotController),
                        },
                        None => Err(MetaError::NotController),
                    }
                })
                .await
            })
            .await
            .unwrap_or(Err(MetaError::NotController))
    }

    /// Starts the broker loop: register (with a fresh incarnation id), then heartbeat every
    /// `heartbeat_interval_ms`; register again when the controller answers that the epoch is
    /// stale. The returned handle stops the loop when dropped.
    pub fn start_broker(&self, endpoints: Vec<Endpoint>, rack: Option<String>) -> BrokerHandle {
        let (tx, rx) = watch::channel(None);
        let last_ack_ms = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let catch_up_index = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let acked = last_ack_ms.clone();
        let catch_up = catch_up_index.clone();
        let registered_at = catch_up_index.clone();
        let catch_up_store =
            move |index: u64| registered_at.store(index, std::sync::atomic::Ordering::SeqCst);
        let session_ms = self.inner.config.controller.session_timeout_ms;
        // Records an acknowledgement sent at `sent` that saw the log at `index`.
        let ack = move |sent: u64, index: u64| {
            use std::sync::atomic::Ordering::SeqCst;
            let prev = acked.load(SeqCst);
            if prev == u64::MAX || sent.saturating_sub(prev) >= session_ms {
                catch_up.store(index, SeqCst);
            }
            acked.store(sent, SeqCst);
        };
        let n = self.clone();
        let task = self.inner.runtime.spawn(async move {
            let clock = n.inner.config.clock.clone();
            let incarnation = Uuid::new_v4();
            let broker_id = n.inner.config.node_id;
            let interval = Duration::from_millis(n.inner.config.controller.heartbeat_interval_ms);
            let mut epoch = None;
            loop {
                match epoch {
                    None => {
                        let cmd = Command::RegisterBroker {
                            broker_id,
                            incarnation,
                            endpoints: endpoints.clone(),
                            rack: rack.clone(),
                            controller_addr: n.inner.config.controller_addr.clone(),
                        };
                        let sent = clock.now_ms();
                        if let Ok(Reply::Registered {
                            broker_epoch,
                            metadata_index,
                        }) = n.propose_loop(cmd, interval * 4).await
                        {
                            // A new registration always catches up first.
                            catch_up_store(metadata_index);
                            ack(sent, metadata_index);
                            epoch = Some(broker_epoch);
                            tx.send_replace(epoch);
                            continue;
                        }
                    }
                    Some(broker_epoch) => {
                        let cmd = Command::Heartbeat {
                            broker_id,
                            broker_epoch,
                        };
                        let sent = clock.now_ms();
                        match n.propose_loop(cmd, interval * 2).await {
                            Ok(Reply::Heartbeat { metadata_index, .. }) => {
                                ack(sent, metadata_index)
                            }
                            Ok(_) => {}
                            Err(MetaError::StaleBrokerEpoch) => {
                                epoch = None;
                                tx.send_replace(None);
                                continue;
                            }
                            Err(_) => {}
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        BrokerHandle {
            epoch: rx,
            last_ack_ms,
            catch_up_index,
            clock: self.inner.config.clock.clone(),
            session_timeout_ms: self.inner.config.controller.session_timeout_ms,
            task,
        }
    }

    /// Stops the node's tasks and Raft.
    pub async fn shutdown(&self) {
        for t in self.inner.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }

    async fn propose_loop(&self, cmd: Command, limit: Duration) -> Result<Reply, MetaError> {
        let deadline = tokio::time::Instant::now() + limit;
        let voters: Vec<u64> = self.inner.config.voters.keys().map(|v| *v as u64).collect();
        let broker_only = !self
            .inner
            .config
            .voters
            .contains_key(&self.inner.config.node_id);
        retrying(deadline, Duration::from_millis(20), |attempt| {
            let cmd = cmd.clone();
            let voters = &voters;
            async move {
                let leader = self.inner.raft.metrics().borrow().current_leader;
                match leader {
                    Some(l) if l == self.inner.id => {
                        tokio::time::timeout_at(deadline, self.propose_local(&cmd))
                            .await
                            .unwrap_or(Err(MetaError::RequestTimedOut))
                    }
                    // A forward to a leader that hangs (paused, cut off) is abandoned as soon
                    // as this node sees another leader or an election, not at the deadline.
                    Some(l) => {
                        let forward = LinkRequest::Forward(cmd);
                        let call = self.call(l, &forward, deadline);
                        tokio::select! {
                            r = call => match r {
                                Ok(LinkResponse::Forward(r)) => r,
                                _ => Err(MetaError::NotController),
                            },
                            _ = self.leader_changes_from(l) => Err(MetaError::NotController),
                        }
                    }
                    // Not a voter and no leader known yet: ask the voters in turn to relay.
                    None if broker_only && !voters.is_empty() => {
                        let to = voters[attempt % voters.len()];
                        match self.call(to, &LinkRequest::Relay(cmd), deadline).await {
                            Ok(LinkResponse::Forward(r)) => r,
                            _ => Err(MetaError::NotController),
                        }
                    }
                    None => Err(MetaError::NotController),
                }
            }
        })
        .await
    }

    /// Completes when this node's view of the Raft leader is no longer `leader`.
    async fn leader_changes_from(&self, leader: u64) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Calls voter `to` over the controller link before `deadline`.
    async fn call(
        &self,
        to: u64,
        req: &LinkRequest,
        deadline: tokio::time::Instant,
    ) -> Result<LinkResponse, CallError> {
        let addr = self
            .inner
            .config
            .voters
            .get(&(to as BrokerId))
            .cloned()
            .ok_or_else(|| CallError::Unreachable(io::Error::other("not a voter")))?;
        let pooled = self
            .inner
            .clients
            .lock()
            .expect("clients lock")
            .get_mut(&to)
            .and_then(|v| v.pop());
        let mut client = pooled.unwrap_or_else(|| LinkClient::new(addr));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = client.call(req, left.max(Duration::from_millis(1))).await;
        if r.is_ok() {
            self.inner
                .clients
                .lock()
                .expect("clients lock")
                .entry(to)
                .or_default()
                .push(client);
        }
        r
    }

    /// Runs `f` with the active controller of the current term, starting one (after the
    /// state machine caught up with the commit index) when the term changed.
    async fn with_controller<T>(
        &self,
        f: impl FnOnce(
            &mut Controller,
            &MetadataImage,
        ) -> Result<(T, Vec<crate::MetaRecord>), MetaError>,
    ) -> Result<(T, u64), MetaError> {
        let mut guard = self.inner.controller.lock().await;
        let (leader, term) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.inner.id) {
            *guard = None;
            return Err(MetaError::NotController);
        }
        if guard.as_ref().map(|(t, _)| *t) != Some(term) {
            self.inner
                .raft
                .ensure_linearizable()
                .await
                .map_err(|_| MetaError::NotController)?;
            *guard = Some((term, Controller::new(self.inner.config.controller.clone())));
            let end = self
                .inner
                .raft
                .metrics()
                .borrow()
                .last_log_index
                .unwrap_or(0);
            *self.inner.term_start.lock().expect("term lock") =
                Some((term, tokio::time::Instant::now(), end));
        }
        let ctl = &mut guard.as_mut().expect("set above").1;
        let image = self.inner.image.borrow().clone();
        let (out, records) = f(ctl, &image)?;
        let mut index = image.applied_index;
        if !records.is_empty() {
            // If this commit times out (the caller drops this future) it may still go through
            // later; `decided_at` makes the quorum refuse it if anything was applied since.
            let batch = RecordBatch::decided_at(records, image.applied_index);
            match self.inner.raft.client_write(batch).await {
                Ok(resp) if resp.data.stale => {
                    *guard = None;
                    return Err(MetaError::NotController);
                }
                Ok(resp) => {
                    if let Some(e) = resp.data.error {
                        return Err(MetaError::InvalidRequest(e));
                    }
                    index = resp.log_id.index;
                }
                Err(e) => {
                    tracing::debug!("metadata commit failed: {e}");
                    // Decide the next command only after catching up again.
                    *guard = None;
                    return Err(MetaError::NotController);
                }
            }
        }
        Ok((out, index))
    }

    async fn propose_local(&self, cmd: &Command) -> Result<Reply, MetaError> {
        if let Command::RegisterBroker {
            broker_id,
            controller_addr: Some(addr),
            ..
        } = cmd
        {
            self.ensure_learner(*broker_id, addr).await?;
        }
        let now = self.inner.config.clock.now_ms();
        let (reply, index) = self
            .with_controller(|ctl, image| ctl.handle(image, cmd, now, &mut Uuid::new_v4))
            .await?;
        Ok(match reply {
            Reply::Registered { broker_epoch, .. } => Reply::Registered {
                broker_epoch,
                metadata_index: index,
            },
            Reply::Heartbeat { fenced, .. } => Reply::Heartbeat {
                fenced,
                metadata_index: index,
            },
            other => other,
        })
    }

    /// Makes a broker that is not a voter a Raft learner (once), so that it gets the log.
    async fn ensure_learner(&self, broker_id: BrokerId, addr: &str) -> Result<(), MetaError> {
        if broker_id < 0 || self.inner.config.voters.contains_key(&broker_id) {
            return Ok(());
        }
        let id = broker_id as u64;
        let known = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().get_node(&id).cloned()
        };
        if known.is_some_and(|n| n.addr == addr) {
            return Ok(());
        }
        self.inner
            .raft
            .add_learner(id, BasicNode::new(addr), false)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::debug!("add learner {broker_id}: {e}");
                MetaError::NotController
            })
    }

    /// On the active controller: fence expired brokers, elect leaders for offline partitions.
    async fn tick_loop(&self) {
        let every = Duration::from_millis(self.inner.config.controller.heartbeat_interval_ms / 2);
        loop {
            tokio::time::sleep(every.max(Duration::from_millis(10))).await;
            if self.leader_id() != Some(self.inner.config.node_id) {
                continue;
            }
            let now = self.inner.config.clock.now_ms();
            let silent = self.silent_voters();
            let r = tokio::time::timeout(
                self.inner.config.propose_timeout,
                self.with_controller(|ctl, image| {
                    for v in &silent {
                        ctl.expire_unreachable(*v, now);
                    }
                    Ok(((), ctl.tick(image, now)))
                }),
            )
            .await;
            if let Ok(Err(e)) = r {
                tracing::debug!("controller tick: {e}");
            }
        }
    }

    /// Voters that have not acknowledged any entry of this leader's term although the term is
    /// three Raft heartbeats old (a live voter acknowledges within one). Reported once per
    /// term.
    fn silent_voters(&self) -> Vec<BrokerId> {
        let mut ts = self.inner.term_start.lock().expect("term lock");
        let Some((term, started, end)) = *ts else {
            return vec![];
        };
        let m = self.inner.raft.metrics().borrow().clone();
        let grace = Duration::from_millis(3 * self.inner.config.raft_heartbeat_ms);
        if m.current_term != term || started.elapsed() < grace {
            return vec![];
        }
        *ts = None;
        let replication = m.replication.unwrap_or_default();
        self.inner
            .config
            .voters
            .keys()
            .copied()
            .filter(|v| *v as u64 != self.inner.id)
            .filter(|v| {
                let matched = replication.get(&(*v as u64)).cloned().flatten();
                matched.map(|l| l.index).unwrap_or(0) < end
            })
            .collect()
    }

    fn local_quorum(&self) -> Result<QuorumInfo, MetaError> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.inner.id) {
            return Err(MetaError::NotController);
        }
        let end = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let voters = self
            .inner
            .config
            .voters
            .keys()
            .map(|id| {
                let matched = if *id as u64 == self.inner.id {
                    m.last_log_index
                } else {
                    replication
                        .get(&(*id as u64))
                        .cloned()
                        .flatten()
                        .map(|l| l.index)
                };
                VoterState {
                    id: *id,
                    matched_index: matched,
                    lag: matched.map(|i| end.saturating_sub(i)),
                }
            })
            .collect();
        Ok(QuorumInfo {
            leader_id: self.inner.id as BrokerId,
            term: m.current_term,
            log_end_index: end,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            voters,
        })
    }
}
