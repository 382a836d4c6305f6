//! Server-Sent Events: the journal, live (`/v1/events`, for all, one job or one composition),
//! and log records (`/v1/logs`, a query or a follow); the journal's rows as pages
//! (`/v1/journal`).
//!
//! An event stream is the journal read forward from a cursor: the SSE `id` of each event is
//! its journal `seq`, so a client reconnecting with `Last-Event-ID` (or `?after=`) misses
//! nothing. One [`JournalTail`] per service reads the journal forward for every stream: woken
//! when this host commits rows (a burst of them is one read), and every second for rows of
//! any other writer of the data dir (another host, `cjm-ctl`); it renders each row once and
//! broadcasts it. A stream reads the journal itself only to catch up from its cursor or after
//! falling behind. Liveness events (progress, resource snapshots) are not journaled: they are
//! sent as they come, without an `id`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Query};
use tokio::sync::broadcast;

use crate::queue::{JobEvent, Scope};
use crate::store::{ChunkQuery, JournalEvent, JournalQuery, RecordQuery};

/// Journal rows read back per query.
const PAGE: u64 = 1000;
/// How often the tail looks at the journal for rows that did not come live.
const POLL: Duration = Duration::from_secs(1);
/// Batches the tail keeps for a slow stream before that stream reads the journal itself.
const TAIL_BATCHES: usize = 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(logs))
        .routes(routes!(journal))
}

/// Rows per answer of `/v1/logs` and `/v1/journal`: 500 unless asked, at most 10,000.
fn page_limit(asked: Option<u64>) -> u64 {
    asked.unwrap_or(500).clamp(1, 10_000)
}

/// `newest` reads back from the end: it takes no cursor and does not follow.
fn check_newest(newest: bool, after: Option<i64>, follow: bool) -> Result<(), ApiError> {
    if newest && (after.is_some() || follow) {
        return Err(ApiError::invalid(
            "newest reads the last rows: it takes no `after` and does not `follow`",
            vec!["newest".into()],
        ));
    }
    Ok(())
}

/// Bytes of rows one `/v1/journal` answer carries at most: a page ends at the row that
/// crosses it (rows carry kwargs and results inline up to 64 KiB each); at least one row is
/// always sent.
const JOURNAL_PAGE_BYTES: usize = 4 << 20;

/// Which journal rows.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct JournalParams {
    /// Only this job's rows.
    job: Option<String>,
    /// Only this worker session's.
    worker_session: Option<String>,
    /// After this `seq`, oldest first.
    after: Option<i64>,
    /// At most this many per answer (default 500, at most 10,000; fewer when the rows pass
    /// 4 MiB).
    limit: Option<u64>,
    /// The newest rows, newest first (without `after`).
    #[serde(default)]
    newest: bool,
}

/// Journal rows as JSON, a page at a time: `next_cursor` is the last `seq` in it (for
/// `after`), `more` whether rows were left out of it (by `limit` or its size).
#[utoipa::path(get, path = "/v1/journal", tag = "events", params(JournalParams),
    responses((status = 200, description = "{\"rows\": [...], \"next_cursor\", \"more\"}", body = Object),
        (status = 422, description = "`newest` with `after`")))]
async fn journal(
    State(state): State<AppState>,
    Query(p): Query<JournalParams>,
) -> Result<Response, ApiError> {
    check_newest(p.newest, p.after, false)?;
    let limit = page_limit(p.limit);
    let query = JournalQuery {
        job_id: p.job,
        worker_session_id: p.worker_session,
        after_seq: (!p.newest).then(|| p.after.unwrap_or(0)),
        // One more than asked: whether there is more to read.
        limit: Some(limit + 1),
        descending: p.newest,
        ..JournalQuery::default()
    };
    let manager = state.host.manager().clone();
    let rows = tokio::task::spawn_blocking(move || manager.journal().query(&query))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let mut body = b"{\"rows\":[".to_vec();
    let (mut sent, mut last, mut more) = (0u64, None::<i64>, false);
    for row in &rows {
        if sent == limit || (sent > 0 && body.len() >= JOURNAL_PAGE_BYTES) {
            more = true;
            break;
        }
        if sent > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, row).map_err(|e| ApiError::internal(&e))?;
        sent += 1;
        last = last.max(row.seq);
    }
    body.extend_from_slice(
        format!("],\"next_cursor\":{},\"more\":{more}}}", json!(last)).as_bytes(),
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Which events.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// Only this job's events.
    job: Option<String>,
    /// Only this composition's (and its member jobs').
    composition: Option<String>,
    /// Start after this journal `seq` (`Last-Event-ID` wins; default: from now).
    after: Option<i64>,
}

