//! Coordinator tests driven by a simulated clock.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use proptest::prelude::*;

use crate::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn c(e: ResponseError) -> i16 {
    e.code()
}

/// A coordinator, a clock, and the completions it produced per waiter.
struct Sim {
    co: Coordinator,
    now: i64,
    next_waiter: u64,
    done: HashMap<Waiter, Completion>,
    records: Vec<OffsetsRecord>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(GroupConfig::default())
    }

    fn with(config: GroupConfig) -> Sim {
        let mut co = Coordinator::new(config);
        for p in 0..co.config().offsets_partitions {
            co.finish_loading(p);
        }
        Sim {
            co,
            now: 1_000_000,
            next_waiter: 1,
            done: HashMap::new(),
            records: vec![],
        }
    }

    fn apply(&mut self, fx: Effects) {
        for (w, r) in fx.completions {
            assert!(
                self.done.insert(w, r).is_none(),
                "waiter {w} completed twice"
            );
        }
        self.records.extend(fx.records);
    }

    fn advance(&mut self, ms: i64) {
        let target = self.now + ms;
        // Tick at every deadline on the way, as the broker's timer task does.
        while let Some(d) = self.co.next_deadline() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            let mut fx = Effects::default();
            self.co.tick(self.now, &mut fx);
            self.apply(fx);
        }
        self.now = target;
        let mut fx = Effects::default();
        self.co.tick(self.now, &mut fx);
        self.apply(fx);
    }

    fn join_req(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member.into(),
            group_instance_id: instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION,
            rebalance_timeout_ms: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    /// Sends a JoinGroup; returns its waiter.
    fn join(&mut self, req: JoinRequest) -> Waiter {
        let w = self.next_waiter;
        self.next_waiter += 1;
        let mut fx = Effects::default();
        self.co.join_group(self.now, w, req, &mut fx);
        self.apply(fx);
        w
    }

    fn join_result(&mut self, w: Waiter) -> Option<JoinResponse> {
        match self.done.get(&w) {
            Some(Completion::Join(r)) => Some(r.clone()),
            Some(other) => panic!("join waiter got {other:?}"),
            None => None,
        }
    }

    /// A dynamic member's full first join (MEMBER_ID_REQUIRED round trip); returns its id and
    /// the waiter of the second JoinGroup.
    fn new_member(&mut self, protocols: &[&str]) -> (String, Waiter) {
        let w = self.join(Sim::join_req("", None, protocols));
        let r = self.join_result(w).expect("immediate answer");
        assert_eq!(r.error, c(ResponseError::MemberIdRequired));
        let id = r.member_id.clone();
        let w = self.join(Sim::join_req(&id, None, protocols));
        (id, w)
    }

    fn sync(&mut self, member: &str, generation: i32, assignments: &[(&str, &str)]) -> Waiter {
        let w = self.next_waiter;
        self.next_waiter += 1;
        let mut fx = Effects::default();
        self.co.sync_group(
            self.now,
            w,
            SyncRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member.into(),
                group_instance_id: None,
                protocol_type: None,
                protocol_name: None,
                assignments: assignments
                    .iter()
                    .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                    .collect(),
            },
            &mut fx,
        );
        self.apply(fx);
        w
    }

    fn sync_result(&self, w: Waiter) -> Option<SyncResponse> {
        match self.done.get(&w) {
            Some(Completion::Sync(r)) => Some(r.clone()),
            Some(other) => panic!("sync waiter got {other:?}"),
            None => None,
        }
    }

    fn heartbeat(&mut self, member: &str, generation: i32) -> i16 {
        self.co.heartbeat(self.now, "g", member, None, generation)
    }

    fn state(&self) -> (GroupState, i32) {
        self.co.group_state("g").expect("group exists")
    }

    /// A commit whose records became durable (the broker confirms it).
    fn commit(
        &mut self,
        member: &str,
        generation: i32,
        offset: i64,
    ) -> Result<Vec<i16>, ResponseError> {
        let r = self.commit_unconfirmed(member, generation, offset);
        if let Some(undo) = self.co.take_commit_undo() {
            self.co.confirm_commit(undo);
        }
        r
    }

    /// A commit whose records are not durable yet (its undo record left to the test).
    fn commit_unconfirmed(
        &mut self,
        member: &str,
        generation: i32,
        offset: i64,
    ) -> Result<Vec<i16>, ResponseError> {
        let mut fx = Effects::default();
        let r = self.co.commit_offsets(
            self.now,
            &CommitRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member.into(),
                group_instance_id: None,
                partitions: vec![CommitPartition {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                    leader_epoch: 0,
                    metadata: None,
                }],
            },
            &mut fx,
        );
        self.apply(fx);
        r
    }
}

