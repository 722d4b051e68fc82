//! OffsetForLeaderEpoch (API 23; KIP-101, KIP-279, KIP-320): where a leader epoch ended in
//! this leader's log. A follower asks it for its own latest epoch before fetching and
//! truncates its log to the answer; a consumer (KIP-320) asks it for the epoch of its fetch
//! position after a leader change and, if the answer lies below its position, knows the log
//! was truncated under it.
//!
//! Per partition, as Kafka's `Partition.lastOffsetForLeaderEpoch` (with
//! `fetchOnlyFromLeader`, which Kafka's broker always sets for this API, whatever the
//! request's `replica_id`: a follower, `-1` a consumer or `-2` a debugging tool):
//! 1. no such partition: UNKNOWN_TOPIC_OR_PARTITION;
//! 2. `current_leader_epoch` (`-1`: not given, not checked) older than the partition's
//!    leader epoch: FENCED_LEADER_EPOCH; newer: UNKNOWN_LEADER_EPOCH (the asker's metadata
//!    is ahead of ours);
//! 3. not the leader: NOT_LEADER_OR_FOLLOWER;
//! 4. otherwise `(epoch, end offset)` from the partition's leader-epoch cache
//!    ([`gregor_log::LeaderEpochCache::end_offset_for`]): for the latest epoch, the log end
//!    offset; for an older one, the largest epoch `<=` it and the start of the next epoch;
//!    `(-1, -1)` (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`, error NONE) for an epoch above
//!    the latest, for `-1`, or when the cache is empty — Kafka's answer when
//!    `UnifiedLog.endOffsetForEpoch` finds nothing.
//!
//! One departure, for a cache that is behind the metadata: Kafka's leader records its epoch
//! in the cache when it becomes leader (`(epoch, log end offset)`), so asking a Kafka
//! leader for its current epoch always gets `(current epoch, log end offset)`. A Gregor
//! single node leads every partition at epoch 0 (what Metadata advertises) without such an
//! entry, and a freshly elected leader may not have written its entry yet; there the cache
//! answers `(-1, -1)` for the current epoch, which makes librdkafka reset the consumer's
//! position ("No epoch found less or equal to ...", `auto.offset.reset`). So when the cache
//! has nothing for the partition's current leader epoch, the answer is what Kafka's cache
//! would give: `(current epoch, log end offset)`.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::served_partition;
use crate::broker::Broker;

/// Kafka's `RecordBatch.NO_PARTITION_LEADER_EPOCH`: the asker gives no current epoch.
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Kafka's `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET` answer.
const UNDEFINED: (i32, i64) = (
    gregor_log::epoch::UNDEFINED_EPOCH,
    gregor_log::epoch::UNDEFINED_EPOCH_OFFSET,
);

/// The leader epoch Metadata advertises for the partitions of a single node.
const SINGLE_NODE_LEADER_EPOCH: i32 = 0;

pub fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(&t.topic);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = EpochEndOffset::default().with_partition(p.partition);
                    match answer(
                        broker,
                        topic.as_ref(),
                        &t.topic,
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    ) {
                        Ok((epoch, end_offset)) => {
                            r.leader_epoch = epoch;
                            r.end_offset = end_offset;
                        }
                        Err(e) => r.error_code = e.code(),
                    }
                    r
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// The partition's leader epoch as this broker's metadata has it (-1: unknown).
fn current_leader_epoch(broker: &Broker, topic: &str, index: i32) -> i32 {
    match broker.cluster() {
        None => SINGLE_NODE_LEADER_EPOCH,
        Some(c) => c.partition(topic, index).map_or(-1, |p| p.leader_epoch),
    }
}