/// Journal events as Server-Sent Events (`id` = journal `seq`, `event` = event type, `data` =
/// the row as JSON), resumable with `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream")))]
async fn events(
    State(state): State<AppState>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be a journal seq"))
        })
        .transpose()?;
    let (filter, mut query) = match (params.job, params.composition) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give job or composition, not both"));
        }
        (Some(job), None) => (Filter::Job(job.clone()), JournalQuery::job(job)),
        (None, Some(c)) => (
            Filter::Composition(c.clone()),
            JournalQuery {
                composition_id: Some(c),
                ..JournalQuery::default()
            },
        ),
        (None, None) => (Filter::All, JournalQuery::default()),
    };
    // Listen to the shared tail before reading the cursor: nothing committed in between is
    // missed (what the catch-up read also finds comes twice and is skipped by its seq).
    let tail = state
        .tail
        .get_or_init(|| JournalTail::start(&state))
        .subscribe();
    let manager = state.host.manager().clone();
    let newest = tokio::task::spawn_blocking(move || manager.journal().last_seq())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    // A cursor past the journal's end is another journal's (a client that followed another
    // data dir on this address): it would wait for rows this journal may never reach, so the
    // stream starts from now.
    let after = resume
        .or(params.after)
        .map_or(newest, |seq| seq.min(newest));
    query.limit = Some(PAGE);
    let follow = Follow {
        state: state.clone(),
        query,
        filter,
        last: after,
        tail,
        backlog: VecDeque::new(),
        catching_up: true,
        stop: state.stop.subscribe(),
    };
    Ok(Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Which rows a stream sends.
#[derive(Debug, Clone)]
enum Filter {
    All,
    Job(String),
    Composition(String),
}

/// One journal row or live event, rendered once for every stream that sends it.
#[derive(Debug)]
struct Item {
    seq: Option<i64>,
    kind: String,
    job_id: Option<String>,
    composition_id: Option<String>,
    data: String,
}

impl Item {
    fn row(row: &JournalEvent) -> Item {
        let data = json!({
            "seq": row.seq,
            "ts": row.ts,
            "event_type": row.event_type,
            "job_id": row.job_id,
            "composition_id": row.composition_id,
            "node_id": row.node_id,
            "capability_instance_id": row.capability_instance_id,
            "capability_name": row.capability_name,
            "run_id": row.run_id,
            "actor": row.actor,
            "worker_reported": row.worker_reported,
            "payload": row.payload,
        });
        Item {
            seq: row.seq,
            kind: row.event_type.clone(),
            job_id: row.job_id.clone(),
            composition_id: row.composition_id.clone(),
            data: data.to_string(),
        }
    }

    fn live(e: &JobEvent) -> Item {
        let data = json!({
            "seq": null,
            "ts": e.ts,
            "event_type": e.kind.as_str(),
            "job_id": e.job_id,
            "composition_id": e.composition_id,
            "node_id": e.node_id,
            "capability_instance_id": e.instance_id,
            "capability_name": e.capability_name,
            "run_id": e.run_id,
            "actor": e.actor,
            "worker_reported": false,
            "payload": e.payload,
        });
        Item {
            seq: None,
            kind: e.kind.as_str().to_owned(),
            job_id: e.job_id.clone(),
            composition_id: e.composition_id.clone(),
            data: data.to_string(),
        }
    }

    fn matches(&self, filter: &Filter) -> bool {
        match filter {
            Filter::All => true,
            Filter::Job(id) => self.job_id.as_ref() == Some(id),
            Filter::Composition(id) => self.composition_id.as_ref() == Some(id),
        }
    }

    fn event(&self) -> Event {
        let event = Event::default().event(&self.kind).data(&self.data);
        match self.seq {
            Some(seq) => event.id(seq.to_string()),
            None => event,
        }
    }
}

type Batch = Arc<Vec<Arc<Item>>>;

/// The journal read forward once for every stream of this service: one task reads the rows
/// after its cursor when the queue commits (a burst of commits is one read) or every second
/// (rows of other writers: another host, `cjm-ctl`), renders each once and broadcasts them
/// in seq order with the live (liveness) events. Started by the first stream, it runs until
/// the service stops.
pub(crate) struct JournalTail {
    tx: broadcast::Sender<Batch>,
}

impl JournalTail {
    fn start(state: &AppState) -> JournalTail {
        let (tx, _) = broadcast::channel(TAIL_BATCHES);
        let sender = tx.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let mut subscription = state.host.queue().subscribe(Scope::All);
            let mut stop = state.stop.subscribe();
            let manager = state.host.manager().clone();
            let mut last = {
                let m = manager.clone();
                match tokio::task::spawn_blocking(move || m.journal().last_seq()).await {
                    Ok(Ok(seq)) => seq,
                    _ => 0,
                }
            };
            loop {
                let mut batch: Vec<Arc<Item>> = Vec::new();
                // Liveness events that came after a journaled one: sent after the rows read
                // for it, so a job's progress never comes before its submission.
                let mut after_rows: Vec<Arc<Item>> = Vec::new();
                let mut read = false;
                tokio::select! {
                    live = subscription.next() => {
                        let Some(live) = live else { break };
                        let mut take = |e: JobEvent| {
                            if e.kind.journaled() {
                                read = true;
                            } else if read {
                                after_rows.push(Arc::new(Item::live(&e)));
                            } else {
                                batch.push(Arc::new(Item::live(&e)));
                            }
                        };
                        take(live);
                        while let Some(more) = subscription.try_next() {
                            take(more);
                        }
                    }
                    () = tokio::time::sleep(POLL) => read = true,
                    _ = stop.changed() => break,
                }
                while read {
                    let m = manager.clone();
                    let query = JournalQuery::default().after(last).limit(PAGE);
                    let rows = match tokio::task::spawn_blocking(move || m.journal().query(&query))
                        .await
                    {
                        Ok(Ok(rows)) => rows,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "the event tail cannot read the journal; retrying");
                            break;
                        }
                        Err(_) => break,
                    };
                    read = rows.len() as u64 >= PAGE;
                    for row in &rows {
                        last = last.max(row.seq.unwrap_or(last));
                        batch.push(Arc::new(Item::row(row)));
                    }
                }
                batch.append(&mut after_rows);
                if !batch.is_empty() {
                    // No stream listening is fine: the next one catches up on its own.
                    let _ = sender.send(Arc::new(batch));
                }
            }
        });
        JournalTail { tx }
    }

    fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.tx.subscribe()
    }
}

