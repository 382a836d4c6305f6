//! `logs` over both stores, following, `retention` and completions.

use super::*;

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
