//! `cjm-ctl run NAME`: load a capability (either kind), call it once, print the JSON result;
//! `cjm-ctl run ./x.wasm`: the same for a component file, without installing it, in the
//! default sandbox plus the grants given as flags.

use std::io::Read as _;

use cjm_host::Error;
use cjm_host::backend::CallRequest;
use cjm_host::manager::CapabilityManager;
use serde_json::{Map, Value};

use crate::ctx::{Ctx, hint, runtime};

/// Options of `run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl run text-stats '{\"text\": \"one two two\"}'\n  cjm-ctl run text-stats --task text_statistics --method compute_stats '{\"text\": \"a b\"}'\n  echo '{\"text\": \"a b\"}' | cjm-ctl run text-stats -\n  cjm-ctl run text-stats --config '{\"top_n\": 1}' '{\"text\": \"a b\"}'\n  cjm-ctl run ./target/wasm32-wasip2/release/my_cap.wasm --dir ./input::/data '{\"path\": \"/data/a.txt\"}'\n\nKWARGS is a JSON object (keyword arguments) or, for execute, a JSON array (positional arguments)."
)]
pub struct Args {
    /// The capability
    name: String,
    /// Call this task (the typed task channel) instead of execute
    #[arg(long, requires = "method")]
    task: Option<String>,
    /// The task's method
    #[arg(long, requires = "task")]
    method: Option<String>,
    /// The capability's configuration (JSON object) for this call [default: the stored one,
    /// else the schema's defaults]
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    /// Keep --config as the capability's stored config for later calls
    #[arg(long, requires = "config")]
    save: bool,
    /// Keyword arguments as a JSON object; `-` reads them from stdin [default: {}]
    #[arg(value_name = "KWARGS_JSON|-")]
    kwargs: Option<String>,
    /// (a .wasm file) Grant a directory read-only: HOST, or HOST::GUEST to show it elsewhere
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// (a .wasm file) Grant a directory the guest may write
    #[arg(long = "dir-rw", value_name = "HOST[::GUEST]")]
    dirs_rw: Vec<String>,
    /// (a .wasm file) Pass this variable of cjm-ctl's environment to the guest
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
}

impl Args {
    /// The component file NAME names, when it names one (a path ending in `.wasm`).
    fn wasm_file(&self) -> Option<&std::path::Path> {
        let path = std::path::Path::new(&self.name);
        (self.name.ends_with(".wasm") || (self.name.contains('/') && path.is_file()))
            .then_some(path)
    }
}

/// Runs `run`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let input = match args.kwargs.as_deref() {
        None => Value::Object(Map::new()),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            if text.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                crate::ctx::json_arg("stdin", &text)?
            }
        }
        Some(text) => crate::ctx::json_arg("KWARGS", text)?,
    };
    let config = args
        .config
        .as_deref()
        .map(|c| crate::ctx::json_arg("--config", c))
        .transpose()?;
    let request = match (input, &args.task, &args.method) {
        (Value::Object(kwargs), Some(task), Some(method)) => {
            CallRequest::task(task.clone(), method.clone(), kwargs)
        }
        (Value::Object(kwargs), _, _) => CallRequest::execute(kwargs),
        (Value::Array(a), None, None) => CallRequest::execute_with_args(a, Map::new()),
        (other, _, _) => {
            return Err(crate::ctx::usage(
                format!("KWARGS must be a JSON object, found {other}"),
                "pass keyword arguments as an object: '{\"text\": \"hello\"}'",
            ));
        }
    };
    if let Some(file) = args.wasm_file() {
        let result = runtime()?.block_on(wasm_file(file, &args, config, request));
        return finish(ctx, result);
    }
    if !(args.dirs.is_empty() && args.dirs_rw.is_empty() && args.env.is_empty()) {
        return Err(crate::ctx::usage(
            "--dir, --dir-rw and --env are grants for running a .wasm file",
            "an installed capability's grants are in its capabilities.yaml entry's sandbox block",
        ));
    }
    if let Some(client) = ctx.client()? {
        if config.is_some() {
            return Err(hint(
                "--config would change the served instance's config for every caller",
                "set it with `curl -X PUT <host>/v1/capabilities/<id>/config`, or run in-process with --local",
            ));
        }
        return runtime()?.block_on(remote(ctx, &client, &args.name, request));
    }
    let host_config = ctx.config()?;
    // Checked before the manager opens (and creates) the stores.
    let found = cjm_host::manifest::discover(&host_config.manifest_search_paths());
    if found.capability(&args.name).is_none() {
        return Err(hint(
            format!("unknown capability '{}'", args.name),
            "see the installed capabilities with `cjm-ctl list`",
        ));
    }
    let manager = CapabilityManager::open(host_config)?;
    // The instance is the capability's own name when that is a valid id, so its stored
    // configuration is found again on the next run.
    let id = args
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        .then(|| args.name.clone())
        .filter(|n| n.len() <= 64);
    // --config is for this call only, unless --save keeps it.
    let keep = config.is_none() || args.save;
    let result = runtime()?.block_on(async {
        let r = async {
            let instance = if keep {
                manager.load(&args.name, config, id.as_deref()).await?
            } else {
                manager
                    .load_unsaved(&args.name, config, id.as_deref())
                    .await?
            };
            manager.call(instance.id(), request).await
        }
        .await;
        let _ = manager.shutdown().await;
        r
    });
    finish(ctx, result)
}

