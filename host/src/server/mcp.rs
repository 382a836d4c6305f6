//! Every enabled capability as a Model Context Protocol tool (the official Rust SDK, `rmcp`):
//! streamable HTTP at `/mcp` of the service (behind the same token as the API) and stdio for
//! `cjm-ctl mcp`.
//!
//! Tools: `<instance>__execute` for the execute channel and `<instance>__<task>__<method>` for
//! each method of each task (names within MCP's `[A-Za-z0-9_-]{1,64}`; a longer one is cut
//! and keeps a hash of the whole). Descriptions come from the manifest; input schemas are
//! the JSON Schema a method's author declared (`Tasks::typed` in `cjm-guest`), else name the
//! parameters of the structural surface. Each call is a job of the queue (admission,
//! journal, retries), tagged `actor: mcp`: the client's cancellation cancels the job, the
//! job's progress becomes MCP progress notifications when the client asked for them, the
//! result comes back as structured content and as text, and a failed job is a tool error
//! carrying its `JobError`. A session is told when the tool list changes (a capability
//! loaded, unloaded, enabled or disabled).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use serde_json::{Map, Value, json};

use crate::Host;
use crate::queue::{EventKind, JobSpec, JobStatus, Scope};

/// MCP's longest tool name.
const MAX_NAME: usize = 64;
/// The largest result also sent as text beside its structured content.
const MAX_TEXT_COPY: usize = 1024 * 1024;
/// How often a session looks for a changed tool list.
const LIST_POLL: Duration = Duration::from_secs(1);
/// Methods every capability has (lifecycle and introspection): not tools.
const LIFECYCLE: &[&str] = &[
    "execute",
    "execute_stream",
    "initialize",
    "cleanup",
    "shutdown",
    "get_config_schema",
    "get_current_config",
    "get_config_options",
    "get_info",
    "update_config",
    "reconfigure",
    "prefetch",
    "on_enable",
    "on_disable",
];

/// What a tool calls.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    instance: String,
    task: Option<(String, String)>,
}

/// The MCP face of a host: one per session (cheap to clone).
#[derive(Clone)]
pub struct Tools {
    host: Host,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
    }
}

impl Tools {
    /// The tools of `host`'s enabled instances.
    pub fn new(host: Host) -> Self {
        Tools { host }
    }

    /// Every tool with what it calls, in a stable order.
    fn catalog(&self) -> Vec<(Tool, Target)> {
        let manager = self.host.manager();
        let mut instances = manager.instances();
        instances.sort_by(|a, b| a.id().cmp(b.id()));
        let manifests = manager.manifests();
        let adapters = manager.adapter_manifests();
        let mut out = Vec::new();
        for i in instances.iter().filter(|i| i.enabled()) {
            let backend = i.backend();
            let info = backend.info();
            // A worker's own words, else its manifest's.
            let description = Some(info.description.as_str())
                .filter(|d| !d.is_empty())
                .or_else(|| {
                    manifests
                        .iter()
                        .find(|c| c.manifest.name() == i.name())
                        .map(|c| c.manifest.code.description.as_str())
                })
                .unwrap_or("");
            let about = if description.is_empty() {
                format!("The capability '{}' {}", i.name(), info.version)
            } else {
                format!("{description} ({} {})", i.name(), info.version)
            };
            // Its tasks: those it declares (a wasm component) and those of its bound adapters.
            let mut tasks: Vec<&str> = info.tasks.iter().map(String::as_str).collect();
            for bound in i.adapters() {
                if let Some(a) = adapters.iter().find(|a| &a.manifest.name == bound)
                    && !tasks.contains(&a.manifest.task_name.as_str())
                {
                    tasks.push(&a.manifest.task_name);
                }
            }
            out.push((
                Tool::new(
                    tool_name(&[i.id(), "execute"]),
                    format!("{about}: execute(**kwargs)."),
                    Arc::new(object_schema(&[], &[], true)),
                ),
                Target {
                    instance: i.id().to_owned(),
                    task: None,
                },
            ));
            for task in tasks {
                for m in &info.structural_surface.methods {
                    if m.name.starts_with('_') || LIFECYCLE.contains(&m.name.as_str()) {
                        continue;
                    }
                    // The schema its author declared, else the parameter names.
                    let schema = match m.params_schema.as_ref().and_then(Value::as_object) {
                        Some(typed) => typed.clone(),
                        None => {
                            let (required, optional, open) = parameters(&m.signature, &m.params);
                            object_schema(&required, &optional, open)
                        }
                    };
                    out.push((
                        Tool::new(
                            tool_name(&[i.id(), task, &m.name]),
                            format!("{about}: task '{task}', method {}{}.", m.name, m.signature),
                            Arc::new(schema),
                        ),
                        Target {
                            instance: i.id().to_owned(),
                            task: Some((task.to_owned(), m.name.clone())),
                        },
                    ));
                }
            }
        }
        out
    }