/// One stream: it reads the journal itself from its cursor until it has caught up (or when
/// it fell behind the shared tail), then sends what the tail broadcasts that it wants.
struct Follow {
    state: AppState,
    query: JournalQuery,
    filter: Filter,
    /// The last journal seq seen.
    last: i64,
    tail: broadcast::Receiver<Batch>,
    backlog: VecDeque<Event>,
    catching_up: bool,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut follow| async move {
            follow.next().await.map(|event| (Ok(event), follow))
        })
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                return Some(event);
            }
            if self.catching_up {
                self.catching_up = self.read_journal().await?;
                continue;
            }
            tokio::select! {
                batch = self.tail.recv() => match batch {
                    Ok(batch) => {
                        for item in batch.iter() {
                            if let Some(seq) = item.seq {
                                if seq <= self.last {
                                    continue;
                                }
                                self.last = seq;
                            }
                            if item.matches(&self.filter) {
                                self.backlog.push_back(item.event());
                            }
                        }
                    }
                    // This client fell behind the tail: what it missed is in the journal.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.stop.changed() => return None,
            }
        }
    }

    /// Reads a page of this stream's rows after `last` into the backlog; whether the page
    /// was full (more to read).
    async fn read_journal(&mut self) -> Option<bool> {
        let manager = self.state.host.manager().clone();
        let query = self.query.clone().after(self.last);
        let rows = tokio::task::spawn_blocking(move || manager.journal().query(&query))
            .await
            .ok()?
            .ok()?;
        let full = rows.len() as u64 >= PAGE;
        for row in rows {
            if let Some(seq) = row.seq {
                self.last = self.last.max(seq);
            }
            self.backlog.push_back(Item::row(&row).event());
        }
        Some(full)
    }
}

