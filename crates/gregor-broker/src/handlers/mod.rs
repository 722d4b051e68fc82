//! One handler per API, reached through [`dispatch`], the only entry point the network
//! layer uses: it takes the decoded request and the connection's [`RequestContext`] and
//! answers [`Response::Now`] (the body, or `None` where Kafka sends no response) or
//! [`Response::Later`] (the request's effects are done in order, e.g. a produce's records
//! are appended, and the answer is a future, e.g. waiting for the fsync). The server knows
//! no API: it runs `dispatch` for each request in order and writes the answers in order.
//!
//! Handlers never panic on client input and report every problem with the error code the
//! protocol defines, per topic or partition where the response has room for it.

mod admin;
mod elect;
mod fetch;
mod group;
mod leader_hints;
mod log_dirs;
mod metadata;
mod offset_for_leader_epoch;
pub mod produce;
mod producer;
mod quorum;
mod reassign;
pub mod txn;
mod txn_admin;
mod txn_markers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gregor_protocol::DecodedRequest;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

/// What a handler knows of where a request came from, passed as a value.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The client's address as Kafka reports it (`/1.2.3.4`); empty outside a connection.
    pub client_host: String,
    /// The `client_id` of the request header (empty if none).
    pub client_id: String,
    /// The API version of the request.
    pub api_version: i16,
}

impl RequestContext {
    /// The context of `request` received from `client_host`.
    pub fn new(client_host: String, request: &DecodedRequest) -> RequestContext {
        RequestContext {
            client_host,
            client_id: request
                .header
                .client_id
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            api_version: request.api_version,
        }
    }
}

/// The answer to a request, now or later. `None` bodies send no response (acks=0).
// Returned once per request and consumed at once: boxing `Now` would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// Handled: the response body.
    Now(Option<ResponseKind>),
    /// The request's effects are done, in request order; the body comes when this future
    /// completes, while the connection goes on with the next requests.
    Later(Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>),
}

impl Response {
    /// Waits for the body.
    pub async fn resolve(self) -> Option<ResponseKind> {
        match self {
            Response::Now(body) => body,
            Response::Later(future) => future.await,
        }
    }
}

/// Handles a request and waits for its answer (tests and tools; the server uses
/// [`dispatch`] and lets later answers wait in its writer).
pub async fn handle(broker: &Arc<Broker>, request: DecodedRequest) -> Option<ResponseKind> {
    let ctx = RequestContext::new(String::new(), &request);
    dispatch(broker, &ctx, request).await.resolve().await
}

