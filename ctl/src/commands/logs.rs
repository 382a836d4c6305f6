//! `cjm-ctl logs`: the observability stores. Default: structured diagnostics records
//! (worker log output, job-stamped); `--chunks`: raw stdout/stderr lines; `--journal`: the
//! durable journal. `--follow` polls the store's seq cursor. When a host serves the data dir
//! (or with `--host`), the rows come through its API (`/v1/logs`, `/v1/journal`).

use std::time::Duration;

use cjm_host::client::{Client, ClientError};
use cjm_host::records::Records;
use cjm_host::store::{
    ChunkQuery, DiagnosticRecord, JournalEvent, JournalQuery, RecordQuery, StreamChunk,
};
use serde_json::{Value, json};

use crate::ctx::{Ctx, hint, short_id, short_ts};

/// Options of `logs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl logs -n 20\n  cjm-ctl logs --job 3f2a... --level WARNING\n  cjm-ctl logs --chunks --session 9c1e...\n  cjm-ctl logs --journal --follow"
)]
pub struct Args {
    /// Only this job (exact id)
    #[arg(long)]
    job: Option<String>,
    /// Only this worker session
    #[arg(long)]
    session: Option<String>,
    /// Only this level (DEBUG, INFO, WARNING, ERROR, CRITICAL)
    #[arg(long)]
    level: Option<String>,
    /// Show the journal (job lifecycle, workers, config changes, accounts)
    #[arg(long, conflicts_with_all = ["chunks", "level"])]
    journal: bool,
    /// Show raw stdout/stderr chunks of workers
    #[arg(long, conflicts_with_all = ["job", "level"])]
    chunks: bool,
    /// The most recent N entries (0 = all; at most 10,000 through a service)
    #[arg(short = 'n', long = "limit", default_value_t = 50)]
    limit: u64,
    /// Keep polling for new entries (Ctrl-C to stop)
    #[arg(short, long)]
    follow: bool,
    /// Seconds between polls with --follow
    #[arg(long, default_value_t = 1.0, hide = true)]
    interval: f64,
}

enum Row {
    Record(DiagnosticRecord),
    Chunk(StreamChunk),
    Event(JournalEvent),
}

impl Row {
    fn seq(&self) -> i64 {
        match self {
            Row::Record(r) => r.seq,
            Row::Chunk(c) => c.seq,
            Row::Event(e) => e.seq,
        }
        .unwrap_or(0)
    }

    fn to_json(&self) -> Value {
        match self {
            Row::Record(r) => json!({
                "seq": r.seq, "ts": r.ts, "worker_session_id": r.worker_session_id,
                "job_id": r.job_id, "level": r.level, "logger_name": r.logger_name,
                "message": r.message, "exc_text": r.exc_text,
            }),
            Row::Chunk(c) => json!({
                "seq": c.seq, "ts": c.ts, "worker_session_id": c.worker_session_id,
                "stream": c.stream, "content": c.content,
            }),
            Row::Event(e) => serde_json::to_value(e).unwrap_or(Value::Null),
        }
    }

    fn render(&self) -> String {
        match self {
            Row::Record(r) => {
                let mut line = format!(
                    "{} {:<8} [{}|{}] {}: {}",
                    short_ts(&r.ts),
                    r.level,
                    short_id(r.worker_session_id.as_deref()),
                    short_id(r.job_id.as_deref()),
                    r.logger_name,
                    r.message
                );
                for l in r.exc_text.iter().flat_map(|t| t.lines()) {
                    line.push_str("\n    ");
                    line.push_str(l);
                }
                line
            }
            Row::Chunk(c) => format!(
                "{} [{}] {:<6} {}",
                short_ts(&c.ts),
                short_id(c.worker_session_id.as_deref()),
                c.stream,
                c.content
            ),
            Row::Event(e) => {
                let mut payload = e.payload.clone();
                if let Some(status) = payload
                    .get("job_snapshot")
                    .and_then(|s| s.get("status"))
                    .cloned()
                {
                    payload["job_snapshot"] =
                        json!(format!("<snapshot:{}>", status.as_str().unwrap_or("?")));
                }
                let mut p = payload.to_string();
                if p.chars().count() > 160 {
                    p = p.chars().take(159).collect::<String>() + "…";
                }
                format!(
                    "{} {:<22} [job={} run={}] {}{} {p}",
                    short_ts(&e.ts),
                    e.event_type,
                    short_id(e.job_id.as_deref()),
                    e.run_id.as_deref().unwrap_or("-"),
                    e.capability_instance_id
                        .as_deref()
                        .or(e.capability_name.as_deref())
                        .unwrap_or("-"),
                    if e.worker_reported { " (worker)" } else { "" },
                )
            }
        }
    }
}