#[test]
fn lone_member_gets_its_assignment_after_the_initial_delay() {
    let mut s = Sim::new();
    let (id, w) = s.new_member(&["range"]);
    assert!(s.join_result(w).is_none(), "waits for the initial delay");
    s.advance(99);
    assert!(s.join_result(w).is_none());
    s.advance(1);
    let r = s.join_result(w).expect("joined after 100 ms");
    assert_eq!(r.error, 0);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(s.state(), (GroupState::CompletingRebalance, 1));
    let sw = s.sync(&id, 1, &[(id.as_str(), "all")]);
    assert_eq!(s.sync_result(sw).unwrap().assignment, Bytes::from("all"));
    assert_eq!(s.state(), (GroupState::Stable, 1));
    assert_eq!(s.heartbeat(&id, 1), 0);
    assert!(!s.records.is_empty(), "group metadata is persisted");
}

/// Brings a group to Stable with `n` dynamic members; returns their ids (leader first) and
/// the generation.
fn stable_group(s: &mut Sim, n: usize) -> (Vec<String>, i32) {
    let mut ids = vec![];
    let mut waiters = vec![];
    for _ in 0..n {
        let (id, w) = s.new_member(&["range", "roundrobin"]);
        ids.push(id);
        waiters.push(w);
    }
    // Each arrival during the initial delay extends it once more.
    s.advance(100 * n as i64);
    let results: Vec<JoinResponse> = waiters
        .iter()
        .map(|w| s.join_result(*w).expect("joined"))
        .collect();
    let generation = results[0].generation_id;
    let leader = results[0].leader.clone();
    assert!(results.iter().all(|r| r.leader == leader && r.error == 0));
    let assignments: Vec<(String, String)> =
        ids.iter().map(|m| (m.clone(), format!("a-{m}"))).collect();
    let refs: Vec<(&str, &str)> = assignments
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    for id in &ids {
        if *id != leader {
            s.sync(id, generation, &[]);
        }
    }
    s.sync(&leader, generation, &refs);
    assert_eq!(s.state(), (GroupState::Stable, generation));
    ids.sort_by_key(|m| *m != leader);
    (ids, generation)
}

#[test]
fn a_repeated_join_does_not_cut_the_initial_delay_short() {
    let mut s = Sim::new();
    let (id, w1) = s.new_member(&["range"]);
    s.advance(50);
    // The client retries its JoinGroup (say after a reconnect) during the initial delay.
    let w2 = s.join(Sim::join_req(&id, None, &["range"]));
    assert_eq!(
        s.join_result(w1).unwrap().error,
        c(ResponseError::RebalanceInProgress)
    );
    assert!(s.join_result(w2).is_none());
    s.advance(50);
    assert_eq!(s.join_result(w2).unwrap().generation_id, 1);
}

#[test]
fn members_joining_during_the_initial_delay_share_one_generation() {
    let mut s = Sim::new();
    let (ids, generation) = stable_group(&mut s, 3);
    assert_eq!(generation, 1);
    assert_eq!(ids.len(), 3);
}

