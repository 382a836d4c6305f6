//! Jobs: what is submitted ([`JobSpec`]), what the queue tracks ([`Job`]) and its states.

use std::time::Duration;

use cjm_guest::contract::JobError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::{Account, CallRequest, Target};
use crate::store::JobSnapshot;

/// Where a job is.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for admission.
    Pending,
    /// Admitted and executing.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with a [`JobError`].
    Failed,
    /// Cancelled before or while running.
    Cancelled,
}

impl JobStatus {
    /// Its wire and journal name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job has finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cancellation state machine of a running job: `cooperative` (the capability's own
/// check: the wasm guest's `cancelled()`, the worker's `/cancel`), then `force` after the
/// grace period (the epoch traps the wasm call; the worker's process group is killed), then
/// `reloading` (a fresh instance or worker replaces it), then `completed`.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelPhase {
    /// Asked to stop; the capability sees it at its next check.
    Cooperative,
    /// Stopped by force.
    Force,
    /// The forcibly stopped instance or worker is being replaced.
    Reloading,
    /// Cancellation finished.
    Completed,
}

impl CancelPhase {
    /// Its wire and journal name.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelPhase::Cooperative => "cooperative",
            CancelPhase::Force => "force",
            CancelPhase::Reloading => "reloading",
            CancelPhase::Completed => "completed",
        }
    }
}

/// What to run: a call on one capability instance and how to queue it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The target instance.
    pub instance_id: String,
    /// The call.
    pub request: CallRequest,
    /// Higher runs first; FIFO within a priority.
    pub priority: i64,
    /// A wall-clock limit for the call (cancelled when it passes).
    pub timeout: Option<Duration>,
    /// When it runs again after a failure (default: its capability's, else none).
    pub retry: Option<super::RetryPolicy>,
}

impl JobSpec {
    /// `execute(**kwargs)` on `instance_id`.
    pub fn execute(instance_id: impl Into<String>, kwargs: Map<String, Value>) -> Self {
        Self::call(instance_id, CallRequest::execute(kwargs))
    }

    /// `task(task, method, **kwargs)` on `instance_id` (routed to its bound adapter).
    pub fn task(
        instance_id: impl Into<String>,
        task: impl Into<String>,
        method: impl Into<String>,
        kwargs: Map<String, Value>,
    ) -> Self {
        Self::call(instance_id, CallRequest::task(task, method, kwargs))
    }

    /// Any call on `instance_id`.
    pub fn call(instance_id: impl Into<String>, request: CallRequest) -> Self {
        JobSpec {
            instance_id: instance_id.into(),
            request,
            priority: 0,
            timeout: None,
            retry: None,
        }
    }

    /// The same job at `priority`.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// The same job tagged with a host-tier run id (on every journal row of the job).
    pub fn run_id(mut self, run_id: impl Into<String>) -> Self {
        self.request.envelope.run_id = Some(run_id.into());
        self
    }

    /// The same job tagged with who asked for it.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.request.envelope.actor = Some(actor.into());
        self
    }

    /// The same job with the per-call control flag `name` (force, cache bypass, ...).
    pub fn control(mut self, name: impl Into<String>, value: Value) -> Self {
        self.request.envelope.control.insert(name.into(), value);
        self
    }

    /// The same job with all of its per-call control flags (replacing any set before).
    pub fn controls(mut self, flags: Map<String, Value>) -> Self {
        self.request.envelope.control = flags;
        self
    }

    /// The same job with its own retry policy.
    pub fn retry(mut self, policy: super::RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The same job with a wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A job's spec as its `job_submitted` (or `job_adopted`) journal row keeps it: enough to
/// run it again on another host after its own is gone. Kwargs larger than
/// [`INLINE_KWARGS_BYTES`] are kept by reference to a file in the data dir
/// ([`PayloadRef`]) rather than in the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    /// The target instance.
    pub instance_id: String,
    /// Its capability, when loaded at submit (a recovering host loads it by this name).
    #[serde(default)]
    pub capability_name: Option<String>,
    /// `execute` or `task`.
    pub channel: String,
    /// Positional arguments of an `execute` call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    /// The task of a task-channel call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The method of a task-channel call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The keyword arguments, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Map<String, Value>>,
    /// The keyword arguments, by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs_ref: Option<PayloadRef>,
    /// The kwargs are not kept (a composition member's, bound from upstream results past
    /// the inline limit): the job cannot be rerun from this record, only its node re-bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kwargs_left_out: bool,
    /// Correlation and control flags (left out when none is set).
    #[serde(default, skip_serializing_if = "envelope_is_empty")]
    pub envelope: cjm_guest::contract::Envelope,
    /// Its priority.
    #[serde(default)]
    pub priority: i64,
    /// Its wall-clock limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// The retry policy in force (its own, else its capability's), left out when it is the
    /// default: most jobs' rows then carry no policy, and a host reading one back gets the
    /// same default.
    #[serde(default, skip_serializing_if = "super::RetryPolicy::is_default")]
    pub retry: super::RetryPolicy,
}

