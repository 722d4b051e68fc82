//! Consumer group APIs (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups and
//! OffsetDelete.
//!
//! These functions translate between the wire messages (and their per-version fields) and
//! `gregor_group`'s version-free requests; the protocol logic lives in `gregor_group` and the
//! I/O (records, fsync, waiting) in [`crate::groups`]. Fields a version lacks are left at
//! their defaults so every advertised version encodes.

use std::sync::Arc;

use gregor_group::{
    CommitPartition, CommitRequest, Completion, JoinRequest, JoinResponse, SyncRequest,
    SyncResponse,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as WireCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    delete_groups_response::DeletableGroupResult, BrokerId, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};

use super::sb;
use super::RequestContext;
use crate::broker::Broker;
use crate::groups::GroupService;
use crate::internal_topics::{OFFSETS_TOPIC, TXN_TOPIC};
use kafka_protocol::protocol::StrBytes;

const NOT_AVAILABLE: ResponseError = ResponseError::CoordinatorNotAvailable;

fn service(broker: &Arc<Broker>) -> Option<&Arc<GroupService>> {
    broker.groups()
}

/// The group coordinator, if this broker coordinates `group_id`: in a cluster, the one that
/// leads the group's partition of `__consumer_offsets` (NOT_COORDINATOR elsewhere, so that
/// the client looks it up again).
pub(super) fn coordinator<'a>(
    broker: &'a Arc<Broker>,
    group_id: &str,
) -> Result<&'a Arc<GroupService>, ResponseError> {
    let svc = service(broker).ok_or(NOT_AVAILABLE)?;
    if broker.cluster().is_some()
        && broker
            .check_leader(OFFSETS_TOPIC, svc.partition_for(group_id))
            .is_err()
    {
        return Err(ResponseError::NotCoordinator);
    }
    Ok(svc)
}

fn topic_exists(broker: &Broker, topic: &str, partition: i32) -> bool {
    broker
        .topic(topic)
        .is_some_and(|t| t.partition(partition).is_some())
}

// ------------------------------------------------------------------ FindCoordinator

pub fn find_coordinator(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let (own_host, own_port) = ctx.endpoint(broker);
    // A single node coordinates every group and transactional id; in a cluster the
    // coordinator of a key is the leader of its partition of the internal topic.
    let locate = |key: &str| -> Result<(BrokerId, StrBytes, i32), (ResponseError, String)> {
        let (started, topic, partition_of): (bool, &str, fn(&str, i32) -> i32) = match req.key_type
        {
            0 => (
                service(broker).is_some(),
                OFFSETS_TOPIC,
                gregor_group::group_partition,
            ),
            1 => (
                broker.txns().is_some(),
                TXN_TOPIC,
                gregor_txn::coordinator::txn_partition,
            ),
            _ => return Err((ResponseError::InvalidRequest, "unknown key type".into())),
        };
        if !started {
            return Err((NOT_AVAILABLE, "coordinator not started".into()));
        }
        let Some(cluster) = broker.cluster() else {
            return Ok((
                BrokerId(broker.config.node_id),
                sb(own_host.clone()),
                own_port,
            ));
        };
        let image = cluster.image();
        let not_available = || (NOT_AVAILABLE, format!("no leader for {topic} yet"));
        let t = image.topic_by_name(topic).ok_or_else(not_available)?;
        let p = partition_of(key, t.partitions.len() as i32);
        let leader = t.partitions.get(&p).ok_or_else(not_available)?.leader;
        let endpoint = image
            .brokers
            .get(&leader)
            .filter(|b| !b.fenced)
            .and_then(|b| b.registration.endpoints.first())
            .ok_or_else(not_available)?;
        Ok((
            BrokerId(leader),
            sb(endpoint.host.clone()),
            i32::from(endpoint.port),
        ))
    };
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = WireCoordinator::default().with_key(key.clone());
                match locate(key.as_str()) {
                    Ok((node, host, port)) => c.with_node_id(node).with_host(host).with_port(port),
                    Err((e, msg)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(e.code())
                        .with_error_message(Some(sb(msg))),
                }
            })
            .collect();
        return resp;
    }
    match locate(req.key.as_str()) {
        Err((e, msg)) => {
            resp.error_code = e.code();
            resp.node_id = BrokerId(-1);
            resp.port = -1;
            if version >= 1 {
                resp.error_message = Some(sb(msg));
            }
        }
        Ok((node, host, port)) => {
            resp.node_id = node;
            resp.host = host;
            resp.port = port;
        }
    }
    resp
}