#[test]
fn a_new_member_triggers_a_rebalance_that_existing_members_learn_by_heartbeat() {
    let mut s = Sim::new();
    let (ids, g1) = stable_group(&mut s, 2);
    let (new_id, w_new) = s.new_member(&["range"]);
    assert_eq!(s.state().0, GroupState::PreparingRebalance);
    assert!(s.join_result(w_new).is_none());
    for id in &ids {
        assert_eq!(s.heartbeat(id, g1), c(ResponseError::RebalanceInProgress));
    }
    let w0 = s.join(Sim::join_req(&ids[0], None, &["range", "roundrobin"]));
    assert!(s.join_result(w0).is_none());
    let w1 = s.join(Sim::join_req(&ids[1], None, &["range", "roundrobin"]));
    // All three joined: the join phase ends without waiting for the timeout.
    let r = s.join_result(w1).expect("complete");
    assert_eq!(r.generation_id, g1 + 1);
    // "range" is the only protocol all members support.
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(s.join_result(w_new).unwrap().generation_id, g1 + 1);
    // Old generation is now illegal.
    assert_eq!(
        s.heartbeat(&new_id, g1),
        c(ResponseError::IllegalGeneration)
    );
    assert_eq!(s.heartbeat(&new_id, g1 + 1), 0);
}

