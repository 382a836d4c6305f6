//! `cjm-ctl new`: each kind of project, as generated, passes its own test, installs from its
//! own `capabilities.yaml` and answers `run` and `info`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::Env;
use serde_json::{Value, json};

/// How the generated Rust projects are built by these tests: in release (the install's
/// profile, so a project's test and its install share one build), unoptimised and without
/// debug info. What is tested is the project and the install flow, not the optimiser; an
/// optimised cold build of the projects' dependencies was most of this file's time.
const QUICK_RELEASE: [(&str, &str); 2] = [
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
];

/// `new NAME --kind KIND` in the working dir; returns the project dir.
fn scaffold(env: &Env, name: &str, kind: &str) -> std::path::PathBuf {
    let out = env.json(&["new", name, "--kind", kind]);
    assert_eq!(out["kind"], kind);
    let dir = env.path().join(name);
    assert!(dir.join("capabilities.yaml").is_file(), "{out}");
    dir
}

/// `install-all` of the project's own yaml, then `run` (good and bad arguments) and `info`.
fn install_and_run(env: &Env, dir: &Path, name: &str, target_dir: Option<&Path>) {
    let mut install = env.ctl();
    if let Some(t) = target_dir {
        install.env("CARGO_TARGET_DIR", t).envs(QUICK_RELEASE);
    }
    install_and_run_with(env, dir, name, install, &[]);
}

