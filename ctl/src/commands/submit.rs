//! `cjm-ctl submit`: run a job, or a composition, through the job queue of an in-process host
//! on the data dir, showing progress; the result is printed, the record stays in the journal
//! (`cjm-ctl jobs`). Another shell can stop it with `cjm-ctl cancel JOB`.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use cjm_host::Host;
use cjm_host::backend::CallRequest;
use cjm_host::queue::{Composition, JobSpec, Scope};
use serde_json::{Map, Value, json};

use crate::ctx::{Ctx, hint, runtime};
use crate::follow;

/// Options of `submit`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl submit text-stats '{\"text\": \"one two two\"}'\n  cjm-ctl submit text-stats --priority 5 --run-id nightly-7 '{\"text\": \"a b\"}'\n  cjm-ctl submit --composition pipeline.json\n\nA composition file is JSON: {\"nodes\": [{\"id\": \"a\", \"instance_id\": \"text-stats\", \"kwargs\": {\"text\": \"hi\"}}, {\"id\": \"b\", \"instance_id\": \"text-stats\", \"task\": \"text_statistics\", \"method\": \"merge_stats\", \"kwargs\": {\"one\": {\"$output\": \"a\"}}}], \"fail_fast\": true}\nInstance ids are capability names (each is loaded once, with its stored config)."
)]
pub struct Args {
    /// The capability to run (loaded as the instance of the same name)
    #[arg(
        required_unless_present = "composition",
        conflicts_with = "composition"
    )]
    name: Option<String>,
    /// Keyword arguments as a JSON object; `-` reads them from stdin [default: {}]
    #[arg(value_name = "KWARGS_JSON|-")]
    kwargs: Option<String>,
    /// Call this task (the typed task channel) instead of execute
    #[arg(long, requires = "method")]
    task: Option<String>,
    /// The task's method
    #[arg(long, requires = "task")]
    method: Option<String>,
    /// Higher runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// A run id stamped on every journal row of the job
    #[arg(long)]
    run_id: Option<String>,
    /// Cancel the job when it runs longer than this many seconds
    #[arg(long, value_name = "SECONDS", value_parser = crate::ctx::positive_seconds)]
    timeout: Option<f64>,
    /// Submit the composition in this JSON file instead of one job
    #[arg(long, value_name = "FILE")]
    composition: Option<PathBuf>,
}

/// Runs `submit`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let found = cjm_host::manifest::discover(&config.manifest_search_paths());
    let composition = match &args.composition {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let comp: Composition = serde_json::from_str(&text).map_err(|e| {
                hint(
                    format!("{}: not a composition: {e}", path.display()),
                    "see `cjm-ctl submit --help` for the file's shape",
                )
            })?;
            Some(comp)
        }
        None => None,
    };
    if let Some(client) = ctx.client()? {
        let kwargs = read_kwargs(args.kwargs.as_deref())?;
        return runtime()?.block_on(async {
            match composition {
                Some(c) => remote_composition(ctx, &client, c).await,
                None => {
                    let mut body = json!({
                        "capability": args.name.clone().unwrap_or_default(),
                        "kwargs": kwargs,
                        "priority": args.priority,
                        "run_id": args.run_id,
                        "timeout_s": args.timeout,
                    });
                    if let (Some(t), Some(m)) = (&args.task, &args.method) {
                        body["channel"] = json!("task");
                        body["task"] = json!(t);
                        body["method"] = json!(m);
                    }
                    remote_job(ctx, &client, &body).await
                }
            }
        });
    }
    let names: BTreeSet<String> = match (&composition, &args.name) {
        (Some(c), _) => c.nodes.iter().map(|n| n.instance_id.clone()).collect(),
        (None, Some(n)) => BTreeSet::from([n.clone()]),
        (None, None) => BTreeSet::new(),
    };
    for name in &names {
        if found.capability(name).is_none() {
            return Err(hint(
                format!("unknown capability '{name}'"),
                "see the installed capabilities with `cjm-ctl list`",
            ));
        }
    }
    let kwargs = read_kwargs(args.kwargs.as_deref())?;
    // A one-shot host: it leaves the jobs of gone hosts to a long-lived one.
    let mut config = config;
    config.queue.recover = false;
    let rt = runtime()?;
    rt.block_on(async {
        let mut builder = Host::builder().config(config);
        for name in &names {
            builder = builder.load(name.clone());
        }
        let host = builder.build().await?;
        let outcome = match composition {
            Some(c) => composition_run(ctx, &host, c).await,
            None => {
                let name = args.name.clone().unwrap_or_default();
                let request = match (&args.task, &args.method) {
                    (Some(t), Some(m)) => CallRequest::task(t.clone(), m.clone(), kwargs),
                    _ => CallRequest::execute(kwargs),
                };
                let mut spec = JobSpec::call(&name, request).priority(args.priority);
                if let Some(r) = &args.run_id {
                    spec = spec.run_id(r.clone());
                }
                if let Some(t) = args.timeout {
                    spec = spec.timeout(Duration::from_secs_f64(t));
                }
                job_run(ctx, &host, spec).await
            }
        };
        host.shutdown().await?;
        outcome
    })
}

