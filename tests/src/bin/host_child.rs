//! A host process for the "host dies, its workers follow" tests. Either starts the Python echo
//! worker (`host_child PYTHON PYTHONPATH`) and prints the worker's pid, or starts the probe
//! worker (`host_child --detach PROBE_WORKER`), has it start a child in its own session, and
//! prints the worker's pid and that child's. Then waits to be killed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics, NoEvents, RuntimeKind};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next().unwrap();
    if first == "--detach" {
        let worker = args.next().unwrap();
        let spec = WorkerSpec::native("probe", &[worker]).unwrap();
        let b = NativeBackend::start(
            spec,
            RuntimeKind::Native,
            Arc::new(NoDiagnostics),
            Arc::new(NoEvents),
        )
        .await
        .unwrap();
        b.initialize(serde_json::json!({})).await.unwrap();
        let kwargs = cjm_tests::kwargs(serde_json::json!({"action": "detach"}));
        let out = b
            .call(CallRequest::execute(kwargs), Arc::new(CallControl::new()))
            .await
            .unwrap();
        println!("{} {}", b.pid().unwrap(), out["pid"]);
        // `b` lives (its worker with it) until the process is killed.
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    } else {
        let python = first;
        let pythonpath = args.next().unwrap();
        let spec = WorkerSpec::python(
            "cjm-capability-echo",
            python,
            "cjm_capability_echo.capability",
            "EchoCapability",
            &[],
        )
        .env("PYTHONPATH", pythonpath);
        let b = NativeBackend::start(
            spec,
            RuntimeKind::Python,
            Arc::new(NoDiagnostics),
            Arc::new(NoEvents),
        )
        .await
        .unwrap();
        println!("{}", b.pid().unwrap());
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
