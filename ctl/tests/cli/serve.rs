//! `serve`: jobs over HTTP, events, restarts with history, a Python stdlib client, and the scripting edges.

use super::*;

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
    // A cursor past the journal's end (another data dir's) starts from now: new rows come.
    let mut events = rt.block_on(client.events("", Some(i64::MAX / 2))).unwrap();
    let id = rt
        .block_on(
            client.submit(
                &serde_json::json!({"capability": "text-stats", "kwargs": {"text": "after"}}),
            ),
        )
        .unwrap();
    let e = rt
        .block_on(events.next())
        .unwrap()
        .expect("the stream ended");
    assert_eq!(e.json()["job_id"], id.as_str(), "{:?}", e.json());
    drop(events);

    // A secret set while the service runs goes through it (its workers reload to see it).
    env.ctl()
        .args([
            "set-secret",
            "text-stats-native",
            "SERVED_KEY",
            "--value",
            "v-1",
        ])
        .assert()
        .success();
    let listed = rt
        .block_on(client.json(reqwest::Method::GET, "/v1/secrets", None))
        .unwrap();
    assert!(listed.to_string().contains("SERVED_KEY"), "{listed}");
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
    // `logs` through the service: from another, empty data dir, with `--host`, it shows the
    // served journal's rows (read locally there, it would have none).
    let elsewhere = Env::new();
    let rows = elsewhere.json_lines(&[
        "--host",
        client.url(),
        "logs",
        "--journal",
        "--job",
        &later[2],
    ]);
    assert_eq!(rows[0]["event_type"], "job_submitted", "{rows:?}");
    assert!(rows.iter().all(|r| r["job_id"] == later[2].as_str()));
    assert_eq!(rows.last().unwrap()["payload"]["to"], "completed");
    elsewhere
        .ctl()
        .args([
            "--host",
            client.url(),
            "logs",
            "--journal",
            "--job",
            "no-such-job",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown job 'no-such-job'"));
    // On the served data dir itself a short id resolves, and `-n 0` pages through all.
    let all = env.json_lines(&["logs", "--journal", "-n", "0", "--job", &later[2][..24]]);
    assert_eq!(all.len(), rows.len());
    // `list` too: the served capabilities, as the data dir's own manifests describe them,
    // with the instances the service holds.
    let served = elsewhere.json(&["--host", client.url(), "list"]);
    let local = env.json(&["--local", "list"]);
    let by_name = |list: &Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {list}"))
    };
    for name in ["text-stats", "text-stats-native", "hostile"] {
        let (s, l) = (by_name(&served, name), by_name(&local, name));
        for key in ["kind", "version", "drift", "manifest", "runs"] {
            assert_eq!(s[key], l[key], "{name} {key}");
        }
        assert_eq!(
            (&s["instances"], &s["enabled"]),
            (&serde_json::json!(1), &serde_json::json!(1)),
            "{s}"
        );
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
    // A typed job error says its category.
    let out = env
        .ctl()
        .args(["--json", "--local", "run", "text-stats", r#"{"text": 5}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let typed: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(typed["error"]["kind"], "user_input", "{typed}");
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
