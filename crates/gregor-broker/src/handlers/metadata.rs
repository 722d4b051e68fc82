//! Metadata and DescribeCluster: who leads what, and how to reach the broker.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, MetadataRequest, MetadataResponse, TopicName,
};

use super::sb;
use crate::state::{Broker, Topic};

pub fn metadata(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(broker.config.node_id);
    let mut resp = MetadataResponse::default();
    resp.brokers = vec![MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(sb(&broker.advertised_host))
        .with_port(broker.advertised_port)];
    resp.cluster_id = Some(sb(&broker.cluster_id));
    resp.controller_id = node;
    resp.cluster_authorized_operations = i32::MIN;
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    // v4+ lets the client forbid auto-creation; before v4 it is always allowed.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    resp.topics = match requested {
        None => broker
            .all_topics()
            .iter()
            .map(|t| topic_metadata(broker, t))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| match (t.name, t.topic_id) {
                (Some(name), _) => match broker.get_or_auto_create(&name, allow_create) {
                    Ok(topic) => topic_metadata(broker, &topic),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(name))
                        .with_error_code(e.code.code()),
                },
                (None, id) => match broker.topic_by_id(id) {
                    Some(topic) => topic_metadata(broker, &topic),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                },
            })
            .collect(),
    };
    resp
}

fn topic_metadata(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(&topic.name))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name.starts_with("__"))
        .with_topic_authorized_operations(i32::MIN)
        .with_partitions(
            topic
                .partitions
                .iter()
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p.index)
                        .with_leader_id(node)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}

pub fn describe_cluster(broker: &Arc<Broker>) -> DescribeClusterResponse {
    let node = BrokerId(broker.config.node_id);
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = sb(&broker.cluster_id);
    resp.controller_id = node;
    resp.endpoint_type = 1;
    resp.cluster_authorized_operations = i32::MIN;
    resp.brokers = vec![DescribeClusterBroker::default()
        .with_broker_id(node)
        .with_host(sb(&broker.advertised_host))
        .with_port(broker.advertised_port)];
    resp
}
