//! The APIs Gregor implements and the version ranges it advertises in ApiVersions.
//!
//! Each range is the one Apache Kafka 4.0 advertises, so that clients which infer the broker
//! version from ApiVersions (kafka-python 3 looks at ListOffsets v10 and Fetch v17) take Gregor
//! for Kafka 4.0, whose behaviour it has. Exceptions, all below Kafka 4.0:
//! - the KIP-890 part 2 transaction versions (AddPartitionsToTxn v4+, AddOffsetsToTxn v4,
//!   EndTxn v5, TxnOffsetCommit v5: per-transaction epoch bumps, broker-side verification).
//!   Clients use them only when the broker finalizes the `transaction.version` feature,
//!   which Gregor does not; Produce v12 is wire-identical to v11 under the same rule.
//! - Produce v13 / Fetch v18 / ListOffsets v11 (Kafka 4.1+) are not advertised.
//!
//! ListTransactions goes to v2 (Kafka 4.1's duration filter, which Gregor implements).
//! ARCHITECTURE.md has the table with Kafka 4.0's ranges beside these.

use kafka_protocol::messages::ApiKey;

/// `(api, min_version, max_version)` for every API the broker answers.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    // Replication (KIP-101/279/320): where a leader epoch ended in the leader's log.
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    // The metadata quorum (KRaft), answered by every broker.
    (ApiKey::DescribeQuorum, 0, 2),
    // Partition reassignment (replication, issue 16).
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // Leader elections through the controller, and each broker's log dir.
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::InitProducerId, 0, 5),
    // Consumer groups (classic protocol), see gregor-group.
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // Transactions, see gregor-txn. Capped below the KIP-890 part 2 versions (EndTxn v5,
    // AddOffsetsToTxn v4, TxnOffsetCommit v5: per-transaction epoch bumps) and the batched
    // AddPartitionsToTxn v4+ (broker-to-broker verification).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    // Broker to broker: a transaction coordinator's markers for partitions another broker
    // leads (issue 16).
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
];

/// The advertised `(min, max)` for `api`, or `None` if Gregor does not implement it.
pub fn supported_versions(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_lie_within_what_the_codec_supports() {
        for &(api, min, max) in SUPPORTED_APIS {
            let codec = api.valid_versions();
            assert!(min <= max, "{api:?}");
            assert!(codec.min <= min && max <= codec.max, "{api:?} {min}..{max}");
        }
    }
}
