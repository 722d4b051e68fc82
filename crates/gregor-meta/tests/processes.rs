//! The metadata quorum as three real processes (`gregor-meta-node`) on loopback ports, killed
//! with SIGKILL (kill -9).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command as Proc, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{create_topic, created};
use gregor_meta::{Command, MetaError, MetadataImage, Reply};

const LIMIT: Duration = Duration::from_secs(20);

struct NodeProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeProc {
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }

    fn image(&mut self) -> MetadataImage {
        let a = self.ask("image");
        serde_json::from_str(a.strip_prefix("IMAGE ").expect("an image")).unwrap()
    }

    fn leader(&mut self) -> i32 {
        self.ask("leader")
            .strip_prefix("LEADER ")
            .unwrap()
            .parse()
            .unwrap()
    }

    fn propose(&mut self, cmd: &Command) -> Result<Reply, MetaError> {
        let a = self.ask(&format!("propose {}", serde_json::to_string(cmd).unwrap()));
        serde_json::from_str(a.strip_prefix("REPLY ").expect("a reply")).unwrap()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    voters: String,
    dirs: BTreeMap<i32, tempfile::TempDir>,
    nodes: BTreeMap<i32, NodeProc>,
}

impl Cluster {
    fn new() -> Self {
        let mut voters = vec![];
        for id in 1..=3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            voters.push(format!("{id}@{}", l.local_addr().unwrap()));
        }
        Cluster {
            voters: voters.join(","),
            dirs: (1..=3).map(|i| (i, tempfile::tempdir().unwrap())).collect(),
            nodes: BTreeMap::new(),
        }
    }

    fn start(&mut self, id: i32) {
        let start = Instant::now();
        loop {
            let mut child = Proc::new(env!("CARGO_BIN_EXE_gregor-meta-node"))
                .arg(id.to_string())
                .arg(&self.voters)
                .arg(self.dirs[&id].path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            if line.trim_end() == "READY" {
                self.nodes.insert(
                    id,
                    NodeProc {
                        child,
                        stdin,
                        stdout,
                    },
                );
                return;
            }
            // The port of the killed process may not be free yet: it exited; try again.
            let _ = child.wait();
            assert!(start.elapsed() < LIMIT, "node {id} does not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    fn kill(&mut self, id: i32) {
        drop(self.nodes.remove(&id));
    }

    fn wait_all(&mut self, what: &str, pred: impl Fn(&MetadataImage) -> bool) {
        let start = Instant::now();
        while !self.nodes.values_mut().all(|n| pred(&n.image())) {
            assert!(start.elapsed() < LIMIT, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn leader(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            let ids: Vec<i32> = self.nodes.values_mut().map(|n| n.leader()).collect();
            if ids[0] > 0 && ids.iter().all(|i| *i == ids[0]) && self.nodes.contains_key(&ids[0]) {
                return ids[0];
            }
            assert!(start.elapsed() < LIMIT, "no agreed leader: {ids:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn create(name: &str, partitions: i32, rf: i16) -> Command {
    create_topic(name, partitions, rf, ("retention.ms", "1000"))
}

#[test]
fn kill_9_the_controller_then_every_node() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader();
    c.wait_all("3 live brokers", |img| img.live_brokers().len() == 3);
    let id = created(c.nodes.get_mut(&2).unwrap().propose(&create("t", 6, 3)));
    c.wait_all("topic t", |img| img.topics.contains_key(&id));
    for n in c.nodes.values_mut() {
        let img = n.image();
        let mut led = BTreeMap::new();
        for p in img.topics[&id].partitions.values() {
            *led.entry(p.leader).or_insert(0) += 1;
        }
        assert_eq!(led, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    }
    let before = c.nodes.get_mut(&2).unwrap().image();

    // kill -9 the controller.
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    let killed_at = Instant::now();
    c.kill(leader);
    let id2 = created(
        c.nodes
            .get_mut(&survivor)
            .unwrap()
            .propose(&create("t2", 2, 2)),
    );
    let first_create = killed_at.elapsed();
    c.wait_all("partitions moved", |img| {
        !img.is_live(leader) && img.partitions().all(|(_, p)| p.leader != leader)
    });
    eprintln!(
        "kill -9 of controller {leader}: first CreateTopics after {first_create:?}, \
         new partition leaders after {:?}",
        killed_at.elapsed()
    );
    let img = c.nodes.get_mut(&survivor).unwrap().image();
    for p in img.topics[&id].partitions.values() {
        let old = before.partition(&id, p.partition).unwrap();
        assert!(p.isr.contains(&p.leader));
        if old.leader == leader {
            assert!(p.leader_epoch > old.leader_epoch);
        }
    }

    // It restarts from its directory and is unfenced.
    c.start(leader);
    c.wait_all("3 live brokers again", |img| img.live_brokers().len() == 3);

    // kill -9 every node, restart all: the same topics, ids and configs.
    let before = c.nodes.get_mut(&1).unwrap().image();
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.start(i);
    }
    c.leader();
    c.wait_all("topics back", |img| {
        img.topics.contains_key(&id) && img.topics.contains_key(&id2)
    });
    for n in c.nodes.values_mut() {
        let img = n.image();
        for (tid, t) in &before.topics {
            assert_eq!(img.topics[tid].name, t.name);
            assert_eq!(img.topics[tid].configs, t.configs);
            assert_eq!(img.topics[tid].partitions.len(), t.partitions.len());
        }
    }
}
