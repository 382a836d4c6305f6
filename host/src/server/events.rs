//! Server-Sent Events: the journal, live (`/v1/events`, for all, one job or one composition),
//! and log records (`/v1/logs`, a query or a follow).
//!
//! An event stream is the journal read forward from a cursor: the SSE `id` of each event is
//! its journal `seq`, so a client reconnecting with `Last-Event-ID` (or `?after=`) misses
//! nothing. The queue's subscription only wakes the stream when this host commits rows (a
//! burst of them wakes one read); rows of any other writer of the data dir (another host,
//! `cjm-ctl`) are read at the latest a second later. Liveness events (progress, resource
//! snapshots) are not journaled: they are sent as they come, without an `id`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use crate::queue::{JobEvent, Scope, Subscription};
use crate::store::{ChunkQuery, JournalEvent, JournalQuery, RecordQuery};

/// Journal rows read back per query.
const PAGE: u64 = 1000;
/// How often a stream looks at the journal for rows that did not come live.
const POLL: Duration = Duration::from_secs(1);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(logs))
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
    let (scope, mut query) = match (params.job, params.composition) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give job or composition, not both"));
        }
        (Some(job), None) => (Scope::Job(job.clone()), JournalQuery::job(job)),
        (None, Some(c)) => (
            Scope::Composition(c.clone()),
            JournalQuery {
                composition_id: Some(c),
                ..JournalQuery::default()
            },
        ),
        (None, None) => (Scope::All, JournalQuery::default()),
    };
    // Subscribe before reading the cursor: nothing committed in between is missed.
    let subscription = state.host.queue().subscribe(scope);
    let after = match resume.or(params.after) {
        Some(seq) => seq,
        None => {
            let manager = state.host.manager().clone();
            tokio::task::spawn_blocking(move || manager.journal().last_seq())
                .await
                .map_err(|e| ApiError::internal(&e))??
        }
    };
    query.limit = Some(PAGE);
    let tail = Tail {
        state: state.clone(),
        query,
        last: after,
        subscription,
        backlog: VecDeque::new(),
        read_back: true,
        stop: state.stop.subscribe(),
    };
    Ok(Sse::new(tail.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One stream's position in the journal.
struct Tail {
    state: AppState,
    query: JournalQuery,
    /// The last journal seq sent.
    last: i64,
    subscription: Subscription,
    backlog: VecDeque<Event>,
    /// Read the journal after `last` before waiting again.
    read_back: bool,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Tail {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut tail| async move {
            tail.next().await.map(|event| (Ok(event), tail))
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
            if self.read_back {
                self.read_back = self.read_journal().await?;
                continue;
            }
            tokio::select! {
                live = self.subscription.next() => {
                    self.take(live?);
                    // Everything else already buffered wakes the same read.
                    while let Some(more) = self.subscription.try_next() {
                        self.take(more);
                    }
                }
                () = tokio::time::sleep(POLL) => self.read_back = true,
                _ = self.stop.changed() => return None,
            }
        }
    }

    /// A live event: a liveness one is sent as is; a journaled one says the journal has
    /// new rows (read in journal order, with any other writer's).
    fn take(&mut self, live: JobEvent) {
        if live.kind.journaled() {
            self.read_back = true;
        } else {
            self.backlog.push_back(live_event(&live));
        }
    }

    /// Reads a page of rows after `last` into the backlog; whether the page was full.
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
            self.backlog.push_back(row_event(&row));
        }
        Some(full)
    }
}

fn row_event(row: &JournalEvent) -> Event {
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
    let mut event = Event::default()
        .event(row.event_type.as_str())
        .data(data.to_string());
    if let Some(seq) = row.seq {
        event = event.id(seq.to_string());
    }
    event
}

fn live_event(e: &JobEvent) -> Event {
    let data = json!({
        "seq": e.seq,
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
    let mut event = Event::default()
        .event(e.kind.as_str())
        .data(data.to_string());
    if let Some(seq) = e.seq {
        event = event.id(seq.to_string());
    }
    event
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
    let limit = p.limit.unwrap_or(500).clamp(1, 10_000);
    let read = LogRead {
        chunks,
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
        let mut records = self.records.clone();
        records.after_seq = Some(after);
        let mut chunk_query = self.chunk_query.clone();
        chunk_query.after_seq = Some(after);
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
