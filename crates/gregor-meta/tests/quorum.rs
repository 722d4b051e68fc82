//! The metadata quorum over real TCP on loopback: three nodes, each on its own tokio runtime
//! (dropping a runtime is the in-process stand-in for kill -9: its tasks and sockets vanish at
//! once; what it wrote and fsynced stays in its directory).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{create_topic, created};
use gregor_meta::{
    BrokerHandle, Command, ConfigOp, ConfigResource, Endpoint, MetaConfig, MetaNode, MetadataImage,
    Reply,
};

struct Node {
    rt: Option<tokio::runtime::Runtime>,
    node: Option<MetaNode>,
    broker: Option<BrokerHandle>,
}

struct Cluster {
    voters: BTreeMap<i32, String>,
    dirs: BTreeMap<i32, tempfile::TempDir>,
    nodes: BTreeMap<i32, Node>,
}

impl Cluster {
    /// Three voters on ephemeral ports, each with a temp dir; not started.
    fn new(n: i32) -> Self {
        let mut voters = BTreeMap::new();
        for id in 1..=n {
            // Learn a free port; the node binds it again (SO_REUSEADDR) when it starts.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            voters.insert(id, l.local_addr().unwrap().to_string());
        }
        let dirs = (1..=n)
            .map(|id| (id, tempfile::tempdir().unwrap()))
            .collect();
        Cluster {
            voters,
            dirs,
            nodes: BTreeMap::new(),
        }
    }

    fn start(&mut self, id: i32) {
        let addr = self.voters[&id].clone();
        self.start_with(id, addr, self.voters.clone());
    }

