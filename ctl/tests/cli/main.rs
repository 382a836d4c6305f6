#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The `cjm-ctl` binary run as a process, each test in its own temporary data dir: every
//! command, good input and bad.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cjm_host::store::{
    DiagnosticRecord, DiagnosticsStore, JournalEvent, JournalQuery, JournalStore, StreamChunk,
};
use predicates::prelude::*;
use serde_json::Value;

#[path = "../common/mod.rs"]
mod common;
use common::*;

mod install;
mod jobs;
mod logs;
mod serve;

/// The example components (named as `demo` and `bench` expect) and the native worker.
fn example_builds(env: &Env) -> (PathBuf, PathBuf) {
    let components = env.path().join("components");
    std::fs::create_dir_all(&components).unwrap();
    for (from, to) in [
        (cjm_tests::fixtures::SENTENCE_SPLIT, "sentence-split.wasm"),
        (cjm_tests::fixtures::TEXT_STATS, "text-stats.wasm"),
    ] {
        std::fs::copy(from, components.join(to)).unwrap();
    }
    (components, text_stats_worker())
}

/// Installs the wasm and native example capabilities.
fn install_examples(env: &Env) {
    let caps = env.write("capabilities.yaml", &capabilities_yaml(""));
    env.ctl()
        .arg("install-all")
        .arg("--capabilities")
        .arg(&caps)
        .assert()
        .success();
}

#[test]
fn help_works_for_every_command() {
    let env = Env::new();
    env.ctl()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("install-all").and(predicate::str::contains("Examples:")));
    for cmd in [
        "install-all",
        "list",
        "remove",
        "validate",
        "regenerate-manifest",
        "generate-adapter-manifest",
        "logs",
        "retention",
        "set-secret",
        "list-secrets",
        "run",
        "completions",
        "submit",
        "jobs",
        "cancel",
        "demo",
        "bench",
    ] {
        env.ctl()
            .args([cmd, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.ctl()
        .args(["list", "--no-such-flag"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--no-such-flag"));
    env.ctl().arg("no-such-command").assert().code(2);
    env.ctl().args(["run"]).assert().code(2);
}

#[test]
fn no_color_is_respected_and_always_forces_colour() {
    let env = Env::new();
    env.ctl()
        .args(["--color", "always", "run", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("\u{1b}["));
    // `auto` without a terminal, and NO_COLOR with `auto`: plain text.
    env.ctl()
        .env("NO_COLOR", "1")
        .args(["run", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("\u{1b}[").not())
        .stderr(predicate::str::starts_with(
            "error: unknown capability 'nope'",
        ));
}

#[test]
fn run_on_an_unknown_capability_is_an_error_with_a_hint() {
    let env = Env::new();
    env.ctl()
        .args(["run", "no-such-capability", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error: unknown capability 'no-such-capability'",
        ))
        .stderr(predicate::str::contains("hint:").and(predicate::str::contains("cjm-ctl list")));
    // Nothing was created for a capability that does not exist.
    assert!(!env.data().join("journal.db").exists());
}

#[test]
fn run_a_wasm_file_without_installing_it_with_grants_as_flags() {
    let env = Env::new();
    let hostile = cjm_tests::fixtures::HOSTILE;
    let input = env.path().join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "hello from the host").unwrap();
    let read = r#"{"attack": "read_file", "path": "/data/a.txt"}"#;
    // The default sandbox: no files.
    env.ctl()
        .args(["run", hostile, read])
        .assert()
        .failure()
        .stderr(predicate::str::contains("/data/a.txt"));
    let grant = format!("{}::/data", input.display());
    let out = env
        .ctl()
        .args(["run", hostile, "--dir", &grant, read])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        "hello from the host"
    );
    // A --dir is read-only; --dir-rw may be written.
    let write = r#"{"attack": "write_file", "path": "/data/b.txt"}"#;
    env.ctl()
        .args(["run", hostile, "--dir", &grant, write])
        .assert()
        .failure();
    assert!(!input.join("b.txt").exists());
    env.ctl()
        .args(["run", hostile, "--dir-rw", &grant, write])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(input.join("b.txt")).unwrap(),
        "pwned"
    );
    // Variables only by name, from cjm-ctl's environment; the guest prints to stderr.
    let env_read = r#"{"attack": "read_env", "name": "CJM_RUN_TEST"}"#;
    env.ctl()
        .env("CJM_RUN_TEST", "granted")
        .args(["run", hostile, env_read])
        .assert()
        .failure();
    env.ctl()
        .env("CJM_RUN_TEST", "granted")
        .args(["run", hostile, "--env", "CJM_RUN_TEST", env_read])
        .assert()
        .success()
        .stdout(predicate::str::contains("granted"));
    env.ctl()
        .args(["run", hostile, r#"{"attack": "print"}"#])
        .assert()
        .success()
        .stderr(predicate::str::contains("[stdout]"));
    // Nothing was installed or written in the data dir.
    assert!(!env.data().join("manifests").exists());
    // Grants are for files; a missing file is named.
    env.ctl()
        .args(["run", "text-stats", "--dir", "/tmp"])
        .assert()
        .code(2);
    env.ctl()
        .args(["run", "./missing.wasm"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.wasm"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "__pycache__" || n == "build" || n.ends_with(".egg-info") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}