    fn find(&self, name: &str) -> Option<Target> {
        self.catalog()
            .into_iter()
            .find(|(t, _)| t.name == name)
            .map(|(_, target)| target)
    }

    async fn run(
        &self,
        target: Target,
        kwargs: Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let spec = match target.task {
            Some((task, method)) => JobSpec::task(&target.instance, task, method, kwargs),
            None => JobSpec::execute(&target.instance, kwargs),
        }
        .actor("mcp");
        let queue = self.host.queue();
        // The client sees only the outcome: the submission is committed with it.
        let job_id = match queue.submit_for_outcome(spec).await {
            Ok(id) => id,
            Err(e) => {
                let error = e.to_job_error();
                return failure(&error.message, json!({"status": "refused", "error": error}));
            }
        };
        let mut events = queue.subscribe(Scope::Job(job_id.clone()));
        let progress = context.meta.get_progress_token();
        // The last progress sent: what the job reported before this call listened, then each
        // change.
        let mut sent: Option<(f64, String)> = None;
        if let Some(token) = &progress
            && let Some(job) = queue.get(&job_id)
            && (job.progress > 0.0 || !job.status_message.is_empty())
        {
            notify_progress(context, token, job.progress, &job.status_message).await;
            sent = Some((job.progress, job.status_message));
        }
        let mut guard = super::contract::CancelOnDrop::new(queue, &job_id);
        let wait = queue.wait(&job_id, None);
        tokio::pin!(wait);
        let mut cancelled = false;
        let job = loop {
            tokio::select! {
                job = &mut wait => break job,
                event = events.next(), if progress.is_some() => {
                    if let (Some(event), Some(token)) = (event, &progress) {
                        forward_progress(context, token, &mut sent, &event).await;
                    }
                }
                () = context.ct.cancelled(), if !cancelled => {
                    // The client gave up: the job is cancelled, and its end is still awaited
                    // so the journal has it before the answer goes.
                    cancelled = true;
                    let _ = queue.cancel(&job_id);
                }
            }
        };
        guard.disarm();
        // Progress the job reported before it ended but this loop had not read yet (a fast
        // job's, all of it): the last one always arrives, before the answer.
        if let Some(token) = &progress {
            while let Some(event) = events.try_next() {
                forward_progress(context, token, &mut sent, &event).await;
            }
        }
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                let error = e.to_job_error();
                return failure(
                    &error.message,
                    json!({"job_id": job_id, "status": "unknown", "error": error}),
                );
            }
        };
        match job.status {
            JobStatus::Completed => {
                let result = job.result.unwrap_or(Value::Null);
                let mut text = serde_json::to_string(&result).unwrap_or_default();
                if text.len() > MAX_TEXT_COPY {
                    // Not twice: a big result goes once, as structured content.
                    text = format!(
                        "the result ({} bytes of JSON) is in structuredContent",
                        text.len()
                    );
                }
                let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
                out.structured_content = Some(match result {
                    Value::Object(_) => result,
                    other => json!({ "result": other }),
                });
                out
            }
            status => {
                let error = job.error.clone();
                let message = error.as_ref().map_or_else(
                    || format!("the job ended {}", status.as_str()),
                    |e| e.message.clone(),
                );
                failure(
                    &message,
                    json!({"job_id": job.id, "status": status.as_str(), "error": error}),
                )
            }
        }
    }
}