/// KWARGS as given: a JSON object, `-` for stdin, or nothing.
fn read_kwargs(given: Option<&str>) -> anyhow::Result<Map<String, Value>> {
    Ok(match given {
        None => Map::new(),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            match text.trim() {
                "" => Map::new(),
                t => object(crate::ctx::json_arg("stdin", t)?)?,
            }
        }
        Some(text) => object(crate::ctx::json_arg("KWARGS", text)?)?,
    })
}

fn object(v: Value) -> anyhow::Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(crate::ctx::usage(
            format!("KWARGS must be a JSON object, found {other}"),
            "pass keyword arguments as an object: '{\"text\": \"hello\"}'",
        )),
    }
}

async fn job_run(ctx: &Ctx, host: &Host, spec: JobSpec) -> anyhow::Result<()> {
    let q = host.queue();
    let mut events = q.subscribe(Scope::All);
    let id = q.submit(spec).await?;
    ctx.out.note(format!("job {id} submitted"));
    let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
    let job_id = id.clone();
    let forward = tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if e.job_id.as_deref() == Some(job_id.as_str())
                && let Some(u) = follow::Update::of(e.kind.as_str(), &e.payload)
                && tx.send(u).is_err()
            {
                break;
            }
        }
    });
    let wait = async { Ok(serde_json::to_value(q.wait(&id, None).await?)?) };
    let cancel = async {
        let _ = q.cancel(&id);
    };
    let outcome = follow::job(ctx, &id, wait, cancel, updates).await;
    forward.abort();
    outcome
}

async fn composition_run(ctx: &Ctx, host: &Host, c: Composition) -> anyhow::Result<()> {
    let q = host.queue();
    let total = c.nodes.len() as u64;
    let events = q.subscribe(Scope::All);
    let id = q.submit_composition(c).await?;
    ctx.out
        .note(format!("composition {id} submitted ({total} nodes)"));
    let follow = follow::composition(ctx, q, events, &id, total, None);
    tokio::pin!(follow);
    let run = tokio::select! {
        run = &mut follow => run?,
        signal = follow::interrupted() => {
            // As for one job: the composition is cancelled as a unit, not left running.
            ctx.out.note(format!("{signal}: cancelling composition {id}"));
            let _ = q.cancel_composition(&id);
            follow.await?
        }
    };
    composition_outcome(ctx, &id, &serde_json::to_value(&run)?)
}

/// `submit` through a serving host: the job is submitted over HTTP, followed over its event
/// stream, cancelled there on Ctrl-C.
async fn remote_job(
    ctx: &Ctx,
    client: &cjm_host::client::Client,
    body: &Value,
) -> anyhow::Result<()> {
    let id = client.submit(body).await?;
    ctx.out.note(format!(
        "job {id} submitted to the host at {}",
        client.url()
    ));
    let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
    let forward = match client.events(&format!("job={id}"), Some(0)).await {
        Ok(mut events) => Some(tokio::spawn(async move {
            while let Ok(Some(e)) = events.next().await {
                if let Some(u) = follow::Update::of(&e.event, &e.json()["payload"])
                    && tx.send(u).is_err()
                {
                    break;
                }
            }
        })),
        Err(_) => None, // no progress shown; the wait below still ends it
    };
    let wait = async { Ok(client.wait(&id, Duration::from_secs(30)).await?) };
    let cancel = async {
        let _ = client.cancel(&id).await;
    };
    let outcome = follow::job(ctx, &id, wait, cancel, updates).await;
    if let Some(f) = forward {
        f.abort();
    }
    outcome
}

/// `submit --composition` through a serving host.
async fn remote_composition(
    ctx: &Ctx,
    client: &cjm_host::client::Client,
    c: Composition,
) -> anyhow::Result<()> {
    let answer = client
        .json(
            reqwest::Method::POST,
            "/v1/compositions",
            Some(&serde_json::to_value(&c)?),
        )
        .await?;
    let id = answer["composition_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ctx.out.note(format!(
        "composition {id} submitted to the host at {} ({} nodes)",
        client.url(),
        c.nodes.len()
    ));
    let wait = async {
        loop {
            let run = client
                .json(
                    reqwest::Method::GET,
                    &format!("/v1/compositions/{id}/wait?timeout_s=30"),
                    None,
                )
                .await?;
            if run["status"]
                .as_str()
                .is_some_and(|s| s != "running" && s != "pending")
            {
                return Ok::<_, anyhow::Error>(run);
            }
        }
    };
    tokio::pin!(wait);
    let run = tokio::select! {
        run = &mut wait => run?,
        signal = follow::interrupted() => {
            ctx.out.note(format!("{signal}: cancelling composition {id}"));
            let _ = client
                .json(reqwest::Method::POST, &format!("/v1/compositions/{id}/cancel"), None)
                .await;
            wait.await?
        }
    };
    composition_outcome(ctx, &id, &run)
}

/// Prints a finished composition (`run` as the queue serializes it: each node's state,
/// result and error) and turns its status into the exit.
fn composition_outcome(ctx: &Ctx, id: &str, run: &Value) -> anyhow::Result<()> {
    let nodes: Map<String, Value> = run["nodes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(n, r)| {
                    (
                        n.clone(),
                        json!({"state": r["state"], "result": r["result"], "error": r["error"]}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let status = run["status"].as_str().unwrap_or("");
    ctx.out
        .json(&json!({"composition": id, "status": status, "nodes": nodes}));
    if status == "completed" {
        Ok(())
    } else {
        Err(anyhow::anyhow!("composition {id} ended {status}"))
    }
}
