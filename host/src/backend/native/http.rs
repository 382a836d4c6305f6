//! The worker's HTTP/JSON contract from the host's side: requests over the worker's socket
//! with timeouts, answers read as the contract says (a `_job_error` body, a 404 detail, a
//! 409 cancel), transport failures told apart from a worker that died, and the call and
//! stream bodies.

use super::*;

/// An answer of the worker: status, accounts header, body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) accounts: Option<String>,
    pub(super) body: bytes::Bytes,
}

impl NativeBackend {
    pub(super) async fn read_info(&self) -> Result<CapabilityInfo> {
        // The reads at once (each on its own connection): nothing orders them. `/health`
        // was read by the readiness probe already.
        let ready_health = self.inner.ready_health.lock().take();
        let health = async {
            match ready_health {
                Some(health) => Ok(health),
                None => self.get_json("/health").await,
            }
        };
        let (health, schema, surface, tasks) = tokio::join!(
            health,
            self.get_json("/config_schema"),
            self.get_json("/structural_surface"),
            self.get_json("/tasks")
        );
        let (health, schema) = (health?, schema?);
        // A worker that predates /structural_surface has none: recorded as empty, not fatal.
        let surface = optional(surface)?
            .map(|v| serde_json::from_value(v).unwrap_or_default())
            .unwrap_or_default();
        // The tasks a cjm-native-worker serves (`/tasks`, an addition to the contract; a
        // Python worker has none to tell: its tasks are its adapters').
        let tasks = optional(tasks)?.map(task_names).unwrap_or_default();
        let text = |k: &str| {
            health
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if self.inner.kind == RuntimeKind::Python {
            check_substrate(self.name(), health.get("substrate_version"))?;
        }
        let mut extra = Map::new();
        for key in ["substrate_version", "runtime"] {
            if let Some(v) = health.get(key) {
                extra.insert(key.to_owned(), v.clone());
            }
        }
        Ok(CapabilityInfo {
            name: Some(text("name"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.name().to_owned()),
            version: text("version"),
            description: text("description"),
            config_schema: schema,
            structural_surface: surface,
            tasks,
            extra,
        })
    }

    /// Sends one request to the live worker (spawning one if needed). A transport failure is
    /// checked against the process: a dead worker becomes a typed error (SIGKILL: `resource`,
    /// assumed out of memory; anything else: `transient`).
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Answer> {
        let _busy = Busy::new(&self.inner);
        let endpoint = match self.live() {
            Some((_, endpoint)) => endpoint,
            None => self.ensure_worker().await?,
        };
        let mut req = endpoint.request(method, path);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let sent = async {
            let r = req.send().await?;
            let status = r.status();
            let accounts = r
                .headers()
                .get("x-cjm-accounts")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                accounts,
                body,
            })
        }
        .await;
        match sent {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.transport_failed(path, e).await),
        }
    }

    pub(super) async fn transport_failed(&self, path: &str, e: reqwest::Error) -> Error {
        // Give a dying worker a moment to be reaped so its exit status is known.
        for _ in 0..20 {
            let mut guard = self.inner.process.lock().await;
            if let Some(p) = guard.as_mut()
                && let Some(status) = p.exited()
            {
                use std::os::unix::process::ExitStatusExt as _;
                let reason = describe_exit(Some(status));
                self.died(p, &format!("worker {reason} during {path}"));
                self.inner.supervision.lock().death();
                let err = self.worker_failed(p, &format!("worker {reason} during {path}"));
                *guard = None;
                return match (status.signal(), err) {
                    (Some(9), Error::Job(mut job)) => {
                        job.category = cjm_guest::ErrorCategory::Resource;
                        job.retriable = true;
                        job.message.push_str(" (SIGKILL: assumed out of memory)");
                        Error::Job(job)
                    }
                    (_, err) => err,
                };
            }
            drop(guard);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Error::job(
            JobError::transient(format!("capability '{}': {path} failed: {e}", self.name()))
                .stamped(self.name(), &self.session_id().unwrap_or_default()),
        )
    }

    pub(super) async fn get_json(&self, path: &str) -> Result<Value> {
        self.get_json_within(path, LIFECYCLE_TIMEOUT).await
    }

    /// A GET answered within `timeout`, else a `transient` error.
    pub(super) async fn get_json_within(&self, path: &str, timeout: Duration) -> Result<Value> {
        let a = self.send(Method::GET, path, None, Some(timeout)).await?;
        self.answer_json(path, a)
    }

    pub(super) async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let a = self
            .send(
                Method::POST,
                path,
                Some(body.to_string().into_bytes()),
                Some(LIFECYCLE_TIMEOUT),
            )
            .await?;
        self.answer_json(path, a)
    }

    pub(super) async fn post_initialize(&self, endpoint: &Endpoint, config: &Value) -> Result<()> {
        let r = endpoint
            .request(Method::POST, "/initialize")
            .header("content-type", "application/json")
            .body(config.to_string())
            .timeout(LIFECYCLE_TIMEOUT)
            .send()
            .await;
        let a = match r {
            Ok(r) => Answer {
                status: r.status(),
                accounts: None,
                body: r.bytes().await.unwrap_or_default(),
            },
            Err(e) => return Err(self.transport_failed("/initialize", e).await),
        };
        self.answer_json("/initialize", a).map(|_| ())
    }

    /// Maps a worker answer to a value or a typed error.
    pub(super) fn answer_json(&self, path: &str, a: Answer) -> Result<Value> {
        let session = self.session_id().unwrap_or_default();
        let parsed = || -> Result<Value> {
            if a.body.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&a.body).map_err(|e| {
                Error::job(
                    JobError::transient(format!(
                        "capability '{}': {path} answered non-JSON ({e}): {}",
                        self.name(),
                        self.inner.spec.masker.mask(&snippet(&a.body))
                    ))
                    .stamped(self.name(), &session),
                )
            })
        };
        let masker = &self.inner.spec.masker;
        let detail = |v: &Value| {
            let text = v
                .get("detail")
                .map(|d| {
                    d.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| d.to_string())
                })
                .unwrap_or_else(|| snippet(&a.body));
            masker.mask(&text).into_owned()
        };
        match a.status {
            StatusCode::OK => parsed(),
            StatusCode::CONFLICT => Err(Error::Cancelled),
            StatusCode::NOT_FOUND => Err(Error::NotFound(detail(&parsed().unwrap_or_default()))),
            status => {
                let body = parsed().unwrap_or(Value::Null);
                if let Some(job) = body.get("_job_error")
                    && let Ok(job) = serde_json::from_value::<JobError>(self.masked(job))
                {
                    return Err(Error::job(job.stamped(self.name(), &session)));
                }
                let e = if status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNPROCESSABLE_ENTITY
                {
                    JobError::user_input(format!(
                        "capability '{}': {path}: {}",
                        self.name(),
                        detail(&body)
                    ))
                } else {
                    JobError::transient(format!(
                        "capability '{}': {path} answered HTTP {status}: {}",
                        self.name(),
                        detail(&body)
                    ))
                };
                Err(Error::job(e.stamped(self.name(), &session)))
            }
        }
    }

    pub(super) async fn status_hook(&self, path: &str) -> Result<Status> {
        let v = self.post_json(path, &json!({})).await?;
        Ok(Status::new(
            v.get("status").and_then(Value::as_str).unwrap_or("ok"),
        ))
    }
}

