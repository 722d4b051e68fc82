//! What the console, `/api/...` and the scrape-time metrics read: a snapshot of the broker's
//! state taken through the [`Broker`] facade (topics and their partitions' offsets, the
//! metadata image in a cluster, the group coordinator's groups and committed offsets).
//! Nothing here is kept between calls except the lag history ([`LagHistory`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Buf;
use gregor_broker::Broker;
use serde::Serialize;

/// One partition as this broker sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub partition: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    /// Leader, replicas and in-sync replicas (a single node: itself).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub id: String,
    pub internal: bool,
    /// The topic's overrides (defaults are the broker's `log.*` settings).
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn size_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.size_bytes).sum()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// Partitions the member owns (decoded from its consumer-protocol assignment); empty for
    /// an idle member.
    pub assignment: Vec<TopicPartitions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub log_end_offset: i64,
    /// `log_end_offset - committed` (never negative).
    pub lag: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberInfo>,
    pub offsets: Vec<GroupOffset>,
}

impl GroupInfo {
    pub fn total_lag(&self) -> i64 {
        self.offsets.iter().map(|o| o.lag).sum()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub fenced: bool,
    pub partitions_led: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub cluster_id: String,
    pub broker_id: i32,
    /// The metadata quorum's leader (the controller); a single node: itself.
    pub controller_id: i32,
    pub cluster_mode: bool,
    pub brokers: Vec<BrokerInfo>,
    pub topics: usize,
    pub partitions: usize,
    pub under_replicated_partitions: usize,
    pub offline_partitions: usize,
    pub groups: usize,
    pub metadata_applied_index: u64,
    /// The last index in this node's metadata (Raft) log; minus the applied index, the
    /// entries this node holds but has not applied yet (the metadata lag).
    pub metadata_log_end_index: u64,
    /// On the active controller: per other quorum node, the metadata log entries it lacks.
    pub metadata_follower_lag: Vec<(i32, u64)>,
}

fn node_id(broker: &Broker) -> i32 {
    match broker.cluster() {
        Some(c) => c.broker_id(),
        None => broker.config.node_id,
    }
}

/// Every topic this broker holds, sorted by name.
pub fn topics(broker: &Broker) -> Vec<TopicInfo> {
    let mut out: Vec<TopicInfo> = broker
        .all_topics()
        .iter()
        .map(|t| topic_info(broker, t))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn topic(broker: &Broker, name: &str) -> Option<TopicInfo> {
    broker.topic(name).map(|t| topic_info(broker, &t))
}

fn topic_info(broker: &Broker, t: &gregor_broker::registry::Topic) -> TopicInfo {
    let me = node_id(broker);
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let index = i as i32;
            let view = broker.cluster().and_then(|c| c.partition(&t.name, index));
            let (leader, replicas, isr) = match view {
                Some(v) => (v.leader, v.replicas, v.isr),
                None => (me, vec![me], vec![me]),
            };
            PartitionInfo {
                partition: index,
                log_start_offset: p.log_start_offset(),
                high_watermark: p.high_watermark(),
                log_end_offset: p.log_end_offset(),
                size_bytes: p.size_bytes(),
                leader,
                replicas,
                isr,
            }
        })
        .collect();
    TopicInfo {
        name: t.name.clone(),
        id: t.id.to_string(),
        internal: t.name.starts_with("__"),
        configs: t.configs.clone(),
        partitions,
    }
}

