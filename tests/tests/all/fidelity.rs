//! Fidelity with cjm-substrate's host, against its real worker (cjm-substrate 0.0.74) running
//! the echo capability: what `/initialize` receives, the data-dir environment, how a 404 and a
//! `_job_error` end a job, accounts, and the stamps on errors of direct calls.

use std::time::Duration;

use cjm_guest::contract::ErrorCategory;
use cjm_host::backend::CallRequest;
use cjm_host::queue::{JobSpec, JobStatus};
use cjm_host::store::JournalQuery;
use cjm_host::{Error, Host};
use cjm_tests::{echo_capability_dir, kwargs, python_with_substrate, repo_root};
use serde_json::{Value, json};

const T: Option<Duration> = Some(Duration::from_secs(120));
const ECHO: &str = "cjm-capability-echo";

/// A data dir holding the echo capability's manifest (as cjm-substrate wrote it, pointed at
/// the test venv) and its task adapter's.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let fixtures = repo_root().join("host/tests/fixtures/python/manifests");
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join(format!("{ECHO}.json"))).unwrap())
            .unwrap();
    m["install"]["python_path"] = json!(python_with_substrate());
    m["install"]["env_vars"] = json!({"PYTHONPATH": echo_capability_dir()});
    std::fs::write(
        manifests.join(format!("{ECHO}.json")),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let adapter = "adapter-echo-EchoTaskAdapter.json";
    std::fs::copy(fixtures.join(adapter), manifests.join(adapter)).unwrap();
    dir
}

async fn host(dir: &std::path::Path, config: Option<Value>) -> Host {
    Host::builder()
        .data_dir(dir)
        .load_with(ECHO, config, Some("echo-1".to_owned()))
        .build()
        .await
        .unwrap()
}

async fn execute(h: &Host, args: Value) -> Result<Value, Error> {
    h.manager()
        .call("echo-1", CallRequest::execute(kwargs(args)))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn initialize_gets_the_config_as_given_and_the_worker_its_data_dirs() {
    let dir = data_dir();
    let h = host(dir.path(), Some(json!({"prefix": "> "}))).await;
    let got = execute(&h, json!({"action": "init_config"})).await.unwrap();
    assert_eq!(got, json!({"config": {"prefix": "> "}}), "not merged");
    let env = execute(&h, json!({"action": "env"})).await.unwrap();
    let data = dir.path().join("data");
    assert_eq!(env["CJM_CAPABILITY_DATA_DIR"], json!(data));
    assert_eq!(env["CAPABILITY_DATA_DIR"], json!(data.join(ECHO)));
    assert!(data.join(ECHO).is_dir());
    h.shutdown().await.unwrap();

    // No config given, none stored before: the schema's defaults.
    let fresh = data_dir();
    let h = host(fresh.path(), None).await;
    let got = execute(&h, json!({"action": "init_config"})).await.unwrap();
    assert_eq!(got["config"]["prefix"], "");
    assert_eq!(got["config"]["repeat"], 1);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_end_as_under_cjm_substrate() {
    let dir = data_dir();
    let h = host(dir.path(), None).await;
    let q = h.queue();

    // An unknown task method: the worker's 404 ends the job fatal, not retriable, with its
    // detail text.
    let id = q
        .submit(JobSpec::task(
            "echo-1",
            "echo",
            "no_such_method",
            kwargs(json!({})),
        ))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let e = job.error.unwrap();
    assert_eq!(e.category, ErrorCategory::Fatal, "{e}");
    assert!(!e.retriable);
    assert!(
        e.message.starts_with("Execute failed: {\"detail\":"),
        "{}",
        e.message
    );
    assert!(e.message.contains("no_such_method"), "{}", e.message);
    assert_eq!(e.capability_instance_id.as_deref(), Some("echo-1"));

    // A user_input `_job_error` without fields: `[]` on the job, the worker's own on
    // raw_error.
    let id = q
        .submit(JobSpec::execute(
            "echo-1",
            kwargs(json!({"action": "fail", "kind": "value"})),
        ))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    let e = job.error.unwrap();
    let raw = job.raw_error.unwrap();
    assert_eq!(e.category, ErrorCategory::UserInput, "{e}");
    assert_eq!(e.fields_invalid, Some(Vec::new()));
    assert_eq!(raw.fields_invalid, None);
    assert_eq!(e.message, raw.message);
    assert_eq!(e.capability_instance_id.as_deref(), Some("echo-1"));
    assert!(e.occurred_at.is_some());

    // Accounts the worker reported: on the job, and journaled with its id.
    let id = q
        .submit(JobSpec::execute(
            "echo-1",
            kwargs(json!({"action": "account"})),
        ))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    let kinds: Vec<&str> = job.accounts.iter().map(|a| a.event_type.as_str()).collect();
    assert_eq!(kinds, ["cache_hit", "result_saved"]);
    let rows = h
        .manager()
        .journal()
        .query(&JournalQuery::job(&id))
        .unwrap();
    let journaled: Vec<&str> = rows
        .iter()
        .filter(|r| r.worker_reported)
        .map(|r| r.event_type.as_str())
        .collect();
    assert_eq!(journaled, ["cache_hit", "result_saved"]);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_of_direct_calls_carry_the_instance_id_and_the_hosts_time() {
    let dir = data_dir();
    let h = host(dir.path(), None).await;
    let e = match execute(&h, json!({"action": "fail", "kind": "transient"})).await {
        Err(Error::Job(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.category, ErrorCategory::Transient);
    assert_eq!(e.capability_instance_id.as_deref(), Some("echo-1"));
    assert!(e.occurred_at.is_some());
    h.shutdown().await.unwrap();
}

/// A secret injected into a worker and spread by it (stdout, a log record the Python worker
/// writes itself, an account, an error) is masked in everything the host records: after the
/// host stops, no file of the data dir but the secrets file holds it, and the stores are
/// private to the user.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_spread_by_a_worker_is_masked_everywhere_the_host_records() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let secret = "sk-test-0123456789abcdef";
    let h = Host::builder().data_dir(dir.path()).build().await.unwrap();
    h.manager()
        .set_secret(ECHO, "ECHO_API_KEY", secret)
        .await
        .unwrap();
    h.manager().load(ECHO, None, Some("echo-1")).await.unwrap();
    let q = h.queue();
    let id = q
        .submit(JobSpec::execute(
            "echo-1",
            kwargs(json!({"action": "leak"})),
        ))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let shown = serde_json::to_string(&job).unwrap();
    assert!(!shown.contains(secret), "{shown}");
    assert!(job.error.unwrap().message.contains("***"));
    assert_eq!(job.accounts[0].payload["key"], "***");
    h.shutdown().await.unwrap();

    let mut stack = vec![dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("secrets") {
                    stack.push(path);
                }
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
            scanned += 1;
            if path.extension().is_some_and(|e| e == "db") {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
        }
    }
    assert!(scanned > 3, "{scanned} files scanned");
    let mode = std::fs::metadata(dir.path().join("secrets"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
