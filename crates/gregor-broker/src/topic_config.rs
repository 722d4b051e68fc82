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

/// Where an effective topic setting comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A topic override (`DYNAMIC_TOPIC_CONFIG`, 1).
    DynamicTopic,
    /// A broker `log.*` setting from the config file (`STATIC_BROKER_CONFIG`, 4).
    StaticBroker,
    /// Gregor's (Kafka's) default (`DEFAULT_CONFIG`, 5).
    Default,
}

impl Source {
    pub fn code(self) -> i8 {
        match self {
            Source::DynamicTopic => 1,
            Source::StaticBroker => 4,
            Source::Default => 5,
        }
    }
}

/// The effective value of a known topic setting and its source, plus the
/// broker-level synonym when the broker config file sets one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub value: String,
    pub source: Source,
    pub broker: Option<(&'static str, String)>,
}

/// Resolves `name` for a topic: topic override, else broker static setting, else default.
pub fn resolve(
    overrides: &BTreeMap<String, String>,
    broker: &crate::config::BrokerConfig,
    name: &str,
) -> Option<Resolved> {
    let def = lookup(name)?;
    let broker_value = broker
        .static_topic_defaults()
        .into_iter()
        .find(|(t, _, _)| *t == name)
        .map(|(_, b, v)| (b, v));
    let (value, source) = if let Some(v) = overrides.get(name) {
        (v.clone(), Source::DynamicTopic)
    } else if let Some((_, v)) = &broker_value {
        (v.clone(), Source::StaticBroker)
    } else {
        (def.default.to_string(), Source::Default)
    };
    Some(Resolved {
        value,
        source,
        broker: broker_value,
    })
}

/// The storage settings of a topic, resolved and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub delete: bool,
    pub compact: bool,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub flush_messages: i64,
    /// `flush.ms`; with `fsync = interval` and nothing set, 1000.
    pub flush_ms: i64,
}

impl LogSettings {
    pub fn resolve(
        overrides: &BTreeMap<String, String>,
        broker: &crate::config::BrokerConfig,
    ) -> LogSettings {
        let get = |name: &str| resolve(overrides, broker, name).expect("known setting");
        let long = |name: &str| {
            let r = get(name);
            r.value.trim().parse::<i64>().unwrap_or_else(|_| {
                lookup(name)
                    .and_then(|d| d.default.parse().ok())
                    .unwrap_or(i64::MAX)
            })
        };
        let policy = get("cleanup.policy").value;
        let flush_ms = get("flush.ms");
        let flush_ms = if flush_ms.source == Source::Default
            && broker.fsync == crate::config::FsyncPolicy::Interval
        {
            1000
        } else {
            flush_ms.value.trim().parse().unwrap_or(i64::MAX)
        };
        LogSettings {
            segment_bytes: u64::try_from(long("segment.bytes")).unwrap_or(1 << 30),
            segment_ms: long("segment.ms"),
            retention_ms: long("retention.ms"),
            retention_bytes: long("retention.bytes"),
            delete: policy.split(',').any(|p| p.trim() == "delete"),
            compact: policy.split(',').any(|p| p.trim() == "compact"),
            delete_retention_ms: long("delete.retention.ms"),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                .value
                .trim()
                .parse()
                .unwrap_or(0.5),
            min_compaction_lag_ms: long("min.compaction.lag.ms"),
            flush_messages: long("flush.messages"),
            flush_ms,
        }
    }
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

    #[test]
    fn resolution_order_is_topic_then_broker_then_default() {
        let mut broker = crate::config::BrokerConfig {
            log_retention_ms: Some(5000),
            ..Default::default()
        };
        let mut over = BTreeMap::new();
        let r = resolve(&over, &broker, "retention.ms").unwrap();
        assert_eq!((r.value.as_str(), r.source), ("5000", Source::StaticBroker));
        over.insert("retention.ms".to_string(), "7".to_string());
        let r = resolve(&over, &broker, "retention.ms").unwrap();
        assert_eq!((r.value.as_str(), r.source), ("7", Source::DynamicTopic));
        let r = resolve(&over, &broker, "segment.ms").unwrap();
        assert_eq!(r.source, Source::Default);
        broker.fsync = crate::config::FsyncPolicy::Interval;
        let s = LogSettings::resolve(&over, &broker);
        assert_eq!(
            (s.retention_ms, s.flush_ms, s.delete, s.compact),
            (7, 1000, true, false)
        );
    }
}
