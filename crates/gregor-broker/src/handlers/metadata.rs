//! Metadata and DescribeCluster: who leads what, and how to reach the broker.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};

use gregor_meta::{MetadataImage, TopicImage, NO_LEADER};

use super::sb;
use crate::broker::Broker;
use crate::registry::Topic;

/// Kafka's AclOperation codes, as bits of an authorized-operations field.
const fn ops(codes: &[u8]) -> i32 {
    let mut bits = 0;
    let mut i = 0;
    while i < codes.len() {
        bits |= 1 << codes[i];
        i += 1;
    }
    bits
}
/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
const TOPIC_OPERATIONS: i32 = ops(&[3, 4, 5, 6, 7, 8, 10, 11]);
/// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE,
/// (CREATE_TOKENS/DESCRIBE_TOKENS are left out: no token support, and kafka-python rejects them.)
const CLUSTER_OPERATIONS: i32 = ops(&[5, 7, 8, 9, 10, 11, 12]);

pub fn metadata(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let (own_host, own_port) = ctx.endpoint(broker);
    let node = BrokerId(broker.config.node_id);
    let mut resp = MetadataResponse::default();
    let image = broker.cluster().map(|c| c.image());
    match (broker.cluster(), &image) {
        (Some(cluster), Some(image)) => {
            resp.brokers = live_brokers(image)
                .map(|(id, host, port, rack)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(sb(host))
                        .with_port(port)
                        .with_rack(rack.map(sb))
                })
                .collect();
            resp.controller_id = BrokerId(cluster.controller_id());
        }
        _ => {
            resp.brokers = vec![MetadataResponseBroker::default()
                .with_node_id(node)
                .with_host(sb(own_host))
                .with_port(own_port)];
            resp.controller_id = node;
        }
    }
    resp.cluster_id = Some(sb(broker.cluster_id()));
    // Without an authorizer every operation is allowed; Kafka then reports the full set
    // when asked (v8+; the cluster field exists only in v8-v10).
    resp.cluster_authorized_operations =
        if req.include_cluster_authorized_operations && (8..=10).contains(&version) {
            CLUSTER_OPERATIONS
        } else {
            i32::MIN
        };
    let topic_ops = if req.include_topic_authorized_operations && version >= 8 {
        TOPIC_OPERATIONS
    } else {
        i32::MIN
    };
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    // v4+ lets the client forbid auto-creation; before v4 it is always allowed.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    if let Some(image) = image {
        resp.topics = match requested {
            None => image
                .topics
                .values()
                .map(|t| image_topic_metadata(&image, t, topic_ops))
                .collect(),
            Some(topics) => topics
                .into_iter()
                .map(|t| {
                    let found = match &t.name {
                        Some(name) => image.topic_by_name(name),
                        None => image.topics.get(&t.topic_id),
                    };
                    match (found, t.name) {
                        (Some(found), _) => image_topic_metadata(&image, found, topic_ops),
                        (None, Some(name)) => {
                            let code = match broker.get_or_auto_create(&name, allow_create) {
                                Err(e) => e.code,
                                Ok(_) => ResponseError::LeaderNotAvailable,
                            };
                            MetadataResponseTopic::default()
                                .with_name(Some(name))
                                .with_error_code(code.code())
                        }
                        (None, None) => MetadataResponseTopic::default()
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    }
                })
                .collect(),
        };
        return resp;
    }
    resp.topics = match requested {
        None => broker
            .all_topics()
            .iter()
            .map(|t| topic_metadata(broker, t, topic_ops))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| match (t.name, t.topic_id) {
                (Some(name), _) => match broker.get_or_auto_create(&name, allow_create) {
                    Ok(topic) => topic_metadata(broker, &topic, topic_ops),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(name))
                        .with_error_code(e.code.code()),
                },
                (None, id) => match broker.topic_by_id(id) {
                    Some(topic) => topic_metadata(broker, &topic, topic_ops),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                },
            })
            .collect(),
    };
    resp
}

fn topic_metadata(broker: &Broker, topic: &Topic, authorized_ops: i32) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(&topic.name))))
        .with_topic_id(topic.id)
        .with_is_internal(crate::internal_topics::is_internal_topic(&topic.name))
        .with_topic_authorized_operations(authorized_ops)
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

/// The unfenced brokers of the cluster with their client endpoint: id, host, port, rack.
fn live_brokers(
    image: &MetadataImage,
) -> impl Iterator<Item = (i32, String, i32, Option<String>)> + '_ {
    image
        .brokers
        .iter()
        .filter(|(_, b)| !b.fenced)
        .filter_map(|(id, b)| {
            let e = b.registration.endpoints.first()?;
            Some((
                *id,
                e.host.clone(),
                i32::from(e.port),
                b.registration.rack.clone(),
            ))
        })
}

/// A topic's metadata as the cluster's image has it: per partition the leader (-1 with
/// LEADER_NOT_AVAILABLE when it has none), leader epoch, replicas, ISR and the replicas
/// on fenced brokers.
fn image_topic_metadata(
    image: &MetadataImage,
    topic: &TopicImage,
    authorized_ops: i32,
) -> MetadataResponseTopic {
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(&topic.name))))
        .with_topic_id(topic.topic_id)
        .with_is_internal(crate::internal_topics::is_internal_topic(&topic.name))
        .with_topic_authorized_operations(authorized_ops)
        .with_partitions(
            topic
                .partitions
                .values()
                .map(|p| {
                    let offline: Vec<i32> = p
                        .replicas
                        .iter()
                        .copied()
                        .filter(|r| !image.is_live(*r))
                        .collect();
                    let error = if p.leader == NO_LEADER {
                        ResponseError::LeaderNotAvailable.code()
                    } else {
                        0
                    };
                    MetadataResponsePartition::default()
                        .with_error_code(error)
                        .with_partition_index(p.partition)
                        .with_leader_id(BrokerId(p.leader))
                        .with_leader_epoch(p.leader_epoch)
                        .with_replica_nodes(ids(&p.replicas))
                        .with_isr_nodes(ids(&p.isr))
                        .with_offline_replicas(ids(&offline))
                })
                .collect(),
        )
}

/// DescribeCluster endpoint types (v1+): a broker lists brokers; controllers are asked of a
/// controller listener, which answers UNSUPPORTED_ENDPOINT_TYPE on a broker as Kafka does.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn describe_cluster(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: &DescribeClusterRequest,
) -> DescribeClusterResponse {
    let (own_host, own_port) = ctx.endpoint(broker);
    let node = BrokerId(broker.config.node_id);
    let mut resp = DescribeClusterResponse::default();
    if req.endpoint_type != ENDPOINT_TYPE_BROKERS {
        resp.error_code = ResponseError::UnsupportedEndpointType.code();
        resp.error_message = Some(sb("this broker lists brokers only (endpoint type 1)"));
        resp.endpoint_type = req.endpoint_type;
        return resp;
    }
    resp.cluster_id = sb(broker.cluster_id());
    resp.controller_id = node;
    resp.endpoint_type = 1;
    resp.cluster_authorized_operations = i32::MIN;
    resp.brokers = vec![DescribeClusterBroker::default()
        .with_broker_id(node)
        .with_host(sb(own_host))
        .with_port(own_port)];
    if let Some(cluster) = broker.cluster() {
        resp.controller_id = BrokerId(cluster.controller_id());
        resp.brokers = live_brokers(&cluster.image())
            .map(|(id, host, port, rack)| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id))
                    .with_host(sb(host))
                    .with_port(port)
                    .with_rack(rack.map(sb))
            })
            .collect();
    }
    resp
}
