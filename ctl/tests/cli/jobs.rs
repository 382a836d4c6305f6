//! A Python capability installed and run, `submit` and `cancel` (also across processes), `demo` and `bench`.

use super::*;

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

/// `bench` measures the examples; with `--compare-python` also the echo capability through
/// this host and through cjm-substrate's own (the real package, from the test venv).
#[test]
fn bench_prints_a_table_of_medians_and_compares_with_cjm_substrate() {
    let env = Env::new();
    let (components, worker) = example_builds(&env);
    let python = cjm_tests::python_with_substrate();
    let venv = python.parent().unwrap().parent().unwrap();
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
        "--mixed",
        "100",
        "--compare-python",
        venv.to_str().unwrap(),
    ]);
    let rows = out["rows"].as_array().unwrap();
    // Two memory rows where the kernel tells (Linux, with a peak that can be reset).
    let peak_resets = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .is_ok();
    assert_eq!(rows.len(), if peak_resets { 9 } else { 7 }, "{out}");
    assert!(
        rows.iter().all(|r| r["median"].as_f64().unwrap() > 0.0),
        "{out}"
    );
    let compared = &out["compare_python"];
    let version = cjm_tests::CJM_SUBSTRATE.trim_start_matches("cjm-substrate==");
    assert_eq!(compared["cjm_substrate_version"], version, "{out}");
    let rows = compared["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{out}");
    for r in rows {
        assert!(r["cjm"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["cjm_substrate"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["times_faster"].as_f64().unwrap() > 0.0, "{r}");
    }
    env.ctl().args(["bench", "--samples", "0"]).assert().code(2);
    // A dir that is no venv is named, before anything is measured.
    env.ctl()
        .args(["bench", "--compare-python", "/nonexistent-venv"])
        .args(["--components", components.to_str().unwrap()])
        .args(["--worker", worker.to_str().unwrap()])
        .args(["--samples", "1", "--burst", "1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "/nonexistent-venv is not a virtual environment",
        ));
}