fn envelope_is_empty(envelope: &cjm_guest::contract::Envelope) -> bool {
    *envelope == cjm_guest::contract::Envelope::default()
}

/// A JSON payload kept in a file of the data dir rather than in a journal row (0600): a
/// spec's kwargs (`payloads/<job id>.json`) or a composition node's result
/// (`payloads/<job id>.result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The file, relative to the data dir.
    pub path: String,
    /// The SHA-256 of its bytes (hex), checked when it is read back.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// Kwargs up to this size (approximate bytes of JSON) are journaled inline.
pub const INLINE_KWARGS_BYTES: usize = 64 * 1024;

impl SpecRecord {
    /// The record of `spec` (its kwargs inline unless `kwargs_ref` is given).
    pub(crate) fn of(
        spec: &JobSpec,
        capability_name: Option<&str>,
        retry: &super::RetryPolicy,
        kwargs_ref: Option<PayloadRef>,
    ) -> Self {
        let (channel, args, task, method) = match &spec.request.target {
            Target::Execute { args } => ("execute", args.clone(), None, None),
            Target::Task { task, method } => {
                ("task", Vec::new(), Some(task.clone()), Some(method.clone()))
            }
        };
        SpecRecord {
            instance_id: spec.instance_id.clone(),
            capability_name: capability_name.map(str::to_owned),
            channel: channel.to_owned(),
            args,
            task,
            method,
            kwargs: kwargs_ref.is_none().then(|| spec.request.kwargs.clone()),
            kwargs_ref,
            kwargs_left_out: false,
            envelope: spec.request.envelope.clone(),
            priority: spec.priority,
            timeout_s: spec.timeout.map(|t| t.as_secs_f64()),
            retry: retry.clone(),
        }
    }

    /// The spec again, its kwargs read from `data_dir` when kept by reference.
    pub fn to_spec(&self, data_dir: &std::path::Path) -> crate::Result<JobSpec> {
        if self.kwargs_left_out {
            return Err(crate::Error::job(JobError::fatal(
                "its kwargs were bound from upstream results and not journaled",
            )));
        }
        let kwargs = match (&self.kwargs, &self.kwargs_ref) {
            (Some(k), _) => k.clone(),
            (None, Some(r)) => r.read(data_dir)?,
            (None, None) => Map::new(),
        };
        let target = match (&self.task, &self.method) {
            (Some(task), Some(method)) if self.channel == "task" => Target::Task {
                task: task.clone(),
                method: method.clone(),
            },
            _ => Target::Execute {
                args: self.args.clone(),
            },
        };
        let mut spec = JobSpec::call(
            self.instance_id.clone(),
            CallRequest {
                target,
                kwargs,
                envelope: self.envelope.clone(),
            },
        );
        spec.priority = self.priority;
        spec.timeout = self
            .timeout_s
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        spec.retry = Some(self.retry.clone());
        Ok(spec)
    }
}

impl PayloadRef {
    /// Writes the JSON `bytes` as `payloads/<name>.json` under `data_dir` and returns the
    /// reference.
    pub(crate) fn write(
        data_dir: &std::path::Path,
        name: &str,
        bytes: &[u8],
    ) -> crate::Result<PayloadRef> {
        use sha2::Digest;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let rel = format!("payloads/{name}.json");
        let path = data_dir.join(&rel);
        let dir = data_dir.join("payloads");
        std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| crate::Error::io(&path, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| crate::Error::io(&path, e))?;
        Ok(PayloadRef {
            path: rel,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        })
    }

