//! Every advertised version of every API must produce a response that encodes.
//!
//! `kafka-protocol` refuses to encode a response that sets a field the chosen version does
//! not have, so a handler that fills a newer field unconditionally would fail only for the
//! clients that negotiate an older version. This test drives each handler at each version
//! against a real broker state (temp data dir, a topic with data) and encodes the result.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gregor_broker::{handlers, Broker, BrokerConfig};
use gregor_protocol::{encode_response, DecodedRequest, SUPPORTED_APIS};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

fn batch(n: i64) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn requests(api: ApiKey, topic_id: uuid::Uuid) -> Vec<RequestKind> {
    let t = || name("t");
    match api {
        ApiKey::ApiVersions => vec![RequestKind::ApiVersions(ApiVersionsRequest::default())],
        ApiKey::Metadata => vec![
            RequestKind::Metadata(MetadataRequest::default()),
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(t())),
                metadata_request::MetadataRequestTopic::default().with_name(Some(name("bad name"))),
            ]))),
        ],
        ApiKey::AlterPartitionReassignments => vec![RequestKind::AlterPartitionReassignments(
            kafka_protocol::messages::AlterPartitionReassignmentsRequest::default().with_topics(
                vec![kafka_protocol::messages::alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(t())
                    .with_partitions(vec![
                        kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_replicas(Some(vec![BrokerId(0)])),
                    ])],
            ),
        )],
        ApiKey::ListPartitionReassignments => vec![RequestKind::ListPartitionReassignments(
            kafka_protocol::messages::ListPartitionReassignmentsRequest::default(),
        )],
        ApiKey::ElectLeaders => vec![
            RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(Some(
                vec![elect_leaders_request::TopicPartitions::default()
                    .with_topic(t())
                    .with_partitions(vec![0, 7])],
            ))),
            RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(None)),
            // An unknown election type: errors on every partition (and top level from v1).
            RequestKind::ElectLeaders(
                ElectLeadersRequest::default()
                    .with_election_type(5)
                    .with_topic_partitions(Some(vec![
                        elect_leaders_request::TopicPartitions::default()
                            .with_topic(t())
                            .with_partitions(vec![0]),
                    ])),
            ),
        ],
        ApiKey::DescribeLogDirs => vec![
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(Some(
                vec![describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(t())
                    .with_partitions(vec![0])],
            ))),
        ],
        ApiKey::DescribeQuorum => vec![RequestKind::DescribeQuorum(
            kafka_protocol::messages::DescribeQuorumRequest::default().with_topics(vec![
                kafka_protocol::messages::describe_quorum_request::TopicData::default()
                    .with_topic_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_static_str("__cluster_metadata"),
                    ))
                    .with_partitions(vec![
                        kafka_protocol::messages::describe_quorum_request::PartitionData::default(),
                    ]),
            ]),
        )],
        ApiKey::DescribeCluster => vec![RequestKind::DescribeCluster(
            DescribeClusterRequest::default(),
        )],
        ApiKey::Produce => vec![RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(t())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch(3))),
                        produce_request::PartitionProduceData::default()
                            .with_index(7)
                            .with_records(Some(batch(1))),
                    ])]),
        )],
        ApiKey::Fetch => vec![RequestKind::Fetch(
            FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(t())
                    .with_topic_id(topic_id)
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_partition(0)
                            .with_partition_max_bytes(1 << 20),
                        fetch_request::FetchPartition::default()
                            .with_partition(1)
                            .with_fetch_offset(99)
                            .with_partition_max_bytes(1 << 20),
                    ])]),
        )],
        ApiKey::ListOffsets => vec![RequestKind::ListOffsets(
            ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(t())
                    .with_partitions(
                        [-1i64, -2, -3, 1_001, 5_000]
                            .iter()
                            .map(|&ts| {
                                list_offsets_request::ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(ts)
                            })
                            .collect(),
                    ),
            ]),
        )],
        ApiKey::OffsetForLeaderEpoch => vec![RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(t())
                    .with_partitions(
                        [(0, -1, 0), (0, 0, -1), (0, 3, 0), (7, -1, 0)]
                            .iter()
                            .map(|&(p, current, epoch)| {
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                    .with_partition(p)
                                    .with_current_leader_epoch(current)
                                    .with_leader_epoch(epoch)
                            })
                            .collect(),
                    ),
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("missing"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default(),
                    ]),
            ]),
        )],
        ApiKey::DeleteRecords => vec![RequestKind::DeleteRecords(
            DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(t())
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(1)
                            .with_offset(0),
                    ]),
            ]),
        )],
        ApiKey::CreateTopics => vec![RequestKind::CreateTopics(
            CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(name("fresh"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
                create_topics_request::CreatableTopic::default()
                    .with_name(name("t"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]),
        )],
        ApiKey::DeleteTopics => vec![RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![name("fresh"), name("missing")])
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name("fresh")))]),
        )],
        ApiKey::CreatePartitions => vec![RequestKind::CreatePartitions(
            CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(t())
                    .with_count(1),
            ]),
        )],
        ApiKey::DescribeConfigs => vec![RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("0")),
            ]),
        )],
        ApiKey::IncrementalAlterConfigs => vec![RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("1000"))),
                    ]),
            ]),
        )],
        ApiKey::InitProducerId => vec![
            RequestKind::InitProducerId(
                InitProducerIdRequest::default().with_producer_id(ProducerId(-1)),
            ),
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_producer_id(ProducerId(5))
                    .with_producer_epoch(2),
            ),
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
                    .with_transaction_timeout_ms(60_000)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ),
        ],
        ApiKey::FindCoordinator => vec![
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_static_str("g"))
                    .with_coordinator_keys(vec![StrBytes::from_static_str("g")]),
            ),
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_key(StrBytes::from_static_str("txn"))
                    .with_coordinator_keys(vec![StrBytes::from_static_str("txn")]),
            ),
        ],
        ApiKey::JoinGroup => {
            // A fresh group per call: a lone static member becomes leader after the initial
            // delay, so the response carries the member list.
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let join = |instance: Option<&str>| {
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                JoinGroupRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(format!("join-{n}"))))
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(10_000)
                    .with_group_instance_id(instance.map(|i| StrBytes::from_string(i.into())))
                    .with_protocol_type(StrBytes::from_static_str("consumer"))
                    .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                    )
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"\0\0\0\0\0\0"))])
            };
            vec![
                RequestKind::JoinGroup(join(Some("i"))),
                RequestKind::JoinGroup(join(None)),
                RequestKind::JoinGroup(
                    join(None).with_group_id(GroupId(StrBytes::from_static_str(""))),
                ),
            ]
        }
        ApiKey::SyncGroup => vec![RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("join-0")))
                .with_member_id(StrBytes::from_static_str("nobody")),
        )],
        ApiKey::Heartbeat => vec![RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("join-0")))
                .with_member_id(StrBytes::from_static_str("nobody")),
        )],
        ApiKey::LeaveGroup => vec![RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("join-0")))
                .with_member_id(StrBytes::from_static_str("nobody"))
                .with_members(vec![leave_group_request::MemberIdentity::default()
                    .with_member_id(StrBytes::from_static_str("nobody"))
                    .with_group_instance_id(Some(StrBytes::from_static_str("i")))]),
        )],
        ApiKey::OffsetCommit => vec![RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("offsets")))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(2)
                                .with_committed_leader_epoch(0)
                                .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(9)
                                .with_committed_offset(2),
                        ]),
                ]),
        )],
        ApiKey::OffsetFetch => vec![RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("offsets")))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(t())
                        .with_partition_indexes(vec![0, 1]),
                ]))
                .with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("offsets")))
                        .with_topics(None),
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("other")))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_name(t())
                                .with_partition_indexes(vec![0]),
                        ])),
                ]),
        )],
        ApiKey::DescribeGroups => vec![RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![
                GroupId(StrBytes::from_static_str("join-0")),
                GroupId(StrBytes::from_static_str("offsets")),
                GroupId(StrBytes::from_static_str("missing")),
            ]),
        )],
        ApiKey::ListGroups => vec![
            RequestKind::ListGroups(ListGroupsRequest::default()),
            RequestKind::ListGroups(
                ListGroupsRequest::default()
                    .with_states_filter(vec![StrBytes::from_static_str("Empty")])
                    .with_types_filter(vec![StrBytes::from_static_str("classic")]),
            ),
        ],
        ApiKey::OffsetDelete => vec![RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("offsets")))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default()
                                .with_partition_index(1),
                        ]),
                ]),
        )],
        ApiKey::DeleteGroups => vec![RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![
                GroupId(StrBytes::from_static_str("missing")),
                GroupId(StrBytes::from_static_str("join-0")),
            ]),
        )],
        ApiKey::AddPartitionsToTxn => vec![RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str(
                    "tx",
                )))
                .with_v3_and_below_producer_id(ProducerId(1))
                .with_v3_and_below_topics(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(t())
                        .with_partitions(vec![0, 9]),
                ]),
        )],
        ApiKey::AddOffsetsToTxn => vec![RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                .with_producer_id(ProducerId(1))
                .with_group_id(GroupId(StrBytes::from_static_str("g"))),
        )],
        ApiKey::EndTxn => vec![RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                .with_producer_id(ProducerId(1))
                .with_committed(true),
        )],
        ApiKey::TxnOffsetCommit => vec![RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_producer_id(ProducerId(1))
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1),
                        ]),
                ]),
        )],
        ApiKey::DescribeTransactions => vec![RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_static_str("tx")),
                TransactionalId(StrBytes::from_static_str("missing")),
            ]),
        )],
        ApiKey::ListTransactions => vec![
            RequestKind::ListTransactions(ListTransactionsRequest::default()),
            RequestKind::ListTransactions(
                ListTransactionsRequest::default()
                    .with_state_filters(vec![StrBytes::from_static_str("Ongoing")])
                    .with_producer_id_filters(vec![ProducerId(1)]),
            ),
        ],
        ApiKey::DescribeProducers => vec![RequestKind::DescribeProducers(
            DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(t())
                    .with_partition_indexes(vec![0, 9]),
            ]),
        )],
        ApiKey::WriteTxnMarkers => vec![RequestKind::WriteTxnMarkers(
            kafka_protocol::messages::WriteTxnMarkersRequest::default().with_markers(vec![
                kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(ProducerId(1))
                    .with_producer_epoch(0)
                    .with_transaction_result(false)
                    .with_topics(vec![
                        kafka_protocol::messages::write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(t())
                            .with_partition_indexes(vec![0, 9]),
                    ]),
            ]),
        )],
        other => panic!("no sample request for advertised API {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_answers_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::open(config, ("127.0.0.1".into(), 9092)).unwrap());
    let topic = broker
        .create_topic("t", 2, 1, None, Default::default(), false)
        .await
        .unwrap();
    let groups = broker.start_groups().unwrap();
    let txns = broker.start_transactions().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !groups.is_loaded() || !txns.read(|co| co.is_loaded()) {
        assert!(
            std::time::Instant::now() < deadline,
            "group/transaction coordinators did not load within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for &(api, min, max) in SUPPORTED_APIS {
        for version in min..=max {
            for body in requests(api, topic.id) {
                let request = DecodedRequest {
                    api_key: api,
                    api_version: version,
                    header: RequestHeader::default().with_correlation_id(9),
                    body,
                };
                let response = handlers::handle(&broker, request)
                    .await
                    .unwrap_or_else(|| panic!("{api:?} v{version}: no response"));
                encode_response(api, version, 9, &response)
                    .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
            }
        }
    }
}