/// Where the rows come from.
enum Source {
    /// The data dir's stores, read here.
    Local(Records),
    /// The host serving the data dir (or `--host`), through `/v1/logs` and `/v1/journal`.
    Service {
        client: Client,
        rt: tokio::runtime::Runtime,
    },
}

/// Runs `logs`: through the host serving the data dir when one runs (or `--host`), else from
/// the stores.
pub fn run(mut args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let unknown = |job: &str| {
        hint(
            format!("unknown job '{job}': no journal row and no diagnostics record has that id"),
            "job ids are full UUIDs; see recent ones with `cjm-ctl logs --journal`",
        )
    };
    if let Some(client) = ctx.client()? {
        let rt = crate::ctx::runtime()?;
        if let Some(given) = &args.job {
            // A short id is resolved from the data dir's journal when it has one (a host
            // serving this data dir); through `--host` elsewhere, ids are given whole.
            let records = ctx.records()?;
            let job = if records.has_journal() {
                records.resolve_job(given)?
            } else {
                given.clone()
            };
            if !rt.block_on(served_job_known(&client, &job))? {
                return Err(unknown(&job));
            }
            args.job = Some(job);
        }
        let following = client.url().to_owned();
        return show(&args, ctx, &Source::Service { client, rt }, &following);
    }
    let records = ctx.records()?;
    if let Some(job) = &args.job {
        let job = records.resolve_job(job)?;
        if !records.knows_job(&job)? {
            return Err(unknown(&job));
        }
        args.job = Some(job);
    }
    let config = records.config();
    let (journal_path, diag_path) = (config.journal_db_path(), config.diagnostics_db_path());
    let store_path = if args.journal {
        &journal_path
    } else {
        &diag_path
    };
    let available = if args.journal {
        records.has_journal()
    } else {
        records.has_diagnostics()
    };
    if !available {
        if ctx.out.json {
            ctx.out.json(&json!([]));
        } else {
            ctx.out.info(format!(
                "no store at {} (nothing has run here yet)",
                store_path.display()
            ));
        }
        return Ok(());
    }
    let following = store_path.display().to_string();
    show(&args, ctx, &Source::Local(records), &following)
}

/// Prints the rows `args` asks for from `source`, then with `--follow` polls it for more.
fn show(args: &Args, ctx: &Ctx, source: &Source, following: &str) -> anyhow::Result<()> {
    let level = args.level.as_ref().map(|l| l.to_ascii_uppercase());
    let fetch = |after: Option<i64>, limit: Option<u64>| {
        fetch(args, source, level.as_deref(), after, limit)
    };
    let limit = (args.limit > 0).then_some(args.limit);
    let mut rows = fetch(None, limit)?;
    rows.reverse();
    let mut cursor = rows.iter().map(Row::seq).max().unwrap_or(0);
    let print = |rows: &[Row]| {
        for r in rows {
            if ctx.out.json {
                // One JSON object per line: followable.
                println!("{}", r.to_json());
            } else {
                println!("{}", r.render());
            }
        }
    };
    print(&rows);
    if !args.follow {
        return Ok(());
    }
    ctx.out
        .note(format!("-- following {following} (Ctrl-C to stop) --"));
    let interval =
        Duration::try_from_secs_f64(args.interval.max(0.01)).unwrap_or(Duration::from_secs(1));
    loop {
        std::thread::sleep(interval);
        let new = fetch(Some(cursor), None)?;
        cursor = new.iter().map(Row::seq).max().unwrap_or(cursor).max(cursor);
        print(&new);
        use std::io::Write as _;
        std::io::stdout().flush()?;
    }
}

/// One page of rows of the store `args` asks for: newest first from the start, or oldest
/// first after `after` (following).
fn fetch(
    args: &Args,
    source: &Source,
    level: Option<&str>,
    after: Option<i64>,
    limit: Option<u64>,
) -> anyhow::Result<Vec<Row>> {
    let records = match source {
        Source::Local(records) => records,
        Source::Service { client, rt } => {
            return rt.block_on(fetch_served(args, client, level, after, limit));
        }
    };
    let descending = after.is_none();
    let rows = if args.journal {
        records
            .journal(&JournalQuery {
                job_id: args.job.clone(),
                worker_session_id: args.session.clone(),
                after_seq: after,
                limit,
                descending,
                ..JournalQuery::default()
            })?
            .into_iter()
            .map(Row::Event)
            .collect()
    } else {
        if args.chunks {
            records
                .chunks(&ChunkQuery {
                    worker_session_id: args.session.clone(),
                    after_seq: after,
                    limit,
                    descending,
                })?
                .into_iter()
                .map(Row::Chunk)
                .collect()
        } else {
            records
                .log_records(&RecordQuery {
                    job_id: args.job.clone(),
                    worker_session_id: args.session.clone(),
                    level: level.map(str::to_owned),
                    after_seq: after,
                    limit,
                    descending,
                })?
                .into_iter()
                .map(Row::Record)
                .collect()
        }
    };
    Ok(rows)
}

