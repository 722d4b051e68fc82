//! A test helper, not a product: one metadata-quorum node as a process, so that tests can
//! kill -9 it. `gregor-meta-node ID VOTERS DIR` (VOTERS as `1@host:port,2@host:port,...`)
//! starts the node and its broker loop, prints `READY`, then answers lines on stdin:
//! `image` → `IMAGE <json>`, `leader` → `LEADER <id|-1>`, `propose <json Command>` →
//! `REPLY <json result>`.

use std::collections::BTreeMap;

use gregor_meta::{Command, Endpoint, MetaConfig, MetaNode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gregor-meta-node ID VOTERS DIR");
        std::process::exit(2);
    }
    let id: i32 = args[1].parse().expect("node id");
    let voters: BTreeMap<i32, String> = args[2]
        .split(',')
        .map(|v| {
            let (i, a) = v.split_once('@').expect("ID@HOST:PORT");
            (i.parse().expect("voter id"), a.to_string())
        })
        .collect();
    let config = MetaConfig::new(id, voters.clone(), args[3].clone().into());
    let listener = tokio::net::TcpListener::bind(&voters[&id])
        .await
        .expect("bind controller listener");
    let node = MetaNode::start(config, listener).await.expect("start");
    let _broker = node.start_broker(
        vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
        }],
        None,
    );
    let mut out = tokio::io::stdout();
    out.write_all(b"READY\n").await.unwrap();
    out.flush().await.unwrap();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = if line == "image" {
            let img = node.image().borrow().clone();
            format!("IMAGE {}", serde_json::to_string(&*img).unwrap())
        } else if line == "leader" {
            format!("LEADER {}", node.leader_id().unwrap_or(-1))
        } else if let Some(cmd) = line.strip_prefix("propose ") {
            match serde_json::from_str::<Command>(cmd) {
                Ok(cmd) => {
                    let r = node.propose(cmd).await;
                    format!("REPLY {}", serde_json::to_string(&r).unwrap())
                }
                Err(e) => format!("ERROR {e}"),
            }
        } else {
            format!("ERROR unknown command {line:?}")
        };
        out.write_all(answer.as_bytes()).await.unwrap();
        out.write_all(b"\n").await.unwrap();
        out.flush().await.unwrap();
    }
}
