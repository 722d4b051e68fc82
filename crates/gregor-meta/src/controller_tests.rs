//! Tests of the controller: examples, then property tests over random sequences of
//! registrations, heartbeats, fencings (time passing), topic creations and ISR changes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use crate::controller::*;
use crate::image::MetadataImage;
use crate::records::*;

struct Harness {
    image: MetadataImage,
    config: ControllerConfig,
    ctl: Controller,
    now: u64,
    next_id: u128,
    epochs: BTreeMap<BrokerId, i64>,
    index: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(ControllerConfig::default())
    }

    fn with_config(config: ControllerConfig) -> Self {
        Harness {
            image: MetadataImage::default(),
            ctl: Controller::new(config.clone()),
            config,
            now: 0,
            next_id: 1,
            epochs: BTreeMap::new(),
            index: 0,
        }
    }

    fn commit(&mut self, records: Vec<MetaRecord>) {
        if records.is_empty() {
            return;
        }
        self.index += 1;
        let before = self.image.clone();
        self.image
            .apply_batch(&RecordBatch::new(records), self.index)
            .expect("controller records apply");
        check_monotonic(&before, &self.image);
        check_invariants(&self.image);
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, MetaError> {
        let mut next = self.next_id;
        let mut new_id = || {
            next += 1;
            Uuid::from_u128(next)
        };
        let r = self.ctl.handle(&self.image, &cmd, self.now, &mut new_id);
        self.next_id = next;
        let (reply, records) = r?;
        self.commit(records);
        if let Reply::Registered { broker_epoch, .. } = &reply {
            if let Command::RegisterBroker { broker_id, .. } = &cmd {
                self.epochs.insert(*broker_id, *broker_epoch);
            }
        }
        Ok(reply)
    }

    fn register(&mut self, id: BrokerId, incarnation: u128) {
        self.run(Command::RegisterBroker {
            broker_id: id,
            incarnation: Uuid::from_u128(incarnation),
            endpoints: vec![],
            rack: None,
            controller_addr: None,
        })
        .unwrap();
    }

    fn heartbeat(&mut self, id: BrokerId) -> Result<Reply, MetaError> {
        let epoch = *self.epochs.get(&id).unwrap_or(&-1);
        self.run(Command::Heartbeat {
            broker_id: id,
            broker_epoch: epoch,
        })
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let r = self.ctl.tick(&self.image, self.now);
        self.commit(r);
    }

    fn elect(
        &mut self,
        election_type: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Vec<(String, i32, Result<(), MetaError>)> {
        match self.run(Command::ElectLeaders {
            election_type,
            partitions,
        }) {
            Ok(Reply::Elections(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    /// The leader of `topic`/`p` asks for `isr`.
    fn set_isr(&mut self, topic: Uuid, partition: i32, isr: Vec<BrokerId>) {
        let p = self.image.partition(&topic, partition).unwrap().clone();
        let r = self.run(Command::AlterPartition {
            broker_id: p.leader,
            broker_epoch: self.epochs[&p.leader],
            changes: vec![IsrChange {
                topic_id: topic,
                partition,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: isr,
            }],
        });
        assert!(
            matches!(&r, Ok(Reply::AlterPartition(v)) if v[0].is_ok()),
            "{r:?}"
        );
    }

    /// Time passes in heartbeat steps; only `alive` heartbeat.
    fn pass(&mut self, ms: u64, alive: &[BrokerId]) {
        let step = self.config.heartbeat_interval_ms / 2;
        let mut done = 0;
        while done < ms {
            for b in alive {
                self.heartbeat(*b).unwrap();
            }
            self.advance(step);
            done += step;
        }
    }

    fn create(&mut self, name: &str, partitions: i32, rf: i16) -> TopicResult {
        match self.run(Command::CreateTopics {
            topics: vec![NewTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: rf,
                assignments: None,
                configs: BTreeMap::new(),
            }],
            validate_only: false,
        }) {
            Ok(Reply::Topics(mut v)) => v.remove(0),
            other => panic!("{other:?}"),
        }
    }
}

fn check_invariants(image: &MetadataImage) {
    for (_, p) in image.partitions() {
        assert!(!p.isr.is_empty());
        assert!(p.isr.iter().all(|b| p.replicas.contains(b)));
        if p.leader != NO_LEADER {
            assert!(p.isr.contains(&p.leader), "leader outside the ISR: {p:?}");
            assert!(image.is_live(p.leader), "fenced leader: {p:?}");
        }
    }
}

fn check_monotonic(before: &MetadataImage, after: &MetadataImage) {
    for (t, p) in before.partitions() {
        if let Some(q) = after.partition(&t.topic_id, p.partition) {
            assert!(q.leader_epoch >= p.leader_epoch, "leader epoch went down");
            assert!(q.partition_epoch >= p.partition_epoch);
            if q != p {
                assert!(
                    q.partition_epoch > p.partition_epoch,
                    "change without epoch bump"
                );
            }
            if q.leader != p.leader {
                assert!(q.leader_epoch > p.leader_epoch, "new leader, same epoch");
            }
        }
    }
}

#[test]
fn six_partitions_rf3_on_three_brokers_each_leads_two() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.register(id, id as u128);
    }
    let r = h.create("t", 6, 3);
    assert_eq!(r.error, None);
    let mut led = BTreeMap::new();
    for (_, p) in h.image.partitions() {
        assert_eq!(p.replicas.len(), 3);
        *led.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(led, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    // A second topic is shifted, so leadership stays balanced across topics.
    h.create("u", 1, 3);
    let u = h.image.topic_by_name("u").unwrap();
    assert_eq!(u.partitions[&0].leader, 1);
    h.create("w", 2, 3);
    let w = h.image.topic_by_name("w").unwrap();
    assert_eq!(w.partitions[&0].leader, 2);
}

#[test]
fn create_topics_validation() {
    let mut h = Harness::new();
    h.register(1, 1);
    h.register(2, 2);
    assert!(matches!(
        h.create("t", 3, 3).error,
        Some(MetaError::InvalidReplicationFactor(_))
    ));
    assert_eq!(h.create("t", 3, 2).error, None);
    assert_eq!(
        h.create("t", 3, 2).error,
        Some(MetaError::TopicAlreadyExists)
    );
    assert_eq!(h.create("a/b", 1, 1).error, Some(MetaError::InvalidTopic));
    assert!(matches!(
        h.create("z", 0, 1).error,
        Some(MetaError::InvalidPartitions(_))
    ));
    assert_eq!(h.create("d", -1, -1).error, None);
    assert_eq!(h.image.topic_by_name("d").unwrap().partitions.len(), 1);
    // Validate only changes nothing.
    let r = h
        .run(Command::CreateTopics {
            topics: vec![NewTopic {
                name: "v".into(),
                num_partitions: 1,
                replication_factor: 1,
                assignments: None,
                configs: BTreeMap::new(),
            }],
            validate_only: true,
        })
        .unwrap();
    assert!(matches!(r, Reply::Topics(v) if v[0].error.is_none()));
    assert!(h.image.topic_by_name("v").is_none());
}

#[test]
fn expired_broker_is_fenced_and_leaders_move_within_the_session() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.register(id, id as u128);
    }
    h.create("t", 6, 3);
    let t = h.image.topic_by_name("t").unwrap().topic_id;
    let before = h.image.clone();
    // Brokers 2 and 3 heartbeat; broker 1 is silent.
    let step = h.ctl.config().heartbeat_interval_ms;
    let mut fenced_at = None;
    for _ in 0..20 {
        h.heartbeat(2).unwrap();
        h.heartbeat(3).unwrap();
        h.advance(step / 2);
        if !h.image.is_live(1) && fenced_at.is_none() {
            fenced_at = Some(h.now);
        }
    }
    let fenced_at = fenced_at.expect("broker 1 fenced");
    assert!(fenced_at <= 1500 + step, "{fenced_at}");
    for p in h.image.topics[&t].partitions.values() {
        let old = before.partition(&t, p.partition).unwrap();
        assert_ne!(p.leader, 1);
        assert!(!p.isr.contains(&1));
        if old.leader == 1 {
            assert_eq!(p.leader_epoch, old.leader_epoch + 1);
        }
    }
    // It was only slow: a heartbeat at its epoch unfences it.
    h.heartbeat(1).unwrap();
    assert!(h.image.is_live(1));
    // It restarts: the old epoch is stale, a new registration is unfenced at a new epoch.
    let old_epoch = h.epochs[&1];
    h.register(1, 100);
    assert!(h.epochs[&1] > old_epoch);
    assert!(h.image.is_live(1));
    assert_eq!(
        h.run(Command::Heartbeat {
            broker_id: 1,
            broker_epoch: old_epoch
        })
        .unwrap_err(),
        MetaError::StaleBrokerEpoch
    );
}

#[test]
fn no_live_isr_member_means_offline_until_it_returns() {
    let mut h = Harness::new();
    h.register(1, 1);
    h.register(2, 2);
    h.create("t", 1, 1);
    let t = h.image.topic_by_name("t").unwrap().topic_id;
    let leader = h.image.partition(&t, 0).unwrap().leader;
    let other = 3 - leader;
    for _ in 0..10 {
        h.heartbeat(other).unwrap();
        h.advance(500);
    }
    let p = h.image.partition(&t, 0).unwrap().clone();
    assert_eq!(p.leader, NO_LEADER, "no unclean election");
    assert_eq!(p.isr, vec![leader], "the last ISR member stays");
    h.heartbeat(leader).unwrap();
    let q = h.image.partition(&t, 0).unwrap();
    assert_eq!(q.leader, leader);
    assert!(q.leader_epoch > p.leader_epoch);
}

#[test]
fn alter_partition_checks_leader_and_epochs() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.register(id, id as u128);
    }
    h.create("t", 1, 3);
    let t = h.image.topic_by_name("t").unwrap().topic_id;
    let p = h.image.partition(&t, 0).unwrap().clone();
    let change = |broker: BrokerId, epochs: (i32, i32), isr: Vec<BrokerId>, h: &mut Harness| {
        let epoch = h.epochs[&broker];
        match h.run(Command::AlterPartition {
            broker_id: broker,
            broker_epoch: epoch,
            changes: vec![IsrChange {
                topic_id: t,
                partition: 0,
                leader_epoch: epochs.0,
                partition_epoch: epochs.1,
                new_isr: isr,
            }],
        }) {
            Ok(Reply::AlterPartition(mut v)) => v.remove(0),
            other => panic!("{other:?}"),
        }
    };
    let follower = p.replicas[1];
    let shrunk: Vec<_> = p.isr.iter().copied().filter(|b| *b != follower).collect();
    assert_eq!(
        change(follower, (0, 0), shrunk.clone(), &mut h).unwrap_err(),
        MetaError::NotLeaderOrFollower
    );
    assert_eq!(
        change(p.leader, (0, 5), shrunk.clone(), &mut h).unwrap_err(),
        MetaError::InvalidUpdateVersion
    );
    let q = change(p.leader, (0, 0), shrunk.clone(), &mut h).unwrap();
    assert_eq!(
        (q.isr.clone(), q.partition_epoch, q.leader_epoch),
        (shrunk, 1, 0)
    );
    let r = change(p.leader, (0, 1), p.isr.clone(), &mut h).unwrap();
    assert_eq!((r.isr, r.partition_epoch), (p.isr.clone(), 2));
}

