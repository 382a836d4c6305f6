//! A host process for the crash test: on the data dir given, it submits a mixed burst of
//! wasm and native jobs (and a composition per round) forever, printing each job id (and
//! `composition <id>`) once `submit` acknowledged it, until it is killed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write as _;
use std::time::Duration;

use cjm_host::Host;
use cjm_host::config::QueueConfig;
use cjm_host::queue::{Composition, JobSpec, Node, OutputRef, RetryPolicy};
use serde_json::json;

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let host = Host::builder()
        .data_dir(dir)
        .queue(QueueConfig {
            max_concurrent_lanes: 4,
            lease_ttl: Duration::from_secs(2),
            ..QueueConfig::default()
        })
        .load("noop")
        .load("probe")
        .build()
        .await
        .unwrap();
    let q = host.queue();
    let mut out = std::io::stdout();
    for round in 0u64.. {
        let specs: Vec<JobSpec> = (0..12)
            .map(|i| match i % 4 {
                0 | 1 => JobSpec::execute("noop", cjm_tests::kwargs(json!({"i": i}))),
                2 => JobSpec::execute(
                    "probe",
                    cjm_tests::kwargs(json!({"action": "slow", "steps": 2})),
                )
                .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(10))),
                _ => JobSpec::execute(
                    "probe",
                    cjm_tests::kwargs(json!({"action": "echo", "text": format!("r{round}")})),
                ),
            })
            .collect();
        let ids = q.submit_many(specs).await.unwrap();
        for id in ids {
            writeln!(out, "{id}").unwrap();
        }
        // A chain mixing both kinds, its nodes bound to upstream results.
        let chain = Composition::new(vec![
            Node::new("first", "noop").arg("i", json!(round)),
            Node::new("second", "probe")
                .arg("action", json!("echo"))
                .bind("upstream", OutputRef::whole("first")),
            Node::new("third", "noop").bind("text", OutputRef::field("second", "text")),
        ]);
        let comp = q.submit_composition(chain).await.unwrap();
        writeln!(out, "composition {comp}").unwrap();
        out.flush().unwrap();
        // Keep a backlog, not an unbounded one.
        while q.stats().pending > 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
