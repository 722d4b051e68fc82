//! The admin client: topics, partitions, configs, offsets and consumer groups.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, IncrementalAlterConfigsRequest, ListGroupsRequest,
    ListOffsetsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::{BrokerInfo, Client};

/// The metadata quorum as DescribeQuorum reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumDescription {
    /// The active controller (Raft leader).
    pub leader_id: i32,
    /// The quorum's leader epoch (Raft term).
    pub leader_epoch: i32,
    /// The commit point of the metadata log (an offset past the last committed entry).
    pub high_watermark: i64,
    /// `(id, log end offset)` of each voter (-1: unknown).
    pub voters: Vec<(i32, i64)>,
    /// `(id, log end offset)` of brokers that are not voters.
    pub observers: Vec<(i32, i64)>,
}
use crate::error::{check, Error, Result};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

/// One partition's outcome of [`Admin::elect_leaders`] / [`Admin::alter_reassignments`]:
/// `(topic, partition, error code, error message)`.
pub type PartitionOutcome = (String, i32, i16, Option<String>);

/// A reassignment in progress (ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OngoingReassignment {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The replicas now: the target plus those being removed.
    pub replicas: Vec<i32>,
    /// Replicas being added (copying).
    pub adding: Vec<i32>,
    /// Replicas dropped once the target is in the ISR.
    pub removing: Vec<i32>,
}

/// One partition of a log dir (DescribeLogDirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDirPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Bytes of the partition's log on disk.
    pub size: i64,
    /// High watermark minus the replica's log end (0 if not behind).
    pub offset_lag: i64,
}

/// One log dir of a broker (DescribeLogDirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDir {
    /// The directory's path on the broker.
    pub path: String,
    /// Its error (0: none).
    pub error_code: i16,
    /// Every partition with a replica there.
    pub partitions: Vec<LogDirPartition>,
}

/// Which offset [`Admin::list_offsets`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (high watermark).
    Latest,
    /// The first offset whose timestamp is >= this (ms); the end offset if none.
    Timestamp(i64),
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partition count (-1: broker default).
    pub partitions: i32,
    /// Replication factor (-1: broker default).
    pub replication_factor: i16,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// One config entry as described by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Name.
    pub name: String,
    /// Value (`None` for sensitive or unset values).
    pub value: Option<String>,
    /// True if the value is the default (not overridden).
    pub is_default: bool,
    /// Read only?
    pub read_only: bool,
}

/// An incremental config change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set `name` to `value`.
    Set(String, String),
    /// Remove the override of `name`.
    Delete(String),
}

/// A group as listed by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// Protocol type (`consumer` for consumer groups).
    pub protocol_type: String,
    /// State (may be empty with old brokers).
    pub state: String,
}

/// A group member.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub host: String,
    /// Assigned partitions (decoded from the consumer protocol assignment).
    pub assignment: Vec<(String, i32)>,
}

/// A described group.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State: Empty, Stable, PreparingRebalance, CompletingRebalance, Dead.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Assignor name.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

