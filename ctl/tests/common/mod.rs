//! What the `cjm-ctl` process tests share: a temporary working dir with its data dir, the
//! example capabilities, and a running `cjm-ctl serve`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use assert_cmd::Command;
use serde_json::Value;

/// A fresh working dir with its data dir at `<dir>/.cjm`.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.path().join(".cjm")
    }

    /// `cjm-ctl --data-dir <data> ...` in the working dir, with no configuration leaking in
    /// from the environment.
    pub fn ctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cjm-ctl"));
        cmd.current_dir(self.path())
            .env_remove("CJM_CONFIG")
            .env_remove("CJM_DATA_DIR")
            .env_remove("NO_COLOR")
            .arg("--data-dir")
            .arg(self.data());
        cmd
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ctl().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// [`Env::json`] for a command that prints one JSON object per line (`logs`).
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.ctl().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The text-stats example built as a wasm component (by cjm-tests' build script).
pub fn text_stats_wasm() -> &'static str {
    cjm_tests::fixtures::TEXT_STATS
}

/// The text-stats example as a native worker (this package's example, built with its tests).
pub fn text_stats_worker() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join("text_stats_worker");
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

pub fn capabilities_yaml(extra: &str) -> String {
    format!(
        "capabilities:\n\
         - name: text-stats\n  kind: wasm\n  component: {}\n  sandbox: {{max_concurrency: 2}}\n\
         - name: text-stats-native\n  kind: native\n  command: [{}]\n  env_vars: {{STATS_MARK: x}}\n{extra}",
        text_stats_wasm(),
        text_stats_worker().display()
    )
}

/// A running `cjm-ctl serve` on an env's data dir (SIGTERMed and reaped on drop).
pub struct Serving {
    pub child: std::process::Child,
    pub url: String,
    pub log: PathBuf,
}

impl Serving {
    pub fn start(env: &Env) -> Serving {
        Serving::start_with(env, "127.0.0.1:0", &[])
    }

    /// `serve --bind <bind> <extra...>`; it answers once its discovery file is written.
    pub fn start_with(env: &Env, bind: &str, extra: &[&str]) -> Serving {
        Serving::start_env(env, bind, extra, &[])
    }

    /// [`Serving::start_with`] with environment variables `vars` set.
    pub fn start_env(env: &Env, bind: &str, extra: &[&str], vars: &[(&str, &str)]) -> Serving {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = env
            .path()
            .join(format!("serve-{}-{n}.log", std::process::id()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cjm-ctl"))
            .current_dir(env.path())
            .env_remove("CJM_CONFIG")
            .env_remove("CJM_DATA_DIR")
            .env("CJM_MAX_CONCURRENT_LANES", "1")
            .arg("--data-dir")
            .arg(env.data())
            .args(["serve", "--bind", bind, "--grace", "2"])
            .args(extra)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let discovery = env.data().join("serve.json");
        let started = std::time::Instant::now();
        let url = loop {
            // Its own file (a killed one leaves a stale file behind).
            if let Ok(text) = std::fs::read(&discovery)
                && let Ok(v) = serde_json::from_slice::<Value>(&text)
                && v["pid"] == child.id()
            {
                if extra.is_empty() {
                    assert_eq!(v["auth"], "none", "loopback needs no token");
                }
                break v["url"].as_str().unwrap().to_owned();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "serve did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Serving { child, url, log }
    }

    pub fn client(&self) -> cjm_host::client::Client {
        cjm_host::client::Client::new(self.url.clone(), None)
    }

    /// SIGTERM, then the exit status and the log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn install_served(env: &Env) {
    let caps = env.write(
        "capabilities.yaml",
        &capabilities_yaml(&format!(
            "- name: hostile\n  kind: wasm\n  component: {}\n",
            cjm_tests::fixtures::HOSTILE
        )),
    );
    env.ctl()
        .args(["install-all", "--capabilities", caps.to_str().unwrap()])
        .assert()
        .success();
}
