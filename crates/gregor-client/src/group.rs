//! Consumer groups, classic protocol: the consumer protocol's subscription/assignment
//! encoding, the `range` and `cooperative-sticky` assignors, and group membership
//! (JoinGroup / SyncGroup / Heartbeat / LeaveGroup).
//!
//! With `cooperative-sticky` the leader keeps every member's owned partitions where the
//! balance allows and withholds a partition that moves until its previous owner has given
//! it up: a member whose new assignment lacks partitions it owned revokes just those and
//! rejoins at once (KIP-429), so partitions that stay put are never paused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTp;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTp;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::client::Client;
use crate::error::{Error, Result};

/// A topic-partition.
pub type Tp = (String, i32);

/// Partition assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// Kafka's `RangeAssignor`: per topic, consecutive ranges to members in member-id order.
    Range,
    /// Kafka's `CooperativeStickyAssignor` (incremental rebalancing).
    CooperativeSticky,
}

impl Assignor {
    /// Protocol name as sent in JoinGroup.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    fn from_name(n: &str) -> Option<Assignor> {
        match n {
            "range" => Some(Assignor::Range),
            "cooperative-sticky" => Some(Assignor::CooperativeSticky),
            _ => None,
        }
    }
}

impl std::str::FromStr for Assignor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Assignor::from_name(s).ok_or_else(|| {
            Error::Config(format!(
                "unknown assignor {s:?} (range, cooperative-sticky)"
            ))
        })
    }
}

fn group_tps<'a>(tps: impl IntoIterator<Item = &'a Tp>) -> BTreeMap<&'a str, Vec<i32>> {
    let mut m: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        m.entry(t).or_default().push(*p);
    }
    m
}