/// Sends a `progress_changed` event as a notification, unless it repeats the last one sent.
async fn forward_progress(
    context: &RequestContext<RoleServer>,
    token: &rmcp::model::ProgressToken,
    sent: &mut Option<(f64, String)>,
    event: &crate::queue::JobEvent,
) {
    if event.kind != EventKind::ProgressChanged {
        return;
    }
    let p = event.payload["progress"].as_f64().unwrap_or(0.0);
    let m = event.payload["message"].as_str().unwrap_or("");
    if sent.as_ref().is_none_or(|(sp, sm)| *sp != p || sm != m) {
        notify_progress(context, token, p, m).await;
        *sent = Some((p, m.to_owned()));
    }
}

/// A progress notification (`progress` of 1.0) for the client's token.
async fn notify_progress(
    context: &RequestContext<RoleServer>,
    token: &rmcp::model::ProgressToken,
    progress: f64,
    message: &str,
) {
    let mut note = ProgressNotificationParam::new(token.clone(), progress).with_total(1.0);
    if !message.is_empty() {
        note = note.with_message(message);
    }
    let _ = context.peer.notify_progress(note).await;
}

/// A tool error: the message as text, the details (`JobError` included) as structured content.
fn failure(message: &str, details: Value) -> CallToolResult {
    let mut out = CallToolResult::error(vec![ContentBlock::text(message.to_owned())]);
    out.structured_content = Some(details);
    out
}

/// `a__b__c` within MCP's name rules: other characters become `_`, and a name longer than
/// the limit is cut and ends with a hash of the whole (distinct names stay distinct).
fn tool_name(parts: &[&str]) -> String {
    let joined = parts.join("__");
    let clean: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= MAX_NAME && clean == joined {
        return clean;
    }
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(joined.as_bytes());
    let keep = clean.len().min(MAX_NAME - 9);
    format!(
        "{}_{:02x}{:02x}{:02x}{:02x}",
        &clean[..keep],
        hash[0],
        hash[1],
        hash[2],
        hash[3]
    )
}

/// The parameters of a method from its signature: required names, optional names (with a
/// default), and whether it takes any keyword (`**kwargs`). `params` (bare names) is the
/// fallback when the signature says nothing.
fn parameters(signature: &str, params: &[String]) -> (Vec<String>, Vec<String>, bool) {
    let inner = signature
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or("", |(inside, _)| inside);
    let mut required = Vec::new();
    let mut optional = Vec::new();
    let mut open = false;
    let parts: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return (Vec::new(), params.to_vec(), true);
    }
    for p in parts {
        let bare = p.split([':', '=']).next().unwrap_or(p).trim();
        if bare == "self" || bare == "cls" || bare == "/" || bare == "*" {
            continue;
        }
        if bare.starts_with("**") {
            open = true;
        } else if bare.starts_with('*') {
            continue;
        } else if p.contains('=') {
            optional.push(bare.to_owned());
        } else {
            required.push(bare.to_owned());
        }
    }
    (required, optional, open)
}