/// The outcome of a call, printed (or the error it ended with).
fn finish(ctx: &Ctx, result: Result<Value, Error>) -> anyhow::Result<()> {
    match result {
        Ok(value) => {
            print_result(ctx, &value);
            Ok(())
        }
        Err(Error::Job(e)) => Err(failed(&e)),
        Err(Error::NotFound(what)) => Err(not_found(&what)),
        Err(Error::Cancelled) => Err(anyhow::anyhow!("cancelled")),
        Err(other) => Err(anyhow::anyhow!(
            "[{}] {other}",
            other.to_job_error().category
        )),
    }
}

/// Runs a component file once: loaded from the file (compiled, not cached), in the default
/// sandbox plus the granted dirs and variables, its config as given (the schema's defaults
/// without one), its log records and output on stderr. Nothing is written to the data dir.
async fn wasm_file(
    file: &std::path::Path,
    args: &Args,
    config: Option<Value>,
    request: CallRequest,
) -> Result<Value, Error> {
    use cjm_host::backend::launch::Launch;
    use cjm_host::backend::wasm::{Allocation, DirGrant, SandboxGrants, WasmRuntime};
    if !file.is_file() {
        return Err(Error::Io {
            path: file.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such component file"),
        });
    }
    let dir = |spec: &String, writable: bool| {
        let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
        DirGrant {
            host: host.into(),
            guest: guest.to_owned(),
            writable,
        }
    };
    let grants = SandboxGrants {
        dirs: (args.dirs.iter().map(|d| dir(d, false)))
            .chain(args.dirs_rw.iter().map(|d| dir(d, true)))
            .collect(),
        env: args.env.clone(),
        capture_stdio: true,
        ..SandboxGrants::default()
    };
    let runtime = WasmRuntime::with_allocation(None, Allocation::OnDemand)?;
    let backend = Launch::Wasm {
        runtime: &runtime,
        component: file.to_owned(),
        grants,
    }
    .start(
        std::sync::Arc::new(Stderr),
        std::sync::Arc::new(cjm_host::backend::NoEvents),
    )
    .await?;
    let ran = async {
        let schema = backend.info().config_schema.clone();
        let sent = config.unwrap_or_else(|| cjm_host::manager::config::defaults(&schema));
        let effective = cjm_host::manager::config::effective(&schema, Some(&sent));
        cjm_host::manager::config::validate(&backend.info().name, &schema, &effective, false)
            .map_err(Error::job)?;
        backend.initialize(sent).await?;
        backend
            .call(
                request,
                std::sync::Arc::new(cjm_host::backend::CallControl::new()),
            )
            .await
    }
    .await;
    let _ = backend.shutdown().await;
    ran
}

/// What a component run from a file logs and prints, on stderr.
struct Stderr;

impl cjm_host::backend::DiagnosticsSink for Stderr {
    fn record(&self, r: cjm_host::backend::DiagnosticRecord) {
        eprintln!("[{} {}] {}", r.level, r.logger_name, r.message);
    }

    fn chunk(&self, _: &str, stream: &str, content: &str) {
        eprintln!("[{stream}] {content}");
    }
}

fn print_result(ctx: &Ctx, value: &Value) {
    if ctx.out.json || !ctx.out.stdout_tty {
        println!("{value}");
    } else {
        ctx.out.json(value);
    }
}

fn failed(e: &cjm_host::contract::JobError) -> anyhow::Error {
    let mut msg = format!("[{}] {}", e.category, e.message);
    if let Some(fields) = &e.fields_invalid {
        msg.push_str(&format!(" (fields: {})", fields.join(", ")));
    }
    crate::ctx::kinded(e.category, msg)
}

fn not_found(what: &str) -> anyhow::Error {
    hint(
        format!("[user_input] not found: {what}"),
        "see the capability's tasks and methods with `cjm-ctl info NAME`",
    )
}

/// `run` through a serving host: the call goes through its queue on its warm instance
/// (`/v1/capabilities/{name}/execute` or `/task`), answered as the worker contract answers.
async fn remote(
    ctx: &Ctx,
    client: &cjm_host::client::Client,
    name: &str,
    request: CallRequest,
) -> anyhow::Result<()> {
    use cjm_host::backend::Target;
    let (path, mut body) = match request.target {
        Target::Execute { args } => ("execute", serde_json::json!({ "args": args })),
        Target::Task { task, method } => (
            "task",
            serde_json::json!({ "task": task, "method": method }),
        ),
    };
    body["kwargs"] = Value::Object(request.kwargs);
    let answer = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/capabilities/{name}/{path}"),
            Some(&body),
        )
        .await?;
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    match answer.status {
        200 => {
            print_result(ctx, &value);
            Ok(())
        }
        409 => Err(anyhow::anyhow!("cancelled")),
        404 if value.get("detail").is_some() => {
            Err(not_found(value["detail"].as_str().unwrap_or("")))
        }
        500 if value.get("_job_error").is_some() => {
            let e: cjm_host::contract::JobError =
                serde_json::from_value(value["_job_error"].clone())?;
            Err(failed(&e))
        }
        status => Err(hint(
            format!(
                "{} ({status})",
                value["error"]["message"]
                    .as_str()
                    .unwrap_or("the host refused the call")
            ),
            format!(
                "the capability is served by the host at {}; see `cjm-ctl list`",
                client.url()
            ),
        )),
    }
}
