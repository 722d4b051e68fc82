//! KIP-951: a Produce (v10+) or Fetch (v12+) answer of NOT_LEADER_OR_FOLLOWER or
//! FENCED_LEADER_EPOCH for a partition names its current leader and leader epoch
//! (`current_leader`), and the response carries the endpoints of those leaders
//! (`node_endpoints`, Produce v10+ / Fetch v16+), so a client moves to the new leader
//! without a Metadata round trip. Filled from the applied metadata image, in a cluster only
//! (a single node leads everything).

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{fetch_response, produce_response, BrokerId};
use kafka_protocol::messages::{FetchResponse, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

/// Whether an error code is one the hint is for.
fn moved(code: i16) -> bool {
    code == ResponseError::NotLeaderOrFollower.code()
        || code == ResponseError::FencedLeaderEpoch.code()
}

/// The partition's leader and epoch, if one is known and it is another broker.
fn leader_of(broker: &Broker, topic: &str, partition: i32) -> Option<(i32, i32)> {
    let cluster = broker.cluster()?;
    let view = cluster.partition(topic, partition)?;
    (view.leader >= 0 && view.leader != cluster.broker_id())
        .then_some((view.leader, view.leader_epoch))
}

/// `(id, host, port, rack)` of each broker in `ids` that has an endpoint.
fn endpoints(broker: &Broker, ids: &BTreeSet<i32>) -> Vec<(i32, String, i32, Option<String>)> {
    let Some(cluster) = broker.cluster() else {
        return vec![];
    };
    let image = cluster.image();
    ids.iter()
        .filter_map(|id| {
            let r = &image.brokers.get(id)?.registration;
            let e = r.endpoints.first()?;
            Some((*id, e.host.clone(), i32::from(e.port), r.rack.clone()))
        })
        .collect()
}

pub fn produce(broker: &Broker, mut resp: ProduceResponse, version: i16) -> ProduceResponse {
    if version < 10 || broker.cluster().is_none() {
        return resp;
    }
    let mut leaders = BTreeSet::new();
    for t in &mut resp.responses {
        for p in &mut t.partition_responses {
            if !moved(p.error_code) {
                continue;
            }
            if let Some((leader, epoch)) = leader_of(broker, t.name.as_str(), p.index) {
                p.current_leader = produce_response::LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(epoch);
                leaders.insert(leader);
            }
        }
    }
    resp.node_endpoints = endpoints(broker, &leaders)
        .into_iter()
        .map(|(id, host, port, rack)| {
            produce_response::NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
                .with_rack(rack.map(StrBytes::from_string))
        })
        .collect();
    resp
}

pub fn fetch(broker: &Broker, mut resp: FetchResponse, version: i16) -> FetchResponse {
    if version < 12 || broker.cluster().is_none() {
        return resp;
    }
    let mut leaders = BTreeSet::new();
    for t in &mut resp.responses {
        let name = if version >= 13 {
            match broker.topic_by_id(t.topic_id) {
                Some(topic) => topic.name.clone(),
                None => continue,
            }
        } else {
            t.topic.to_string()
        };
        for p in &mut t.partitions {
            if !moved(p.error_code) {
                continue;
            }
            if let Some((leader, epoch)) = leader_of(broker, &name, p.partition_index) {
                p.current_leader = fetch_response::LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(epoch);
                leaders.insert(leader);
            }
        }
    }
    if version >= 16 {
        resp.node_endpoints = endpoints(broker, &leaders)
            .into_iter()
            .map(|(id, host, port, rack)| {
                fetch_response::NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(StrBytes::from_string(host))
                    .with_port(port)
                    .with_rack(rack.map(StrBytes::from_string))
            })
            .collect();
    }
    resp
}