/// Which log records.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Only this job's records.
    job: Option<String>,
    /// Only this worker session's.
    worker_session: Option<String>,
    /// Only this level (`INFO`, ...).
    level: Option<String>,
    /// `records` (default: structured log records) or `chunks` (raw stdout/stderr lines).
    kind: Option<String>,
    /// After this cursor.
    after: Option<i64>,
    /// At most this many per answer (default 500, at most 10,000).
    limit: Option<u64>,
    /// Keep following as Server-Sent Events.
    #[serde(default)]
    follow: bool,
    /// The newest rows, newest first (without `after` or `follow`).
    #[serde(default)]
    newest: bool,
}

/// Log records (or raw output chunks) as JSON, or followed as Server-Sent Events.
#[utoipa::path(get, path = "/v1/logs", tag = "events", params(LogParams),
    responses((status = 200, description = "{\"records\": [...], \"next_cursor\"}, or an event stream with `follow`", body = Object)))]
async fn logs(
    State(state): State<AppState>,
    Query(p): Query<LogParams>,
) -> Result<Response, ApiError> {
    let chunks = match p.kind.as_deref() {
        None | Some("records") => false,
        Some("chunks") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("unknown kind '{other}' (records or chunks)"),
                vec!["kind".into()],
            ));
        }
    };
    check_newest(p.newest, p.after, p.follow)?;
    let limit = page_limit(p.limit);
    let read = LogRead {
        chunks,
        newest: p.newest,
        records: RecordQuery {
            job_id: p.job,
            worker_session_id: p.worker_session.clone(),
            level: p.level,
            limit: Some(limit),
            ..RecordQuery::default()
        },
        chunk_query: ChunkQuery {
            worker_session_id: p.worker_session,
            limit: Some(limit),
            ..ChunkQuery::default()
        },
    };
    let after = p.after.unwrap_or(0);
    if !p.follow {
        let (items, last) = read.page(&state, after).await?;
        return Ok(Json(json!({"records": items, "next_cursor": last})).into_response());
    }
    let stop = state.stop.subscribe();
    let stream = futures_util::stream::unfold(
        (state, read, after, VecDeque::<Event>::new(), stop),
        |(state, read, mut after, mut backlog, mut stop)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                if let Some(e) = backlog.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (state, read, after, backlog, stop)));
                }
                match read.page(&state, after).await {
                    Ok((items, last)) if !items.is_empty() => {
                        after = last.unwrap_or(after);
                        for item in items {
                            let mut event = Event::default().event("log").data(item.to_string());
                            if let Some(seq) = item["seq"].as_i64() {
                                event = event.id(seq.to_string());
                            }
                            backlog.push_back(event);
                        }
                    }
                    Ok(_) => {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(250)) => {}
                            _ = stop.changed() => return None,
                        }
                    }
                    Err(_) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct LogRead {
    chunks: bool,
    /// The last rows, newest first (one page, no cursor).
    newest: bool,
    records: RecordQuery,
    chunk_query: ChunkQuery,
}

impl LogRead {
    /// Items after `after`, and the last cursor among them.
    async fn page(
        &self,
        state: &AppState,
        after: i64,
    ) -> Result<(Vec<Value>, Option<i64>), ApiError> {
        let manager = state.host.manager().clone();
        let chunks = self.chunks;
        let from = (!self.newest).then_some(after);
        let mut records = self.records.clone();
        records.after_seq = from;
        records.descending = self.newest;
        let mut chunk_query = self.chunk_query.clone();
        chunk_query.after_seq = from;
        chunk_query.descending = self.newest;
        let items: Vec<Value> =
            tokio::task::spawn_blocking(move || -> crate::Result<Vec<Value>> {
                let d = manager.diagnostics();
                Ok(if chunks {
                    d.query_chunks(&chunk_query)?
                        .iter()
                        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                        .collect()
                } else {
                    d.query_records(&records)?
                        .iter()
                        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                        .collect()
                })
            })
            .await
            .map_err(|e| ApiError::internal(&e))??;
        let last = items.iter().filter_map(|i| i["seq"].as_i64()).max();
        Ok((items, last))
    }
}