#[test]
fn members_that_do_not_rejoin_within_the_rebalance_timeout_are_removed() {
    let mut s = Sim::new();
    let (ids, g1) = stable_group(&mut s, 2);
    // ids[1] rejoins (e.g. its subscription changed); ids[0] never does but keeps heartbeating
    // is not possible (heartbeat says rebalance); it simply goes silent.
    let w = s.join(Sim::join_req(&ids[1], None, &["roundrobin"]));
    assert_eq!(s.state().0, GroupState::PreparingRebalance);
    s.advance(REBALANCE as i64 - 1);
    // ids[0] expired by session timeout earlier (10 s < 30 s) and the join completed then.
    let r = s.join_result(w).expect("completed");
    assert_eq!(r.generation_id, g1 + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.leader, ids[1]);
    assert_eq!(
        s.heartbeat(&ids[0], g1 + 1),
        c(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_member_that_heartbeats_but_never_rejoins_is_removed_at_the_rebalance_timeout() {
    // The member is alive (heartbeats) but stuck in processing longer than
    // max.poll.interval.ms (= rebalance timeout): the join phase ends without it.
    let mut s = Sim::new();
    let (ids, g1) = stable_group(&mut s, 2);
    let started = s.now;
    let w = s.join(Sim::join_req(&ids[1], None, &["range"]));
    while s.now - started < REBALANCE as i64 - 3_000 {
        s.advance(3_000);
        assert_eq!(
            s.heartbeat(&ids[0], g1),
            c(ResponseError::RebalanceInProgress)
        );
        assert!(s.join_result(w).is_none(), "still waiting for ids[0]");
    }
    s.advance(3_000);
    let r = s
        .join_result(w)
        .expect("join phase ended at the rebalance timeout");
    assert_eq!(r.generation_id, g1 + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(s.heartbeat(&ids[0], g1), c(ResponseError::UnknownMemberId));
}

#[test]
fn session_timeout_removes_a_silent_member_and_rebalances() {
    let mut s = Sim::new();
    let (ids, g1) = stable_group(&mut s, 2);
    for _ in 0..3 {
        s.advance(3_000);
        assert_eq!(s.heartbeat(&ids[1], g1), 0);
    }
    s.advance(3_000);
    // ids[0] (leader) has been silent for 12 s > 10 s session timeout.
    assert_eq!(
        s.heartbeat(&ids[1], g1),
        c(ResponseError::RebalanceInProgress)
    );
    let w = s.join(Sim::join_req(&ids[1], None, &["range", "roundrobin"]));
    let r = s.join_result(w).expect("only member left has joined");
    assert_eq!(r.leader, ids[1]);
    assert_eq!(r.generation_id, g1 + 1);
}

#[test]
fn leave_rebalances_and_the_last_leave_empties_the_group() {
    let mut s = Sim::new();
    let (ids, g1) = stable_group(&mut s, 2);
    let mut fx = Effects::default();
    let codes =
        s.co.leave_group(
            s.now,
            "g",
            &[(ids[0].clone(), None), ("nobody".into(), None)],
            &mut fx,
        )
        .unwrap();
    s.apply(fx);
    assert_eq!(codes, vec![0, c(ResponseError::UnknownMemberId)]);
    assert_eq!(s.state().0, GroupState::PreparingRebalance);
    let w = s.join(Sim::join_req(&ids[1], None, &["range"]));
    assert_eq!(s.join_result(w).unwrap().generation_id, g1 + 1);
    let mut fx = Effects::default();
    s.co.leave_group(s.now, "g", &[(ids[1].clone(), None)], &mut fx)
        .unwrap();
    s.apply(fx);
    assert_eq!(s.state(), (GroupState::Empty, g1 + 2));
}

#[test]
fn leaving_during_completing_rebalance_fails_waiting_syncs() {
    let mut s = Sim::new();
    let (a, wa) = s.new_member(&["range"]);
    let (b, wb) = s.new_member(&["range"]);
    s.advance(200);
    let leader = s.join_result(wa).unwrap().leader;
    let follower = if leader == a { b.clone() } else { a.clone() };
    let _ = wb;
    let sw = s.sync(&follower, 1, &[]);
    assert!(s.sync_result(sw).is_none(), "follower waits for the leader");
    let mut fx = Effects::default();
    s.co.leave_group(s.now, "g", &[(leader, None)], &mut fx)
        .unwrap();
    s.apply(fx);
    assert_eq!(
        s.sync_result(sw).unwrap().error,
        c(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn static_member_returning_in_time_keeps_its_assignment_without_rebalance() {
    let mut s = Sim::new();
    let w = s.join(Sim::join_req("", Some("i1"), &["range"]));
    let w2 = s.join(Sim::join_req("", Some("i2"), &["range"]));
    s.advance(200);
    let r1 = s.join_result(w).unwrap();
    let r2 = s.join_result(w2).unwrap();
    assert_eq!(r1.error, 0, "static members skip MEMBER_ID_REQUIRED");
    let (leader, other) = if r1.leader == r1.member_id {
        (r1.member_id.clone(), r2.member_id.clone())
    } else {
        (r2.member_id.clone(), r1.member_id.clone())
    };
    s.sync(&other, 1, &[]);
    s.sync(&leader, 1, &[(&leader, "A"), (&other, "B")]);
    assert_eq!(s.state(), (GroupState::Stable, 1));
    let other_instance = if other == r1.member_id { "i1" } else { "i2" };

    // The non-leader restarts: a new JoinGroup with the same instance id and no member id.
    s.advance(2_000);
    let w3 = s.join(Sim::join_req("", Some(other_instance), &["range"]));
    let r3 = s.join_result(w3).expect("answered at once");
    assert_eq!(r3.error, 0);
    assert_eq!(r3.generation_id, 1, "no new generation");
    assert_ne!(r3.member_id, other);
    assert_eq!(r3.leader, leader);
    assert_eq!(s.state(), (GroupState::Stable, 1));
    let sw = s.sync(&r3.member_id, 1, &[]);
    assert_eq!(s.sync_result(sw).unwrap().assignment, Bytes::from("B"));
    // The old incarnation is fenced.
    assert_eq!(
        s.co.heartbeat(s.now, "g", &other, Some(other_instance), 1),
        c(ResponseError::FencedInstanceId)
    );

    // The leader restarts too: still no rebalance, and it is told the old leader id so it
    // does not compute an assignment.
    let leader_instance = if other_instance == "i1" { "i2" } else { "i1" };
    let w4 = s.join(Sim::join_req("", Some(leader_instance), &["range"]));
    let r4 = s.join_result(w4).unwrap();
    assert_eq!(r4.generation_id, 1);
    assert_eq!(r4.leader, leader);
    assert_ne!(r4.member_id, leader);
    assert!(r4.members.is_empty());
}

#[test]
fn static_member_gone_longer_than_the_session_timeout_is_removed() {
    let mut s = Sim::new();
    let w = s.join(Sim::join_req("", Some("i1"), &["range"]));
    s.advance(100);
    let r = s.join_result(w).unwrap();
    s.sync(&r.member_id, 1, &[(&r.member_id, "A")]);
    s.advance(SESSION as i64 + 1);
    assert_eq!(s.state(), (GroupState::Empty, 2));
}

#[test]
fn inconsistent_protocols_and_bad_requests_are_refused() {
    let mut s = Sim::new();
    let (_ids, _) = stable_group(&mut s, 1);
    let mut other = Sim::join_req("", None, &["sticky"]);
    other.require_known_member_id = false;
    let w = s.join(other);
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::InconsistentGroupProtocol)
    );
    let mut wrong_type = Sim::join_req("", None, &["range"]);
    wrong_type.protocol_type = "connect".into();
    let w = s.join(wrong_type);
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::InconsistentGroupProtocol)
    );
    let mut short = Sim::join_req("", None, &["range"]);
    short.session_timeout_ms = 10;
    let w = s.join(short);
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::InvalidSessionTimeout)
    );
    let mut empty = Sim::join_req("", None, &["range"]);
    empty.group_id = String::new();
    let w = s.join(empty);
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::InvalidGroupId)
    );
    let mut huge = Sim::join_req("", None, &["range"]);
    huge.group_id = "g".repeat(40_000);
    let w = s.join(huge);
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::InvalidGroupId)
    );
    let w = s.join(Sim::join_req("ghost", None, &["range"]));
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::UnknownMemberId)
    );
}