/// Owned partitions from a consumer-protocol assignment (v0-3, not flexible: version i16,
/// then [topic string, [partition i32]]); empty when it is not one. Parsed here with every
/// count checked against the bytes left: the bytes come from a client's SyncGroup.
fn decode_assignment(raw: &bytes::Bytes) -> Vec<TopicPartitions> {
    fn parse(mut buf: &[u8]) -> Option<Vec<TopicPartitions>> {
        if buf.remaining() < 6 || !(0..=3).contains(&buf.get_i16()) {
            return None;
        }
        let topics = usize::try_from(buf.get_i32()).ok()?;
        // A topic takes at least 6 bytes (empty name, empty array).
        if topics > buf.remaining() / 6 {
            return None;
        }
        let mut out = Vec::with_capacity(topics);
        for _ in 0..topics {
            if buf.remaining() < 2 {
                return None;
            }
            let len = usize::try_from(buf.get_i16()).ok()?;
            if buf.remaining() < len + 4 {
                return None;
            }
            let topic = String::from_utf8_lossy(&buf[..len]).into_owned();
            buf.advance(len);
            let n = usize::try_from(buf.get_i32()).ok()?;
            if n > buf.remaining() / 4 {
                return None;
            }
            let partitions = (0..n).map(|_| buf.get_i32()).collect();
            out.push(TopicPartitions { topic, partitions });
        }
        Some(out)
    }
    parse(raw).unwrap_or_default()
}

/// Every group of this broker's coordinator with its members and lag, sorted by id. Empty
/// while the coordinator has not started or is loading.
pub fn groups(broker: &Broker) -> Vec<GroupInfo> {
    let Some(service) = broker.groups() else {
        return vec![];
    };
    let raw = service.read(|co| {
        let Ok(listed) = co.list_groups(&[]) else {
            return vec![];
        };
        listed
            .into_iter()
            .map(|g| {
                let d = co.describe_group(&g.group_id);
                let committed = co.fetch_offsets(&g.group_id, None).unwrap_or_default();
                (d, committed)
            })
            .collect::<Vec<_>>()
    });
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    raw.into_iter()
        .map(|(d, committed)| {
            let mut offsets = Vec::new();
            for (topic, partitions) in committed {
                for (partition, c) in partitions {
                    let Some(c) = c else { continue };
                    let end = *ends.entry((topic.clone(), partition)).or_insert_with(|| {
                        broker
                            .topic(&topic)
                            .and_then(|t| t.partition(partition).map(|p| p.log_end_offset()))
                            .unwrap_or(-1)
                    });
                    offsets.push(GroupOffset {
                        topic: topic.clone(),
                        partition,
                        committed: c.offset,
                        log_end_offset: end,
                        lag: if end < 0 { 0 } else { (end - c.offset).max(0) },
                    });
                }
            }
            offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            GroupInfo {
                group_id: d.group_id.clone(),
                state: d.state.name().to_string(),
                protocol_type: d.protocol_type.clone(),
                protocol: d.protocol.clone(),
                members: d
                    .members
                    .iter()
                    .map(|m| MemberInfo {
                        member_id: m.member_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        assignment: decode_assignment(&m.assignment),
                    })
                    .collect(),
                offsets,
            }
        })
        .collect()
}

