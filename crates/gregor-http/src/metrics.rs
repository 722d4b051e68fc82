//! `/metrics`: the broker's event metrics (`gregor_broker::metrics`) plus gauges read from
//! the broker at scrape time ([`StateCollector`]), in the Prometheus text format.

use std::sync::Arc;

use gregor_broker::Broker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::state;

/// The registry `/metrics` encodes: every name starts with `gregor_`.
pub fn registry(broker: Arc<Broker>) -> Registry {
    let mut r = Registry::with_prefix("gregor");
    gregor_broker::metrics::metrics().register(&mut r);
    r.register_collector(Box::new(StateCollector { broker }));
    r
}

/// Gauges computed from the broker's state on each scrape.
pub struct StateCollector {
    broker: Arc<Broker>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One gauge family: name, help, and (labels, value) rows.
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        let metric = family.encode_family(&labels)?;
        ConstGauge::new(value).encode(metric)?;
    }
    Ok(())
}

fn topic(name: &str) -> Labels {
    vec![("topic", name.to_string())]
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let broker = &self.broker;
        let topics = state::topics(broker);
        let groups = state::groups(broker);
        let overview = state::overview(broker, &topics, groups.len());

        gauge_family(
            &mut e,
            "topic_partitions",
            "Partitions of each topic this broker holds",
            topics
                .iter()
                .map(|t| (topic(&t.name), t.partitions.len() as i64)),
        )?;
        gauge_family(
            &mut e,
            "topic_log_size_bytes",
            "Bytes on disk of each topic's partitions on this broker (Kafka kafka.log:type=Log,name=Size)",
            topics.iter().map(|t| (topic(&t.name), t.size_bytes() as i64)),
        )?;
        let partition_rows = |f: fn(&state::PartitionInfo) -> i64| {
            topics
                .iter()
                .flat_map(move |t| {
                    t.partitions.iter().map(move |p| {
                        (
                            vec![
                                ("topic", t.name.clone()),
                                ("partition", p.partition.to_string()),
                            ],
                            f(p),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        gauge_family(
            &mut e,
            "partition_log_end_offset",
            "Log end offset of each partition on this broker",
            partition_rows(|p| p.log_end_offset),
        )?;
        gauge_family(
            &mut e,
            "partition_log_start_offset",
            "Log start offset of each partition on this broker",
            partition_rows(|p| p.log_start_offset),
        )?;
        gauge_family(
            &mut e,
            "partition_high_watermark",
            "High watermark of each partition on this broker",
            partition_rows(|p| p.high_watermark),
        )?;

        gauge_family(
            &mut e,
            "consumer_group_members",
            "Members of each consumer group this broker coordinates",
            groups
                .iter()
                .map(|g| (vec![("group", g.group_id.clone())], g.members.len() as i64)),
        )?;
        gauge_family(
            &mut e,
            "consumer_group_state",
            "1 for each consumer group's current state (Empty, PreparingRebalance, CompletingRebalance, Stable, Dead)",
            groups.iter().map(|g| {
                (
                    vec![("group", g.group_id.clone()), ("state", g.state.clone())],
                    1,
                )
            }),
        )?;
        let offset_rows = |f: fn(&state::GroupOffset) -> i64| {
            groups
                .iter()
                .flat_map(move |g| {
                    g.offsets.iter().map(move |o| {
                        (
                            vec![
                                ("group", g.group_id.clone()),
                                ("topic", o.topic.clone()),
                                ("partition", o.partition.to_string()),
                            ],
                            f(o),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        gauge_family(
            &mut e,
            "consumer_group_committed_offset",
            "Committed offset of each group and partition",
            offset_rows(|o| o.committed),
        )?;
        gauge_family(
            &mut e,
            "consumer_group_lag",
            "Consumer lag: log end offset minus the group's committed offset, per group and partition",
            offset_rows(|o| o.lag),
        )?;
        gauge_family(
            &mut e,
            "consumer_group_lag_sum",
            "Consumer lag summed over a group's partitions",
            groups
                .iter()
                .map(|g| (vec![("group", g.group_id.clone())], g.total_lag())),
        )?;

        let me = overview.broker_id;
        gauge_family(
            &mut e,
            "metadata_quorum_leader",
            "Node id of the metadata quorum's leader (the active controller); -1 while unknown",
            [(vec![], i64::from(overview.controller_id))],
        )?;
        gauge_family(
            &mut e,
            "metadata_applied_index",
            "Index of the last metadata record this broker applied (0 on a single node)",
            [(vec![], overview.metadata_applied_index as i64)],
        )?;
        gauge_family(
            &mut e,
            "metadata_log_end_index",
            "Index of the last entry in this node's metadata (Raft) log (0 on a single node)",
            [(vec![], overview.metadata_log_end_index as i64)],
        )?;
        gauge_family(
            &mut e,
            "metadata_apply_lag",
            "Metadata log entries this node holds but has not applied yet (log end index minus applied index)",
            [(
                vec![],
                overview
                    .metadata_log_end_index
                    .saturating_sub(overview.metadata_applied_index) as i64,
            )],
        )?;
        gauge_family(
            &mut e,
            "metadata_follower_lag",
            "On the active controller: metadata log entries each other quorum node does not have yet",
            overview
                .metadata_follower_lag
                .iter()
                .map(|(id, lag)| (vec![("node", id.to_string())], *lag as i64)),
        )?;
        let led = overview
            .brokers
            .iter()
            .find(|b| b.id == me)
            .map_or(0, |b| b.partitions_led);
        gauge_family(
            &mut e,
            "partitions_led",
            "Partitions this broker leads",
            [(vec![], led as i64)],
        )?;
        gauge_family(
            &mut e,
            "partitions_under_replicated",
            "Partitions whose ISR is smaller than their replica set (cluster-wide, from the metadata image)",
            [(vec![], overview.under_replicated_partitions as i64)],
        )?;
        gauge_family(
            &mut e,
            "partitions_offline",
            "Partitions without a live leader (cluster-wide, from the metadata image)",
            [(vec![], overview.offline_partitions as i64)],
        )?;
        Ok(())
    }
}
