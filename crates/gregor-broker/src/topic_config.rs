//! Topic-level configuration: the settings a topic accepts, their defaults, and validation.
//!
//! A topic stores only its overrides (`DYNAMIC_TOPIC_CONFIG` in DescribeConfigs); every other
//! key reports its default (`DEFAULT_CONFIG`).

use std::collections::BTreeMap;

/// How a value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer in `[min, i64::MAX]`.
    Long {
        min: i64,
    },
    /// A ratio in `[0, 1]`.
    Ratio,
    /// One of the listed words (for `cleanup.policy`, a comma-separated subset).
    OneOf(&'static [&'static str]),
    Bool,
}

/// One topic setting Gregor knows.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: Kind,
    /// DescribeConfigs `config_type` (Kafka's ConfigType enum: 2 BOOLEAN, 3 STRING, 5 LONG,
    /// 6 DOUBLE, 7 LIST).
    pub config_type: i8,
}

const LONG: i8 = 5;
const STRING: i8 = 3;

/// The topic settings accepted by CreateTopics and IncrementalAlterConfigs.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        default: "delete",
        kind: Kind::OneOf(&["delete", "compact"]),
        config_type: 7,
    },
    TopicConfigDef {
        name: "compression.type",
        default: "producer",
        kind: Kind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
        config_type: STRING,
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        default: "86400000",
        kind: Kind::Long { min: 0 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "flush.messages",
        default: "9223372036854775807",
        kind: Kind::Long { min: 1 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "flush.ms",
        default: "9223372036854775807",
        kind: Kind::Long { min: 0 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        kind: Kind::Long { min: 0 },
        config_type: 3 + 1, // INT
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: Kind::OneOf(&["CreateTime"]),
        config_type: STRING,
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: Kind::Ratio,
        config_type: 6,
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        default: "0",
        kind: Kind::Long { min: 0 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        default: "1",
        kind: Kind::Long { min: 1 },
        config_type: 4,
    },
    TopicConfigDef {
        name: "retention.bytes",
        default: "-1",
        kind: Kind::Long { min: -1 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "retention.ms",
        default: "604800000",
        kind: Kind::Long { min: -1 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        kind: Kind::Long { min: 14 },
        config_type: 4,
    },
    TopicConfigDef {
        name: "segment.ms",
        default: "604800000",
        kind: Kind::Long { min: 1 },
        config_type: LONG,
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        default: "false",
        kind: Kind::Bool,
        config_type: 2,
    },
];

pub fn lookup(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one `name = value` pair; the error text goes to the client.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let def = lookup(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    let ok = match def.kind {
        Kind::Long { min } => value.trim().parse::<i64>().is_ok_and(|v| v >= min),
        Kind::Ratio => value
            .trim()
            .parse::<f64>()
            .is_ok_and(|v| (0.0..=1.0).contains(&v)),
        Kind::Bool => matches!(value.trim(), "true" | "false"),
        Kind::OneOf(words) if name == "cleanup.policy" => {
            !value.trim().is_empty() && value.split(',').all(|w| words.contains(&w.trim()))
        }
        Kind::OneOf(words) => words.contains(&value.trim()),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value {value} for configuration {name}"))
    }
}

/// The effective value of `name` for a topic with `overrides`.
pub fn effective<'a>(overrides: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    overrides
        .get(name)
        .map(String::as_str)
        .or_else(|| lookup(name).map(|d| d.default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_known_settings() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("no.such.setting", "1").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.7").is_ok());
    }
}
