//! `install-all`, `validate`, `regenerate-manifest`, `remove` and the secrets commands.

use super::*;

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
