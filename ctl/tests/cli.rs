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

mod common;
use common::*;

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

#[test]
fn install_all_installs_wasm_and_native_and_reports_a_failing_entry() {
    let env = Env::new();
    let caps = env.write(
        "capabilities.yaml",
        &capabilities_yaml("- name: broken\n  package: ./no-such-package\n"),
    );
    let out = env
        .ctl()
        .arg("install-all")
        .arg("--capabilities")
        .arg(&caps)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error: 1 of 3 entries failed"))
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, status) in [
        ("text-stats ", "installed"),
        ("text-stats-native", "installed"),
        ("broken", "failed"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(name) && l.contains(status)),
            "{name} {status} in\n{stdout}"
        );
    }
    let missing = env.path().join("no-such-package");
    assert!(
        stdout.contains(&format!(
            "package path {} does not exist",
            missing.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("--- last lines of"), "{stdout}");

    // The manifests: the wasm one names its installed copy and sha256, the native one its
    // command and env.
    let wasm: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/text-stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(wasm["install"]["runtime"], "wasm");
    assert_eq!(
        wasm["install"]["wasm"]["component"],
        "../components/text-stats.wasm"
    );
    assert_eq!(wasm["install"]["wasm"]["sandbox"]["max_concurrency"], 2);
    assert_eq!(
        wasm["install"]["wasm"]["sha256"],
        cjm_host::manifest::hash::hash_file(Path::new(text_stats_wasm())).unwrap()
    );
    assert_eq!(wasm["code"]["name"], "text-stats");
    assert!(
        !wasm["code"]["structural_surface"]["methods"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        wasm["drift_tracking"]["config_schema_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let native: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/text-stats-native.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(native["install"]["runtime"], "native");
    assert_eq!(
        native["install"]["native"]["command"][0],
        text_stats_worker().display().to_string()
    );
    assert_eq!(native["install"]["env_vars"]["STATS_MARK"], "x");
    assert_eq!(
        native["code"]["config_schema"],
        wasm["code"]["config_schema"]
    );
    // The component was precompiled into the cache at install.
    assert!(
        std::fs::read_dir(env.data().join("cache/components"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
    );

    // Again: the installed entries are unchanged (idempotent), the broken one fails again.
    let out = env
        .ctl()
        .args(["--json", "install-all", "--capabilities"])
        .arg(&caps)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let status: Vec<(&str, &str)> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        [
            ("text-stats", "unchanged"),
            ("text-stats-native", "unchanged"),
            ("broken", "failed")
        ]
    );
    assert_eq!(report["failed"], 1);
    // --force reinstalls; --only picks entries.
    let report = env.json(&[
        "install-all",
        "--capabilities",
        caps.to_str().unwrap(),
        "--only",
        "text-stats",
        "--force",
    ]);
    assert_eq!(report["entries"].as_array().unwrap().len(), 1);
    assert_eq!(report["entries"][0]["status"], "installed");
    env.ctl()
        .args(["install-all", "--capabilities"])
        .arg(&caps)
        .args(["--only", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no entry named 'nope'"));

    // Both kinds run, through execute and the task channel, with the same answer.
    for name in ["text-stats", "text-stats-native"] {
        env.ctl()
            .args(["run", name, r#"{"text": "one two two"}"#])
            .assert()
            .success()
            .stdout(predicate::str::contains(r#""words":3"#));
        env.ctl()
            .args([
                "run",
                name,
                "--task",
                "text_statistics",
                "--method",
                "compute_stats",
                "-",
            ])
            .write_stdin(r#"{"text": "a b"}"#)
            .assert()
            .success()
            .stdout(predicate::str::contains(r#""words":2"#));
    }
    // Typed errors: one line with the category.
    env.ctl()
        .args([
            "run",
            "text-stats",
            "--config",
            r#"{"top_n": "many"}"#,
            "{}",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "error: [user_input] invalid configuration",
        ));
    env.ctl()
        .args(["run", "text-stats", "--task", "nope", "--method", "x", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("[user_input] not found"));
    env.ctl()
        .args(["run", "text-stats", "[1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("KWARGS is not valid JSON"));

    // list: both, with the instances `run` made.
    let list = env.json(&["list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["instances"], 1, "{r}");
        assert_eq!(r["drift"], Value::Array(vec![]), "{r}");
    }
    env.ctl()
        .args(["list", "--envs"])
        .assert()
        .success()
        .stdout(predicate::str::contains("components/text-stats.wasm"));
    // A changed component shows as drift.
    std::fs::write(env.data().join("components/text-stats.wasm"), b"\0asm junk").unwrap();
    let list = env.json(&["list"]);
    let drift = &list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "text-stats")
        .unwrap()["drift"];
    assert_eq!(drift, &serde_json::json!(["component-changed"]));
}

#[test]
fn install_all_lists_every_problem_of_a_bad_file() {
    let env = Env::new();
    let caps = env.write(
        "capabilities.yaml",
        "capabilities:\n\
         - name: a\n  kind: wasm\n\
         - name: b\n  kind: rust\n\
         - name: a\n  kind: native\n  command: [x]\n\
         - name: c\n  package: p\n  colour: red\n",
    );
    let out = env
        .ctl()
        .arg("install-all")
        .arg("--capabilities")
        .arg(&caps)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = caps.display().to_string();
    for expected in [
        "capabilities[0] (a): component: required field is missing",
        "capabilities[1] (b): kind: unknown kind \"rust\"",
        "capabilities[2] (a): name: duplicate capability name \"a\"",
        "capabilities[3] (c): colour: unknown key for kind python",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&file) && l.contains(expected)),
            "{expected} in\n{stderr}"
        );
    }
    assert!(
        stderr.contains("error: ") && stderr.contains("4 problem(s)"),
        "{stderr}"
    );
    // Nothing was installed.
    assert!(!env.data().join("manifests").exists());

    // A missing file is one clear error.
    env.ctl()
        .args(["install-all", "--capabilities", "nope.yaml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "capabilities file nope.yaml not found",
        ));
}

#[test]
fn install_all_reads_the_capabilities_file_from_cjm_yaml() {
    let env = Env::new();
    env.write(
        "caps.yaml",
        &format!(
            "capabilities:\n- {{name: stats, kind: wasm, component: {}}}\n",
            text_stats_wasm()
        ),
    );
    env.write("cjm.yaml", "capabilities_config: caps.yaml\n");
    env.ctl().arg("install-all").assert().success();
    assert!(env.data().join("manifests/stats.json").is_file());
}

#[test]
fn install_logs_are_kept_per_attempt_and_an_unchanged_run_keeps_the_last_real_one() {
    let env = Env::new();
    let caps = env.write(
        "capabilities.yaml",
        &format!(
            "capabilities:\n- {{name: stats, kind: wasm, component: {}}}\n",
            common::text_stats_wasm()
        ),
    );
    let logs = env.data().join("logs/install");
    let install = |extra: &[&str]| {
        let out = env
            .ctl()
            .args(["--json", "install-all", "--capabilities"])
            .arg(&caps)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report["entries"][0]["status"].as_str().unwrap().to_owned()
    };
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    assert_eq!(install(&[]), "installed");
    assert!(read("stats.log").contains("# installed"));
    // Nothing changed: the log of the real install stays.
    assert_eq!(install(&[]), "unchanged");
    assert!(
        read("stats.log").contains("# installed"),
        "{}",
        read("stats.log")
    );
    assert!(!logs.join("stats.log.part").exists());
    // Another real attempt: the one before is kept beside it.
    assert_eq!(install(&["--force"]), "installed");
    assert!(read("stats.log").contains("# installed"));
    assert!(read("stats.log.1").contains("# installed"));
    for _ in 0..5 {
        install(&["--force"]);
    }
    let kept = std::fs::read_dir(&logs)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("stats.")
        })
        .count();
    assert_eq!(kept, 5, "the last attempt and four before it");
}

#[test]
fn install_all_builds_a_cargo_package_for_wasm() {
    let env = Env::new();
    let root = cjm_tests::repo_root();
    let caps = env.write(
        "capabilities.yaml",
        &format!(
            "capabilities:\n- {{name: split, kind: wasm, cargo: sentence-split, workspace: {}}}\n",
            root.display()
        ),
    );
    // The same target dir and profile settings as the fixtures' build script: the build is
    // already fresh.
    env.ctl()
        .env("CARGO_TARGET_DIR", root.join("target/wasm-examples"))
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .arg("install-all")
        .arg("--capabilities")
        .arg(&caps)
        .assert()
        .success();
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/split.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["install"]["package_source"], "cargo:sentence-split");
    assert_eq!(m["code"]["version"], "0.1.0");
    env.ctl()
        .args([
            "run",
            "split",
            "--task",
            "sentence_segmentation",
            "--method",
            "segment_text",
        ])
        .arg(r#"{"text": "One. Two."}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains("spans"));
}

/// A failing install step's own words reach the log and the summary (pip's, cargo's): here
/// cargo run where there is no `Cargo.toml`, and no guess about the wasm target.
#[test]
fn a_failing_tool_says_why_in_the_install_summary() {
    let env = Env::new();
    std::fs::create_dir_all(env.path().join("empty")).unwrap();
    let caps = env.write(
        "caps.yaml",
        "capabilities:\n- name: nocargo\n  kind: wasm\n  cargo: nocargo\n  workspace: ./empty\n",
    );
    let out = env
        .ctl()
        .args(["install-all", "--capabilities", caps.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("could not find `Cargo.toml`"), "{text}");
    assert!(!text.contains("target is not installed"), "{text}");
    let log = std::fs::read_to_string(env.data().join("logs/install/nocargo.log")).unwrap();
    assert!(log.contains("could not find `Cargo.toml`"), "{log}");
}

#[test]
fn validate_lists_every_error_of_a_manifest() {
    let env = Env::new();
    let bad = env.write(
        "bad.json",
        r#"{"format_version": "2.0",
            "install": {"runtime": "wasm", "python_path": 3},
            "code": {"version": 1},
            "drift_tracking": {"config_schema_hash": "md5:x"}}"#,
    );
    let out = env
        .ctl()
        .arg("validate")
        .arg(&bad)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}: ", bad.display())))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    for f in [
        "install.python_path",
        "install.wasm",
        "code.name",
        "code.version",
        "drift_tracking.config_schema_hash",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}\n{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error(s) in this manifest"), "{stderr}");

    // JSON: the same errors, machine-readable.
    let out = env
        .ctl()
        .args(["--json", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), fields.len());
}

#[test]
fn validate_knows_capabilities_files_components_and_good_manifests() {
    let env = Env::new();
    let good = env.write("capabilities.yaml", &capabilities_yaml(""));
    env.ctl()
        .arg("validate")
        .arg(&good)
        .assert()
        .success()
        .stdout(predicate::str::contains("a valid capabilities (2 entries"));
    let bad = env.write("caps.txt", "capabilities:\n- name: x\n  kind: elf\n");
    env.ctl()
        .args(["validate", "--kind", "capabilities"])
        .arg(&bad)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "capabilities[0] (x): kind: unknown kind \"elf\"",
        ));
    env.ctl()
        .arg("validate")
        .arg(text_stats_wasm())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "a valid component (text-stats v0.1.0",
        ));
    let junk = env.write("junk.wasm", "not wasm at all");
    env.ctl()
        .arg("validate")
        .arg(&junk)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("junk.wasm"));
    install_examples(&env);
    env.ctl()
        .arg("validate")
        .arg(env.data().join("manifests/text-stats.json"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "a valid manifest (wasm text-stats v0.1.0)",
        ));
    env.ctl()
        .args(["validate", "nope.json"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nope.json does not exist"));
}

#[test]
fn regenerate_manifest_reintrospects_wasm_and_native() {
    let env = Env::new();
    install_examples(&env);
    for name in ["text-stats", "text-stats-native"] {
        let path = env.data().join(format!("manifests/{name}.json"));
        let before: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Damage the code section: regeneration restores it from the capability itself.
        let mut damaged = before.clone();
        damaged["code"]["description"] = "stale".into();
        std::fs::write(&path, damaged.to_string()).unwrap();
        env.ctl()
            .args(["regenerate-manifest", name])
            .assert()
            .success()
            .stdout(predicate::str::contains("regenerated"));
        let after: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(after["code"]["description"], before["code"]["description"]);
        assert_eq!(
            after["install"]["installed_at"],
            before["install"]["installed_at"]
        );
    }
    env.ctl()
        .args(["regenerate-manifest", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no installed capability 'nope'"));
}

#[test]
fn remove_asks_unless_yes_and_deletes_what_install_wrote() {
    let env = Env::new();
    install_examples(&env);
    // No terminal and no -y: refused, nothing deleted.
    env.ctl()
        .args(["remove", "text-stats"])
        .write_stdin("y\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refusing to remove 'text-stats'"))
        .stderr(predicate::str::contains("pass -y"));
    assert!(env.data().join("manifests/text-stats.json").is_file());
    env.ctl()
        .args(["remove", "-y", "text-stats"])
        .assert()
        .success()
        .stdout(predicate::str::contains("'text-stats' removed"));
    assert!(!env.data().join("manifests/text-stats.json").exists());
    assert!(!env.data().join("components/text-stats.wasm").exists());
    assert!(!env.data().join("installs/text-stats.json").exists());
    let names: Vec<Value> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [Value::from("text-stats-native")]);
    env.ctl()
        .args(["remove", "-y", "text-stats"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no installed capability 'text-stats'",
        ));
}

#[test]
fn secrets_are_stored_listed_by_name_and_never_printed() {
    let env = Env::new();
    install_examples(&env);
    let secret = "s3cr3t-value-123";
    let out = env
        .ctl()
        .args([
            "set-secret",
            "text-stats-native",
            "API_KEY",
            "--value",
            secret,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "stored secret API_KEY for text-stats-native",
        ))
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    // From stdin (not a terminal): one line.
    env.ctl()
        .args(["set-secret", "text-stats-native", "OTHER"])
        .write_stdin("from-stdin\n")
        .assert()
        .success();
    let out = env
        .ctl()
        .args(["list-secrets"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "text-stats-native: API_KEY, OTHER");
    assert!(!stdout.contains(secret) && !stdout.contains("from-stdin"));
    let listed = env.json(&["list-secrets", "text-stats-native"]);
    assert_eq!(
        listed,
        serde_json::json!({"text-stats-native": ["API_KEY", "OTHER"]})
    );
    let stored = std::fs::read_to_string(env.data().join("secrets/secrets.json")).unwrap();
    assert!(stored.contains(secret) && stored.contains("from-stdin"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(env.data().join("secrets/secrets.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Nothing in the journal or the logs carries the value.
    for db in ["journal.db", "diagnostics.db"] {
        if let Ok(bytes) = std::fs::read(env.data().join(db)) {
            assert!(!String::from_utf8_lossy(&bytes).contains(secret), "{db}");
        }
    }
    env.ctl()
        .args(["set-secret", "nope", "K", "--value", "v"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown capability 'nope'"));
    env.ctl()
        .args(["set-secret", "text-stats-native", "EMPTY"])
        .write_stdin("\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the secret value is empty"));
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

/// A data dir with diagnostics and journal rows of two jobs.
fn seed_logs(env: &Env) {
    std::fs::create_dir_all(env.data()).unwrap();
    let d = DiagnosticsStore::open(&env.data().join("diagnostics.db")).unwrap();
    let record = |job: &str, level: &str, msg: &str, ts: Option<&str>| {
        let mut r = DiagnosticRecord::new(level, msg);
        r.job_id = Some(job.into());
        r.worker_session_id = Some("session-1".into());
        r.logger_name = "cap".into();
        if let Some(ts) = ts {
            r.ts = ts.into();
        }
        r
    };
    d.append_record(&record(
        "job-a",
        "INFO",
        "old a",
        Some("2020-01-01T00:00:00+00:00"),
    ))
    .unwrap();
    d.append_record(&record("job-a", "WARNING", "careful a", None))
        .unwrap();
    d.append_record(&record("job-b", "INFO", "hello b", None))
        .unwrap();
    let mut old = StreamChunk::new(Some("session-1"), "stderr", "ancient line");
    old.ts = "2020-01-01T00:00:00+00:00".into();
    d.append_chunk(&old).unwrap();
    d.append_chunk(&StreamChunk::new(
        Some("session-1"),
        "stdout",
        "progress 100%",
    ))
    .unwrap();
    let j = JournalStore::open(&env.data().join("journal.db")).unwrap();
    j.append(&JournalEvent::state_transition(
        "job-a", "queued", "running",
    ))
    .unwrap();
    j.append(&JournalEvent::state_transition(
        "job-c",
        "running",
        "completed",
    ))
    .unwrap();
}

#[test]
fn logs_filter_by_job_level_session_and_limit() {
    let env = Env::new();
    // Nothing has run yet.
    env.ctl()
        .arg("logs")
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing has run here yet"));
    seed_logs(&env);
    let lines = |args: &[&str]| -> Vec<String> {
        let out = env
            .ctl()
            .arg("logs")
            .args(args)
            .assert()
            .success()
            .get_output()
            .clone();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let all = lines(&[]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all[0].contains("old a") && all[2].contains("hello b"),
        "oldest first: {all:?}"
    );
    let a = lines(&["--job", "job-a"]);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|l| l.contains("[ession-1|job-a]")), "{a:?}");
    let warn = lines(&["--level", "warning"]);
    assert_eq!(warn.len(), 1);
    assert!(warn[0].contains("WARNING") && warn[0].contains("cap: careful a"));
    let last = lines(&["-n", "1"]);
    assert_eq!(last.len(), 1);
    assert!(last[0].contains("hello b"));
    let chunks = lines(&["--chunks", "--session", "session-1"]);
    assert_eq!(chunks.len(), 2);
    assert!(chunks[1].contains("stdout") && chunks[1].contains("progress 100%"));
    let journal = lines(&["--journal", "--job", "job-c"]);
    assert_eq!(journal.len(), 1);
    assert!(journal[0].contains("state_transition") && journal[0].contains("completed"));
    // A job known only to the journal is not unknown.
    env.ctl()
        .args(["logs", "--job", "job-c"])
        .assert()
        .success();
    // JSON: one object per line.
    let out = env
        .ctl()
        .args(["--json", "logs", "--job", "job-b"])
        .assert()
        .success()
        .get_output()
        .clone();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["message"], "hello b");
    assert_eq!(v["level"], "INFO");
    // --journal and --chunks are different views.
    env.ctl()
        .args(["logs", "--journal", "--chunks"])
        .assert()
        .code(2);
}

#[test]
fn logs_for_an_unknown_job_is_an_error() {
    let env = Env::new();
    seed_logs(&env);
    env.ctl()
        .args(["logs", "--job", "job-zzz"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error: unknown job 'job-zzz'"))
        .stderr(predicate::str::contains("hint:"));
    env.ctl()
        .args(["logs", "--journal", "--job", "job-zzz"])
        .assert()
        .code(1);
}

#[test]
fn logs_follow_prints_rows_appended_later() {
    let env = Env::new();
    seed_logs(&env);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cjm-ctl"))
        .current_dir(env.path())
        .arg("--data-dir")
        .arg(env.data())
        .args(["logs", "--job", "job-b", "--follow", "--interval", "0.05"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("hello b"));
    let d = DiagnosticsStore::open(&env.data().join("diagnostics.db")).unwrap();
    let mut later = DiagnosticRecord::new("ERROR", "appended while following");
    later.job_id = Some("job-b".into());
    d.append_record(&later).unwrap();
    let mut other = DiagnosticRecord::new("ERROR", "another job");
    other.job_id = Some("job-a".into());
    d.append_record(&other).unwrap();
    let mut final_row = DiagnosticRecord::new("INFO", "last of b");
    final_row.job_id = Some("job-b".into());
    d.append_record(&final_row).unwrap();
    let next = lines.next().unwrap().unwrap();
    assert!(next.contains("appended while following"), "{next}");
    let next = lines.next().unwrap().unwrap();
    assert!(
        next.contains("last of b"),
        "the other job's row is filtered out: {next}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn retention_deletes_old_diagnostics_and_says_what() {
    let env = Env::new();
    env.ctl()
        .args(["retention", "--max-age-days", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to do"));
    seed_logs(&env);
    env.ctl()
        .args(["retention", "--max-age-days", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "deleted 1 record(s) and 1 chunk(s)",
        ))
        .stdout(predicate::str::contains("the journal is untouched"));
    let again = env.json(&["retention", "--max-age-days", "1"]);
    assert_eq!(again["records_deleted"], 0);
    assert_eq!(again["chunks_deleted"], 0);
    let d = DiagnosticsStore::open(&env.data().join("diagnostics.db")).unwrap();
    assert_eq!(d.counts().unwrap(), (2, 1));
    let j = JournalStore::open(&env.data().join("journal.db")).unwrap();
    assert_eq!(j.count(None).unwrap(), 2);
    // A budget of 0 MB empties the tables.
    let all = env.json(&["retention", "--max-total-mb", "0"]);
    assert_eq!(all["records_deleted"], 2);
}

#[test]
fn completions_are_generated() {
    let env = Env::new();
    env.ctl()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("cjm-ctl").and(predicate::str::contains("install-all")));
    env.ctl().args(["completions", "tcsh"]).assert().code(2);
}

/// Really installs the repo's echo capability (and its task adapter) into a venv with
/// cjm-substrate from PyPI, beside a pip package that does not exist. Needs the network
/// (PyPI) and takes ~20 s with a warm pip cache.
#[test]
fn install_all_python_echo_capability_with_its_adapter() {
    let env = Env::new();
    // A copy of the repo's echo capability: the test edits it below.
    let echo = env.path().join("cjm-capability-echo");
    copy_dir(&cjm_tests::echo_capability_dir(), &echo);
    let caps = env.write(
        "capabilities.yaml",
        &format!(
            "capabilities:\n\
             - name: cjm-capability-echo\n  package: {}\n  env_vars: {{ECHO_MARK: '1'}}\n  adapters:\n  - impl: cjm_capability_echo.adapter:EchoTaskAdapter\n\
             - name: ghost\n  package: cjm-capability-does-not-exist-zz9\n",
            echo.display()
        ),
    );
    let out = env
        .ctl()
        .args(["--json", "install-all", "--capabilities"])
        .arg(&caps)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let echo_report = &report["entries"][0];
    assert_eq!(echo_report["status"], "installed", "{report:#}");
    let ghost = &report["entries"][1];
    assert_eq!(ghost["status"], "failed");
    assert!(
        ghost["log_tail"]
            .as_str()
            .unwrap()
            .contains("cjm-capability-does-not-exist-zz9"),
        "{ghost}"
    );
    // The environment the failed attempt created is gone (a re-run starts clean).
    assert!(!env.data().join("envs/ghost").exists());
    // Built on a Python that cjm-substrate supports (>= 3.12) when this machine has one;
    // else on the default python3, with a warning that says so.
    let version =
        std::process::Command::new(env.data().join("envs/cjm-capability-echo/bin/python"))
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap();
    let version = String::from_utf8(version.stdout).unwrap().trim().to_owned();
    let (major, minor) = version.split_once('.').unwrap();
    let supported = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) >= (3, 12);
    let warnings = echo_report["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has_312 = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .any(|d| d.join("python3.12").is_file() || d.join("python3.13").is_file())
        || std::fs::read_dir(
            std::path::Path::new(&std::env::var("HOME").unwrap()).join(".pyenv/versions"),
        )
        .is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("3.12")))
        });
    if has_312 {
        assert!(supported, "built on {version} though a 3.12 is here");
    }
    if supported {
        assert!(warnings.is_empty(), "{warnings:?}");
    } else {
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("--ignore-requires-python")),
            "built on {version} without a warning: {report:#}"
        );
    }
    // The manifest is the Python tool's own, written in the env.
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/cjm-capability-echo.json")).unwrap(),
    )
    .unwrap();
    assert!(m["install"].get("runtime").is_none());
    assert_eq!(m["install"]["conda_env"], "cjm-capability-echo");
    assert_eq!(
        m["install"]["python_path"],
        env.data()
            .join("envs/cjm-capability-echo/bin/python")
            .display()
            .to_string()
    );
    assert_eq!(m["install"]["env_vars"]["ECHO_MARK"], "1");
    assert_eq!(m["code"]["module"], "cjm_capability_echo.capability");
    assert_eq!(m["code"]["class"], "EchoCapability");
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            cjm_tests::repo_root()
                .join("host/tests/fixtures/python/manifests/cjm-capability-echo.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["code"]["structural_surface"],
        fixture["code"]["structural_surface"]
    );
    assert_eq!(m["drift_tracking"], fixture["drift_tracking"]);
    assert!(
        env.data()
            .join("manifests/adapter-echo-EchoTaskAdapter.json")
            .is_file()
    );

    // It runs, through execute and through the adapter's task channel.
    env.ctl()
        .args([
            "run",
            "cjm-capability-echo",
            r#"{"action": "echo", "text": "hi"}"#,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(r#""text":"hi""#));
    env.ctl()
        .args([
            "run",
            "cjm-capability-echo",
            "--task",
            "echo",
            "--method",
            "echo",
        ])
        .arg(r#"{"text": "ab", "times": 2}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains(r#""text":"abab""#));
    env.ctl()
        .args([
            "run",
            "cjm-capability-echo",
            r#"{"action": "fail", "kind": "input"}"#,
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("error: [user_input]"));

    // Regenerate keeps installed_at; the adapter manifest can be generated on its own.
    env.ctl()
        .args(["regenerate-manifest", "cjm-capability-echo"])
        .assert()
        .success();
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/cjm-capability-echo.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        again["install"]["installed_at"],
        m["install"]["installed_at"]
    );
    std::fs::remove_file(
        env.data()
            .join("manifests/adapter-echo-EchoTaskAdapter.json"),
    )
    .unwrap();
    env.ctl()
        .args([
            "generate-adapter-manifest",
            "cjm-capability-echo",
            "cjm_capability_echo.adapter:EchoTaskAdapter",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("task: echo"));
    env.ctl()
        .args([
            "generate-adapter-manifest",
            "cjm-capability-echo",
            "nomodule:Nope",
        ])
        .assert()
        .code(1);

    // Unchanged on a second run, reinstalled once its source changed; the source tree
    // never gets build outputs.
    let only_echo = [
        "install-all",
        "--capabilities",
        caps.to_str().unwrap(),
        "--only",
        "cjm-capability-echo",
    ];
    assert_eq!(env.json(&only_echo)["entries"][0]["status"], "unchanged");
    std::fs::write(echo.join("cjm_capability_echo/extra.py"), "X = 1\n").unwrap();
    assert_eq!(env.json(&only_echo)["entries"][0]["status"], "installed");
    let names: Vec<String> = std::fs::read_dir(&echo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "build" || n.ends_with(".egg-info")),
        "{names:?}"
    );
    // Remove deletes the env too.
    env.ctl()
        .args(["remove", "-y", "cjm-capability-echo"])
        .assert()
        .success();
    assert!(!env.data().join("envs/cjm-capability-echo").exists());
    assert!(
        !env.data()
            .join("manifests/adapter-echo-EchoTaskAdapter.json")
            .exists()
    );
}

#[test]
fn submit_jobs_and_cancel() {
    let env = Env::new();
    install_examples(&env);
    // One job through the queue: the result on stdout, the record in the journal.
    let out = env.json(&[
        "submit",
        "text-stats",
        r#"{"text": "a b b"}"#,
        "--run-id",
        "r-1",
    ]);
    assert_eq!(out["status"], "completed");
    assert_eq!(out["result"]["words"], 3);
    let job = out["id"].as_str().unwrap().to_owned();
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["id"], job.as_str());
    assert_eq!(jobs[0]["status"], "completed");
    assert_eq!(
        env.json(&["jobs", "--run-id", "nope"]),
        serde_json::json!([])
    );
    let rows = env.json(&["jobs", "--job", &job]);
    let types: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "job_submitted",
            "admission_decided",
            "state_transition",
            "state_transition"
        ]
    );
    // A composition mixing wasm and native, bindings in its JSON.
    let comp = env.write(
        "comp.json",
        r#"{"nodes": [
            {"id": "a", "instance_id": "text-stats", "kwargs": {"text": "hello hello world"}},
            {"id": "b", "instance_id": "text-stats-native", "task": "text_statistics", "method": "merge_stats",
             "kwargs": {"one": {"$output": "a"}}}]}"#,
    );
    let out = env.json(&["submit", "--composition", comp.to_str().unwrap()]);
    assert_eq!(out["status"], "completed");
    assert_eq!(out["nodes"]["b"]["result"]["words"], 3);
    // Bad input: each one line plus a hint, exit 1.
    env.ctl()
        .args(["cancel", "no-such-job"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no job 'no-such-job'"));
    env.ctl()
        .args(["cancel", &job])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already finished (completed)"));
    env.ctl()
        .args(["jobs", "--job", "no-such-job"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("hint:"));
    env.ctl()
        .args(["submit", "nope", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown capability 'nope'"));
    env.ctl()
        .args(["submit", "text-stats", "not json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not valid JSON"));
    let bad = env.write("cyclic.json", r#"{"nodes": [{"id": "a", "instance_id": "text-stats", "kwargs": {"t": {"$output": "a"}}}]}"#);
    env.ctl()
        .args(["submit", "--composition", bad.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("binds to itself"));
    env.ctl()
        .args(["submit", "text-stats", r#"{"text": 5}"#])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("failed: [user_input]"));
}

#[test]
fn cancel_reaches_a_job_running_in_another_process() {
    let env = Env::new();
    let caps = env.write(
        "capabilities.yaml",
        &format!(
            "capabilities:\n- name: hostile\n  kind: wasm\n  component: {}\n",
            cjm_tests::fixtures::HOSTILE
        ),
    );
    env.ctl()
        .args(["install-all", "--capabilities", caps.to_str().unwrap()])
        .assert()
        .success();
    let (mut runner, job) = run_forever(&env);
    env.ctl()
        .args(["cancel", &job])
        .assert()
        .success()
        .stdout(predicate::str::contains("cancel requested"));
    let status = runner.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut runner.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("was cancelled"), "{err}");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["status"], "cancelled");

    // Ctrl-C (or SIGTERM) of `submit` cancels its job and exits cleanly.
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let (mut runner, job) = run_forever(&env);
        let pid = nix::unistd::Pid::from_raw(runner.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let status = runner.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut runner.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{signal}: {err}");
        assert!(err.contains("cancelling job"), "{err}");
        let jobs = env.json(&["jobs"]);
        assert_eq!(jobs[0]["id"], job.as_str());
        assert_eq!(jobs[0]["status"], "cancelled");
    }

    // A SIGKILLed `submit` leaves its job to nobody: `jobs` says so, `cancel` ends it.
    let (mut runner, job) = run_forever(&env);
    runner.kill().unwrap();
    runner.wait().unwrap();
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["id"], job.as_str());
    assert_eq!(jobs[0]["status"], "running");
    assert!(
        jobs[0]["host_gone"]
            .as_str()
            .unwrap()
            .contains("no longer exists"),
        "{jobs}"
    );
    env.ctl()
        .args(["jobs"])
        .assert()
        .success()
        .stdout(predicate::str::contains("running (host gone)"));
    env.ctl()
        .args(["cancel", &job])
        .assert()
        .success()
        .stdout(predicate::str::contains("is gone"));
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["status"], "cancelled");
    assert_eq!(jobs[0]["host_gone"], Value::Null);
    env.ctl()
        .args(["cancel", &job])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already finished"));
}

/// Starts `cjm-ctl submit hostile loop_forever` and returns it with its job id, once running.
fn run_forever(env: &Env) -> (std::process::Child, String) {
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_cjm-ctl"))
        .current_dir(env.path())
        .arg("--data-dir")
        .arg(env.data())
        .args(["submit", "hostile", r#"{"attack": "loop_forever"}"#])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = loop {
        let out = env
            .ctl()
            .args(["--json", "jobs", "--status", "running"])
            .output()
            .unwrap();
        if let Ok(Value::Array(jobs)) = serde_json::from_slice::<Value>(&out.stdout)
            && let Some(j) = jobs.first()
        {
            break j["id"].as_str().unwrap().to_owned();
        }
        assert!(
            runner.try_wait().unwrap().is_none(),
            "the runner exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (runner, job)
}

#[test]
fn demo_runs_a_mixed_composition_through_the_queue() {
    let env = Env::new();
    let (components, worker) = example_builds(&env);
    let args = [
        "demo",
        "--components",
        components.to_str().unwrap(),
        "--worker",
        worker.to_str().unwrap(),
    ];
    env.ctl()
        .args(args)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "merged in the native worker: 15 sentences, 178 words",
        ))
        .stdout(predicate::str::contains("composition_finished"));
    // Again: installs are unchanged, the composition runs again.
    let out = env.json(&args);
    assert_eq!(out["status"], "completed");
    assert_eq!(out["merged"]["sentences"], 15);
}

#[test]
fn bench_prints_a_table_of_medians() {
    let env = Env::new();
    let (components, worker) = example_builds(&env);
    let out = env.json(&[
        "bench",
        "--components",
        components.to_str().unwrap(),
        "--worker",
        worker.to_str().unwrap(),
        "--samples",
        "5",
        "--burst",
        "50",
    ]);
    let rows = out["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{out}");
    assert!(
        rows.iter().all(|r| r["median"].as_f64().unwrap() > 0.0),
        "{out}"
    );
    env.ctl().args(["bench", "--samples", "0"]).assert().code(2);
}

#[test]
fn serve_runs_jobs_over_http_streams_events_and_restarts_with_history() {
    let env = Env::new();
    install_served(&env);
    // Without a service, `info` reads the manifest.
    let info = env.json(&["info", "text-stats"]);
    assert_eq!(info["loaded"], false);
    assert_eq!(info["config_schema"]["properties"]["top_n"]["maximum"], 100);
    env.ctl()
        .args(["info", "text-stats"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "top_n: integer, default 3, 0..=100",
        ))
        // compute_stats is typed by its author: its parameter's type shows.
        .stdout(predicate::str::contains(
            "compute_stats(text: string, kwargs)",
        ));
    let serving = Serving::start(&env);
    let client = serving.client();
    // With one, `info` shows the live instance and `run` calls it through the service.
    let info = env.json(&["info", "text-stats"]);
    assert_eq!(
        (&info["loaded"], &info["state"]),
        (&Value::Bool(true), &Value::from("idle"))
    );
    assert!(
        info["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "text_statistics")
    );
    let out = env.json(&[
        "run",
        "text-stats-native",
        "--task",
        "text_statistics",
        "--method",
        "compute_stats",
        r#"{"text": "x y"}"#,
    ]);
    assert_eq!(out["words"], 2);
    env.ctl()
        .args([
            "run",
            "text-stats",
            "--task",
            "text_statistics",
            "--method",
            "nope",
            "{}",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("adapter has no method 'nope'"));
    env.ctl()
        .args(["run", "text-stats", "--config", r#"{"top_n": 1}"#, "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--local"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let health = rt.block_on(client.health()).unwrap();
    assert_eq!(health["status"], "ok");
    // Follow everything from now.
    let mut events = rt.block_on(client.events("", None)).unwrap();

    // The CLI finds the service and goes through it.
    let out = env
        .ctl()
        .args(["--json", "submit", "text-stats", r#"{"text": "a b b"}"#])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["status"], "completed");
    assert_eq!(first["result"]["words"], 3);
    // It ran in the service: its queue holds the result (the journal keeps none).
    let held = rt
        .block_on(client.job(first["id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(held["result"]["words"], 3);

    // One lane: a job that never ends holds it; the next waits and `cjm-ctl cancel` reaches
    // it there at once.
    let forever = rt
        .block_on(client.submit(
            &serde_json::json!({"capability": "hostile", "kwargs": {"attack": "loop_forever"}}),
        ))
        .unwrap();
    let waiting = rt
        .block_on(client.submit(
            &serde_json::json!({"capability": "text-stats-native", "kwargs": {"text": "x"}}),
        ))
        .unwrap();
    env.ctl()
        .args(["cancel", &waiting])
        .assert()
        .success()
        .stdout(predicate::str::contains("cancelled by the host"));
    let job = rt
        .block_on(client.wait(&waiting, std::time::Duration::from_secs(30)))
        .unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(job["started_at"].is_null());
    rt.block_on(client.cancel(&forever)).unwrap();
    let job = rt
        .block_on(client.wait(&forever, std::time::Duration::from_secs(30)))
        .unwrap();
    assert_eq!(job["status"], "cancelled");

    // The stream saw all three end; stop reading part way through the journal.
    let mut ended = std::collections::BTreeSet::new();
    let mut last_id = 0;
    while ended.len() < 3 {
        let e = rt
            .block_on(events.next())
            .unwrap()
            .expect("the stream ended");
        if let Some(id) = e.id {
            assert!(id > last_id, "ids increase: {id} after {last_id}");
            last_id = id;
        }
        if e.event == "state_transition"
            && matches!(
                e.json()["payload"]["to"].as_str(),
                Some("completed" | "cancelled")
            )
        {
            ended.insert(e.json()["job_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(ended.contains(&waiting) && ended.contains(&forever));
    drop(events);

    // Jobs run while nobody listens; a reconnect with Last-Event-ID gets every row after it.
    let mut later = Vec::new();
    for text in ["one", "two three", "four five six"] {
        let id =
            rt.block_on(client.submit(
                &serde_json::json!({"capability": "text-stats", "kwargs": {"text": text}}),
            ))
            .unwrap();
        later.push(id);
    }
    for id in &later {
        let job = rt
            .block_on(client.wait(id, std::time::Duration::from_secs(30)))
            .unwrap();
        assert_eq!(job["status"], "completed");
    }
    let journal = JournalStore::open(&env.data().join("journal.db")).unwrap();
    let expected: Vec<i64> = journal
        .query(&JournalQuery::default().after(last_id))
        .unwrap()
        .into_iter()
        .filter_map(|e| e.seq)
        .collect();
    let mut events = rt.block_on(client.events("", Some(last_id))).unwrap();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let e = rt
            .block_on(events.next())
            .unwrap()
            .expect("the stream ended");
        if let Some(id) = e.id {
            got.push(id);
        }
    }
    assert_eq!(got, expected, "the resumed stream missed or repeated rows");
    drop(events);

    // `jobs` through the service lists what it ran.
    let jobs = env.json(&["jobs", "-n", "50"]);
    let listed: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    for id in later.iter().chain([&waiting, &forever]) {
        assert!(listed.contains(&id.as_str()), "{id} not listed");
    }

    // SIGTERM: a clean exit, the discovery file gone; a restart keeps the history.
    let (status, log) = serving.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopping"), "{log}");
    assert!(!env.data().join("serve.json").exists());
    let serving = Serving::start(&env);
    let page = rt.block_on(serving.client().jobs("limit=50")).unwrap();
    let ids: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    for id in later.iter().chain([&waiting, &forever]) {
        assert!(ids.contains(&id.as_str()), "{id} lost over a restart");
    }
    let again = rt
        .block_on(serving.client().json(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", later[2]),
            None,
        ))
        .unwrap();
    assert_eq!(again["status"], "completed");
    let (status, log) = serving.stop();
    assert!(status.success(), "{log}");
}

/// A Python standard-library client (urllib only) calls a wasm and a native capability
/// through the service with the worker contract's bodies, and a standalone native worker of
/// the same capability directly: the answers are the same bytes.
#[test]
fn a_python_stdlib_client_gets_the_workers_bytes_through_the_service() {
    let env = Env::new();
    install_served(&env);
    let serving = Serving::start(&env);
    // The same capability as a worker of its own, called directly.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut worker = std::process::Command::new(text_stats_worker())
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let script = env.write(
        "client.py",
        r#"
import json, sys, time, urllib.request, urllib.error

host, worker = sys.argv[1], sys.argv[2]

def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

for _ in range(200):
    try:
        urllib.request.urlopen(worker + "/health", timeout=1)
        break
    except Exception:
        time.sleep(0.05)
# As a host loads a worker: initialize with the config (the schema's defaults).
post(worker + "/initialize", {})

cases = {
    "task": {"task": "text_statistics", "method": "compute_stats",
             "kwargs": {"text": "Été, été! b a b 1e16 0.0 x"}},
    "execute": {"args": [], "kwargs": {"text": "one two two"}, "envelope": {"run_id": "py"}},
    "bad_method": {"task": "text_statistics", "method": "nope", "kwargs": {}},
}
out = {}
for name, body in cases.items():
    path = "task" if "task" in body else "execute"
    out[name] = {
        "wasm": post(host + "/v1/capabilities/text-stats/" + path, body),
        "native": post(host + "/v1/capabilities/text-stats-native/" + path, body),
        "direct": post(worker + "/" + path, body),
    }
print(json.dumps(out))
"#,
    );
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&serving.url)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    for case in ["task", "execute", "bad_method"] {
        let a = &answers[case];
        assert_eq!(a["wasm"], a["direct"], "{case}: wasm through the service");
        assert_eq!(
            a["native"], a["direct"],
            "{case}: native through the service"
        );
    }
    assert_eq!(answers["task"]["direct"][0], 200);
    assert_eq!(answers["bad_method"]["direct"][0], 404);
    let (status, log) = serving.stop();
    assert!(status.success(), "{log}");
}

/// Scripting edges: malformed JSON arguments are usage errors (exit 2); with `--json` an
/// error is a JSON object on stderr; a closed stdout ends the command quietly; job ids may be
/// given by a unique prefix; `run --config` applies to its call only unless `--save`.
#[test]
fn scripting_edges() {
    let env = Env::new();
    install_examples(&env);
    // --json errors.
    let out = env
        .ctl()
        .args(["--json", "run", "text-stats", "{bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["kind"], "usage");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let out = env
        .ctl()
        .args(["--json", "run", "nope", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["kind"], "failure");
    assert!(
        err["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("cjm-ctl list")
    );
    // A reader that leaves early: exit 0, nothing on stderr.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cjm-ctl"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --config for one call, --save to keep it.
    let top = |env: &Env| {
        let out = env.json(&["run", "text-stats", r#"{"text": "a a b b c c d"}"#]);
        out["top_words"].as_array().unwrap().len()
    };
    assert_eq!(top(&env), 3);
    let once = env.json(&[
        "run",
        "text-stats",
        "--config",
        r#"{"top_n": 1}"#,
        r#"{"text": "a a b b c c d"}"#,
    ]);
    assert_eq!(once["top_words"].as_array().unwrap().len(), 1);
    assert_eq!(top(&env), 3, "--config without --save was kept");
    env.json(&[
        "run",
        "text-stats",
        "--config",
        r#"{"top_n": 2}"#,
        "--save",
        r#"{"text": "x"}"#,
    ]);
    assert_eq!(top(&env), 2);
    // The composition `submit --help` shows runs as printed.
    let help = env.ctl().args(["submit", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    // Help may be wrapped to the terminal's width: the example is rejoined at its spaces.
    let marker = "A composition file is JSON: ";
    let start = help.find(marker).expect("the help shows a composition") + marker.len();
    let end = start + help[start..].find("Instance ids").unwrap();
    let example = help[start..end]
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let file = env.write("help-example.json", &example);
    let out = env.json(&["submit", "--composition", file.to_str().unwrap()]);
    assert_eq!(out["status"], "completed", "{out}");
    // Job ids by unique prefix.
    let job = env.json(&["submit", "text-stats", r#"{"text": "p"}"#])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let prefix = &job[..13];
    let rows = env.json(&["jobs", "--job", prefix]);
    assert_eq!(rows[0]["job_id"], job.as_str());
    env.ctl()
        .args(["cancel", prefix])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "job {job} already finished"
        )));
    // And by the last 8 characters, as `logs` prints them.
    let suffix = &job[job.len() - 8..];
    let rows = env.json(&["jobs", "--job", suffix]);
    assert_eq!(rows[0]["job_id"], job.as_str());
}