#[test]
fn group_size_is_limited() {
    let mut s = Sim::with(GroupConfig {
        max_size: 2,
        ..GroupConfig::default()
    });
    s.new_member(&["range"]);
    s.new_member(&["range"]);
    let w = s.join(Sim::join_req("", None, &["range"]));
    assert_eq!(
        s.join_result(w).unwrap().error,
        c(ResponseError::GroupMaxSizeReached)
    );
}

#[test]
fn commits_are_checked_against_membership_and_generation() {
    let mut s = Sim::new();
    let (ids, g) = stable_group(&mut s, 1);
    assert_eq!(s.commit(&ids[0], g, 4259).unwrap(), vec![0]);
    assert_eq!(
        s.commit(&ids[0], g + 7, 1),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(s.commit("ghost", g, 1), Err(ResponseError::UnknownMemberId));
    assert_eq!(s.commit("", -1, 1), Err(ResponseError::UnknownMemberId));
    let fetched = s.co.fetch_offsets("g", None).unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].1[0].1.as_ref().unwrap().offset, 4259);
    let missing =
        s.co.fetch_offsets("other", Some(&[("t".into(), vec![0, 1])]))
            .unwrap();
    assert!(missing[0].1.iter().all(|(_, c)| c.is_none()));
}

#[test]
fn a_group_is_rebuilt_from_its_records() {
    let mut s = Sim::new();
    let (ids, g) = stable_group(&mut s, 1);
    s.commit(&ids[0], g, 100).unwrap();
    s.commit(&ids[0], g, 4259).unwrap();
    let mut fx = Effects::default();
    assert_eq!(s.co.delete_offsets("g", &[], &mut fx), Ok(vec![]));

    let mut co = Coordinator::new(GroupConfig::default());
    let p = co.partition_for("g");
    assert_eq!(
        co.fetch_offsets("g", None),
        Err(ResponseError::CoordinatorLoadInProgress)
    );
    for r in &s.records {
        assert_eq!(r.partition, p);
        co.replay(&r.key, r.value.as_deref(), s.now);
    }
    for p in 0..10 {
        co.finish_loading(p);
    }
    let fetched = co.fetch_offsets("g", None).unwrap();
    assert_eq!(fetched[0].1[0].1.as_ref().unwrap().offset, 4259);
    // Its last stored state: Stable, with its single member.
    assert_eq!(co.group_state("g"), Some((GroupState::Stable, g)));
}