/// The endpoint and body of a call: `/execute` `{"args","kwargs"}` or `/task`
/// `{"task","method","kwargs"}`, with the envelope only when something in it is set.
pub(super) fn request_body(request: CallRequest) -> (&'static str, Value) {
    let (path, mut body) = match request.target {
        Target::Execute { args } => ("/execute", json!({"args": args, "kwargs": request.kwargs})),
        Target::Task { task, method } => (
            "/task",
            json!({"task": task, "method": method, "kwargs": request.kwargs}),
        ),
    };
    if !request.envelope.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert(
            "envelope".into(),
            serde_json::to_value(&request.envelope).unwrap_or_default(),
        );
    }
    (path, body)
}

/// One NDJSON line of a stream: a chunk, or the `_job_error` that ends it.
/// The longest NDJSON line a stream may send (one chunk); past it the stream fails.
pub(super) const MAX_STREAM_LINE: usize = 64 * 1024 * 1024;

pub(super) fn stream_item(
    line: &[u8],
    name: &str,
    session: &str,
    masker: &Masker,
) -> Result<Value> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        Error::job(
            JobError::transient(format!(
                "capability '{name}': stream line is not JSON ({e}): {}",
                snippet(line)
            ))
            .stamped(name, session),
        )
    })?;
    match value.get("_job_error").map(|j| {
        let mut j = j.clone();
        masker.mask_json(&mut j);
        serde_json::from_value::<JobError>(j)
    }) {
        Some(Ok(job)) => Err(Error::job(job.stamped(name, session))),
        _ => Ok(value),
    }
}

/// The start of a body, for messages.
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

/// The answer of an endpoint a worker may not have: its 404 is none.
fn optional(answer: Result<Value>) -> Result<Option<Value>> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The task names of a worker's `/tasks` answer: strings, at most [`MAX_TASKS`] of them, each
/// a name a tool can carry (anything else is left out).
fn task_names(answer: Value) -> Vec<String> {
    let Value::Array(items) = answer else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|t| match t {
            Value::String(name) if !name.is_empty() && name.len() <= MAX_TASK_NAME => Some(name),
            _ => None,
        })
        .take(MAX_TASKS)
        .collect()
}

/// The most tasks read from a worker.
const MAX_TASKS: usize = 256;
/// The longest task name read from a worker.
const MAX_TASK_NAME: usize = 128;
