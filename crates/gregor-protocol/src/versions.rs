//! The APIs Gregor implements and the version ranges it advertises in ApiVersions.
//!
//! Only what really works is listed. Ranges are capped at versions whose semantics the
//! broker implements (for example Produce stops at v11: v12+ carries KIP-890 transaction
//! changes and v13 addresses topics by ID only).

use kafka_protocol::messages::ApiKey;

/// `(api, min_version, max_version)` for every API the broker answers.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::InitProducerId, 0, 4),
    // Consumer groups (classic protocol), see gregor-group.
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 5),
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