/// A JSON Schema object naming `required` and `optional` properties (any JSON value each).
fn object_schema(required: &[String], optional: &[String], open: bool) -> Map<String, Value> {
    let properties: Map<String, Value> = required
        .iter()
        .chain(optional)
        .map(|p| (p.clone(), json!({})))
        .collect();
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), json!(required));
    }
    schema.insert("additionalProperties".into(), json!(open));
    schema
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("cjm", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Each tool is a capability of this cjm host (a sandboxed wasm component or a native \
             worker); every call runs as a job of its queue and is journaled.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.catalog().into_iter().map(|(t, _)| t).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(target) = self.find(&request.name) else {
            return Err(ErrorData::invalid_params(
                Cow::Owned(format!(
                    "no tool '{}' (tools/list names them)",
                    request.name
                )),
                None,
            ));
        };
        let kwargs = request.arguments.unwrap_or_default();
        // A child of the call's `_meta.traceparent` (SEP-414), else of its HTTP request's
        // header (the session runs calls in its own task, away from the request's span).
        let span = tracing::info_span!(
            target: "cjm::trace",
            "mcp.tools/call",
            otel.name = format_args!("tools/call {}", request.name),
            otel.kind = "server",
            mcp.tool = request.name.as_ref(),
        );
        let header = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.headers.get(crate::trace::TRACEPARENT))
            .and_then(|v| v.to_str().ok());
        let traceparent = context.meta.get_traceparent().or(header);
        crate::trace::adopt(&span, traceparent);
        let run = self.run(target, kwargs, &context);
        Ok(tracing::Instrument::instrument(run, span).await.into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Tell this session when the tool list changes, for as long as it lasts.
        let tools = self.clone();
        tokio::spawn(async move {
            let names = |t: &Tools| -> Vec<String> {
                t.catalog()
                    .into_iter()
                    .map(|(t, _)| t.name.into_owned())
                    .collect()
            };
            let mut last = names(&tools);
            loop {
                tokio::time::sleep(LIST_POLL).await;
                if context.peer.is_transport_closed() {
                    return;
                }
                let now = names(&tools);
                if now != last {
                    last = now;
                    if context.peer.notify_tool_list_changed().await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// The streamable HTTP transport of [`Tools`] (mounted at `/mcp`). Without a token the
/// service is loopback only, and only loopback `Host` headers are accepted (DNS rebinding);
/// with one, the token guards it and any host name is accepted.
pub(super) fn http_service(
    host: Host,
    guarded: bool,
    max_body: usize,
) -> rmcp::transport::StreamableHttpService<
    Tools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    let mut config = rmcp::transport::StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(max_body);
    if guarded {
        config = config.disable_allowed_hosts();
    }
    rmcp::transport::StreamableHttpService::new(
        move || Ok(Tools::new(host.clone())),
        Arc::default(),
        config,
    )
}

/// The largest message read from stdin (as `cjm-ctl serve`'s default body bound).
const MAX_STDIO_MESSAGE: usize = 16 * 1024 * 1024;

/// The next line of `input` without its newline, or `Err(bytes)` for one longer than `max`
/// (read through and dropped, never held); `None` at the end of the input.
async fn bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    input: &mut R,
    max: usize,
) -> std::io::Result<Option<Result<Vec<u8>, usize>>> {
    use tokio::io::AsyncBufReadExt as _;
    let mut line = Vec::new();
    let mut len = 0usize;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match len {
                0 => None,
                _ if len > max => Some(Err(len)),
                _ => Some(Ok(line)),
            });
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        len = len.saturating_add(chunk.len());
        if len <= max {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        let used = end.map_or(buf.len(), |i| i + 1);
        input.consume(used);
        if end.is_some() {
            return Ok(Some(if len > max { Err(len) } else { Ok(line) }));
        }
    }
}

/// Serves [`Tools`] over stdin/stdout until the client goes away (`cjm-ctl mcp`).
pub async fn serve_stdio(host: Host) -> std::io::Result<()> {
    use rmcp::ServiceExt as _;
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    // The session reads and writes through in-process pipes: a line that is not JSON gets
    // JSON-RPC's parse error here (the SDK drops it unanswered, and the client would wait
    // forever), and one writer keeps every answer a whole line.
    let (mut to_session, session_in) = tokio::io::duplex(64 * 1024);
    let (session_out, from_session) = tokio::io::duplex(64 * 1024);
    let (errors, mut parse_errors) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(tokio::io::stdin());
        while let Ok(Some(read)) = bounded_line(&mut input, MAX_STDIO_MESSAGE).await {
            let answer = match read {
                Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                // Parsed whole (within serde_json's nesting limit, which the SDK's own parse
                // has too): what passes here, the session reads.
                Ok(line) => match serde_json::from_slice::<Value>(&line) {
                    Ok(Value::Object(_) | Value::Array(_)) => Ok(line),
                    Ok(_) => Err((-32600, "Invalid Request: not a JSON-RPC message".to_owned())),
                    Err(e) => Err((-32700, format!("Parse error: {e}"))),
                },
                Err(bytes) => Err((
                    -32600,
                    format!(
                        "Invalid Request: a message of {bytes} bytes, more than {MAX_STDIO_MESSAGE}"
                    ),
                )),
            };
            match answer {
                Ok(line) => {
                    let sent = async {
                        to_session.write_all(&line).await?;
                        to_session.write_all(b"\n").await
                    };
                    if sent.await.is_err() {
                        break;
                    }
                }
                Err((code, message)) => {
                    let answer = json!({"jsonrpc": "2.0", "id": null,
                        "error": {"code": code, "message": message}});
                    let _ = errors.send(answer.to_string());
                }
            }
        }
        // Dropping the pipe ends the session: stdin is closed.
    });
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut answers = tokio::io::BufReader::new(from_session).split(b'\n');
        loop {
            // Errors first: every one was queued before the session's output could end
            // (the session ends only once the reader is done), so none is left behind.
            let line = tokio::select! {
                biased;
                Some(error) = parse_errors.recv() => error.into_bytes(),
                line = answers.next_segment() => match line {
                    Ok(Some(line)) => line,
                    _ => break,
                },
            };
            let written = async {
                out.write_all(&line).await?;
                out.write_all(b"\n").await?;
                out.flush().await
            };
            if written.await.is_err() {
                break;
            }
        }
    });
    let served = async {
        let running = Tools::new(host)
            .serve((session_in, session_out))
            .await
            .map_err(|e| std::io::Error::other(format!("the MCP session did not start: {e}")))?;
        running
            .waiting()
            .await
            .map_err(|e| std::io::Error::other(format!("the MCP session failed: {e}")))
    };
    let outcome = served.await;
    reader.abort();
    let _ = writer.await;
    outcome.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stdin_lines_are_read_within_their_bound() {
        let mut input: &[u8] = b"{}\nabcdefghij\n\nlast";
        let mut read = Vec::new();
        while let Some(line) = bounded_line(&mut input, 5).await.unwrap() {
            read.push(line);
        }
        assert_eq!(
            read,
            [
                Ok(b"{}".to_vec()),
                Err(10),
                Ok(Vec::new()),
                Ok(b"last".to_vec())
            ]
        );
    }

    #[test]
    fn tool_names_follow_the_rules_and_stay_distinct() {
        assert_eq!(tool_name(&["text-stats", "execute"]), "text-stats__execute");
        assert_eq!(tool_name(&["a.b", "t", "m"]).len(), "a.b__t__m".len() + 9);
        let long = "x".repeat(80);
        let one = tool_name(&[&long, "a"]);
        let two = tool_name(&[&long, "b"]);
        assert!(one.len() <= MAX_NAME && two.len() <= MAX_NAME);
        assert_ne!(one, two);
        assert!(
            one.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }

    #[test]
    fn parameters_come_from_the_signature() {
        let (req, opt, open) = parameters("(self, text, top_n=3, *args, **kwargs)", &[]);
        assert_eq!(req, ["text"]);
        assert_eq!(opt, ["top_n"]);
        assert!(open);
        let (req, opt, open) = parameters("(self, text)", &[]);
        assert_eq!(
            (req.as_slice(), opt.len(), open),
            (&["text".to_owned()][..], 0, false)
        );
    }
}