/// Encode a subscription (consumer protocol v1, with owned partitions).
pub fn encode_subscription(topics: &[String], owned: &BTreeSet<Tp>) -> Bytes {
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(
            group_tps(owned)
                .into_iter()
                .map(|(t, ps)| {
                    OwnedTp::default()
                        .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let mut b = BytesMut::new();
    b.put_i16(1);
    sub.encode(&mut b, 1).expect("subscription encodes");
    b.freeze()
}

/// Decode a subscription: `(topics, owned partitions)`.
pub fn decode_subscription(mut b: Bytes) -> Result<(Vec<String>, BTreeSet<Tp>)> {
    if b.remaining() < 2 {
        return Err(Error::Protocol("short subscription".into()));
    }
    let v = b.get_i16().clamp(0, 3);
    let sub = ConsumerProtocolSubscription::decode(&mut b, v)
        .map_err(|e| Error::Protocol(format!("subscription: {e:#}")))?;
    let owned = sub
        .owned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect();
    Ok((sub.topics.iter().map(|t| t.to_string()).collect(), owned))
}

/// Encode an assignment (consumer protocol v1).
pub fn encode_assignment(tps: &BTreeSet<Tp>) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        group_tps(tps)
            .into_iter()
            .map(|(t, ps)| {
                AssignedTp::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut b = BytesMut::new();
    b.put_i16(1);
    a.encode(&mut b, 1).expect("assignment encodes");
    b.freeze()
}

/// Decode an assignment (empty bytes = nothing assigned).
pub fn decode_assignment(mut b: Bytes) -> Result<Vec<Tp>> {
    if b.remaining() < 2 {
        return Ok(Vec::new());
    }
    let v = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, v)
        .map_err(|e| Error::Protocol(format!("assignment: {e:#}")))?;
    Ok(a.assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect())
}

/// A member's subscription as seen by the leader.
#[derive(Debug, Clone, Default)]
pub struct MemberSubscription {
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions the member owns now (cooperative protocol).
    pub owned: BTreeSet<Tp>,
}

/// Kafka's range assignment: for each topic, members subscribed to it (sorted by id) get
/// consecutive ranges; the first `partitions % members` get one extra.
pub fn assign_range(
    members: &BTreeMap<String, MemberSubscription>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out: BTreeMap<String, BTreeSet<Tp>> = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (topic, &n) in partitions {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let per = n as usize / subs.len();
        let extra = n as usize % subs.len();
        let mut start = 0usize;
        for (i, m) in subs.iter().enumerate() {
            let len = per + usize::from(i < extra);
            for p in start..start + len {
                out.get_mut(*m).unwrap().insert((topic.clone(), p as i32));
            }
            start += len;
        }
    }
    out
}

/// Sticky assignment: balanced (counts differ by at most one among members subscribed to
/// the same topics), keeping as many owned partitions in place as the balance allows.
/// Returns the *target* assignment; see [`cooperative_filter`] for the first round.
pub fn assign_sticky(
    members: &BTreeMap<String, MemberSubscription>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out: BTreeMap<String, BTreeSet<Tp>> = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    if members.is_empty() {
        return out;
    }
    let all: Vec<Tp> = partitions
        .iter()
        .filter(|(t, _)| members.values().any(|s| s.topics.contains(*t)))
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
        .collect();
    let eligible = |m: &str, tp: &Tp| members[m].topics.contains(&tp.0);
    let n_members = members.len();
    let quota_floor = all.len() / n_members;
    let mut extra = all.len() % n_members;
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    let all_set: BTreeSet<&Tp> = all.iter().collect();
    // Keep owned partitions up to the quota (floor, or floor+1 while extras remain).
    for (m, s) in members {
        let mut kept = 0usize;
        for tp in &s.owned {
            if !all_set.contains(tp) || !eligible(m, tp) || taken.contains(tp) {
                continue;
            }
            let cap = quota_floor + usize::from(extra > 0);
            if kept < cap {
                out.get_mut(m).unwrap().insert(tp.clone());
                taken.insert(tp.clone());
                kept += 1;
            }
        }
        if kept > quota_floor && extra > 0 {
            extra -= 1;
        }
    }
    // Hand out the rest to the least loaded eligible member, most constrained first.
    let mut rest: Vec<Tp> = all.into_iter().filter(|tp| !taken.contains(tp)).collect();
    rest.sort_by_key(|tp| members.keys().filter(|m| eligible(m, tp)).count());
    for tp in rest {
        if taken.contains(&tp) {
            continue;
        }
        let target = out
            .iter()
            .filter(|(m, _)| eligible(m, &tp))
            .min_by_key(|(m, a)| (a.len(), (*m).clone()))
            .map(|(m, _)| m.clone());
        if let Some(m) = target {
            out.get_mut(&m).unwrap().insert(tp.clone());
            taken.insert(tp);
        }
    }
    out
}

/// First round of a cooperative rebalance: a partition assigned to a member other than its
/// current owner is withheld, so the owner revokes it and rejoins before it moves.
pub fn cooperative_filter(
    members: &BTreeMap<String, MemberSubscription>,
    target: BTreeMap<String, BTreeSet<Tp>>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut owner: BTreeMap<&Tp, &str> = BTreeMap::new();
    for (m, s) in members {
        for tp in &s.owned {
            owner.insert(tp, m);
        }
    }
    target
        .into_iter()
        .map(|(m, tps)| {
            let kept = tps
                .into_iter()
                .filter(|tp| owner.get(tp).is_none_or(|o| *o == m))
                .collect();
            (m, kept)
        })
        .collect()
}

/// Group membership state of one consumer.
pub(crate) struct Membership {
    pub group: String,
    pub member_id: String,
    pub generation: i32,
    pub assignor: Assignor,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub coordinator: i32,
    pub rejoin: Arc<AtomicBool>,
    /// Connection tag: each member talks to the coordinator on its own connection, since a
    /// JoinGroup parked by the coordinator blocks everything behind it on that connection.
    pub tag: String,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Membership {
    pub fn new(
        group: &str,
        assignor: Assignor,
        session_timeout: Duration,
        tag: String,
    ) -> Membership {
        Membership {
            group: group.to_string(),
            member_id: String::new(),
            generation: -1,
            assignor,
            session_timeout,
            rebalance_timeout: Duration::from_secs(60),
            coordinator: -1,
            rejoin: Arc::new(AtomicBool::new(true)),
            tag,
            heartbeat: None,
        }
    }

    pub fn needs_rejoin(&self) -> bool {
        self.rejoin.load(Ordering::SeqCst)
    }

    /// Join (and sync); returns the new assignment.
    pub async fn join(
        &mut self,
        client: &Client,
        topics: &[String],
        owned: &BTreeSet<Tp>,
    ) -> Result<BTreeSet<Tp>> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let gid = GroupId(StrBytes::from_string(self.group.clone()));
        for attempt in 0..50u64 {
            self.coordinator = crate::admin::find_coordinator(client, &self.group).await?;
            let meta = encode_subscription(topics, owned);
            let req = JoinGroupRequest::default()
                .with_group_id(gid.clone())
                .with_session_timeout_ms(self.session_timeout.as_millis() as i32)
                .with_rebalance_timeout_ms(self.rebalance_timeout.as_millis() as i32)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(self.assignor.name()))
                    .with_metadata(meta)]);
            let conn = client.conn_tagged(self.coordinator, &self.tag).await?;
            let resp = conn.send(&req).await?;
            match resp.error_code {
                0 => {}
                79 => {
                    // MEMBER_ID_REQUIRED: rejoin with the id the coordinator gave us.
                    self.member_id = resp.member_id.to_string();
                    continue;
                }
                25 => {
                    // UNKNOWN_MEMBER_ID
                    self.member_id.clear();
                    continue;
                }
                code => {
                    let e = Error::kafka(code, format!("joining group {}", self.group), None);
                    if e.is_retriable() || code == 27 {
                        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(10)))
                            .await;
                        continue;
                    }
                    return Err(e);
                }
            }
            self.member_id = resp.member_id.to_string();
            self.generation = resp.generation_id;
            let protocol = resp
                .protocol_name
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| self.assignor.name().to_string());
            let mut assignments = Vec::new();
            if resp.leader == resp.member_id {
                let mut members = BTreeMap::new();
                let mut all_topics = BTreeSet::new();
                for m in &resp.members {
                    let (ts, owned) = decode_subscription(m.metadata.clone())?;
                    all_topics.extend(ts.iter().cloned());
                    members.insert(
                        m.member_id.to_string(),
                        MemberSubscription { topics: ts, owned },
                    );
                }
                let mut parts = BTreeMap::new();
                let names: Vec<String> = all_topics.into_iter().collect();
                client.refresh_metadata(Some(&names)).await?;
                for t in &names {
                    if let Some(md) = client.topic(t) {
                        parts.insert(t.clone(), md.partitions.len() as i32);
                    }
                }
                let plan = match Assignor::from_name(&protocol).unwrap_or(self.assignor) {
                    Assignor::Range => assign_range(&members, &parts),
                    Assignor::CooperativeSticky => {
                        cooperative_filter(&members, assign_sticky(&members, &parts))
                    }
                };
                assignments = plan
                    .iter()
                    .map(|(m, tps)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(m.clone()))
                            .with_assignment(encode_assignment(tps))
                    })
                    .collect();
            }
            let sync = SyncGroupRequest::default()
                .with_group_id(gid.clone())
                .with_generation_id(self.generation)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_assignments(assignments);
            let sresp = conn
                .send_built(|v| {
                    if v >= 5 {
                        sync.with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                            .with_protocol_name(Some(StrBytes::from_string(protocol)))
                    } else {
                        sync
                    }
                })
                .await?;
            match sresp.error_code {
                0 => {}
                27 | 22 | 25 => {
                    // rebalance in progress / illegal generation / unknown member: rejoin
                    if sresp.error_code == 25 {
                        self.member_id.clear();
                    }
                    continue;
                }
                code => {
                    return Err(Error::kafka(
                        code,
                        format!("syncing group {}", self.group),
                        None,
                    ))
                }
            }
            let assigned: BTreeSet<Tp> = decode_assignment(sresp.assignment)?.into_iter().collect();
            // Cooperative: revoked partitions mean another round is needed.
            let revoked = owned.iter().any(|tp| !assigned.contains(tp));
            self.rejoin.store(
                self.assignor == Assignor::CooperativeSticky && revoked,
                Ordering::SeqCst,
            );
            self.start_heartbeat(client.clone());
            return Ok(assigned);
        }
        Err(Error::Protocol(format!(
            "could not join group {}",
            self.group
        )))
    }

    fn start_heartbeat(&mut self, client: Client) {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let coord = self.coordinator;
        let rejoin = self.rejoin.clone();
        let tag = self.tag.clone();
        let interval = (self.session_timeout / 3).max(Duration::from_millis(100));
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let sent = async { client.conn_tagged(coord, &tag).await?.send(&req).await };
                match sent.await {
                    Ok(r) if r.error_code == 0 => {}
                    Ok(r) => {
                        tracing::debug!(code = r.error_code, "heartbeat: rejoin needed");
                        rejoin.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat failed");
                        rejoin.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }

    /// Leave the group (best effort).
    pub async fn leave(&mut self, client: &Client) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if self.member_id.is_empty() || self.coordinator < 0 {
            return;
        }
        let group = self.group.clone();
        let member = self.member_id.clone();
        let build = move |v: i16| {
            let req = LeaveGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())));
            if v <= 2 {
                req.with_member_id(StrBytes::from_string(member.clone()))
            } else {
                req.with_members(vec![
                    MemberIdentity::default().with_member_id(StrBytes::from_string(member.clone()))
                ])
            }
        };
        match client.conn_tagged(self.coordinator, &self.tag).await {
            Ok(c) => match c.send_built(build).await {
                Ok(r) if r.error_code != 0 => {
                    tracing::debug!(code = r.error_code, "LeaveGroup refused")
                }
                Ok(r) => {
                    for m in r.members.iter().filter(|m| m.error_code != 0) {
                        tracing::debug!(code = m.error_code, member = %m.member_id, "LeaveGroup member refused");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "LeaveGroup failed"),
            },
            Err(e) => tracing::debug!(error = %e, "LeaveGroup: no connection"),
        }
        self.member_id.clear();
        self.generation = -1;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Spec<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, i32)]);

    fn members(spec: &[Spec]) -> BTreeMap<String, MemberSubscription> {
        spec.iter()
            .map(|(m, ts, owned)| {
                (
                    m.to_string(),
                    MemberSubscription {
                        topics: ts.iter().map(|t| t.to_string()).collect(),
                        owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
                    },
                )
            })
            .collect()
    }

    fn parts(spec: &[(&str, i32)]) -> BTreeMap<String, i32> {
        spec.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_matches_kafka() {
        // Kafka's RangeAssignor: t0 (3 partitions), t1 (3): c0 gets p0,p1 of each; c1 gets p2.
        let m = members(&[("c0", &["t0", "t1"], &[]), ("c1", &["t0", "t1"], &[])]);
        let a = assign_range(&m, &parts(&[("t0", 3), ("t1", 3)]));
        let c0: Vec<_> = a["c0"].iter().cloned().collect();
        assert_eq!(
            c0,
            vec![
                ("t0".into(), 0),
                ("t0".into(), 1),
                ("t1".into(), 0),
                ("t1".into(), 1)
            ]
        );
        assert_eq!(a["c1"].len(), 2);
    }

    #[test]
    fn sticky_is_balanced_and_keeps_owned() {
        let m = members(&[
            ("a", &["t"], &[("t", 0), ("t", 1), ("t", 2), ("t", 3)]),
            ("b", &["t"], &[]),
        ]);
        let target = assign_sticky(&m, &parts(&[("t", 4)]));
        assert_eq!(target["a"].len(), 2);
        assert_eq!(target["b"].len(), 2);
        assert!(target["a"].iter().all(|tp| m["a"].owned.contains(tp)));
        // First cooperative round: b gets nothing that a still owns.
        let first = cooperative_filter(&m, target.clone());
        assert!(first["b"].is_empty());
        assert_eq!(first["a"], target["a"]);
        // Second round: a no longer owns the revoked ones, so b gets them.
        let m2 = members(&[("a", &["t"], &[("t", 0), ("t", 1)]), ("b", &["t"], &[])]);
        let second = cooperative_filter(&m2, assign_sticky(&m2, &parts(&[("t", 4)])));
        assert_eq!(second["b"].len(), 2);
        assert_eq!(second["a"].len(), 2);
    }

    #[test]
    fn sticky_covers_every_partition_once() {
        let m = members(&[
            ("a", &["t", "u"], &[]),
            ("b", &["t"], &[]),
            ("c", &["t", "u"], &[]),
        ]);
        let a = assign_sticky(&m, &parts(&[("t", 7), ("u", 5)]));
        let mut all: Vec<Tp> = a.values().flatten().cloned().collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, 12);
        assert_eq!(all.len(), 12);
        assert!(a["b"].iter().all(|(t, _)| t == "t"));
        let sizes: Vec<usize> = a.values().map(|s| s.len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }

    #[test]
    fn protocol_encoding_roundtrips() {
        let owned: BTreeSet<Tp> = [("t".to_string(), 1), ("t".to_string(), 3)].into();
        let b = encode_subscription(&["t".into(), "u".into()], &owned);
        let (ts, o) = decode_subscription(b).unwrap();
        assert_eq!(ts, vec!["t", "u"]);
        assert_eq!(o, owned);
        let a = decode_assignment(encode_assignment(&owned)).unwrap();
        assert_eq!(a, vec![("t".to_string(), 1), ("t".to_string(), 3)]);
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    }
}
