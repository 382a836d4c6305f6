//! A host process for the "host dies, its workers follow" test: starts the Python echo worker,
//! prints the worker's pid, then waits to be killed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{NoDiagnostics, NoEvents, RuntimeKind};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let python = args.next().unwrap();
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
