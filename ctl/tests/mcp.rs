#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The MCP server driven by a real MCP client, the official Python SDK from PyPI
//! (`tests/fixtures/mcp_client.py`), over stdio (`cjm-ctl mcp`) and over streamable HTTP
//! (`cjm-ctl serve`'s `/mcp`): tools of a wasm and a native capability, progress, a
//! cancellation that reaches the journal, a failed job as a tool error with its `JobError`.

use std::path::Path;

use cjm_host::store::{JournalQuery, JournalStore};
use serde_json::Value;

mod common;
use common::*;

fn client_script() -> String {
    cjm_tests::repo_root()
        .join("tests/fixtures/mcp_client.py")
        .display()
        .to_string()
}

fn run_client(args: &[&str]) -> Value {
    let out = std::process::Command::new(cjm_tests::python_with_mcp())
        .arg(client_script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the MCP client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What every transport must show.
fn check(report: &Value, data: &Path) {
    let tools = report["tools"].as_object().unwrap();
    for name in [
        "text-stats__execute",
        "text-stats__text_statistics__compute_stats",
        "text-stats-native__execute",
        // A Rust worker's tasks (its `/tasks`), as a wasm component's.
        "text-stats-native__text_statistics__compute_stats",
        "hostile__execute",
    ] {
        assert!(tools.contains_key(name), "{name} is not a tool: {tools:?}");
    }
    // Parameter names from the structural surface; `**kwargs` keeps it open.
    let schema = &tools["text-stats__text_statistics__compute_stats"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], serde_json::json!(["text"]));
    // Typed by its author (`Tasks::typed`): the JSON Schema of its arguments.
    assert_eq!(schema["properties"]["text"]["type"], "string", "{schema}");
    assert!(
        report["descriptions"]["text-stats__execute"]
            .as_str()
            .unwrap()
            .contains("most frequent words"),
        "{}",
        report["descriptions"]
    );
    // A wasm and a native capability answer with structured content and text.
    assert_eq!(report["wasm"]["is_error"], false);
    assert_eq!(report["wasm"]["structured"]["words"], 3);
    assert!(
        report["wasm"]["text"][0]
            .as_str()
            .unwrap()
            .contains("\"words\":3")
    );
    assert_eq!(report["native"]["is_error"], false);
    assert_eq!(report["native"]["structured"]["words"], 2);
    // Bad input: a tool error carrying the JobError.
    assert_eq!(report["bad_input"]["is_error"], true);
    let error = &report["bad_input"]["structured"]["error"];
    assert_eq!(error["category"], "user_input", "{error}");
    assert_eq!(error["fields_invalid"], serde_json::json!(["text"]));
    assert!(report["unknown"].as_str().unwrap().contains("no tool"));
    // The long job's progress came as notifications, with the worker's message.
    let progress = report["progress"].as_array().unwrap();
    assert!(
        progress.iter().any(|p| p["message"] == "looping"),
        "{progress:?}"
    );
    // Each change is sent once (over HTTP the SDK may also see it on the session's stream).
    let distinct: std::collections::BTreeSet<String> =
        progress.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 1, "{progress:?}");
    // A job that reports progress and ends at once: its last progress still arrives, before
    // the answer (the throttle may drop the ones between).
    assert_eq!(report["flood_result"]["is_error"], false);
    let flood = report["flood"].as_array().unwrap();
    assert_eq!(
        flood.last().map(|p| &p["message"]),
        Some(&Value::from("step 3")),
        "{flood:?}"
    );
    // The client's cancellation cancelled the job: the journal says so, and who asked.
    let journal = JournalStore::open(&data.join("journal.db")).unwrap();
    let rows = journal.query(&JournalQuery::default()).unwrap();
    let hostile: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.capability_instance_id.as_deref() == Some("hostile")
                && r.event_type == "state_transition"
        })
        .collect();
    assert!(
        hostile.iter().any(|r| r.payload["to"] == "cancelled"),
        "{hostile:?}"
    );
    assert!(
        rows.iter()
            .filter(|r| r.job_id.is_some() && r.capability_instance_id.as_deref() == Some("hostile"))
            .all(|r| r.actor.as_deref() == Some("mcp")),
        "every MCP job is the actor 'mcp''s"
    );
}

#[test]
fn an_mcp_client_uses_the_host_over_stdio() {
    let env = Env::new();
    install_served(&env);
    let report = run_client(&[
        "stdio",
        env!("CARGO_BIN_EXE_cjm-ctl"),
        env.data().to_str().unwrap(),
    ]);
    check(&report, &env.data());
}

#[test]
fn an_mcp_client_uses_the_service_over_streamable_http() {
    let env = Env::new();
    install_served(&env);
    let serving = Serving::start(&env);
    let report = run_client(&["http", serving.url.trim_end_matches('/')]);
    check(&report, &env.data());
    // The tool list changed when a capability was disabled, and the session was told.
    let after: Vec<&str> = report["tools_after_disable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!after.contains(&"hostile__execute"), "{after:?}");
    assert!(after.contains(&"text-stats__execute"));
    drop(serving);
    // With a token, /mcp is guarded like the API.
    let serving = Serving::start_with(&env, "127.0.0.1:0", &["--require-token"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/mcp", serving.url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
}

/// A line that is not JSON (or nests past the parser's limit) gets JSON-RPC's parse error,
/// and the session goes on: a client is never left waiting for an answer to it.
#[test]
fn a_line_that_is_not_json_gets_a_parse_error_over_stdio() {
    let env = Env::new();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let out = env
        .ctl()
        .arg("mcp")
        .write_stdin(format!("not json\n{deep}\n{init}\n"))
        .assert()
        .success();
    let answers: Vec<Value> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes: Vec<&Value> = answers.iter().map(|a| &a["error"]["code"]).collect();
    assert_eq!(
        codes[..2],
        [&Value::from(-32700), &Value::from(-32700)],
        "{answers:?}"
    );
    assert_eq!(answers[2]["id"], 1, "the session went on: {answers:?}");
    assert!(answers[2]["result"]["serverInfo"].is_object());
}
