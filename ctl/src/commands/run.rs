//! `cjm-ctl run NAME`: load a capability (either kind), call it once, print the JSON result.

use std::io::Read as _;

use cjm_host::Error;
use cjm_host::backend::CallRequest;
use cjm_host::manager::CapabilityManager;
use serde_json::{Map, Value};

use crate::ctx::{Ctx, hint, runtime};

/// Options of `run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl run text-stats '{\"text\": \"one two two\"}'\n  cjm-ctl run text-stats --task text_statistics --method compute_stats '{\"text\": \"a b\"}'\n  echo '{\"text\": \"a b\"}' | cjm-ctl run text-stats -\n  cjm-ctl run text-stats --config '{\"top_n\": 1}' '{\"text\": \"a b\"}'\n\nKWARGS is a JSON object (keyword arguments) or, for execute, a JSON array (positional arguments)."
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
    /// The capability's configuration (JSON object) [default: the stored one, else the
    /// schema's defaults]
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    /// Keyword arguments as a JSON object; `-` reads them from stdin [default: {}]
    #[arg(value_name = "KWARGS_JSON|-")]
    kwargs: Option<String>,
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        hint(
            format!("{what} is not valid JSON: {e}"),
            "quote it for the shell: '{\"text\": \"hello\"}'",
        )
    })
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
                parse_json("stdin", &text)?
            }
        }
        Some(text) => parse_json("KWARGS", text)?,
    };
    let config = args
        .config
        .as_deref()
        .map(|c| parse_json("--config", c))
        .transpose()?;
    let request = match (input, &args.task, &args.method) {
        (Value::Object(kwargs), Some(task), Some(method)) => {
            CallRequest::task(task.clone(), method.clone(), kwargs)
        }
        (Value::Object(kwargs), _, _) => CallRequest::execute(kwargs),
        (Value::Array(a), None, None) => CallRequest::execute_with_args(a, Map::new()),
        (other, _, _) => {
            return Err(hint(
                format!("KWARGS must be a JSON object, found {other}"),
                "pass keyword arguments as an object: '{\"text\": \"hello\"}'",
            ));
        }
    };
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
    let result = runtime()?.block_on(async {
        let r = async {
            let instance = manager.load(&args.name, config, id.as_deref()).await?;
            manager.call(instance.id(), request).await
        }
        .await;
        let _ = manager.shutdown().await;
        r
    });
    match result {
        Ok(value) => {
            if ctx.out.json || !ctx.out.stdout_tty {
                println!("{value}");
            } else {
                ctx.out.json(&value);
            }
            Ok(())
        }
        Err(Error::Job(e)) => {
            let mut msg = format!("[{}] {}", e.category, e.message);
            if let Some(fields) = &e.fields_invalid {
                msg.push_str(&format!(" (fields: {})", fields.join(", ")));
            }
            Err(anyhow::anyhow!(msg))
        }
        Err(Error::NotFound(what)) => Err(hint(
            format!("[user_input] not found: {what}"),
            "check the task and method names in the capability's manifest (`cjm-ctl list`)",
        )),
        Err(Error::Cancelled) => Err(anyhow::anyhow!("cancelled")),
        Err(other) => Err(anyhow::anyhow!(
            "[{}] {other}",
            other.to_job_error().category
        )),
    }
}