/// A plain OffsetCommit that lands while a transactional one is pending wins when the
/// transaction commits (the later record in the log), live and after a replay of the
/// compacted log, where only the later record of the key is left.
#[test]
fn a_plain_commit_written_after_a_pending_transactional_one_wins() {
    let mut s = Sim::new();
    let mut fx = Effects::default();
    let txn = TxnCommitRequest {
        group_id: "g".into(),
        producer_id: 7,
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        partitions: vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset: 50,
            leader_epoch: 0,
            metadata: None,
        }],
    };
    assert_eq!(s.co.txn_commit_offsets(s.now, &txn, &mut fx), Ok(vec![0]));
    s.apply(fx);
    assert!(s.co.has_pending_txn_offset("g", "t", 0));
    s.commit("", -1, 80).unwrap();
    s.co.complete_txn(7, true, s.now);
    let live = s.co.fetch_offsets("g", None).unwrap();
    assert_eq!(live[0].1[0].1.as_ref().unwrap().offset, 80);

    // The compacted log holds only the plain commit for the key, then the marker.
    let plain = s.records.last().unwrap();
    let mut co = Coordinator::new(GroupConfig::default());
    co.replay(&plain.key, plain.value.as_deref(), s.now);
    co.complete_txn(7, true, s.now);
    for p in 0..10 {
        co.finish_loading(p);
    }
    let replayed = co.fetch_offsets("g", None).unwrap();
    assert_eq!(replayed[0].1[0].1.as_ref().unwrap().offset, 80);

    // A transactional commit with nothing later does become the committed offset.
    let mut fx = Effects::default();
    let later = TxnCommitRequest {
        partitions: vec![CommitPartition {
            offset: 90,
            ..txn.partitions[0].clone()
        }],
        ..txn
    };
    assert_eq!(s.co.txn_commit_offsets(s.now, &later, &mut fx), Ok(vec![0]));
    s.co.complete_txn(7, true, s.now);
    let live = s.co.fetch_offsets("g", None).unwrap();
    assert_eq!(live[0].1[0].1.as_ref().unwrap().offset, 90);
}

#[test]
fn a_stable_group_is_restored_with_its_members_and_generation() {
    let mut s = Sim::new();
    let (ids, g) = stable_group(&mut s, 2);
    let mut co = Coordinator::new(GroupConfig::default());
    for r in &s.records {
        co.replay(&r.key, r.value.as_deref(), s.now);
    }
    for p in 0..10 {
        co.finish_loading(p);
    }
    assert_eq!(co.group_state("g"), Some((GroupState::Stable, g)));
    // Members carry on heartbeating with the same generation: no rebalance.
    for id in &ids {
        assert_eq!(co.heartbeat(s.now + 1_000, "g", id, None, g), 0);
    }
    let d = co.describe_group("g");
    assert_eq!(d.members.len(), 2);
    assert!(d.members.iter().all(|m| !m.assignment.is_empty()));
    // A member that never comes back expires after its session timeout.
    let mut fx = Effects::default();
    co.heartbeat(s.now + 9_000, "g", &ids[0], None, g);
    co.tick(s.now + 1_000 + SESSION as i64 + 1, &mut fx);
    assert_eq!(
        co.group_state("g"),
        Some((GroupState::PreparingRebalance, g))
    );
}

