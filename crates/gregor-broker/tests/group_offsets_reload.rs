//! Committed offsets and group generations come back after a restart: the coordinator
//! replays `__consumer_offsets`, answering COORDINATOR_LOAD_IN_PROGRESS until it has.

use std::sync::Arc;

use gregor_broker::{handlers, Broker, BrokerConfig};
use gregor_protocol::DecodedRequest;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// How long replaying `__consumer_offsets` may take before the test fails instead of hanging.
const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

fn request(api_key: ApiKey, api_version: i16, body: RequestKind) -> DecodedRequest {
    DecodedRequest {
        api_key,
        api_version,
        header: RequestHeader::default().with_correlation_id(1),
        body,
    }
}

fn commit(group: &str, offset: i64) -> DecodedRequest {
    request(
        ApiKey::OffsetCommit,
        8,
        RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.into())))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(3),
                        ]),
                ]),
        ),
    )
}

fn fetch(group: &str) -> DecodedRequest {
    request(
        ApiKey::OffsetFetch,
        8,
        RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(group.into())))
                .with_topics(None),
        ])),
    )
}

/// (group error, [(partition, offset, leader epoch)])
async fn fetched(broker: &Arc<Broker>, group: &str) -> (i16, Vec<(i32, i64, i32)>) {
    let Some(ResponseKind::OffsetFetch(r)) = handlers::handle(broker, fetch(group)).await else {
        panic!("no OffsetFetch response");
    };
    let g = &r.groups[0];
    let parts = g
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                p.partition_index,
                p.committed_offset,
                p.committed_leader_epoch,
            )
        })
        .collect();
    (g.error_code, parts)
}

#[test]
fn committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        offsets_topic_num_partitions: 3,
        ..BrokerConfig::default()
    };
    let open = || Arc::new(Broker::open(config.clone(), ("127.0.0.1".into(), 9092)).unwrap());

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let broker = open();
        broker
            .create_topic("t", 1, 1, None, Default::default(), false)
            .await
            .unwrap();
        let groups = broker.start_groups().unwrap();
        let deadline = std::time::Instant::now() + LOAD_DEADLINE;
        while !groups.is_loaded() {
            assert!(
                std::time::Instant::now() < deadline,
                "the group coordinator did not load within {LOAD_DEADLINE:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        for (group, offset) in [("app", 100), ("app", 4259), ("other", 7)] {
            let Some(ResponseKind::OffsetCommit(r)) =
                handlers::handle(&broker, commit(group, offset)).await
            else {
                panic!("no OffsetCommit response");
            };
            assert_eq!(r.topics[0].partitions[0].error_code, 0);
        }
        assert_eq!(fetched(&broker, "app").await, (0, vec![(0, 4259, 3)]));
        // No clean shutdown: the commit was acknowledged, so it is on disk already.
    });

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let broker = open();
        let groups = broker.start_groups().unwrap();
        let deadline = std::time::Instant::now() + LOAD_DEADLINE;
        loop {
            let (err, parts) = fetched(&broker, "app").await;
            if err == kafka_protocol::error::ResponseError::CoordinatorLoadInProgress.code() {
                assert!(!groups.is_loaded() || parts.is_empty());
                assert!(
                    std::time::Instant::now() < deadline,
                    "still COORDINATOR_LOAD_IN_PROGRESS after {LOAD_DEADLINE:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            assert_eq!((err, parts), (0, vec![(0, 4259, 3)]));
            break;
        }
        assert_eq!(fetched(&broker, "other").await, (0, vec![(0, 7, 3)]));
        assert_eq!(
            broker.topic("__consumer_offsets").unwrap().partitions.len(),
            3,
            "the offsets topic keeps its partition count"
        );
    });
}