/// The admin client.
///
/// ```no_run
/// # async fn f() -> gregor_client::Result<()> {
/// use gregor_client::{Admin, Client, ClientConfig};
/// use gregor_client::admin::NewTopic;
/// let admin = Admin::new(Client::connect(ClientConfig::new("localhost:9092")).await?);
/// admin.create_topics(&[NewTopic { name: "events".into(), partitions: 3,
///     replication_factor: 1, configs: Default::default() }]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// An admin client on `client`.
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where admin requests go: the controller, or when it cannot be reached (it just died
    /// and the metadata still names it) any broker that can: brokers forward admin requests
    /// to the active controller (KIP-590).
    async fn controller(&self) -> Result<i32> {
        let md = self.client.refresh_metadata(Some(&[])).await?;
        let mut candidates: Vec<i32> = md.brokers.keys().copied().collect();
        if let Some(i) = candidates.iter().position(|b| *b == md.controller_id) {
            candidates.swap(0, i);
        }
        let mut last = Error::Protocol("no brokers in metadata".into());
        for id in candidates {
            match self.client.conn(id).await {
                Ok(_) => return Ok(id),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Create topics; fails on the first topic the broker refuses.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(tn(&t.name))
                            .with_num_partitions(t.partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default()
                                            .with_name(s(k))
                                            .with_value(Some(s(v)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp = self.client.send_to(self.controller().await?, &req).await?;
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(Error::kafka(
                    t.error_code,
                    format!("creating topic {}", t.name.0),
                    t.error_message.map(|m| m.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Delete topics by name.
    pub async fn delete_topics(&self, names: &[String]) -> Result<()> {
        let build = |v: i16| {
            let req = DeleteTopicsRequest::default().with_timeout_ms(30_000);
            if v >= 6 {
                req.with_topics(
                    names
                        .iter()
                        .map(|n| DeleteTopicState::default().with_name(Some(tn(n))))
                        .collect(),
                )
            } else {
                req.with_topic_names(names.iter().map(|n| tn(n)).collect())
            }
        };
        let resp = self
            .client
            .conn(self.controller().await?)
            .await?
            .send_built(build)
            .await?;
        for t in resp.responses {
            if t.error_code != 0 {
                return Err(Error::kafka(
                    t.error_code,
                    format!(
                        "deleting topic {}",
                        t.name.map(|n| n.0.to_string()).unwrap_or_default()
                    ),
                    t.error_message.map(|m| m.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Grow `topic` to `count` partitions.
    pub async fn create_partitions(&self, topic: &str, count: i32) -> Result<()> {
        let req = CreatePartitionsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(tn(topic))
                .with_count(count)
                .with_assignments(None)]);
        let resp = self.client.send_to(self.controller().await?, &req).await?;
        for r in resp.results {
            if r.error_code != 0 {
                return Err(Error::kafka(
                    r.error_code,
                    format!("creating partitions for {topic}"),
                    r.error_message.map(|m| m.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Describe the configs of a topic.
    pub async fn describe_topic_configs(&self, topic: &str) -> Result<Vec<ConfigEntry>> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configuration_keys(None),
        ]);
        let resp = self.client.send_any(&req).await?;
        let mut out = Vec::new();
        for r in resp.results {
            if r.error_code != 0 {
                return Err(Error::kafka(
                    r.error_code,
                    format!("describing configs of {topic}"),
                    r.error_message.map(|m| m.to_string()),
                ));
            }
            for c in r.configs {
                out.push(ConfigEntry {
                    name: c.name.to_string(),
                    value: c.value.map(|v| v.to_string()),
                    // config_source 5 = DEFAULT_CONFIG, 4 = STATIC_BROKER_CONFIG.
                    is_default: c.config_source == 5 || c.config_source == 4,
                    read_only: c.read_only,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Apply incremental config changes to a topic.
    pub async fn alter_topic_configs(&self, topic: &str, ops: &[ConfigOp]) -> Result<()> {
        let configs = ops
            .iter()
            .map(|op| match op {
                ConfigOp::Set(k, v) => AlterableConfig::default()
                    .with_name(s(k))
                    .with_config_operation(0)
                    .with_value(Some(s(v))),
                ConfigOp::Delete(k) => AlterableConfig::default()
                    .with_name(s(k))
                    .with_config_operation(1)
                    .with_value(None),
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(configs),
        ]);
        let resp = self.client.send_any(&req).await?;
        for r in resp.responses {
            if r.error_code != 0 {
                return Err(Error::kafka(
                    r.error_code,
                    format!("altering configs of {topic}"),
                    r.error_message.map(|m| m.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Offsets of the given partitions of `topic` (all partitions if empty).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<i32, i64>> {
        let t = self.client.topic_metadata(topic).await?;
        let parts: Vec<i32> = if partitions.is_empty() {
            t.partitions.iter().map(|p| p.id).collect()
        } else {
            partitions.to_vec()
        };
        let ts = match spec {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
        };
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in &parts {
            by_leader
                .entry(self.client.leader(topic, *p).await?)
                .or_default()
                .push(*p);
        }
        let mut out = BTreeMap::new();
        for (leader, ps) in by_leader {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(tn(topic))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(ts)
                            })
                            .collect(),
                    )]);
            let resp = self.client.send_to(leader, &req).await?;
            for t in resp.topics {
                for p in t.partitions {
                    check(p.error_code, || {
                        format!("listing offsets of {topic}/{}", p.partition_index)
                    })?;
                    let mut off = p.offset;
                    if off < 0 {
                        // No record at/after the timestamp: the end of the log.
                        if let OffsetSpec::Timestamp(_) = spec {
                            off = *Box::pin(self.list_offsets(
                                topic,
                                &[p.partition_index],
                                OffsetSpec::Latest,
                            ))
                            .await?
                            .get(&p.partition_index)
                            .unwrap_or(&0);
                        }
                    }
                    out.insert(p.partition_index, off);
                }
            }
        }
        Ok(out)
    }

    /// Brokers, controller and cluster id via DescribeCluster (Metadata if unsupported).
    pub async fn describe_cluster(&self) -> Result<(Option<String>, i32, Vec<BrokerInfo>)> {
        if self
            .client
            .api_versions(ApiKey::DescribeCluster)
            .await?
            .is_some()
        {
            let resp = self
                .client
                .send_any(&DescribeClusterRequest::default())
                .await?;
            check(resp.error_code, || "DescribeCluster".into())?;
            let brokers = resp
                .brokers
                .iter()
                .map(|b| BrokerInfo {
                    id: b.broker_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                })
                .collect();
            return Ok((
                Some(resp.cluster_id.to_string()),
                resp.controller_id.0,
                brokers,
            ));
        }
        let md = self.client.refresh_metadata(Some(&[])).await?;
        Ok((
            md.cluster_id,
            md.controller_id,
            md.brokers.into_values().collect(),
        ))
    }

    /// The metadata quorum (DescribeQuorum), or `None` when the broker does not support it.
    pub async fn describe_quorum(&self) -> Result<Option<QuorumDescription>> {
        use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        if self
            .client
            .api_versions(ApiKey::DescribeQuorum)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let req = kafka_protocol::messages::DescribeQuorumRequest::default().with_topics(vec![
            TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
                .with_partitions(vec![PartitionData::default()]),
        ]);
        let resp = self.client.send_any(&req).await?;
        check(resp.error_code, || "DescribeQuorum".into())?;
        let p = resp
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| Error::Protocol("DescribeQuorum: no partition in the answer".into()))?;
        check(p.error_code, || "DescribeQuorum".into())?;
        let replicas =
            |v: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
                v.iter()
                    .map(|r| (r.replica_id.0, r.log_end_offset))
                    .collect()
            };
        Ok(Some(QuorumDescription {
            leader_id: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            high_watermark: p.high_watermark,
            voters: replicas(&p.current_voters),
            observers: replicas(&p.observers),
        }))
    }

    /// ElectLeaders: `unclean` false = PREFERRED (0), true = UNCLEAN (1); `partitions`
    /// `None` = every partition (the broker then leaves out those needing no election).
    pub async fn elect_leaders(
        &self,
        unclean: bool,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<Vec<PartitionOutcome>> {
        use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
        let topics = partitions.map(|ps| {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (t, p) in ps {
                by_topic.entry(t).or_default().push(*p);
            }
            by_topic
                .into_iter()
                .map(|(t, p)| {
                    TopicPartitions::default()
                        .with_topic(tn(t))
                        .with_partitions(p)
                })
                .collect()
        });
        let req = kafka_protocol::messages::ElectLeadersRequest::default()
            .with_election_type(i8::from(unclean))
            .with_topic_partitions(topics)
            .with_timeout_ms(30_000);
        let conn = self.client.conn(self.controller().await?).await?;
        if unclean && conn.version_for(ApiKey::ElectLeaders)? < 1 {
            return Err(Error::Protocol(
                "the broker's ElectLeaders has no unclean elections (v0)".into(),
            ));
        }
        let resp = conn.send(&req).await?;
        check(resp.error_code, || "ElectLeaders".into())?;
        Ok(resp
            .replica_election_results
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.0.to_string();
                t.partition_result.into_iter().map(move |p| {
                    (
                        topic.clone(),
                        p.partition_id,
                        p.error_code,
                        p.error_message.map(|m| m.to_string()),
                    )
                })
            })
            .collect())
    }

    /// AlterPartitionReassignments: per partition the target replicas (`None`: cancel).
    pub async fn alter_reassignments(
        &self,
        changes: &[(String, i32, Option<Vec<i32>>)],
    ) -> Result<Vec<PartitionOutcome>> {
        use kafka_protocol::messages::alter_partition_reassignments_request::{
            ReassignablePartition, ReassignableTopic,
        };
        let mut by_topic: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
        for (t, p, r) in changes {
            by_topic.entry(t).or_default().push(
                ReassignablePartition::default()
                    .with_partition_index(*p)
                    .with_replicas(r.as_ref().map(|r| r.iter().map(|b| BrokerId(*b)).collect())),
            );
        }
        let req = kafka_protocol::messages::AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, p)| {
                        ReassignableTopic::default()
                            .with_name(tn(t))
                            .with_partitions(p)
                    })
                    .collect(),
            );
        let resp = self.client.send_to(self.controller().await?, &req).await?;
        check(resp.error_code, || {
            format!(
                "AlterPartitionReassignments: {}",
                resp.error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            )
        })?;
        Ok(resp
            .responses
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| {
                    (
                        topic.clone(),
                        p.partition_index,
                        p.error_code,
                        p.error_message.map(|m| m.to_string()),
                    )
                })
            })
            .collect())
    }

    /// ListPartitionReassignments of every partition.
    pub async fn list_reassignments(&self) -> Result<Vec<OngoingReassignment>> {
        let req = kafka_protocol::messages::ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(None);
        let resp = self.client.send_to(self.controller().await?, &req).await?;
        check(resp.error_code, || "ListPartitionReassignments".into())?;
        let ids = |v: Vec<BrokerId>| v.into_iter().map(|b| b.0).collect::<Vec<_>>();
        Ok(resp
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| OngoingReassignment {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    replicas: ids(p.replicas),
                    adding: ids(p.adding_replicas),
                    removing: ids(p.removing_replicas),
                })
            })
            .collect())
    }

    /// DescribeLogDirs of broker `broker_id`: its log dirs and every partition's size.
    pub async fn describe_log_dirs(&self, broker_id: i32) -> Result<Vec<LogDir>> {
        let req = kafka_protocol::messages::DescribeLogDirsRequest::default().with_topics(None);
        let resp = self.client.send_to(broker_id, &req).await?;
        check(resp.error_code, || "DescribeLogDirs".into())?;
        Ok(resp
            .results
            .into_iter()
            .map(|d| LogDir {
                path: d.log_dir.to_string(),
                error_code: d.error_code,
                partitions: d
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.name.0.to_string();
                        t.partitions.into_iter().map(move |p| LogDirPartition {
                            topic: topic.clone(),
                            partition: p.partition_index,
                            size: p.partition_size,
                            offset_lag: p.offset_lag,
                        })
                    })
                    .collect(),
            })
            .collect())
    }

    /// The coordinator broker of `group` (FindCoordinator), as a node id registered in the
    /// client's metadata.
    pub async fn find_coordinator(&self, group: &str) -> Result<i32> {
        find_coordinator(&self.client, group).await
    }

    /// List groups on every broker.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let md = self.client.refresh_metadata(Some(&[])).await?;
        let mut out = Vec::new();
        for id in md.brokers.keys() {
            let resp = self
                .client
                .send_to(*id, &ListGroupsRequest::default())
                .await?;
            check(resp.error_code, || "ListGroups".into())?;
            for g in resp.groups {
                out.push(GroupListing {
                    group_id: g.group_id.0.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                    state: g.group_state.to_string(),
                });
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(out)
    }

    /// Describe a group (members and their assignments).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let coord = self.find_coordinator(group).await?;
        let resp = self
            .client
            .send_to(
                coord,
                &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
            )
            .await?;
        let g = resp
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol("empty DescribeGroups response".into()))?;
        if g.error_code != 0 {
            return Err(Error::kafka(
                g.error_code,
                format!("describing group {group}"),
                g.error_message.map(|m| m.to_string()),
            ));
        }
        let members = g
            .members
            .into_iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment: crate::group::decode_assignment(m.member_assignment)
                    .unwrap_or_default(),
            })
            .collect();
        Ok(GroupDescription {
            group_id: group.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members,
        })
    }

    /// Delete groups (they must be empty).
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let coord = self.find_coordinator(group).await?;
        let resp = self
            .client
            .send_to(
                coord,
                &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
            )
            .await?;
        for r in resp.results {
            check(r.error_code, || format!("deleting group {group}"))?;
        }
        Ok(())
    }

    /// Committed offsets of `group` (all topics if `topics` is `None`). Partitions without
    /// a committed offset are left out.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        fetch_offsets(&self.client, group, topics, "admin").await
    }

    /// Commit offsets for `group` outside any generation (the group must be empty).
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<()> {
        commit_offsets(&self.client, group, -1, "", offsets, "admin").await
    }
}

pub(crate) async fn find_coordinator(client: &Client, group: &str) -> Result<i32> {
    let mut last = None;
    for attempt in 0..20 {
        let resp = client
            .send_any(
                &FindCoordinatorRequest::default()
                    .with_key(s(group))
                    .with_key_type(0),
            )
            .await?;
        if resp.error_code == 0 {
            let id = resp.node_id.0;
            if !client.metadata().brokers.contains_key(&id) {
                client.refresh_metadata(Some(&[])).await?;
            }
            return Ok(id);
        }
        let e = Error::kafka(
            resp.error_code,
            format!("finding the coordinator of group {group}"),
            resp.error_message.map(|m| m.to_string()),
        );
        if !e.is_retriable() {
            return Err(e);
        }
        last = Some(e);
        tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
    }
    Err(last.unwrap())
}

pub(crate) async fn fetch_offsets(
    client: &Client,
    group: &str,
    topics: Option<&[String]>,
    tag: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    let coord = find_coordinator(client, group).await?;
    let mut req_topics = None;
    if let Some(ts) = topics {
        let mut v = Vec::new();
        for t in ts {
            let md = client.topic_metadata(t).await?;
            v.push(
                OffsetFetchRequestTopic::default()
                    .with_name(tn(t))
                    .with_partition_indexes(md.partitions.iter().map(|p| p.id).collect()),
            );
        }
        req_topics = Some(v);
    }
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(req_topics);
    let resp = client.conn_tagged(coord, tag).await?.send(&req).await?;
    check(resp.error_code, || {
        format!("fetching offsets of group {group}")
    })?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, || {
                format!("fetching offset of {}/{}", t.name.0, p.partition_index)
            })?;
            if p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

pub(crate) async fn commit_offsets(
    client: &Client,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &BTreeMap<(String, i32), i64>,
    tag: &str,
) -> Result<()> {
    let coord = find_coordinator(client, group).await?;
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        topics.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(-1),
        );
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member_id))
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(tn(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let resp = client.conn_tagged(coord, tag).await?.send(&req).await?;
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, || {
                format!(
                    "committing offset of {}/{} for group {group}",
                    t.name.0, p.partition_index
                )
            })?;
        }
    }
    Ok(())
}