/// Routes a request to its handler.
pub async fn dispatch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: DecodedRequest,
) -> Response {
    let version = ctx.api_version;
    debug_assert_eq!(version, request.api_version);
    Response::Now(Some(match request.body {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(gregor_protocol::codec::api_versions_body(0))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(broker, r, version)),
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(broker, &r))
        }
        RequestKind::DescribeQuorum(r) => {
            ResponseKind::DescribeQuorum(quorum::describe_quorum(broker, r, version).await)
        }
        RequestKind::AlterPartitionReassignments(r) => ResponseKind::AlterPartitionReassignments(
            reassign::alter_partition_reassignments(broker, r).await,
        ),
        RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
            reassign::list_partition_reassignments(broker, r),
        ),
        RequestKind::ElectLeaders(r) => {
            ResponseKind::ElectLeaders(elect::elect_leaders(broker, r, version).await)
        }
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(log_dirs::describe_log_dirs(broker, r))
        }
        RequestKind::Produce(r) => {
            // Appended now, in request order; answered once durable.
            let pending = produce::append_phase(broker, r, version);
            let broker = broker.clone();
            return Response::Later(Box::pin(async move {
                pending
                    .finish()
                    .await
                    .map(|r| ResponseKind::Produce(leader_hints::produce(&broker, r, version)))
            }));
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(leader_hints::fetch(
            broker,
            fetch::fetch(broker, r, version).await,
            version,
        )),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(fetch::list_offsets(broker, r, version))
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(fetch::delete_records(broker, r))
        }
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::offset_for_leader_epoch(broker, r),
        ),
        RequestKind::InitProducerId(r) => {
            // In a cluster, producer ids come in blocks from the controller; a failure shows
            // in the allocation below (COORDINATOR_LOAD_IN_PROGRESS, retriable).
            let _ = broker.reserve_producer_ids().await;
            if r.transactional_id.is_some() {
                ResponseKind::InitProducerId(txn::init_producer_id(broker, r, version).await)
            } else {
                ResponseKind::InitProducerId(producer::init_producer_id(broker, r))
            }
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(txn::add_partitions_to_txn(broker, r, version).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(txn::add_offsets_to_txn(broker, r, version).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end_txn(broker, r, version).await),
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(txn_admin::describe_transactions(broker, r))
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(txn_admin::list_transactions(broker, r, version))
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(txn_admin::describe_producers(broker, r))
        }
        RequestKind::WriteTxnMarkers(r) => {
            ResponseKind::WriteTxnMarkers(txn_markers::write_txn_markers(broker, r).await)
        }
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn::txn_offset_commit(broker, r, version).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(broker, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(broker, r, version).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(broker, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(broker, r, version))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(admin::incremental_alter_configs(broker, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(group::find_coordinator(broker, r, version))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(group::join_group(broker, ctx, r, version).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(group::sync_group(broker, r, version).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(group::heartbeat(broker, r, version)),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(group::leave_group(broker, r, version))
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(group::offset_commit(broker, r, version).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(group::offset_fetch(broker, r, version))
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(group::describe_groups(broker, r, version))
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(group::list_groups(broker, r, version))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(group::delete_groups(broker, r, version).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(group::offset_delete(broker, r).await)
        }
        other => {
            // decode_request only lets advertised APIs through, so this is unreachable from
            // the network; fail the request rather than the broker if it ever happens.
            tracing::error!(api = ?std::mem::discriminant(&other), "no handler for advertised API");
            return Response::Now(None);
        }
    }))
}

/// The record batches a request carries (the fuzzers' corpus capture in the server).
pub fn record_batches(body: &RequestKind) -> Vec<&bytes::Bytes> {
    match body {
        RequestKind::Produce(r) => r
            .topic_data
            .iter()
            .flat_map(|t| t.partition_data.iter())
            .filter_map(|p| p.records.as_ref())
            .collect(),
        _ => vec![],
    }
}

/// How many partitions (or, for topic-level APIs, topics) a request names; checked against
/// `max.partitions.per.request` before the request is handled.
pub fn partitions_named(body: &RequestKind) -> usize {
    match body {
        RequestKind::Produce(r) => r.topic_data.iter().map(|t| t.partition_data.len()).sum(),
        RequestKind::Fetch(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::ListOffsets(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::DeleteRecords(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::OffsetForLeaderEpoch(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::Metadata(r) => r.topics.as_ref().map_or(0, Vec::len),
        RequestKind::CreateTopics(r) => r.topics.len(),
        RequestKind::DeleteTopics(r) => r.topics.len() + r.topic_names.len(),
        RequestKind::CreatePartitions(r) => r.topics.len(),
        RequestKind::DescribeConfigs(r) => r.resources.len(),
        RequestKind::IncrementalAlterConfigs(r) => r.resources.len(),
        RequestKind::AddPartitionsToTxn(r) => r
            .v3_and_below_topics
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>()
            .max(r.transactions.len()),
        RequestKind::TxnOffsetCommit(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::DescribeProducers(r) => {
            r.topics.iter().map(|t| t.partition_indexes.len()).sum()
        }
        RequestKind::DescribeTransactions(r) => r.transactional_ids.len(),
        _ => 0,
    }
}

/// Partition `index` of `topic`, if this broker serves it: UNKNOWN_TOPIC_OR_PARTITION when
/// there is no such partition, NOT_LEADER_OR_FOLLOWER when another broker leads it.
pub(crate) fn served_partition<'a>(
    broker: &Broker,
    topic: Option<&'a Arc<crate::registry::Topic>>,
    index: i32,
) -> Result<&'a Arc<crate::partition::Partition>, kafka_protocol::error::ResponseError> {
    use kafka_protocol::error::ResponseError;
    let partition = topic
        .and_then(|t| t.partition(index))
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    broker
        .check_leader(&partition.topic, index)
        .map_err(|_| ResponseError::NotLeaderOrFollower)?;
    Ok(partition)
}

pub(crate) fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
