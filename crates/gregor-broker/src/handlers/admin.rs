//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs and
//! IncrementalAlterConfigs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use uuid::Uuid;

use super::sb;
use crate::broker::Broker;
use crate::registry::MetaError;
use crate::topic_config::{self, TOPIC_CONFIGS};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub async fn create_topics(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut r = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let validated = (|| {
            if duplicates.contains(t.name.as_str()) {
                return Err(MetaError::new(
                    ResponseError::InvalidRequest,
                    "Create topics request contains the topic more than once",
                ));
            }
            let mut configs = BTreeMap::new();
            for c in &t.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            if t.assignments.is_empty() {
                return Ok((t.num_partitions, t.replication_factor, None, configs));
            }
            if t.num_partitions != -1 || t.replication_factor != -1 {
                return Err(MetaError::new(
                    ResponseError::InvalidRequest,
                    "Both assignments and numPartitions/replicationFactor were set",
                ));
            }
            let node = broker.config.node_id;
            for (i, a) in t.assignments.iter().enumerate() {
                if a.partition_index != i as i32 {
                    return Err(MetaError::new(
                        ResponseError::InvalidReplicaAssignment,
                        "Partitions must be assigned consecutively from 0",
                    ));
                }
                // A cluster's controller checks the brokers named; a single node is the only one.
                if broker.cluster().is_none()
                    && (a.broker_ids.iter().any(|b| b.0 != node) || a.broker_ids.len() != 1)
                {
                    return Err(MetaError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!("Only broker {node} exists"),
                    ));
                }
            }
            let assignments = t
                .assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect();
            Ok((t.assignments.len() as i32, -1, Some(assignments), configs))
        })();
        let outcome = match validated {
            Ok((partitions, replication, assignments, configs)) => {
                broker
                    .create_topic(
                        &t.name,
                        partitions,
                        replication,
                        assignments,
                        configs,
                        req.validate_only,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(topic) => {
                r.topic_id = topic.id;
                r.num_partitions = if req.validate_only {
                    if t.num_partitions == -1 {
                        broker.config.num_partitions
                    } else {
                        t.num_partitions
                    }
                } else {
                    topic.partitions.len() as i32
                };
                r.replication_factor = if req.validate_only {
                    if t.replication_factor == -1 {
                        broker.config.default_replication_factor
                    } else {
                        t.replication_factor
                    }
                } else {
                    broker.replication_factor(&topic.name)
                };
                r.configs = Some(
                    TOPIC_CONFIGS
                        .iter()
                        .map(|d| {
                            let r = topic_config::resolve(&topic.configs, &broker.config, d.name)
                                .expect("known setting");
                            CreatableTopicConfigs::default()
                                .with_name(sb(d.name))
                                .with_value(Some(sb(r.value)))
                                .with_config_source(r.source.code())
                        })
                        .collect(),
                );
            }
            Err(e) => {
                r.error_code = e.code.code();
                r.error_message = Some(sb(e.message));
            }
        }
        topics.push(r);
    }
    CreateTopicsResponse::default().with_topics(topics)
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default().with_topic_id(id);
        let resolved = match &name {
            Some(n) => Ok(n.clone()),
            None => broker
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .ok_or_else(|| {
                    MetaError::new(
                        ResponseError::UnknownTopicId,
                        format!("Topic id {id} not found"),
                    )
                }),
        };
        r.name = name.clone().map(|n| TopicName(sb(n)));
        let outcome = match resolved {
            Ok(n) => broker.delete_topic(&n).await.map(|id| (n, id)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((n, id)) => {
                r.name = Some(TopicName(sb(n)));
                r.topic_id = id;
            }
            Err(e) => {
                r.error_code = e.code.code();
                r.error_message = Some(sb(e.message));
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = match &t.assignments {
            Some(a)
                if broker.cluster().is_none()
                    && a.iter()
                        .any(|x| x.broker_ids.iter().any(|b| b.0 != broker.config.node_id)) =>
            {
                Err(MetaError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("Only broker {} exists", broker.config.node_id),
                ))
            }
            _ => {
                broker
                    .create_partitions(&t.name, t.count, req.validate_only)
                    .await
            }
        };
        if let Err(e) = outcome {
            r.error_code = e.code.code();
            r.error_message = Some(sb(e.message));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub fn describe_configs(
    broker: &Arc<Broker>,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            match res.resource_type {
                RESOURCE_TOPIC => match broker.topic(&res.resource_name) {
                    None => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code();
                        out.error_message = Some(sb(format!(
                            "Topic {} does not exist",
                            res.resource_name.as_str()
                        )));
                    }
                    Some(topic) => {
                        out.configs = TOPIC_CONFIGS
                            .iter()
                            .filter(|d| wanted(d.name))
                            .map(|d| {
                                let r =
                                    topic_config::resolve(&topic.configs, &broker.config, d.name)
                                        .expect("known setting");
                                let mut synonyms = Vec::new();
                                if req.include_synonyms {
                                    if let Some(v) = topic.configs.get(d.name) {
                                        synonyms.push(
                                            DescribeConfigsSynonym::default()
                                                .with_name(sb(d.name))
                                                .with_value(Some(sb(v.clone())))
                                                .with_source(SOURCE_DYNAMIC_TOPIC),
                                        );
                                    }
                                    if let Some((name, v)) = &r.broker {
                                        synonyms.push(
                                            DescribeConfigsSynonym::default()
                                                .with_name(sb(*name))
                                                .with_value(Some(sb(v.clone())))
                                                .with_source(SOURCE_STATIC_BROKER),
                                        );
                                    }
                                    synonyms.push(
                                        DescribeConfigsSynonym::default()
                                            .with_name(sb(d.name))
                                            .with_value(Some(sb(d.default)))
                                            .with_source(SOURCE_DEFAULT),
                                    );
                                }
                                DescribeConfigsResourceResult::default()
                                    .with_name(sb(d.name))
                                    .with_value(Some(sb(r.value)))
                                    .with_config_source(r.source.code())
                                    .with_config_type(d.config_type)
                                    .with_synonyms(synonyms)
                            })
                            .collect();
                    }
                },
                RESOURCE_BROKER => {
                    let advertised = (broker.advertised_host.as_str(), broker.advertised_port);
                    out.configs = broker
                        .config
                        .kafka_settings(advertised)
                        .into_iter()
                        .filter(|s| wanted(s.name))
                        .map(|s| broker_setting_result(s, req.include_synonyms))
                        .collect();
                }
                other => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(sb(format!("Unsupported resource type {other}")));
                }
            }
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A broker setting as Kafka describes it: static (read-only: no setting changes at run time
/// yet) when the file or a flag set it, the default otherwise; synonyms list the value in
/// effect and then the default, in Kafka's order of precedence.
fn broker_setting_result(
    s: crate::config::BrokerSetting,
    include_synonyms: bool,
) -> DescribeConfigsResourceResult {
    let source = if s.value == s.default {
        SOURCE_DEFAULT
    } else {
        SOURCE_STATIC_BROKER
    };
    let mut synonyms = Vec::new();
    if include_synonyms {
        if source == SOURCE_STATIC_BROKER {
            synonyms.push(
                DescribeConfigsSynonym::default()
                    .with_name(sb(s.name))
                    .with_value(Some(sb(s.value.clone())))
                    .with_source(SOURCE_STATIC_BROKER),
            );
        }
        synonyms.push(
            DescribeConfigsSynonym::default()
                .with_name(sb(s.name))
                .with_value(Some(sb(s.default)))
                .with_source(SOURCE_DEFAULT),
        );
    }
    DescribeConfigsResourceResult::default()
        .with_name(sb(s.name))
        .with_value(Some(sb(s.value)))
        .with_read_only(true)
        .with_config_source(source)
        .with_config_type(s.config_type)
        .with_synonyms(synonyms)
}

pub async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let mut out = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let outcome = match res.resource_type {
            RESOURCE_TOPIC => {
                alter_topic(broker, &res.resource_name, &res.configs, req.validate_only).await
            }
            RESOURCE_BROKER => Err(MetaError::new(
                ResponseError::InvalidRequest,
                "Dynamic broker configs are not supported; set them in the broker's config file",
            )),
            other => Err(MetaError::new(
                ResponseError::InvalidRequest,
                format!("Unsupported resource type {other}"),
            )),
        };
        if let Err(e) = outcome {
            out.error_code = e.code.code();
            out.error_message = Some(sb(e.message));
        }
        responses.push(out);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

async fn alter_topic(
    broker: &Arc<Broker>,
    name: &str,
    ops: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
    validate_only: bool,
) -> Result<(), MetaError> {
    let topic = broker
        .topic(name)
        .ok_or_else(|| crate::registry::unknown_topic(name))?;
    let mut configs = topic.configs.clone();
    let invalid = |m: String| MetaError::new(ResponseError::InvalidConfig, m);
    for op in ops {
        let key = op.name.to_string();
        let def = topic_config::lookup(&key)
            .ok_or_else(|| invalid(format!("Unknown topic config name: {key}")))?;
        let value = op.value.as_ref().map(|v| v.to_string());
        match op.config_operation {
            0 => {
                let v = value.ok_or_else(|| invalid(format!("Null value for {key}")))?;
                topic_config::validate(&key, &v).map_err(invalid)?;
                configs.insert(key, v);
            }
            1 => {
                configs.remove(&key);
            }
            2 | 3 => {
                if def.config_type != 7 {
                    return Err(invalid(format!(
                        "{key} is not a list; APPEND/SUBTRACT do not apply"
                    )));
                }
                let current = topic_config::effective(&configs, &key)
                    .unwrap_or("")
                    .to_string();
                let mut items: Vec<String> = current
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                for v in value
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    if op.config_operation == 2 {
                        if !items.iter().any(|i| i == v) {
                            items.push(v.to_string());
                        }
                    } else {
                        items.retain(|i| i != v);
                    }
                }
                let joined = items.join(",");
                topic_config::validate(&key, &joined).map_err(invalid)?;
                configs.insert(key, joined);
            }
            other => return Err(invalid(format!("Unknown config operation {other}"))),
        }
    }
    if validate_only {
        return Ok(());
    }
    broker.set_topic_configs(name, configs).await
}