/// Whether the service knows job `id`: a journal row of it, or a log record.
async fn served_job_known(client: &Client, id: &str) -> anyhow::Result<bool> {
    match client.job(id).await {
        Ok(_) => return Ok(true),
        Err(ClientError::Api { status: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut url = reqwest::Url::parse("http://host/v1/logs")?;
    url.query_pairs_mut()
        .append_pair("job", id)
        .append_pair("limit", "1");
    let page = client
        .json(reqwest::Method::GET, &target(&url), None)
        .await?;
    Ok(page["records"].as_array().is_some_and(|r| !r.is_empty()))
}

/// The path and query of `url`, as the client takes them.
fn target(url: &reqwest::Url) -> String {
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// Rows per request through the service (its most).
const SERVED_PAGE: u64 = 10_000;

/// [`fetch`] through the service: `/v1/journal` or `/v1/logs`. From the start: the newest
/// `limit` rows, newest first (at most [`SERVED_PAGE`]), or with no limit every row, read
/// forward a page at a time. After a cursor: every row after it, oldest first.
async fn fetch_served(
    args: &Args,
    client: &Client,
    level: Option<&str>,
    after: Option<i64>,
    limit: Option<u64>,
) -> anyhow::Result<Vec<Row>> {
    if after.is_none()
        && let Some(n) = limit
    {
        return Ok(served_page(args, client, level, None, n).await?.0);
    }
    let mut rows = Vec::new();
    let mut cursor = after.unwrap_or(0);
    loop {
        let (page, more) = served_page(args, client, level, Some(cursor), SERVED_PAGE).await?;
        cursor = page
            .iter()
            .map(Row::seq)
            .max()
            .unwrap_or(cursor)
            .max(cursor);
        let empty = page.is_empty();
        rows.extend(page);
        if !more || empty {
            break;
        }
    }
    if after.is_none() {
        // As the stores answer from the start: newest first.
        rows.reverse();
    }
    Ok(rows)
}

/// One request: the newest `limit` rows (no `after`) or up to `limit` after `after`, and
/// whether more are left to read.
async fn served_page(
    args: &Args,
    client: &Client,
    level: Option<&str>,
    after: Option<i64>,
    limit: u64,
) -> anyhow::Result<(Vec<Row>, bool)> {
    let path = if args.journal {
        "/v1/journal"
    } else {
        "/v1/logs"
    };
    let mut url = reqwest::Url::parse("http://host")?.join(path)?;
    {
        let mut q = url.query_pairs_mut();
        if !args.journal {
            q.append_pair("kind", if args.chunks { "chunks" } else { "records" });
        }
        if let Some(job) = &args.job {
            q.append_pair("job", job);
        }
        if let Some(session) = &args.session {
            q.append_pair("worker_session", session);
        }
        if let Some(level) = level {
            q.append_pair("level", level);
        }
        match after {
            Some(after) => q.append_pair("after", &after.to_string()),
            None => q.append_pair("newest", "true"),
        };
        q.append_pair("limit", &limit.min(SERVED_PAGE).to_string());
    }
    let mut page = client
        .json(reqwest::Method::GET, &target(&url), None)
        .await?;
    let key = if args.journal { "rows" } else { "records" };
    let items = match page.get_mut(key).map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => anyhow::bail!("unexpected answer from {}: no `{key}` list", client.url()),
    };
    // The journal says whether it cut the page; a log page is full when more may follow.
    let more = page["more"]
        .as_bool()
        .unwrap_or(items.len() as u64 >= limit.min(SERVED_PAGE));
    let rows = items
        .into_iter()
        .map(|item| {
            Ok(if args.journal {
                Row::Event(serde_json::from_value(item)?)
            } else if args.chunks {
                Row::Chunk(serde_json::from_value(item)?)
            } else {
                Row::Record(serde_json::from_value(item)?)
            })
        })
        .collect::<anyhow::Result<Vec<Row>>>()?;
    Ok((rows, more))
}