/// One partition's `(leader epoch, end offset)`, or its error (see the module docs).
fn answer(
    broker: &Broker,
    topic: Option<&Arc<crate::registry::Topic>>,
    name: &str,
    index: i32,
    asker_current_epoch: i32,
    epoch: i32,
) -> Result<(i32, i64), ResponseError> {
    if topic.and_then(|t| t.partition(index)).is_none() {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    let current = current_leader_epoch(broker, name, index);
    if asker_current_epoch != NO_PARTITION_LEADER_EPOCH {
        if asker_current_epoch < current {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        if asker_current_epoch > current {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
    }
    let partition = served_partition(broker, topic, index)?;
    let found = partition.end_offset_for_leader_epoch(epoch);
    if found == UNDEFINED && epoch == current && current >= 0 {
        // The cache has not recorded the current epoch (see the module docs).
        return Ok((current, partition.log_end_offset()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gregor_protocol::batch_builder::BatchBuilder;
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::config::BrokerConfig;

    fn batch(n: i64) -> Bytes {
        BatchBuilder::new()
            .partition_leader_epoch(-1)
            .records((0..n).map(|_| (None, Some(Bytes::from_static(b"v")), 1000)))
            .encode()
            .unwrap()
    }

    fn open(dir: &std::path::Path) -> Arc<Broker> {
        let config = BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        Arc::new(Broker::open(config, ("127.0.0.1".into(), 9092)).unwrap())
    }

    /// `(topic, partition, current_leader_epoch, leader_epoch)` → `(error, epoch, offset)`.
    fn ask(broker: &Arc<Broker>, queries: &[(&str, i32, i32, i32)]) -> Vec<(i16, i32, i64)> {
        let topics = queries
            .iter()
            .map(|&(t, p, current, epoch)| {
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(vec![OffsetForLeaderPartition::default()
                        .with_partition(p)
                        .with_current_leader_epoch(current)
                        .with_leader_epoch(epoch)])
            })
            .collect();
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(topics);
        let resp = offset_for_leader_epoch(broker, req);
        resp.topics
            .iter()
            .zip(queries)
            .map(|(t, q)| {
                assert_eq!(t.topic.as_str(), q.0);
                let p = &t.partitions[0];
                assert_eq!(p.partition, q.1);
                (p.error_code, p.leader_epoch, p.end_offset)
            })
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// A single node leads every partition at epoch 0: with nothing in the cache it answers
    /// the current epoch with the log end offset; unknown partitions and mismatched current
    /// epochs get Kafka's errors.
    #[test]
    fn single_node_answers_its_epoch_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        let topic = runtime()
            .block_on(broker.create_topic("t", 2, 1, None, Default::default(), false))
            .unwrap();
        topic.partitions[0].append_internal(&batch(4)).unwrap();
        topic.partitions[0].append_internal(&batch(3)).unwrap();
        let none = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(
            ask(
                &broker,
                &[
                    ("t", 0, -1, 0),
                    ("t", 0, 0, 0),
                    ("t", 1, 0, 0),
                    ("t", 0, -1, -1),
                    ("t", 0, -1, 3),
                    ("t", 0, 1, 0),
                    ("t", 0, -5, 0),
                    ("t", 2, -1, 0),
                    ("nope", 0, -1, 0),
                ]
            ),
            [
                (0, 0, 7),
                (0, 0, 7),
                (0, 0, 0),
                (0, -1, -1),
                (0, -1, -1),
                (ResponseError::UnknownLeaderEpoch.code(), -1, -1),
                (ResponseError::FencedLeaderEpoch.code(), -1, -1),
                (none, -1, -1),
                (none, -1, -1),
            ]
        );
        broker.shutdown();
    }

    /// With a leader-epoch checkpoint the answers are the cache's, as Kafka's
    /// `LeaderEpochFileCache.endOffsetFor`.
    #[test]
    fn answers_from_the_leader_epoch_cache() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        let topic = runtime()
            .block_on(broker.create_topic("t", 1, 1, None, Default::default(), false))
            .unwrap();
        for n in [3, 3, 4] {
            topic.partitions[0].append_internal(&batch(n)).unwrap();
        }
        drop(topic);
        broker.shutdown();
        drop(broker);

        let mut cache = gregor_log::LeaderEpochCache::default();
        for (epoch, start) in [(0, 0), (2, 3), (4, 6)] {
            assert!(cache.assign(epoch, start).unwrap());
        }
        let part_dir = crate::registry::partition_dir(dir.path(), "t", 0);
        std::fs::write(
            part_dir.join(gregor_log::epoch::FILE_NAME),
            cache.encode().as_bytes(),
        )
        .unwrap();

        let broker = open(dir.path());
        assert_eq!(
            ask(
                &broker,
                &[
                    ("t", 0, -1, 4),
                    ("t", 0, -1, 3),
                    ("t", 0, -1, 2),
                    ("t", 0, -1, 1),
                    ("t", 0, 0, 0),
                    ("t", 0, -1, 5),
                ]
            ),
            [
                (0, 4, 10),
                (0, 2, 6),
                (0, 2, 6),
                (0, 0, 3),
                (0, 0, 3),
                (0, -1, -1),
            ]
        );
        broker.shutdown();
    }
}