/// [`install_and_run`] with `install` as the command and `extra` arguments to it.
fn install_and_run_with(
    env: &Env,
    dir: &Path,
    name: &str,
    mut install: assert_cmd::Command,
    extra: &[&str],
) {
    let out = install
        .current_dir(dir)
        .args([
            "--json",
            "install-all",
            "--capabilities",
            "capabilities.yaml",
        ])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["entries"][0]["status"], "installed", "{report:#}");
    let result = env.json(&["run", name, r#"{"name": "you"}"#]);
    assert_eq!(result, json!({"greeting": "Hello, you!"}));
    // A call without the argument is the user's error, naming it.
    let out = env
        .ctl()
        .args(["--json", "run", name, "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("name"), "{message}");
    // The configuration takes effect for a call.
    let result = env.json(&[
        "run",
        name,
        "--config",
        r#"{"greeting": "Hi"}"#,
        r#"{"name": "you"}"#,
    ]);
    assert_eq!(result, json!({"greeting": "Hi, you!"}));
    let info = env.json(&["info", name]);
    assert!(info.to_string().contains("greeting"), "{info:#}");
}

/// `cargo test` in a generated Rust project (see [`QUICK_RELEASE`]).
fn cargo_test(dir: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .envs(QUICK_RELEASE)
        .args(["test", "--release", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_new_wasm_capability_builds_installs_and_runs_as_generated() {
    let env = Env::new();
    let dir = scaffold(&env, "word-greeter", "wasm");
    // Dependencies shared with the repo's own wasm builds.
    let target = cjm_tests::repo_root().join("target/scaffold");
    cargo_test(&dir, &target);
    install_and_run(&env, &dir, "word-greeter", Some(&target));
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/word-greeter.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["install"]["package_source"], "cargo:word-greeter");
}

#[test]
fn a_new_native_capability_builds_installs_and_runs_as_generated() {
    let env = Env::new();
    let dir = scaffold(&env, "native-greeter", "native");
    let target = cjm_tests::repo_root().join("target/scaffold");
    cargo_test(&dir, &target);
    install_and_run(&env, &dir, "native-greeter", Some(&target));
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data().join("manifests/native-greeter.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["install"]["package_source"], "cargo:native-greeter");
    let program = m["install"]["native"]["command"][0].as_str().unwrap();
    assert!(program.ends_with("/native-greeter-worker"), "{program}");
}

#[test]
fn a_new_python_capability_installs_runs_and_passes_its_test_as_generated() {
    let env = Env::new();
    let dir = scaffold(&env, "py-greeter", "python");
    // Without uv on PATH, `--install-uv` installs it once into the data dir and the
    // environment is built with it.
    let path = "/usr/bin:/bin";
    let uv_on_path = std::env::split_paths(path).any(|d| d.join("uv").is_file());
    let mut install = env.ctl();
    install.env("PATH", path);
    install_and_run_with(&env, &dir, "py-greeter", install, &["--install-uv"]);
    if !uv_on_path {
        let uv = env.data().join("tools/uv/bin/uv");
        assert!(uv.is_file());
        let log = std::fs::read_to_string(env.data().join("logs/install/py-greeter.log")).unwrap();
        assert!(log.contains(&format!("Uv({uv:?})")), "{log}");
    }
    // Its test, run with the capability's own environment.
    let python = env.data().join("envs/py-greeter/bin/python");
    let out = std::process::Command::new(python)
        .current_dir(&dir)
        .args([
            "-c",
            "from tests.test_py_greeter import *; test_greets_with_the_configured_greeting(); print('ok')",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_refuses_bad_names_and_non_empty_dirs() {
    let env = Env::new();
    let out = env.ctl().args(["new", "Bad_Name"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a capability name"));
    std::fs::create_dir(env.path().join("taken")).unwrap();
    std::fs::write(env.path().join("taken/file"), "x").unwrap();
    let out = env.ctl().args(["new", "taken"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = env
        .ctl()
        .args(["new", "elsewhere", "--cjm-source", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cjm source tree"));
}

/// A child's JSON lines on stdout, one per message.
fn json_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<Value> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    rx
}

fn next_outcome(rx: &std::sync::mpsc::Receiver<Value>, log: &Path) -> Value {
    rx.recv_timeout(std::time::Duration::from_secs(300))
        .unwrap_or_else(|e| {
            panic!(
                "dev said nothing ({e}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
}

#[test]
fn dev_rebuilds_an_edited_capability_into_the_running_host() {
    let env = Env::new();
    let dir = scaffold(&env, "live-greeter", "wasm");
    let target = cjm_tests::repo_root().join("target/scaffold");
    let serving = common::Serving::start(&env);
    let log = env.path().join("dev.log");
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_cjm-ctl"))
        .current_dir(&dir)
        .env_remove("CJM_CONFIG")
        .env_remove("CJM_DATA_DIR")
        .env("CARGO_TARGET_DIR", &target)
        .envs(QUICK_RELEASE)
        .arg("--data-dir")
        .arg(env.data())
        .args(["--json", "dev", "--poll-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let rx = json_lines(&mut dev);
    // The first round installs it and loads it in the host.
    let first = next_outcome(&rx, &log);
    assert_eq!(first["status"], "reloaded", "{first}");
    let call = |args: &str| env.json(&["run", "live-greeter", args]);
    assert_eq!(
        call(r#"{"name": "you"}"#),
        json!({"greeting": "Hello, you!"})
    );
    // An edit: the next call runs the new code, in the same host process.
    let lib = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, text.replace("{name}!\"", "{name}!!\"")).unwrap();
    let second = next_outcome(&rx, &log);
    assert_eq!(second["status"], "reloaded", "{second}");
    assert_eq!(
        call(r#"{"name": "you"}"#),
        json!({"greeting": "Hello, you!!"})
    );
    // A broken edit is reported; the host keeps serving the last good build.
    std::fs::write(&lib, "fn broken(").unwrap();
    let third = next_outcome(&rx, &log);
    assert_eq!(third["status"], "failed", "{third}");
    assert_eq!(
        call(r#"{"name": "you"}"#),
        json!({"greeting": "Hello, you!!"})
    );
    let discovery: Value =
        serde_json::from_slice(&std::fs::read(env.data().join("serve.json")).unwrap()).unwrap();
    assert_eq!(
        discovery["pid"],
        serving.child.id(),
        "the host was not restarted"
    );
    let _ = dev.kill();
    let _ = dev.wait();
}

#[test]
fn estimate_size_measures_a_python_entry_without_installing_it() {
    let env = Env::new();
    let dir = scaffold(&env, "sized", "python");
    let caps = env.write(
        "estimate.yaml",
        &format!(
            "capabilities:\n- name: sized\n  package: {}\n- name: stats\n  kind: wasm\n  component: {}\n- name: ghost\n  package: cjm-capability-does-not-exist-zz9\n",
            dir.display(),
            common::text_stats_wasm()
        ),
    );
    let out = env
        .ctl()
        .args(["--json", "estimate-size", "--capabilities"])
        .arg(&caps)
        .output()
        .unwrap();
    // The unknown package is named as the one that could not be estimated.
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"][0]["name"], "ghost", "{report:#}");
    let sized = &report["entries"][0];
    let packages = sized["packages"].as_array().unwrap();
    let substrate = packages
        .iter()
        .find(|p| p["name"] == "cjm-substrate")
        .unwrap_or_else(|| panic!("{sized:#}"));
    let (download, unpacked) = (
        substrate["download"].as_u64().unwrap(),
        substrate["installed"].as_u64().unwrap(),
    );
    assert!(download > 10_000 && unpacked > download, "{substrate}");
    assert!(sized["installed"].as_u64().unwrap() > sized["download"].as_u64().unwrap());
    let stats = &report["entries"][1];
    assert_eq!(
        stats["installed"].as_u64().unwrap(),
        std::fs::metadata(common::text_stats_wasm()).unwrap().len()
    );
    // Nothing was installed.
    assert!(!env.data().join("envs/sized").exists());
    assert!(!env.data().join("manifests/sized.json").exists());
}
