//! DescribeLogDirs (35): this broker's one log dir (`data_dir`) with the size of every
//! partition it holds a replica of (in a cluster: the partitions whose replicas name it in
//! the applied image; on a single node: all). `offset_lag` is Kafka's "high watermark minus
//! log end" of the local log, at least 0 (a follower's high watermark is the leader's,
//! capped by its own log end, so it is 0 on followers too); no future (moving) logs;
//! total/usable bytes unknown (-1).

use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

pub fn describe_log_dirs(
    broker: &Arc<Broker>,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let image = broker.cluster().map(|c| (c.broker_id(), c.image()));
    let wanted = |topic: &str, p: i32| match &req.topics {
        None => true,
        Some(ts) => ts
            .iter()
            .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&p)),
    };
    let mut topics: Vec<DescribeLogDirsTopic> = broker
        .all_topics()
        .iter()
        .filter_map(|t| {
            let partitions: Vec<_> = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| (i as i32, p))
                .filter(|(i, _)| wanted(&t.name, *i))
                .filter(|(i, _)| match &image {
                    None => true,
                    Some((me, image)) => image
                        .topic_by_name(&t.name)
                        .and_then(|t| t.partitions.get(i))
                        .is_some_and(|p| p.replicas.contains(me)),
                })
                .map(|(i, p)| {
                    let offsets = p.offsets();
                    let lag = (offsets.high_watermark - p.log_end_offset()).max(0);
                    DescribeLogDirsPartition::default()
                        .with_partition_index(i)
                        .with_partition_size(p.size_bytes() as i64)
                        .with_offset_lag(lag)
                        .with_is_future_key(false)
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partitions(partitions)
            })
        })
        .collect();
    topics.sort_by(|a, b| a.name.0.cmp(&b.name.0));
    let dir = std::fs::canonicalize(&broker.config.data_dir)
        .unwrap_or_else(|_| broker.config.data_dir.clone());
    DescribeLogDirsResponse::default().with_results(vec![DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_topics(topics)])
}
