//! Helpers shared by the integration tests (each test file includes this module).

use std::collections::BTreeMap;

use gregor_meta::{Command, MetaError, NewTopic, Reply};

/// CreateTopics of one topic with one config entry.
pub fn create_topic(name: &str, partitions: i32, rf: i16, config: (&str, &str)) -> Command {
    Command::CreateTopics {
        topics: vec![NewTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: None,
            configs: BTreeMap::from([(config.0.into(), config.1.into())]),
        }],
        validate_only: false,
    }
}

/// The id of the topic a CreateTopics created; panics on anything else.
pub fn created(r: Result<Reply, MetaError>) -> uuid::Uuid {
    match r {
        Ok(Reply::Topics(v)) if v[0].error.is_none() => v[0].topic_id.unwrap(),
        other => panic!("create failed: {other:?}"),
    }
}