// ------------------------------------------------------------------------ JoinGroup

pub async fn join_group(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let member_id = req.member_id.to_string();
    let svc = match coordinator(broker, req.group_id.as_str()) {
        Ok(svc) => svc,
        Err(e) => return join_response(JoinResponse::error(e, &member_id), version),
    };
    if let Some(reason) = req.reason.as_ref().filter(|_| version >= 8) {
        tracing::debug!(group = %req.group_id.0.as_str(), member = %member_id, reason = %reason.as_str(), "JoinGroup");
    }
    let rebalance_timeout_ms = if version == 0 || req.rebalance_timeout_ms <= 0 {
        req.session_timeout_ms
    } else {
        req.rebalance_timeout_ms
    };
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: member_id.clone(),
        group_instance_id: if version >= 5 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        },
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let (waiter, rx) = svc.register();
    let now = broker.now_ms();
    let (_, written) = svc.run(|co, fx| co.join_group(now, waiter, join, fx));
    if let Err(e) = written {
        tracing::warn!(error = %e, "group metadata write failed");
    }
    // Waits (asynchronously) for the join phase to end; only this connection waits.
    let result = match rx.await {
        Ok(Completion::Join(r)) => r,
        _ => JoinResponse::error(NOT_AVAILABLE, &member_id),
    };
    join_response(result, version)
}

fn join_response(r: JoinResponse, version: i16) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation_id)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.map(sb)
        } else {
            None
        })
        .with_protocol_name(if version >= 7 {
            r.protocol_name.map(sb)
        } else {
            Some(sb(r.protocol_name.unwrap_or_default()))
        })
        .with_leader(sb(r.leader))
        .with_member_id(sb(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(sb(m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            m.group_instance_id.map(sb)
                        } else {
                            None
                        })
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}

// ------------------------------------------------------------------------ SyncGroup

pub async fn sync_group(
    broker: &Arc<Broker>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let svc = match coordinator(broker, req.group_id.as_str()) {
        Ok(svc) => svc,
        Err(e) => return sync_response(SyncResponse::error(e), version),
    };
    let sync = SyncRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 3 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        },
        protocol_type: if version >= 5 {
            req.protocol_type.map(|s| s.to_string())
        } else {
            None
        },
        protocol_name: if version >= 5 {
            req.protocol_name.map(|s| s.to_string())
        } else {
            None
        },
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let (waiter, rx) = svc.register();
    let now = broker.now_ms();
    let (_, written) = svc.run(|co, fx| co.sync_group(now, waiter, sync, fx));
    if let Err(e) = written {
        tracing::warn!(error = %e, "group metadata write failed");
    }
    let result = match rx.await {
        Ok(Completion::Sync(r)) => r,
        _ => SyncResponse::error(NOT_AVAILABLE),
    };
    sync_response(result, version)
}

fn sync_response(r: SyncResponse, version: i16) -> SyncGroupResponse {
    let mut resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if version >= 5 {
        resp.protocol_type = r.protocol_type.map(sb);
        resp.protocol_name = r.protocol_name.map(sb);
    }
    resp
}

// ------------------------------------------------------------------------ Heartbeat

pub fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
    let svc = match coordinator(broker, req.group_id.as_str()) {
        Ok(svc) => svc,
        Err(e) => return HeartbeatResponse::default().with_error_code(e.code()),
    };
    let instance = if version >= 3 {
        req.group_instance_id.map(|s| s.to_string())
    } else {
        None
    };
    let now = broker.now_ms();
    let (code, _) = svc.run_quiet(|co, _| {
        co.heartbeat(
            now,
            &req.group_id.0,
            &req.member_id,
            instance.as_deref(),
            req.generation_id,
        )
    });
    HeartbeatResponse::default().with_error_code(code)
}