#[test]
fn offsets_of_empty_groups_expire_after_retention() {
    let mut s = Sim::with(GroupConfig {
        offsets_retention_ms: 60_000,
        retention_check_interval_ms: 1_000,
        ..GroupConfig::default()
    });
    assert_eq!(s.commit("", -1, 5).unwrap(), vec![0]);
    s.advance(30_000);
    assert!(s.co.fetch_offsets("g", None).unwrap()[0].1[0].1.is_some());
    s.advance(31_000);
    assert!(s.co.fetch_offsets("g", None).unwrap().is_empty());
    assert!(
        s.co.group_state("g").is_none(),
        "empty group without offsets is removed"
    );
    assert!(
        s.records.iter().any(|r| r.value.is_none()),
        "tombstones written"
    );
}

#[test]
fn delete_group_requires_an_empty_group() {
    let mut s = Sim::new();
    let (ids, _) = stable_group(&mut s, 1);
    let mut fx = Effects::default();
    assert_eq!(
        s.co.delete_group("g", &mut fx),
        c(ResponseError::NonEmptyGroup)
    );
    assert_eq!(
        s.co.delete_group("nope", &mut fx),
        c(ResponseError::GroupIdNotFound)
    );
    s.co.leave_group(s.now, "g", &[(ids[0].clone(), None)], &mut fx)
        .unwrap();
    assert_eq!(s.co.delete_group("g", &mut fx), 0);
    assert!(s.co.group_state("g").is_none());
}

#[test]
fn describe_and_list_report_state_and_members() {
    let mut s = Sim::new();
    let (ids, _) = stable_group(&mut s, 2);
    let d = s.co.describe_group("g");
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 2);
    let m = d.members.iter().find(|m| m.member_id == ids[0]).unwrap();
    assert_eq!(m.client_host, "/127.0.0.1");
    assert_eq!(m.assignment, Bytes::from(format!("a-{}", ids[0])));
    assert_eq!(s.co.describe_group("none").state, GroupState::Dead);
    assert_eq!(s.co.list_groups(&["stable".into()]).unwrap().len(), 1);
    assert!(s.co.list_groups(&["Empty".into()]).unwrap().is_empty());
}

#[test]
fn group_partition_matches_kafka() {
    // java.lang.String.hashCode values are checked in gregor-wire.
    assert_eq!(group_partition("polygenelubricants", 50), 0);
    assert_eq!(group_partition("hello", 50), 99_162_322 % 50);
}

#[derive(Debug, Clone)]
enum Op {
    JoinNew(u8),
    Rejoin(u8),
    Sync(u8),
    Heartbeat(u8),
    Leave(u8),
    Commit(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::JoinNew),
        (0u8..6).prop_map(Op::Rejoin),
        (0u8..6).prop_map(Op::Sync),
        (0u8..6).prop_map(Op::Heartbeat),
        (0u8..6).prop_map(Op::Leave),
        (0u8..6).prop_map(Op::Commit),
        (0u16..12_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Under any sequence of member actions and time: no panic, generations never go back,
    /// every waiter is answered exactly once, and once time passes with nobody acting, the
    /// group settles in Stable, CompletingRebalance (waiting for a silent leader) or Empty.
    #[test]
    fn random_member_behaviour_keeps_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = Sim::new();
        let mut members: Vec<String> = vec![];
        let mut last_gen = 0;
        let mut waiters = vec![];
        for op in ops {
            let generation = s.co.group_state("g").map(|(_, g)| g).unwrap_or(0);
            let pick = |i: u8| members.get(i as usize % members.len().max(1)).cloned();
            match op {
                Op::JoinNew(p) => {
                    let protos: &[&str] = if p == 0 { &["range"] } else { &["range", "roundrobin"] };
                    let (id, w) = s.new_member(protos);
                    members.push(id);
                    waiters.push(w);
                }
                Op::Rejoin(i) => if let Some(m) = pick(i) {
                    waiters.push(s.join(Sim::join_req(&m, None, &["range"])));
                },
                Op::Sync(i) => if let Some(m) = pick(i) {
                    let all: Vec<(String, String)> = members.iter().map(|m| (m.clone(), "x".into())).collect();
                    let refs: Vec<(&str, &str)> = all.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    waiters.push(s.sync(&m, generation, &refs));
                },
                Op::Heartbeat(i) => if let Some(m) = pick(i) { s.heartbeat(&m, generation); },
                Op::Leave(i) => if let Some(m) = pick(i) {
                    let mut fx = Effects::default();
                    let _ = s.co.leave_group(s.now, "g", &[(m, None)], &mut fx);
                    s.apply(fx);
                },
                Op::Commit(i) => if let Some(m) = pick(i) { let _ = s.commit(&m, generation, 1); },
                Op::Advance(ms) => s.advance(ms as i64),
            }
            if let Some((_, g)) = s.co.group_state("g") {
                prop_assert!(g >= last_gen, "generation went back: {} -> {}", last_gen, g);
                last_gen = g;
            }
        }
        s.advance(10 * REBALANCE as i64);
        for w in waiters {
            prop_assert!(s.done.contains_key(&w), "waiter {} never answered", w);
        }
        if let Some((state, _)) = s.co.group_state("g") {
            prop_assert!(state == GroupState::Empty, "silent members must expire, got {:?}", state);
        }
    }
}

