//! End to end: the `text-stats-worker` binary spawned as a host spawns it, spoken to over
//! real loopback HTTP (`--port`, an inherited `--fd`, the `--ppid` watchdog, SIGTERM).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const WORKER: &str = env!("CARGO_BIN_EXE_text-stats-worker");

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 exchange, connection closed after it.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// Polls `/health` until it answers 200, as the host does.
fn wait_ready(port: u16, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http(port, "GET", "/health", "")
            && r.status == 200
        {
            return serde_json::from_str(&r.body).unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("worker exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "worker not ready in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(WORKER)
        .args(args)
        .env_remove("CJM_DIAGNOSTICS_DB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn serves_the_contract_on_a_port_and_stops_on_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = spawn(&["--port".into(), port.to_string()]);
    let health = wait_ready(port, &mut child);
    assert_eq!(health["status"], "running");
    assert_eq!(health["name"], "text-stats");
    assert_eq!(health["runtime"], "native");
    assert_eq!(health["pid"], child.id());

    let r = http(port, "POST", "/initialize", r#"{"top_n":1}"#).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    let r = http(
        port,
        "POST",
        "/execute",
        r#"{"args":["b a a"],"kwargs":{}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let stats: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(stats["words"], 3);
    assert_eq!(stats["top_words"], json!([["a", 2]]));

    let r = http(
        port,
        "POST",
        "/task",
        r#"{"task":"text_statistics","method":"compute_stats","kwargs":{"text":"x"}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .contains("x-cjm-accounts: [{\"event_type\": \"task_account\""),
        "{}",
        r.head
    );
    let r = http(port, "GET", "/progress", "").unwrap();
    assert_eq!(r.body, r#"{"progress":1.0,"message":"counted"}"#);
    let r = http(port, "POST", "/execute", r#"{"kwargs":{}}"#).unwrap();
    assert_eq!(r.status, 500);
    let error: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(error["_job_error"]["fields_invalid"], json!(["text"]));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn serves_an_inherited_socket_and_dies_with_its_parent() {
    // The host's way: bind first, pass the descriptor down, close our copy.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    // A stand-in parent whose death the worker must notice.
    let mut parent = Command::new("sleep").arg("60").spawn().unwrap();
    let mut child = spawn(&[
        "--fd".into(),
        listener.as_raw_fd().to_string(),
        "--ppid".into(),
        parent.id().to_string(),
    ]);
    drop(listener);
    let health = wait_ready(port, &mut child);
    assert_eq!(health["name"], "text-stats");

    parent.kill().unwrap();
    parent.wait().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_command_line_exits_2() {
    let status = Command::new(WORKER)
        .arg("--ppid")
        .arg("1")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let status = Command::new(WORKER)
        .args(["--fd", "99"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}