// ----------------------------------------------------------------------- LeaveGroup

pub fn leave_group(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let svc = match coordinator(broker, req.group_id.as_str()) {
        Ok(svc) => svc,
        Err(e) => return LeaveGroupResponse::default().with_error_code(e.code()),
    };
    for m in req.members.iter().filter(|_| version >= 5) {
        if let Some(reason) = &m.reason {
            tracing::debug!(group = %req.group_id.0.as_str(), member = %m.member_id.as_str(), reason = %reason.as_str(), "LeaveGroup");
        }
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let now = broker.now_ms();
    let (result, _) = svc.run(|co, fx| co.leave_group(now, &req.group_id.0, &members, fx));
    let mut resp = LeaveGroupResponse::default();
    match result {
        Err(e) => resp.error_code = e.code(),
        Ok(codes) if version >= 3 => {
            resp.members = members
                .into_iter()
                .zip(codes)
                .map(|((member_id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(sb(member_id))
                        .with_group_instance_id(instance.map(sb))
                        .with_error_code(code)
                })
                .collect();
        }
        Ok(codes) => resp.error_code = codes.first().copied().unwrap_or(0),
    }
    resp
}

// --------------------------------------------------------------------- OffsetCommit

pub async fn offset_commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    // (topic index, partition index, precomputed error)
    let mut commit = CommitRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 7 {
            req.group_instance_id.as_ref().map(|s| s.to_string())
        } else {
            None
        },
        partitions: vec![],
    };
    let mut slots: Vec<(usize, usize, Option<i16>)> = vec![];
    for (ti, t) in req.topics.iter().enumerate() {
        for (pi, p) in t.partitions.iter().enumerate() {
            if topic_exists(broker, &t.name, p.partition_index) {
                slots.push((ti, pi, None));
                commit.partitions.push(CommitPartition {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|s| s.to_string()),
                });
            } else {
                slots.push((ti, pi, Some(ResponseError::UnknownTopicOrPartition.code())));
            }
        }
    }
    let outcome: Result<Vec<i16>, ResponseError> = match coordinator(broker, req.group_id.as_str())
    {
        Err(e) => Err(e),
        Ok(svc) => {
            let now = broker.now_ms();
            let ((result, undo), written) = svc.run_quiet(|co, fx| {
                let result = co.commit_offsets(now, &commit, fx);
                (result, co.take_commit_undo())
            });
            // A commit that did not become durable was refused: take it back, so OffsetFetch
            // never shows an offset whose commit failed (the fault harness saw one that
            // stayed visible until a restart, then reverted).
            let refuse = |what: &str,
                          e: String,
                          undo: Option<gregor_group::CommitUndo>,
                          code: ResponseError| {
                tracing::error!(error = %e, "offset commit {what} failed");
                if let Some(undo) = undo {
                    // An undo writes no record.
                    let ((), nothing) = svc.run_quiet(|co, _| co.undo_commit(undo));
                    debug_assert!(matches!(nothing, Ok(ref w) if w.is_empty()));
                }
                Err(code)
            };
            let storage = ResponseError::KafkaStorageError;
            match (result, written) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => refuse("append", e, undo, storage),
                // Durable (and, in a cluster, on the ISR) before acknowledged.
                (Ok(codes), Ok(written)) => match async {
                    let targets = crate::internal_topics::replication_targets(&written);
                    crate::internal_topics::sync(written)
                        .await
                        .map_err(|e| ("fsync", e, storage))?;
                    crate::internal_topics::replicated(
                        targets,
                        std::time::Duration::from_millis(broker.config.offsets_commit_timeout_ms),
                    )
                    .await
                    .map_err(|code| ("replication", format!("{code:?}"), code))
                }
                .await
                {
                    Ok(()) => {
                        // Durable: OffsetFetch may show it from now on.
                        if let Some(undo) = undo {
                            let ((), nothing) = svc.run_quiet(|co, _| co.confirm_commit(undo));
                            debug_assert!(matches!(nothing, Ok(ref w) if w.is_empty()));
                        }
                        Ok(codes)
                    }
                    Err((what, e, code)) => refuse(what, e, undo, code),
                },
            }
        }
    };
    let mut codes = outcome.as_ref().ok().map(|c| c.iter());
    let mut topics: Vec<OffsetCommitResponseTopic> = req
        .topics
        .iter()
        .map(|t| OffsetCommitResponseTopic::default().with_name(t.name.clone()))
        .collect();
    for (ti, pi, pre) in slots {
        let code = match pre {
            Some(c) => c,
            None => match (&outcome, codes.as_mut()) {
                (Err(e), _) => e.code(),
                (Ok(_), Some(it)) => it.next().copied().unwrap_or(0),
                (Ok(_), None) => 0,
            },
        };
        topics[ti].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(req.topics[ti].partitions[pi].partition_index)
                .with_error_code(code),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------- OffsetFetch

type FetchResult =
    Result<Vec<(String, Vec<(i32, Option<gregor_group::Committed>)>)>, ResponseError>;

fn fetch_group(
    broker: &Arc<Broker>,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> FetchResult {
    coordinator(broker, group_id)?.read(|co| co.fetch_offsets(group_id, topics.as_deref()))
}

pub fn offset_fetch(
    broker: &Arc<Broker>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        resp.groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                let group_id = g.group_id.0.to_string();
                match fetch_group(broker, &g.group_id.0, topics) {
                    Err(e) => out.error_code = e.code(),
                    Ok(found) => {
                        out.topics = found
                            .into_iter()
                            .map(|(t, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(sb(t.clone())))
                                    .with_partitions(
                                        ps.into_iter()
                                            .map(|(p, c)| {
                                                let (offset, epoch, meta) = committed(c);
                                                let r = OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(sb(meta)));
                                                if req.require_stable
                                                    && unstable(broker, &group_id, &t, p)
                                                {
                                                    r.with_committed_offset(-1).with_error_code(
                                                        ResponseError::UnstableOffsetCommit.code(),
                                                    )
                                                } else {
                                                    r
                                                }
                                            })
                                            .collect(),
                                    )
                            })
                            .collect()
                    }
                }
                out
            })
            .collect();
        return resp;
    }
    let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let result = fetch_group(broker, &req.group_id.0, requested.clone());
    let (found, error) = match result {
        Ok(found) => (found, 0),
        Err(e) => (
            // Per-partition errors (v1 has no top-level error code).
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                .collect(),
            e.code(),
        ),
    };
    if version >= 2 {
        resp.error_code = error;
    }
    resp.topics = found
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(sb(t.clone())))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, c)| {
                            let (offset, epoch, meta) = committed(c);
                            let r = OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                                .with_metadata(Some(sb(meta)))
                                .with_error_code(error);
                            if version >= 7
                                && error == 0
                                && req.require_stable
                                && unstable(broker, &req.group_id.0, &t, p)
                            {
                                r.with_committed_offset(-1)
                                    .with_error_code(ResponseError::UnstableOffsetCommit.code())
                            } else {
                                r
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    resp
}

/// A transactional offset commit for this partition awaits its transaction's end.
fn unstable(broker: &Arc<Broker>, group_id: &str, topic: &str, partition: i32) -> bool {
    service(broker)
        .is_some_and(|svc| svc.read(|co| co.has_pending_txn_offset(group_id, topic, partition)))
}

fn committed(c: Option<gregor_group::Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata),
        None => (-1, -1, String::new()),
    }
}