    /// Reads the payload back, checking its digest.
    pub fn read<T: serde::de::DeserializeOwned>(
        &self,
        data_dir: &std::path::Path,
    ) -> crate::Result<T> {
        use sha2::Digest;
        if self.path.contains("..") || std::path::Path::new(&self.path).is_absolute() {
            return Err(crate::Error::job(JobError::fatal(format!(
                "payload reference '{}' leaves the data dir",
                self.path
            ))));
        }
        let path = data_dir.join(&self.path);
        let bytes = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
        if hex::encode(sha2::Sha256::digest(&bytes)) != self.sha256 {
            return Err(crate::Error::job(JobError::fatal(format!(
                "{}: the payload file does not match its digest",
                path.display()
            ))));
        }
        serde_json::from_slice(&bytes).map_err(|e| crate::Error::Json {
            what: path.display().to_string(),
            source: e,
        })
    }
}

/// A job as the queue tracks it (a copy: [`JobQueue::get`](super::JobQueue::get) returns a
/// snapshot).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Its id (a UUIDv7: time-ordered, unique across hosts).
    pub id: String,
    /// The target instance.
    pub instance_id: String,
    /// The capability of the instance, when it was loaded at submit.
    pub capability_name: Option<String>,
    /// The task of a task-channel call.
    pub task_name: Option<String>,
    /// The method of a task-channel call.
    pub method: Option<String>,
    /// Its priority.
    pub priority: i64,
    /// Where it is.
    pub status: JobStatus,
    /// When it was submitted (ISO-8601 UTC).
    pub submitted_at: String,
    /// When it started running.
    pub started_at: Option<String>,
    /// When it finished.
    pub completed_at: Option<String>,
    /// Last progress, 0..1 (-1 indeterminate).
    pub progress: f64,
    /// Last status message.
    pub status_message: String,
    /// The result of a completed job (kept in memory, never journaled).
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub result: Option<Value>,
    /// Set when the result was larger than the queue's `max_history_result_bytes` and left
    /// memory after delivery: its approximate size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_dropped_bytes: Option<usize>,
    /// Why it failed, as cjm-substrate's host records it (see [`host_view`]). Boxed, as
    /// `raw_error`: most jobs have none, and every job held in memory pays for the field.
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub error: Option<Box<JobError>>,
    /// The error as the capability (or the host's own check) reported it, before that
    /// mapping: every field it sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub raw_error: Option<Box<JobError>>,
    /// The capability's answer when the task or method does not exist (its 404 detail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_found: Option<String>,
    /// The accounts the capability reported during the call (also journaled, each with
    /// the job's id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "server", schema(value_type = Vec<Object>))]
    pub accounts: Vec<Account>,
    /// The composition it is a member of.
    pub composition_id: Option<String>,
    /// The composition node it runs.
    pub node_id: Option<String>,
    /// Host-tier run correlation.
    pub run_id: Option<String>,
    /// Who asked for it.
    pub actor: Option<String>,
    /// Per-call control flags.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub control: Map<String, Value>,
    /// When cancellation was asked.
    pub cancel_requested_at: Option<String>,
    /// Where cancellation is.
    pub cancel_phase: Option<CancelPhase>,
    /// Retries so far: reactive ones (resource errors) while it ran, and attempts its retry
    /// policy started.
    pub retry_count: u32,
}

impl Job {
    pub(crate) fn new(id: String, spec: &JobSpec, capability_name: Option<String>) -> Self {
        let (task_name, method) = match &spec.request.target {
            Target::Task { task, method } => (Some(task.clone()), Some(method.clone())),
            Target::Execute { .. } => (None, None),
        };
        let envelope = &spec.request.envelope;
        Job {
            id,
            instance_id: spec.instance_id.clone(),
            capability_name,
            task_name,
            method,
            priority: spec.priority,
            status: JobStatus::Pending,
            submitted_at: cjm_guest::python::time::now_iso(),
            started_at: None,
            completed_at: None,
            progress: 0.0,
            status_message: String::new(),
            result: None,
            result_dropped_bytes: None,
            error: None,
            raw_error: None,
            not_found: None,
            accounts: Vec::new(),
            composition_id: envelope.composition_id.clone(),
            node_id: envelope.node_id.clone(),
            run_id: envelope.run_id.clone(),
            actor: envelope.actor.clone(),
            control: envelope.control.clone(),
            cancel_requested_at: None,
            cancel_phase: None,
            retry_count: 0,
        }
    }

