//! One handler per API. Each takes the decoded request and returns the response body (or
//! `None` where Kafka sends no response: Produce with acks=0).
//!
//! Handlers never panic on client input and report every problem with the error code the
//! protocol defines, per topic or partition where the response has room for it.

mod admin;
mod fetch;
mod group;
mod metadata;
pub mod produce;
mod producer;
pub mod txn;
mod txn_admin;

use std::sync::Arc;

use gregor_protocol::DecodedRequest;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

/// Routes a request to its handler.
pub async fn handle(broker: &Arc<Broker>, request: DecodedRequest) -> Option<ResponseKind> {
    let version = request.api_version;
    Some(match request.body {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(gregor_protocol::codec::api_versions_body(0))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(broker, r, version)),
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(broker, &r))
        }
        RequestKind::Produce(r) => {
            return produce::produce(broker, r, version)
                .await
                .map(ResponseKind::Produce)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(broker, r, version).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(fetch::list_offsets(broker, r, version))
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(fetch::delete_records(broker, r))
        }
        RequestKind::InitProducerId(r) if r.transactional_id.is_some() => {
            ResponseKind::InitProducerId(txn::init_producer_id(broker, r, version).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producer::init_producer_id(broker, r))
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
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(txn::txn_offset_commit(broker, r, version).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(broker, r, version))
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(broker, r, version))
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(broker, r))
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(broker, r, version))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(admin::incremental_alter_configs(broker, r))
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(group::find_coordinator(broker, r, version))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(group::join_group(broker, &request.header, r, version).await)
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
            return None;
        }
    })
}

/// How many partitions (or, for topic-level APIs, topics) a request names; checked against
/// `max.partitions.per.request` before the request is handled.
pub fn partitions_named(body: &RequestKind) -> usize {
    match body {
        RequestKind::Produce(r) => r.topic_data.iter().map(|t| t.partition_data.len()).sum(),
        RequestKind::Fetch(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::ListOffsets(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
        RequestKind::DeleteRecords(r) => r.topics.iter().map(|t| t.partitions.len()).sum(),
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

pub(crate) fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