#[test]
fn delete_create_partitions_configs_and_producer_ids() {
    let mut h = Harness::new();
    h.register(1, 1);
    h.create("t", 2, 1);
    h.run(Command::CreatePartitions {
        topics: vec![("t".into(), 5)],
        validate_only: false,
    })
    .unwrap();
    assert_eq!(h.image.topic_by_name("t").unwrap().partitions.len(), 5);
    let r = h
        .run(Command::CreatePartitions {
            topics: vec![("t".into(), 5)],
            validate_only: false,
        })
        .unwrap();
    assert!(
        matches!(&r, Reply::Topics(v) if matches!(v[0].error, Some(MetaError::InvalidPartitions(_))))
    );
    let r = h
        .run(Command::AlterConfigs {
            ops: vec![
                ConfigOp {
                    resource: ConfigResource::Topic("t".into()),
                    key: "retention.ms".into(),
                    value: Some("1000".into()),
                },
                ConfigOp {
                    resource: ConfigResource::Topic("nope".into()),
                    key: "retention.ms".into(),
                    value: Some("1000".into()),
                },
            ],
            validate_only: false,
        })
        .unwrap();
    assert_eq!(
        r,
        Reply::Configs(vec![Ok(()), Err(MetaError::UnknownTopicOrPartition)])
    );
    assert_eq!(
        h.image.topic_by_name("t").unwrap().configs["retention.ms"],
        "1000"
    );
    let epoch = h.epochs[&1];
    let a = h
        .run(Command::AllocateProducerIds {
            broker_id: 1,
            broker_epoch: epoch,
        })
        .unwrap();
    let b = h
        .run(Command::AllocateProducerIds {
            broker_id: 1,
            broker_epoch: epoch,
        })
        .unwrap();
    assert_eq!(
        (a, b),
        (
            Reply::ProducerIds {
                first_producer_id: 0,
                size: 1000
            },
            Reply::ProducerIds {
                first_producer_id: 1000,
                size: 1000
            }
        )
    );
    h.run(Command::DeleteTopics {
        names: vec!["t".into()],
    })
    .unwrap();
    assert!(h.image.topics.is_empty() && h.image.topic_ids.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Register(BrokerId, u8),
    Heartbeat(BrokerId),
    Advance(u16),
    Create(u8, i32, i16),
    Shrink(u8, u8),
    Expand(u8),
    Delete(u8),
    ControlledShutdown(BrokerId),
    Elect(u8, bool),
    ElectAll(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..=5i32, 0..3u8).prop_map(|(b, i)| Op::Register(b, i)),
        (1..=5i32).prop_map(Op::Heartbeat),
        (0..2000u16).prop_map(Op::Advance),
        (0..4u8, 1..8i32, 1..4i16).prop_map(|(t, n, rf)| Op::Create(t, n, rf)),
        (0..32u8, 0..5u8).prop_map(|(p, r)| Op::Shrink(p, r)),
        (0..32u8).prop_map(Op::Expand),
        (0..4u8).prop_map(Op::Delete),
        (1..=5i32).prop_map(Op::ControlledShutdown),
        (0..32u8, any::<bool>()).prop_map(|(p, u)| Op::Elect(p, u)),
        any::<bool>().prop_map(Op::ElectAll),
    ]
}