    /// Starts node `id` listening on `addr` with the quorum `voters` (it may not be one).
    fn start_with(&mut self, id: i32, addr: String, voters: BTreeMap<i32, String>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut config = MetaConfig::new(id, voters, self.dirs[&id].path().into());
        config.controller_addr = Some(addr.clone());
        let node = rt.block_on(async move {
            // The port of a killed node may take a moment to be released.
            let start = Instant::now();
            let listener = loop {
                match tokio::net::TcpListener::bind(&addr).await {
                    Ok(l) => break l,
                    Err(e) if start.elapsed() < LIMIT => {
                        eprintln!("bind {addr}: {e}, again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            };
            MetaNode::start(config, listener).await.unwrap()
        });
        let broker = node.start_broker(
            vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9000 + id as u16,
            }],
            None,
        );
        self.nodes.insert(
            id,
            Node {
                rt: Some(rt),
                node: Some(node),
                broker: Some(broker),
            },
        );
    }

    /// Drops the node's runtime: every task and socket of it is gone at once.
    fn kill(&mut self, id: i32) {
        let mut n = self.nodes.remove(&id).unwrap();
        drop(n.broker.take());
        drop(n.node.take());
        // Tasks are dropped where they stand (no graceful shutdown); wait until they are gone.
        n.rt.take()
            .unwrap()
            .shutdown_timeout(Duration::from_secs(60));
    }

    fn node(&self, id: i32) -> &MetaNode {
        self.nodes[&id].node.as_ref().unwrap()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    /// Waits until `pred` holds on every running node's image.
    fn wait_all(&self, what: &str, limit: Duration, pred: impl Fn(&MetadataImage) -> bool) {
        let start = Instant::now();
        loop {
            if self
                .nodes
                .values()
                .all(|n| pred(&n.node.as_ref().unwrap().image().borrow()))
            {
                return;
            }
            assert!(start.elapsed() < limit, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn leader(&self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            let ids: Vec<_> = self
                .nodes
                .values()
                .map(|n| n.node.as_ref().unwrap().leader_id())
                .collect();
            if let Some(Some(l)) = ids.first() {
                if ids.iter().all(|i| *i == Some(*l)) && self.nodes.contains_key(l) {
                    return *l;
                }
            }
            assert!(start.elapsed() < limit, "no agreed leader: {ids:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn create(name: &str, partitions: i32, rf: i16) -> Command {
    create_topic(name, partitions, rf, ("cleanup.policy", "compact"))
}

const LIMIT: Duration = Duration::from_secs(20);

fn three_live(img: &MetadataImage) -> bool {
    img.live_brokers().len() == 3
}

#[test]
fn three_nodes_agree_and_a_topic_created_through_a_follower_is_seen_everywhere() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let id = created(c.block_on(c.node(follower).propose(create("t", 6, 3))));
    c.wait_all("topic t", LIMIT, |img| img.topics.contains_key(&id));
    for n in c.nodes.values() {
        let img = n.node.as_ref().unwrap().image().borrow().clone();
        let t = &img.topics[&id];
        assert_eq!(t.name, "t");
        assert_eq!(t.configs["cleanup.policy"], "compact");
        let mut led = BTreeMap::new();
        for p in t.partitions.values() {
            assert_eq!(p.replicas.len(), 3);
            assert_eq!(p.isr.len(), 3);
            *led.entry(p.leader).or_insert(0) += 1;
        }
        assert_eq!(led, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    }
    // RF above the live brokers.
    match c.block_on(c.node(follower).propose(create("u", 1, 4))) {
        Ok(Reply::Topics(v)) => assert_eq!(v[0].error.as_ref().map(|e| e.code()), Some(38)),
        other => panic!("{other:?}"),
    }
    // DescribeQuorum from a follower is answered by the leader.
    let q = c.block_on(c.node(follower).quorum_info()).unwrap();
    assert_eq!(q.leader_id, leader);
    assert_eq!(q.voters.len(), 3);
    assert!(q.voters.iter().all(|v| v.matched_index.is_some()), "{q:?}");
    for id in 1..=3 {
        c.kill(id);
    }
}

#[test]
fn losing_the_leader_elects_another_and_fences_its_broker() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    let id = created(c.block_on(c.node(survivor).propose(create("t", 6, 3))));
    c.wait_all("topic t", LIMIT, |img| img.topics.contains_key(&id));
    let before = c.node(survivor).image().borrow().clone();

    let killed_at = Instant::now();
    c.kill(leader);
    let new_leader = {
        let start = Instant::now();
        loop {
            match c.node(survivor).leader_id() {
                Some(l) if l != leader => break l,
                _ => assert!(start.elapsed() < LIMIT, "no new leader"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let elected = killed_at.elapsed();
    let id2 = created(c.block_on(c.node(survivor).propose(create("t2", 3, 2))));
    let first_create = killed_at.elapsed();
    c.wait_all("leaders moved off the killed node", LIMIT, |img| {
        !img.is_live(leader) && img.partitions().all(|(_, p)| p.leader != leader)
    });
    let moved = killed_at.elapsed();
    eprintln!(
        "controller {leader} killed: {new_leader} elected after {elected:?}, first CreateTopics \
         committed after {first_create:?}, its partitions had new leaders after {moved:?}"
    );
    let img = c.node(survivor).image().borrow().clone();
    assert!(img.topics.contains_key(&id2));
    for p in img.topics[&id].partitions.values() {
        let old = before.partition(&id, p.partition).unwrap();
        assert!(p.isr.contains(&p.leader));
        assert!(!p.isr.contains(&leader));
        if old.leader == leader {
            assert!(p.leader_epoch > old.leader_epoch);
        }
    }

    // It comes back from its directory, registers again and is unfenced.
    c.start(leader);
    c.wait_all("the old leader unfenced", LIMIT, three_live);
    c.wait_all("same topics on the restarted node", LIMIT, |img| {
        img.topics.contains_key(&id) && img.topics.contains_key(&id2)
    });
    for id in 1..=3 {
        c.kill(id);
    }
}

#[test]
fn without_a_quorum_nothing_changes_and_nothing_is_lost() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    let id = created(c.block_on(c.node(1).propose(create("t", 2, 3))));
    c.wait_all("topic t", LIMIT, |img| img.topics.contains_key(&id));
    c.kill(2);
    c.kill(3);
    let r = c.block_on(
        c.node(1)
            .propose_within(create("t2", 1, 1), Duration::from_secs(3)),
    );
    let err = r.expect_err("a proposal without a quorum");
    assert!(err.is_retriable(), "{err:?}");
    c.start(2);
    c.start(3);
    c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    c.wait_all("topic t everywhere", LIMIT, |img| {
        img.topics.contains_key(&id)
    });
    let img = c.node(1).image().borrow().clone();
    assert!(
        img.topic_by_name("t2").is_none(),
        "the refused change stayed out"
    );
    created(c.block_on(c.node(3).propose(create("t2", 1, 1))));
    for id in 1..=3 {
        c.kill(id);
    }
}

#[test]
fn restarted_nodes_come_back_with_the_same_topics_ids_and_configs() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(created(c.block_on(c.node(1 + i % 3).propose(create(
            &format!("t{i}"),
            3,
            2,
        )))));
    }
    let r = c
        .block_on(c.node(2).propose(Command::AlterConfigs {
            ops: vec![ConfigOp {
                resource: ConfigResource::Topic("t1".into()),
                key: "retention.ms".into(),
                value: Some("60000".into()),
            }],
            validate_only: false,
        }))
        .unwrap();
    assert_eq!(r, Reply::Configs(vec![Ok(())]));
    c.wait_all("all topics", LIMIT, |img| {
        img.topics.len() == 5
            && img
                .topics
                .get(&ids[1])
                .is_some_and(|t| t.configs.len() == 2)
    });
    let before: Arc<MetadataImage> = c.node(3).image().borrow().clone();
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.start(id);
    }
    c.leader(LIMIT);
    c.wait_all("topics back", LIMIT, |img| {
        img.topics.len() == 5
            && img
                .topic_by_name("t1")
                .is_some_and(|t| t.configs.len() == 2)
    });
    for n in c.nodes.values() {
        let img = n.node.as_ref().unwrap().image().borrow().clone();
        for (id, t) in &before.topics {
            let u = &img.topics[id];
            assert_eq!((&u.name, &u.configs), (&t.name, &t.configs));
            assert_eq!(u.partitions.len(), t.partitions.len());
            for (i, p) in &t.partitions {
                assert_eq!(u.partitions[i].replicas, p.replicas);
            }
        }
    }
    for id in 1..=3 {
        c.kill(id);
    }
}

#[test]
fn losing_a_broker_that_is_not_the_controller_moves_its_leaderships() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader(LIMIT);
    c.wait_all("3 live brokers", LIMIT, three_live);
    let id = created(c.block_on(c.node(leader).propose(create("t", 6, 3))));
    c.wait_all("topic t", LIMIT, |img| img.topics.contains_key(&id));
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let before = c.node(leader).image().borrow().clone();
    let killed_at = Instant::now();
    c.kill(victim);
    c.wait_all("leaders moved off the killed broker", LIMIT, |img| {
        !img.is_live(victim) && img.partitions().all(|(_, p)| p.leader != victim)
    });
    eprintln!(
        "broker {victim} killed: its partitions had new leaders after {:?}",
        killed_at.elapsed()
    );
    let img = c.node(leader).image().borrow().clone();
    for p in img.topics[&id].partitions.values() {
        let old = before.partition(&id, p.partition).unwrap();
        assert!(p.isr.contains(&p.leader) && !p.isr.contains(&victim));
        if old.leader == victim {
            assert_eq!(p.leader_epoch, old.leader_epoch + 1);
        }
    }
    c.start(victim);
    c.wait_all("the broker back and unfenced", LIMIT, three_live);
    for id in 1..=3 {
        c.kill(id);
    }
}

#[test]
fn a_broker_that_is_not_a_voter_gets_the_metadata_as_a_learner() {
    let mut c = Cluster::new(4);
    // Node 4 is a broker only: the quorum is 1, 2, 3.
    let addr4 = c.voters.remove(&4).unwrap();
    for id in 1..=3 {
        c.start(id);
    }
    c.start_with(4, addr4, c.voters.clone());
    c.wait_all("4 live brokers", LIMIT, |img| img.live_brokers().len() == 4);
    let id = created(c.block_on(c.node(4).propose(create("t", 4, 3))));
    c.wait_all("topic t", LIMIT, |img| img.topics.contains_key(&id));
    let q = c.block_on(c.node(4).quorum_info()).unwrap();
    assert_eq!(q.voters.len(), 3);
    for id in 1..=4 {
        c.kill(id);
    }
}