// ------------------------------------------------------------------- DescribeGroups

pub fn describe_groups(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|gid| {
            let mut out = DescribedGroup::default().with_group_id(gid.clone());
            let Some(svc) = service(broker) else {
                out.error_code = NOT_AVAILABLE.code();
                return out;
            };
            let d = svc.read(|co| co.describe_group(&gid.0));
            out.error_code = d.error;
            out.group_state = sb(d.state.name());
            out.protocol_type = sb(d.protocol_type);
            out.protocol_data = sb(d.protocol);
            out.members = d
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(sb(m.member_id))
                        .with_group_instance_id(if version >= 4 {
                            m.group_instance_id.map(sb)
                        } else {
                            None
                        })
                        .with_client_id(sb(m.client_id))
                        .with_client_host(sb(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            out
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

// ----------------------------------------------------------------------- ListGroups

pub fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    let Some(svc) = service(broker) else {
        resp.error_code = NOT_AVAILABLE.code();
        return resp;
    };
    // Every group here is a classic group.
    if version >= 5
        && !req.types_filter.is_empty()
        && !req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"))
    {
        return resp;
    }
    let states: Vec<String> = if version >= 4 {
        req.states_filter.iter().map(|s| s.to_string()).collect()
    } else {
        vec![]
    };
    match svc.read(|co| co.list_groups(&states)) {
        Err(e) => resp.error_code = e.code(),
        Ok(groups) => {
            resp.groups = groups
                .into_iter()
                .map(|g| {
                    let mut l = ListedGroup::default()
                        .with_group_id(GroupId(sb(g.group_id)))
                        .with_protocol_type(sb(g.protocol_type));
                    if version >= 4 {
                        l.group_state = sb(g.state.name());
                    }
                    if version >= 5 {
                        l.group_type = sb("classic");
                    }
                    l
                })
                .collect()
        }
    }
    resp
}

// --------------------------------------------------------------------- DeleteGroups

pub async fn delete_groups(
    broker: &Arc<Broker>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let Some(svc) = service(broker) else {
        let results = req
            .groups_names
            .into_iter()
            .map(|g| {
                DeletableGroupResult::default()
                    .with_group_id(g)
                    .with_error_code(NOT_AVAILABLE.code())
            })
            .collect();
        return DeleteGroupsResponse::default().with_results(results);
    };
    let mut results = Vec::with_capacity(req.groups_names.len());
    let mut to_sync = Vec::new();
    for g in req.groups_names {
        let (code, written) = svc.run(|co, fx| co.delete_group(&g.0, fx));
        let code = match written {
            Ok(w) => {
                to_sync.extend(w);
                code
            }
            Err(_) if code == 0 => ResponseError::KafkaStorageError.code(),
            Err(_) => code,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code),
        );
    }
    if let Err(e) = crate::internal_topics::sync(to_sync).await {
        tracing::error!(error = %e, "fsync after DeleteGroups failed");
        for r in &mut results {
            if r.error_code == 0 {
                r.error_code = ResponseError::KafkaStorageError.code();
            }
        }
    }
    DeleteGroupsResponse::default().with_results(results)
}

// --------------------------------------------------------------------- OffsetDelete

pub async fn offset_delete(broker: &Arc<Broker>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let mut resp = OffsetDeleteResponse::default();
    let Some(svc) = service(broker) else {
        resp.error_code = NOT_AVAILABLE.code();
        return resp;
    };
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let (result, written) = svc.run(|co, fx| co.delete_offsets(&req.group_id.0, &partitions, fx));
    let result = match (result, written) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(_)) => Err(ResponseError::KafkaStorageError),
        (Ok(codes), Ok(w)) => match crate::internal_topics::sync(w).await {
            Ok(()) => Ok(codes),
            Err(_) => Err(ResponseError::KafkaStorageError),
        },
    };
    match result {
        Err(e) => resp.error_code = e.code(),
        Ok(codes) => {
            let mut codes = codes.into_iter();
            resp.topics = req
                .topics
                .iter()
                .map(|t| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let known = topic_exists(broker, &t.name, p.partition_index);
                                    let code = codes.next().unwrap_or(0);
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(if known {
                                            code
                                        } else {
                                            ResponseError::UnknownTopicOrPartition.code()
                                        })
                                })
                                .collect(),
                        )
                })
                .collect();
        }
    }
    resp
}
