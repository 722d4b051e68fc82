//! DescribeQuorum (API 55): the metadata quorum as its leader sees it: the leader, its Raft
//! term (the quorum's leader epoch), the commit point, and per voter how far it has the log.
//! Log positions are given as offsets past the last entry (`index + 1`), as KRaft reports
//! log end offsets; brokers that are not voters are listed as observers.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};

use super::sb;
use crate::broker::Broker;

/// The metadata log's name, as KRaft calls it.
const METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn describe_quorum(
    broker: &Arc<Broker>,
    req: DescribeQuorumRequest,
    version: i16,
) -> DescribeQuorumResponse {
    let mut resp = DescribeQuorumResponse::default();
    let asks_metadata_log = req.topics.len() == 1
        && req.topics[0].topic_name.as_str() == METADATA_TOPIC
        && req.topics[0].partitions.len() == 1
        && req.topics[0].partitions[0].partition_index == 0;
    if !asks_metadata_log {
        resp.error_code = ResponseError::InvalidRequest.code();
        resp.error_message = Some(sb("only __cluster_metadata partition 0 has a quorum"));
        return resp;
    }
    let replica = |id: i32, log_end: i64| {
        ReplicaState::default()
            .with_replica_id(BrokerId(id))
            .with_log_end_offset(log_end)
            .with_last_fetch_timestamp(-1)
            .with_last_caught_up_timestamp(-1)
    };
    let mut partition = PartitionData::default().with_partition_index(0);
    match broker.cluster() {
        // A single node is a quorum of one.
        None => {
            let me = broker.config.node_id;
            partition.leader_id = BrokerId(me);
            partition.current_voters = vec![replica(me, 0)];
            if version >= 2 {
                resp.nodes = vec![Node::default()
                    .with_node_id(BrokerId(me))
                    .with_listeners(vec![Listener::default()
                        .with_name(sb("PLAINTEXT"))
                        .with_host(sb(&broker.advertised_host))
                        .with_port(broker.advertised_port as u16)])];
            }
        }
        Some(cluster) => match cluster.node().quorum_info().await {
            Err(e) => {
                partition.error_code = ResponseError::try_from_code(e.code())
                    .unwrap_or(ResponseError::NotController)
                    .code();
                partition.error_message = Some(sb(e.to_string()));
                partition.leader_id = BrokerId(-1);
                partition.leader_epoch = -1;
                partition.high_watermark = -1;
            }
            Ok(q) => {
                partition.leader_id = BrokerId(q.leader_id);
                partition.leader_epoch = i32::try_from(q.term).unwrap_or(i32::MAX);
                partition.high_watermark = q.applied_index as i64 + 1;
                partition.current_voters = q
                    .voters
                    .iter()
                    .map(|v| replica(v.id, v.matched_index.map_or(-1, |i| i as i64 + 1)))
                    .collect();
                let voters = cluster.node().voters();
                partition.observers = cluster
                    .image()
                    .brokers
                    .keys()
                    .filter(|b| !voters.contains_key(b))
                    .map(|b| replica(*b, -1))
                    .collect();
                if version >= 2 {
                    resp.nodes = voters
                        .iter()
                        .filter_map(|(id, addr)| {
                            let (host, port) = addr.rsplit_once(':')?;
                            Some(Node::default().with_node_id(BrokerId(*id)).with_listeners(
                                vec![Listener::default()
                                    .with_name(sb("CONTROLLER"))
                                    .with_host(sb(host))
                                    .with_port(port.parse().ok()?)],
                            ))
                        })
                        .collect();
                }
            }
        },
    }
    resp.topics = vec![TopicData::default()
        .with_topic_name(TopicName(sb(METADATA_TOPIC)))
        .with_partitions(vec![partition])];
    resp
}