/// The ISR a leader asks for in the property test: one replica dropped, or all of them.
fn next_isr(p: &PartitionRecord, op: &Op) -> Vec<BrokerId> {
    match op {
        Op::Shrink(_, r) => {
            let drop = p.replicas[*r as usize % p.replicas.len()];
            p.isr
                .iter()
                .copied()
                .filter(|b| *b != drop || *b == p.leader)
                .collect()
        }
        _ => p.replicas.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens, no leader outside the ISR or fenced, no leader epoch lowered, every
    /// change bumps the partition epoch (checked in `Harness::commit`), and a new controller
    /// (leader change) decides on the same image without breaking them either.
    #[test]
    fn elections_stay_in_the_isr(ops in proptest::collection::vec(op(), 1..80), rebalance in any::<bool>()) {
        // With `rebalance`, auto leader rebalancing checks every 3 s of the test's time.
        let mut h = Harness::with_config(ControllerConfig {
            auto_leader_rebalance_enable: rebalance,
            leader_imbalance_check_interval_ms: 3_000,
            ..ControllerConfig::default()
        });
        for (n, op) in ops.into_iter().enumerate() {
            match &op {
                Op::Register(b, inc) => h.register(*b, *b as u128 * 10 + *inc as u128),
                Op::Heartbeat(b) => {
                    let _ = h.heartbeat(*b);
                }
                Op::Advance(ms) => h.advance(*ms as u64),
                Op::Create(t, n, rf) => {
                    h.create(&format!("t{t}"), *n, *rf);
                }
                Op::Shrink(i, _) | Op::Expand(i) => {
                    let parts: Vec<_> = h.image.partitions().map(|(_, p)| p.clone()).collect();
                    if parts.is_empty() {
                        continue;
                    }
                    let p = &parts[*i as usize % parts.len()];
                    if p.leader == NO_LEADER {
                        continue;
                    }
                    let _ = h.run(Command::AlterPartition {
                        broker_id: p.leader,
                        broker_epoch: h.epochs[&p.leader],
                        changes: vec![IsrChange {
                            topic_id: p.topic_id,
                            partition: p.partition,
                            leader_epoch: p.leader_epoch,
                            partition_epoch: p.partition_epoch,
                            new_isr: next_isr(p, &op),
                        }],
                    });
                }
                Op::Delete(t) => {
                    let _ = h.run(Command::DeleteTopics { names: vec![format!("t{t}")] });
                }
                Op::Elect(..) | Op::ElectAll(_) => {}
                Op::ControlledShutdown(b) => {
                    if let Some(epoch) = h.epochs.get(b).copied() {
                        let _ = h.run(Command::ControlledShutdown { broker_id: *b, broker_epoch: epoch });
                        // A controlled shutdown leaves the broker fenced and leading nothing.
                        if h.image.brokers.get(b).is_some_and(|s| s.registration.broker_epoch == epoch) {
                            prop_assert!(h.image.brokers[b].fenced);
                            prop_assert!(h.image.partitions().all(|(_, p)| p.leader != *b));
                        }
                    }
                }
            }
            if let Op::Elect(i, unclean) = &op {
                let parts: Vec<_> = h.image.partitions().map(|(t, p)| (t.name.clone(), p.clone())).collect();
                if !parts.is_empty() {
                    let (name, p) = &parts[*i as usize % parts.len()];
                    let kind = if *unclean { ElectionType::Unclean } else { ElectionType::Preferred };
                    let r = h.elect(kind, Some(vec![(name.clone(), p.partition)]));
                    let q = h.image.topic_by_name(name).unwrap().partitions[&p.partition].clone();
                    prop_assert_eq!(r.len(), 1);
                    match &r[0].2 {
                        Ok(()) if !*unclean => prop_assert_eq!(q.leader, p.replicas[0]),
                        Ok(()) => {
                            prop_assert!(p.leader == NO_LEADER && q.leader != NO_LEADER);
                            // Out of the ISR only when no ISR member was live.
                            if !p.isr.contains(&q.leader) {
                                prop_assert!(p.isr.iter().all(|b| !h.image.is_live(*b)));
                                prop_assert_eq!(&q.isr, &vec![q.leader]);
                            }
                        }
                        Err(_) => prop_assert_eq!(&q, p),
                    }
                }
            }
            if let Op::ElectAll(unclean) = &op {
                let kind = if *unclean { ElectionType::Unclean } else { ElectionType::Preferred };
                let r = h.elect(kind, None);
                prop_assert!(r.iter().all(|(_, _, e)| *e != Err(MetaError::ElectionNotNeeded)));
            }
            if n % 17 == 16 {
                // Controller failover: the new one has no sessions yet.
                h.ctl = Controller::new(h.config.clone());
            }
        }
    }
}

#[test]
fn reassignment_adds_copies_then_drops() {
    let mut h = Harness::new();
    for b in 1..=3 {
        h.register(b, b as u128);
    }
    let tid = h.create("r", 1, 3).topic_id.unwrap();
    h.register(4, 4);
    let before = h.image.partition(&tid, 0).unwrap().clone();
    let Reply::Reassignments(r) = h
        .run(Command::AlterReassignments {
            reassignments: vec![("r".into(), 0, Some(vec![1, 2, 4]))],
        })
        .unwrap()
    else {
        panic!("reply")
    };
    assert_eq!(r, vec![Ok(())]);
    let p = h.image.partition(&tid, 0).unwrap().clone();
    let removed: Vec<_> = before
        .replicas
        .iter()
        .copied()
        .filter(|b| ![1, 2, 4].contains(b))
        .collect();
    assert_eq!(p.adding_replicas, vec![4]);
    assert_eq!(p.removing_replicas, removed);
    assert!(p.replicas.contains(&4) && p.replicas.len() == 4);
    // Not complete until 4 is in the ISR.
    let mut isr = p.isr.clone();
    isr.push(4);
    let _ = h
        .run(Command::AlterPartition {
            broker_id: p.leader,
            broker_epoch: h.epochs[&p.leader],
            changes: vec![IsrChange {
                topic_id: tid,
                partition: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: isr,
            }],
        })
        .unwrap();
    let done = h.image.partition(&tid, 0).unwrap();
    assert_eq!(done.replicas, vec![1, 2, 4]);
    assert!(done.adding_replicas.is_empty() && done.removing_replicas.is_empty());
    assert!(done.isr.iter().all(|b| [1, 2, 4].contains(b)) && done.isr.contains(&4));
    assert!([1, 2, 4].contains(&done.leader));
}

#[test]
fn preferred_election_needs_the_first_replica_live_and_in_the_isr() {
    let mut h = Harness::new();
    for b in 1..=3 {
        h.register(b, b as u128);
    }
    let tid = h.create("e", 1, 3).topic_id.unwrap();
    let p = h.image.partition(&tid, 0).unwrap().clone();
    let preferred = p.replicas[0];
    assert_eq!(p.leader, preferred);
    let one = Some(vec![("e".to_string(), 0)]);
    assert_eq!(
        h.elect(ElectionType::Preferred, one.clone())[0].2,
        Err(MetaError::ElectionNotNeeded)
    );
    // With every partition asked, those not needing an election are left out.
    assert!(h.elect(ElectionType::Preferred, None).is_empty());
    // The preferred leader dies: leadership moves, and it cannot be elected.
    let others: Vec<_> = p.replicas[1..].to_vec();
    h.pass(2_000, &others);
    let q = h.image.partition(&tid, 0).unwrap().clone();
    assert_ne!(q.leader, preferred);
    assert!(!q.isr.contains(&preferred));
    assert!(matches!(
        h.elect(ElectionType::Preferred, one.clone())[0].2,
        Err(MetaError::PreferredLeaderNotAvailable(_))
    ));
    // It restarts: live, but not in the ISR until it caught up.
    h.register(preferred, 99);
    assert!(matches!(
        h.elect(ElectionType::Preferred, None)[..],
        [(_, 0, Err(MetaError::PreferredLeaderNotAvailable(_)))]
    ));
    assert_eq!(h.image.partition(&tid, 0).unwrap().leader, q.leader);
    // Back in the ISR: elected, with a new leader epoch; the ISR is kept.
    let mut isr = q.isr.clone();
    isr.push(preferred);
    h.set_isr(tid, 0, isr.clone());
    let before = h.image.partition(&tid, 0).unwrap().clone();
    assert_eq!(
        h.elect(ElectionType::Preferred, one.clone()),
        vec![("e".to_string(), 0, Ok(()))]
    );
    let r = h.image.partition(&tid, 0).unwrap();
    assert_eq!(r.leader, preferred);
    assert_eq!(r.leader_epoch, before.leader_epoch + 1);
    assert_eq!(r.isr, isr);
    assert_eq!(
        h.elect(ElectionType::Preferred, Some(vec![("nope".to_string(), 0)]))[0].2,
        Err(MetaError::UnknownTopicOrPartition)
    );
}

#[test]
fn unclean_election_only_without_a_live_isr_member() {
    let mut h = Harness::new();
    for b in 1..=3 {
        h.register(b, b as u128);
    }
    let tid = h.create("u", 1, 3).topic_id.unwrap();
    let p = h.image.partition(&tid, 0).unwrap().clone();
    let one = Some(vec![("u".to_string(), 0)]);
    // A live leader: nothing to do.
    assert_eq!(
        h.elect(ElectionType::Unclean, one.clone())[0].2,
        Err(MetaError::ElectionNotNeeded)
    );
    // The ISR shrinks to the leader, which then dies: offline, the ISR keeps it.
    h.set_isr(tid, 0, vec![p.leader]);
    let others: Vec<_> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| *b != p.leader)
        .collect();
    h.pass(2_000, &others);
    let q = h.image.partition(&tid, 0).unwrap().clone();
    assert_eq!((q.leader, q.isr.clone()), (NO_LEADER, vec![p.leader]));
    assert!(matches!(
        h.elect(ElectionType::Preferred, one.clone())[0].2,
        Err(MetaError::PreferredLeaderNotAvailable(_))
    ));
    assert_eq!(h.elect(ElectionType::Unclean, one.clone())[0].2, Ok(()));
    let r = h.image.partition(&tid, 0).unwrap().clone();
    assert_eq!(r.leader, others[0]);
    assert_eq!(r.isr, vec![others[0]]);
    assert!(r.leader_epoch > q.leader_epoch);
    // Every replica dead: no eligible leader.
    h.pass(2_000, &[]);
    assert_eq!(h.image.partition(&tid, 0).unwrap().leader, NO_LEADER);
    assert!(matches!(
        h.elect(ElectionType::Unclean, one)[0].2,
        Err(MetaError::EligibleLeadersNotAvailable(_))
    ));
}

