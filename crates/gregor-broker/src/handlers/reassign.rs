//! AlterPartitionReassignments (45) and ListPartitionReassignments (46): moving a
//! partition's replicas. The controller records the target (`Command::AlterReassignments`:
//! adding and removing replicas); the new replicas copy like any follower, and the controller
//! drops the old ones once every target replica is in the ISR (see ARCHITECTURE.md
//! "Replication"). A single node has nothing to move: INVALID_REQUEST.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

fn sb(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

pub async fn alter_partition_reassignments(
    broker: &Arc<Broker>,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let Some(cluster) = broker.cluster() else {
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(sb("a single node has no replicas to move".into())));
    };
    let mut asked = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            asked.push((
                t.name.0.to_string(),
                p.partition_index,
                p.replicas
                    .as_ref()
                    .map(|r| r.iter().map(|b| b.0).collect::<Vec<_>>()),
            ));
        }
    }
    let outcome = cluster
        .propose(gregor_meta::Command::AlterReassignments {
            reassignments: asked.clone(),
        })
        .await;
    let results: Vec<(i16, Option<String>)> = match outcome {
        Ok(gregor_meta::Reply::Reassignments(r)) if r.len() == asked.len() => r
            .into_iter()
            .map(|r| match r {
                Ok(()) => (0, None),
                Err(e) => (e.code(), Some(e.to_string())),
            })
            .collect(),
        Ok(_) => {
            return AlterPartitionReassignmentsResponse::default()
                .with_error_code(ResponseError::UnknownServerError.code())
        }
        Err(e) => {
            return AlterPartitionReassignmentsResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(sb(e.to_string())))
        }
    };
    let mut results = results.into_iter();
    let responses = req
        .topics
        .iter()
        .map(|t| {
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let (code, message) = results.next().unwrap_or((0, None));
                            ReassignablePartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                                .with_error_message(message.map(sb))
                        })
                        .collect(),
                )
        })
        .collect();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

pub fn list_partition_reassignments(
    broker: &Arc<Broker>,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let Some(cluster) = broker.cluster() else {
        return ListPartitionReassignmentsResponse::default();
    };
    let image = cluster.image();
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let wanted = |name: &str, p: i32| match &req.topics {
        None => true,
        Some(ts) => ts
            .iter()
            .any(|t| t.name.0.as_str() == name && t.partition_indexes.contains(&p)),
    };
    let topics = image
        .topics
        .values()
        .filter_map(|t| {
            let partitions: Vec<_> = t
                .partitions
                .values()
                .filter(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
                .filter(|p| wanted(&t.name, p.partition))
                .map(|p| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(p.partition)
                        .with_replicas(ids(&p.replicas))
                        .with_adding_replicas(ids(&p.adding_replicas))
                        .with_removing_replicas(ids(&p.removing_replicas))
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                OngoingTopicReassignment::default()
                    .with_name(TopicName(sb(t.name.clone())))
                    .with_partitions(partitions)
            })
        })
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