    /// The record of a job as its terminal journal row keeps it (no kwargs, no result).
    pub fn snapshot(&self) -> JobSnapshot {
        JobSnapshot {
            id: self.id.clone(),
            capability_instance_id: Some(self.instance_id.clone()),
            status: self.status.as_str().to_owned(),
            priority: self.priority,
            submitted_at: Some(self.submitted_at.clone()),
            started_at: self.started_at.clone(),
            completed_at: self.completed_at.clone(),
            retry_count: self.retry_count,
            composition_id: self.composition_id.clone(),
            node_id: self.node_id.clone(),
            task_name: self.task_name.clone(),
            method: self.method.clone(),
            run_id: self.run_id.clone(),
            actor: self.actor.clone(),
            error: self.error.as_deref().cloned(),
            extra: Map::new(),
        }
    }

    /// A job record rehydrated from its terminal journal row (no kwargs, no result).
    pub fn from_snapshot(s: JobSnapshot) -> Self {
        Job {
            id: s.id,
            instance_id: s.capability_instance_id.unwrap_or_default(),
            capability_name: None,
            task_name: s.task_name,
            method: s.method,
            priority: s.priority,
            status: JobStatus::parse(&s.status).unwrap_or(JobStatus::Failed),
            submitted_at: s.submitted_at.unwrap_or_default(),
            started_at: s.started_at,
            completed_at: s.completed_at,
            progress: 0.0,
            status_message: String::new(),
            result: None,
            result_dropped_bytes: None,
            error: s.error.map(Box::new),
            raw_error: None,
            not_found: None,
            accounts: Vec::new(),
            composition_id: s.composition_id,
            node_id: s.node_id,
            run_id: s.run_id,
            actor: s.actor,
            control: Map::new(),
            cancel_requested_at: None,
            cancel_phase: None,
            retry_count: s.retry_count,
        }
    }
}

/// Counts by state.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Jobs waiting (also those waiting out a retry's delay).
    pub pending: usize,
    /// Jobs running.
    pub running: usize,
    /// Jobs completed since the queue started.
    pub completed: u64,
    /// Jobs failed since the queue started.
    pub failed: u64,
    /// Jobs cancelled since the queue started.
    pub cancelled: u64,
}

/// A failed job's error as cjm-substrate's host records it (it rebuilds the capability's
/// typed exception and maps it back): only the category's own fields (`fields_invalid` of a
/// `user_input` error, `[]` when the capability named none; `retry_after_seconds` of a
/// `transient` one; `resource_shortfall` of a `resource` one), the job's instance id, and the
/// host's time. Unlike cjm-substrate, the capability's `retriable` flag and its name are
/// kept: they say more than the category's default.
pub fn host_view(raw: &JobError, instance_id: &str) -> JobError {
    use cjm_guest::contract::ErrorCategory;
    let mut e = raw.clone();
    let category = e.category;
    if category == ErrorCategory::UserInput {
        e.fields_invalid.get_or_insert_with(Vec::new);
    } else {
        e.fields_invalid = None;
    }
    if category != ErrorCategory::Transient {
        e.retry_after_seconds = None;
    }
    if category != ErrorCategory::Resource {
        e.resource_shortfall = None;
    }
    e.capability_instance_id = Some(instance_id.to_owned());
    e.occurred_at = Some(cjm_guest::python::time::now_iso());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::RetryPolicy;
    use serde_json::json;

    fn record(spec: &JobSpec, retry: &RetryPolicy) -> Value {
        serde_json::to_value(SpecRecord::of(spec, Some("echo"), retry, None)).unwrap()
    }

    #[test]
    fn a_default_policy_and_an_empty_envelope_are_left_out_of_the_row_and_read_back() {
        let mut kw = Map::new();
        kw.insert("text".into(), json!("a"));
        let spec = JobSpec::execute("echo", kw);
        let row = record(&spec, &RetryPolicy::default());
        assert!(row.get("retry").is_none(), "{row}");
        assert!(row.get("envelope").is_none(), "{row}");
        let back: SpecRecord = serde_json::from_value(row).unwrap();
        assert_eq!(back.retry, RetryPolicy::default());
        let again = back.to_spec(std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(again.retry, Some(RetryPolicy::default()));
        assert_eq!(again.request.envelope, spec.request.envelope);
        assert_eq!(again.request.kwargs, spec.request.kwargs);

        // Anything else is kept as it was.
        let spec = spec.run_id("nightly").actor("ops");
        let policy = RetryPolicy::attempts(3);
        let row = record(&spec, &policy);
        assert_eq!(row["retry"]["max_attempts"], json!(3));
        assert_eq!(row["envelope"]["run_id"], json!("nightly"));
        let back: SpecRecord = serde_json::from_value(row).unwrap();
        assert_eq!(back.retry, policy);
        assert_eq!(back.envelope, spec.request.envelope);
    }
}
