//! ElectLeaders (43): preferred or unclean leader elections, decided by the controller
//! (`gregor_meta::Command::ElectLeaders`, Kafka's rules: see `gregor-meta`'s `elect_one`)
//! and answered once this broker applied the result, so that its Metadata shows the new
//! leaders. A single node leads every partition already: ELECTION_NOT_NEEDED.

use std::sync::Arc;
use std::time::Duration;

use gregor_meta::{Command, ElectionType, MetaError, Reply, NO_LEADER};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

type Outcome = (String, i32, Result<(), MetaError>);

/// v0 has no top-level error code: errors go to every partition asked.
pub async fn elect_leaders(
    broker: &Arc<Broker>,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let failed = |e: MetaError| {
        let per_partition = asked(&req)
            .unwrap_or_default()
            .into_iter()
            .map(|(t, p)| (t, p, Err(e.clone())))
            .collect();
        let r =
            ElectLeadersResponse::default().with_replica_election_results(results(per_partition));
        if version >= 1 {
            r.with_error_code(e.code())
        } else {
            r
        }
    };
    let kind = match req.election_type {
        0 => ElectionType::Preferred,
        1 => ElectionType::Unclean,
        other => {
            return failed(MetaError::InvalidRequest(format!(
                "unknown election type {other}"
            )))
        }
    };
    let partitions = asked(&req);
    let outcomes: Vec<Outcome> = match broker.cluster() {
        None => {
            let all = partitions.clone().unwrap_or_default();
            all.into_iter()
                .map(|(t, p)| {
                    let known = broker
                        .topic(&t)
                        .is_some_and(|topic| p >= 0 && (p as usize) < topic.partitions.len());
                    let r = if known {
                        Err(MetaError::ElectionNotNeeded)
                    } else {
                        Err(MetaError::UnknownTopicOrPartition)
                    };
                    (t, p, r)
                })
                .collect()
        }
        Some(cluster) => {
            let reply = cluster
                .propose(Command::ElectLeaders {
                    election_type: kind,
                    partitions,
                })
                .await;
            match reply {
                Ok(Reply::Elections(v)) => {
                    // Answer once this broker's Metadata shows the elected leaders.
                    let elected: Vec<(String, i32)> = v
                        .iter()
                        .filter(|(_, _, r)| r.is_ok())
                        .map(|(t, p, _)| (t.clone(), *p))
                        .collect();
                    let limit = Duration::from_millis(req.timeout_ms.clamp(100, 30_000) as u64);
                    cluster
                        .wait_applied(limit, |image| {
                            elected.iter().all(|(t, p)| {
                                image
                                    .topic_by_name(t)
                                    .and_then(|t| t.partitions.get(p))
                                    .is_some_and(|p| match kind {
                                        ElectionType::Preferred => p.leader == p.replicas[0],
                                        ElectionType::Unclean => p.leader != NO_LEADER,
                                    })
                            })
                        })
                        .await;
                    v
                }
                Ok(_) => return failed(MetaError::InvalidRequest("unexpected reply".into())),
                Err(e) => return failed(e),
            }
        }
    };
    ElectLeadersResponse::default().with_replica_election_results(results(outcomes))
}

/// The partitions asked, `None` for all.
fn asked(req: &ElectLeadersRequest) -> Option<Vec<(String, i32)>> {
    req.topic_partitions.as_ref().map(|ts| {
        ts.iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
            .collect()
    })
}

/// Outcomes grouped by topic, in the order first seen.
fn results(outcomes: Vec<Outcome>) -> Vec<ReplicaElectionResult> {
    let mut out: Vec<ReplicaElectionResult> = vec![];
    for (topic, partition, r) in outcomes {
        let (code, message) = match r {
            Ok(()) => (0, None),
            Err(e) => (e.code(), Some(StrBytes::from_string(e.to_string()))),
        };
        let pr = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code)
            .with_error_message(message);
        match out.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(t) => t.partition_result.push(pr),
            None => out.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(StrBytes::from_string(topic)))
                    .with_partition_result(vec![pr]),
            ),
        }
    }
    out
}