#[test]
fn auto_rebalance_returns_leadership_to_preferred_leaders_after_the_interval() {
    for enabled in [true, false] {
        let mut h = Harness::with_config(ControllerConfig {
            auto_leader_rebalance_enable: enabled,
            leader_imbalance_check_interval_ms: 5_000,
            ..ControllerConfig::default()
        });
        for b in 1..=3 {
            h.register(b, b as u128);
        }
        let tid = h.create("a", 6, 3).topic_id.unwrap();
        // Broker 1 dies and returns; the partitions it preferred are led elsewhere.
        h.pass(2_000, &[2, 3]);
        h.register(1, 50);
        let led_by_1 = |h: &Harness| {
            h.image.topics[&tid]
                .partitions
                .values()
                .filter(|p| p.leader == 1)
                .count()
        };
        assert_eq!(led_by_1(&h), 0);
        // It catches up: its leaders put it back in their ISRs.
        for i in 0..6 {
            let p = h.image.partition(&tid, i).unwrap().clone();
            if !p.isr.contains(&1) {
                let mut isr = p.isr.clone();
                isr.push(1);
                h.set_isr(tid, i, isr);
            }
        }
        h.pass(1_000, &[1, 2, 3]);
        assert_eq!(led_by_1(&h), 0, "not before the check interval");
        h.pass(5_000, &[1, 2, 3]);
        let preferred_by_1 = h.image.topics[&tid]
            .partitions
            .values()
            .filter(|p| p.replicas[0] == 1)
            .count();
        assert_eq!(led_by_1(&h), if enabled { preferred_by_1 } else { 0 });
    }
}