/// The offset OffsetFetch shows for group `g`'s only partition.
fn offset_of(s: &Sim) -> Option<i64> {
    s.co.fetch_offsets("g", None).unwrap()[0].1[0]
        .1
        .as_ref()
        .map(|c| c.offset)
}

#[test]
fn a_commit_that_did_not_become_durable_is_taken_back() {
    let mut s = Sim::new();
    let (ids, g) = stable_group(&mut s, 1);
    assert_eq!(s.commit(&ids[0], g, 100).unwrap(), vec![0]);
    // The next commit's append or fsync fails: until then OffsetFetch shows the durable
    // offset; the broker undoes it, the old offset stays.
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 200).unwrap(), vec![0]);
    let undo = s.co.take_commit_undo().expect("an undo record");
    assert_eq!(offset_of(&s), Some(100));
    s.co.undo_commit(undo);
    assert_eq!(offset_of(&s), Some(100));
    // A later commit is not clobbered by the undo of an earlier, failed one.
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 300).unwrap(), vec![0]);
    let failed = s.co.take_commit_undo().unwrap();
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 400).unwrap(), vec![0]);
    let later = s.co.take_commit_undo().unwrap();
    s.co.undo_commit(failed);
    assert_eq!(offset_of(&s), Some(100), "400 is not durable yet");
    s.co.confirm_commit(later);
    assert_eq!(offset_of(&s), Some(400));
}

#[test]
fn offset_fetch_shows_a_commit_only_once_it_is_durable() {
    let mut s = Sim::new();
    let (ids, g) = stable_group(&mut s, 1);
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 10).unwrap(), vec![0]);
    let first = s.co.take_commit_undo().unwrap();
    assert_eq!(offset_of(&s), None, "nothing durable yet");
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 20).unwrap(), vec![0]);
    let second = s.co.take_commit_undo().unwrap();
    // Durable in order: each shows once confirmed.
    s.co.confirm_commit(first);
    assert_eq!(offset_of(&s), Some(10));
    s.co.confirm_commit(second);
    assert_eq!(offset_of(&s), Some(20));
    // A later commit fails after an earlier one: the earlier is still shown only when durable.
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 30).unwrap(), vec![0]);
    let third = s.co.take_commit_undo().unwrap();
    assert_eq!(s.commit_unconfirmed(&ids[0], g, 40).unwrap(), vec![0]);
    let fourth = s.co.take_commit_undo().unwrap();
    s.co.undo_commit(fourth);
    assert_eq!(offset_of(&s), Some(20), "30 is not durable yet");
    s.co.confirm_commit(third);
    assert_eq!(offset_of(&s), Some(30));
}