pub fn overview(broker: &Broker, topics: &[TopicInfo], groups: usize) -> Overview {
    let me = node_id(broker);
    let partitions = topics.iter().map(|t| t.partitions.len()).sum();
    match broker.cluster() {
        Some(c) => {
            let image = c.image();
            let mut led: HashMap<i32, usize> = HashMap::new();
            let (mut under, mut offline, mut total) = (0, 0, 0);
            for (_, p) in image.partitions() {
                total += 1;
                *led.entry(p.leader).or_default() += 1;
                if p.isr.len() < p.replicas.len() {
                    under += 1;
                }
                if p.leader < 0 || !image.is_live(p.leader) {
                    offline += 1;
                }
            }
            let brokers = image
                .brokers
                .iter()
                .map(|(id, b)| {
                    let ep = b.registration.endpoints.first();
                    BrokerInfo {
                        id: *id,
                        host: ep.map(|e| e.host.clone()).unwrap_or_default(),
                        port: ep.map_or(0, |e| i32::from(e.port)),
                        fenced: b.fenced,
                        partitions_led: led.get(id).copied().unwrap_or(0),
                    }
                })
                .collect();
            Overview {
                cluster_id: broker.cluster_id().to_string(),
                broker_id: me,
                controller_id: c.node().leader_id().unwrap_or(-1),
                cluster_mode: true,
                brokers,
                topics: image.topics.len(),
                partitions: total,
                under_replicated_partitions: under,
                offline_partitions: offline,
                groups,
                metadata_applied_index: image.applied_index,
                metadata_log_end_index: c.node().log_end_index(),
                metadata_follower_lag: c.node().follower_lags(),
            }
        }
        None => Overview {
            cluster_id: broker.cluster_id().to_string(),
            broker_id: me,
            controller_id: me,
            cluster_mode: false,
            brokers: vec![BrokerInfo {
                id: me,
                host: broker.advertised_host.clone(),
                port: broker.advertised_port,
                fenced: false,
                partitions_led: partitions,
            }],
            topics: topics.len(),
            partitions,
            under_replicated_partitions: 0,
            offline_partitions: 0,
            groups,
            metadata_applied_index: 0,
            metadata_log_end_index: 0,
            metadata_follower_lag: Vec::new(),
        },
    }
}

/// Samples kept per group: one every [`LAG_SAMPLE_MS`], for 5 minutes.
pub const LAG_SAMPLES: usize = 150;
pub const LAG_SAMPLE_MS: u64 = 2_000;

#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    /// Wall-clock milliseconds.
    pub t: i64,
    /// Lag per `topic-partition`.
    pub lags: BTreeMap<String, i64>,
}

/// The recent lag of every group, sampled in the background while the listener runs.
#[derive(Default)]
pub struct LagHistory {
    groups: Mutex<HashMap<String, VecDeque<LagSample>>>,
}

impl LagHistory {
    pub fn sample(&self, now_ms: i64, groups: &[GroupInfo]) {
        let mut h = self.groups.lock().expect("lag history lock");
        h.retain(|id, _| groups.iter().any(|g| &g.group_id == id));
        for g in groups {
            let samples = h.entry(g.group_id.clone()).or_default();
            samples.push_back(LagSample {
                t: now_ms,
                lags: g
                    .offsets
                    .iter()
                    .map(|o| (format!("{}-{}", o.topic, o.partition), o.lag))
                    .collect(),
            });
            while samples.len() > LAG_SAMPLES {
                samples.pop_front();
            }
        }
    }

    pub fn of(&self, group: &str) -> Vec<LagSample> {
        let h = self.groups.lock().expect("lag history lock");
        h.get(group)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, lag: i64) -> GroupInfo {
        GroupInfo {
            group_id: id.to_string(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members: vec![],
            offsets: vec![GroupOffset {
                topic: "t".into(),
                partition: 0,
                committed: 10,
                log_end_offset: 10 + lag,
                lag,
            }],
        }
    }

    #[test]
    fn lag_history_is_bounded_and_forgets_deleted_groups() {
        let h = LagHistory::default();
        for i in 0..(LAG_SAMPLES as i64 + 20) {
            h.sample(i, &[group("a", i), group("b", 1)]);
        }
        let a = h.of("a");
        assert_eq!(a.len(), LAG_SAMPLES);
        assert_eq!(a.last().unwrap().lags["t-0"], LAG_SAMPLES as i64 + 19);
        assert_eq!(a.first().unwrap().t, 20);
        h.sample(1000, &[group("a", 0)]);
        assert!(h.of("b").is_empty());
    }

    #[test]
    fn assignment_decoding_tolerates_garbage() {
        assert!(decode_assignment(&bytes::Bytes::from_static(b"")).is_empty());
        assert!(decode_assignment(&bytes::Bytes::from_static(b"\x00\x09abc")).is_empty());
        assert!(
            decode_assignment(&bytes::Bytes::from_static(b"\x00\x00\x7f\xff\xff\xff")).is_empty()
        );
    }
}
