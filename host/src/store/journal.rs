//! The journal: the durable, append-only account of what the host attempted (every job
//! transition, admission decision, worker spawn/ready/death, config change, retry).
//!
//! The schema and every field are cjm-substrate's `JournalEvent`. There is no delete and no
//! retention: the journal is precious. An append that fails returns the error: callers must
//! not swallow it. `seq` (the rowid) is the cursor for tailing (`after_seq`); `event_id` is a
//! generated UUID, unique, so the same event can never be appended twice.

use std::path::Path;

use cjm_guest::contract::JobError;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Db, Migration, now_iso};

mod lease;
use crate::error::Result;
pub use lease::{
    HostRecord, Leftovers, Liveness, OpenComposition, OpenJob, OrphanCancel, hostname,
    process_start,
};

/// The journal's event vocabulary: every event type this host writes, in one place (the
/// journal itself accepts any string: accounts keep the type their worker reported, such as
/// `task_account`).
pub mod event_types {
    // Jobs and compositions (the queue).
    /// A job was accepted: its spec (`payload.spec`) and the host that owns it
    /// (`payload.host_id`), written before its id is returned.
    pub const JOB_SUBMITTED: &str = "job_submitted";
    /// Another host took over a job of a gone host (`payload.host_id`, `payload.from_host`,
    /// `payload.attempt`, `payload.spec`).
    pub const JOB_ADOPTED: &str = "job_adopted";
    /// A job changed state; terminal transitions carry `job_snapshot`.
    pub const STATE_TRANSITION: &str = "state_transition";
    /// An admission decision for a dispatch.
    pub const ADMISSION_DECIDED: &str = "admission_decided";
    /// The cancel state machine moved.
    pub const CANCEL_PHASE_CHANGED: &str = "cancel_phase_changed";
    /// A reactive retry began (after a resource error, idle instances evicted).
    pub const RETRY_STARTED: &str = "retry_started";
    /// Progress of a running job (liveness: sent to subscribers, never journaled).
    pub const PROGRESS_CHANGED: &str = "progress_changed";
    /// A running native job's worker subtree measured (liveness: never journaled).
    pub const RESOURCE_SNAPSHOT: &str = "resource_snapshot";
    /// A composition was accepted: its definition (`payload.composition`) and its host.
    pub const COMPOSITION_SUBMITTED: &str = "composition_submitted";
    /// Another host took over a running composition of a gone host (`payload.host_id`,
    /// `payload.from_host`) and resumes it from its journaled node outcomes.
    pub const COMPOSITION_ADOPTED: &str = "composition_adopted";
    /// A composition enqueued downstream nodes.
    pub const COMPOSITION_ADVANCED: &str = "composition_advanced";
    /// A composition was cancelled as a unit.
    pub const COMPOSITION_CANCEL_REQUESTED: &str = "composition_cancel_requested";
    /// A composition reached its terminal status.
    pub const COMPOSITION_FINISHED: &str = "composition_finished";

    // Capability instances (the manager).
    /// An instance was loaded (`payload.runtime`).
    pub const CAPABILITY_LOADED: &str = "capability_loaded";
    /// An instance was unloaded.
    pub const CAPABILITY_UNLOADED: &str = "capability_unloaded";
    /// An instance's backend was replaced (a reload).
    pub const CAPABILITY_RELOADED: &str = "capability_reloaded";
    /// An instance was enabled.
    pub const CAPABILITY_ENABLED: &str = "capability_enabled";
    /// An instance was disabled.
    pub const CAPABILITY_DISABLED: &str = "capability_disabled";
    /// An idle instance's backend was shut down to free resources (`payload.for`).
    pub const CAPABILITY_EVICTED: &str = "capability_evicted";
    /// An instance's configuration changed (`payload.old`, `payload.new`).
    pub const CONFIG_CHANGED: &str = "config_changed";

    // Native workers (the backend).
    /// A worker process was started.
    pub const WORKER_SPAWNED: &str = "worker_spawned";
    /// A worker passed its readiness probe.
    pub const WORKER_READY: &str = "worker_ready";
    /// A worker exited on its own or stopped answering.
    pub const WORKER_DIED: &str = "worker_died";
    /// A worker was stopped by the host (shutdown, unload, reload).
    pub const WORKER_STOPPED: &str = "worker_stopped";
    /// A worker was killed (a forced cancel, a deadline, a hung call).
    pub const WORKER_KILLED: &str = "worker_killed";
    /// A worker that died is respawned after a backoff (`payload.delay_seconds`).
    pub const WORKER_RESTART_SCHEDULED: &str = "worker_restart_scheduled";
    /// A worker died too often: nothing more is spawned until a reload.
    pub const WORKER_CRASH_LOOP: &str = "worker_crash_loop";

    /// The job states a `state_transition` can end in.
    pub const TERMINAL_STATES: [&str; 3] = ["completed", "failed", "cancelled"];
}

/// One journal row (cjm-substrate's `JournalEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEvent {
    /// The store-assigned cursor; `None` until appended.
    pub seq: Option<i64>,
    /// A generated occurrence id (UUID v4), unique.
    pub event_id: String,
    /// When it happened (ISO-8601 UTC).
    pub ts: String,
    /// What happened ([`event_types`], or any other string).
    pub event_type: String,
    /// Host-tier run correlation.
    pub run_id: Option<String>,
    /// Job correlation.
    pub job_id: Option<String>,
    /// Composition correlation.
    pub composition_id: Option<String>,
    /// Composition node correlation.
    pub node_id: Option<String>,
    /// Capability instance.
    pub capability_instance_id: Option<String>,
    /// Capability name (denormalised for filtering).
    pub capability_name: Option<String>,
    /// Effective config hash at event time.
    pub config_hash: Option<String>,
    /// Task-channel task.
    pub task_name: Option<String>,
    /// Task-channel method.
    pub method: Option<String>,
    /// Spawn-scoped worker session.
    pub worker_session_id: Option<String>,
    /// Who or what initiated it.
    pub actor: Option<String>,
    /// The payload came from inside a worker (the host still wrote the row).
    pub worker_reported: bool,
    /// Per-event-type detail (an object).
    pub payload: Value,
}

impl JournalEvent {
    /// A new event of `event_type`, stamped now, with a fresh id and an empty payload.
    ///
    /// The id is a UUID v7 (time-ordered, still random in its low bits): the `event_id`
    /// index then grows at its end like the rowid instead of taking inserts at random
    /// places, which keeps appends fast in a journal of millions of rows. Python's ids are
    /// v4; both are just unique strings to every reader.
    pub fn new(event_type: impl Into<String>) -> Self {
        JournalEvent {
            seq: None,
            event_id: uuid::Uuid::now_v7().to_string(),
            ts: now_iso(),
            event_type: event_type.into(),
            run_id: None,
            job_id: None,
            composition_id: None,
            node_id: None,
            capability_instance_id: None,
            capability_name: None,
            config_hash: None,
            task_name: None,
            method: None,
            worker_session_id: None,
            actor: None,
            worker_reported: false,
            payload: Value::Object(Map::new()),
        }
    }

    /// A `state_transition` of `job_id` from `from` to `to`.
    pub fn state_transition(job_id: impl Into<String>, from: &str, to: &str) -> Self {
        let mut e = JournalEvent::new(event_types::STATE_TRANSITION).job(job_id);
        e.payload = serde_json::json!({"from": from, "to": to});
        e
    }

    /// The same event for `job_id`.
    pub fn job(mut self, job_id: impl Into<String>) -> Self {
        self.job_id = Some(job_id.into());
        self
    }

    /// The same event for capability instance `instance_id`.
    pub fn instance(mut self, instance_id: impl Into<String>) -> Self {
        self.capability_instance_id = Some(instance_id.into());
        self
    }

    /// The same event with `payload`.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// Sets `payload[key] = value` (making the payload an object if it was not).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        if !self.payload.is_object() {
            self.payload = Value::Object(Map::new());
        }
        if let Some(obj) = self.payload.as_object_mut() {
            obj.insert(key.to_owned(), value);
        }
        self
    }

    /// Records `error` as the payload's `error` (the JobError dict, as cjm-substrate writes it).
    pub fn with_error(self, error: &JobError) -> Self {
        let value = serde_json::to_value(error).unwrap_or(Value::Null);
        self.set("error", value)
    }

    /// The job error the event carries: `payload.error`, or the terminal snapshot's error.
    pub fn error(&self) -> Option<JobError> {
        let raw = self
            .payload
            .get("error")
            .filter(|v| !v.is_null())
            .or_else(|| {
                self.payload
                    .get("job_snapshot")
                    .and_then(|s| s.get("error"))
                    .filter(|v| !v.is_null())
            })?;
        serde_json::from_value(raw.clone()).ok()
    }

    /// The job snapshot of a terminal `state_transition`.
    pub fn job_snapshot(&self) -> Option<JobSnapshot> {
        self.payload
            .get("job_snapshot")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
    }

    /// Whether this is a transition into a terminal job state.
    pub fn is_terminal_transition(&self) -> bool {
        self.event_type == event_types::STATE_TRANSITION
            && self
                .payload
                .get("to")
                .and_then(Value::as_str)
                .is_some_and(|to| event_types::TERMINAL_STATES.contains(&to))
    }
}

/// The record of a finished job, as a terminal `state_transition` carries it (cjm-substrate's
/// `_job_snapshot`: no arguments, no result, the error as a JobError).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// The job id.
    pub id: String,
    /// The capability instance.
    #[serde(default)]
    pub capability_instance_id: Option<String>,
    /// The final status.
    pub status: String,
    /// Its priority.
    #[serde(default)]
    pub priority: i64,
    /// When submitted (ISO-8601).
    #[serde(default)]
    pub submitted_at: Option<String>,
    /// When started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When completed.
    #[serde(default)]
    pub completed_at: Option<String>,
    /// Reactive retries made.
    #[serde(default)]
    pub retry_count: u32,
    /// Composition.
    #[serde(default)]
    pub composition_id: Option<String>,
    /// Composition node.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Task-channel task.
    #[serde(default)]
    pub task_name: Option<String>,
    /// Task-channel method.
    #[serde(default)]
    pub method: Option<String>,
    /// Run.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Initiator.
    #[serde(default)]
    pub actor: Option<String>,
    /// The failure, when it failed.
    #[serde(default)]
    pub error: Option<JobError>,
    /// Keys this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A filtered read. Every filter set is AND-combined; rows come in `seq` order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalQuery {
    /// Job.
    pub job_id: Option<String>,
    /// Run.
    pub run_id: Option<String>,
    /// Composition.
    pub composition_id: Option<String>,
    /// Capability instance.
    pub capability_instance_id: Option<String>,
    /// Capability name.
    pub capability_name: Option<String>,
    /// Worker session.
    pub worker_session_id: Option<String>,
    /// One event type.
    pub event_type: Option<String>,
    /// Only rows after this cursor.
    pub after_seq: Option<i64>,
    /// Only rows before this cursor (paging backwards with `descending`).
    pub before_seq: Option<i64>,
    /// Only rows at or after this time (ISO-8601, compared as text).
    pub since_ts: Option<String>,
    /// Only rows at or before this time.
    pub until_ts: Option<String>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Newest first.
    pub descending: bool,
}

impl JournalQuery {
    /// Everything of `job_id`.
    pub fn job(job_id: impl Into<String>) -> Self {
        JournalQuery {
            job_id: Some(job_id.into()),
            ..JournalQuery::default()
        }
    }

    /// The same query, after cursor `seq`.
    pub fn after(mut self, seq: i64) -> Self {
        self.after_seq = Some(seq);
        self
    }

    /// The same query, at most `limit` rows.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    event_type TEXT NOT NULL,
    run_id TEXT,
    job_id TEXT,
    composition_id TEXT,
    node_id TEXT,
    capability_instance_id TEXT,
    capability_name TEXT,
    config_hash TEXT,
    task_name TEXT,
    method TEXT,
    worker_session_id TEXT,
    actor TEXT,
    worker_reported INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS idx_journal_job ON journal (job_id);
CREATE INDEX IF NOT EXISTS idx_journal_run ON journal (run_id);
CREATE INDEX IF NOT EXISTS idx_journal_comp ON journal (composition_id);
CREATE INDEX IF NOT EXISTS idx_journal_type_ts ON journal (event_type, ts);
CREATE INDEX IF NOT EXISTS idx_journal_instance_ts ON journal (capability_instance_id, ts);
CREATE INDEX IF NOT EXISTS idx_journal_wsession ON journal (worker_session_id);
";

const MIGRATIONS: &[Migration] = &[
    |tx| tx.execute_batch(SCHEMA_V1),
    |tx| tx.execute_batch(lease::SCHEMA_V2),
    |tx| tx.execute_batch(lease::SCHEMA_V3),
    |tx| tx.execute_batch(SCHEMA_V4),
];

/// Columns most rows leave empty (a run, a composition, a worker session) are indexed only
/// where set: every append then updates three B-trees fewer, and a lookup by value (`= ?`
/// implies `IS NOT NULL`) still uses the index.
const SCHEMA_V4: &str = "
DROP INDEX IF EXISTS idx_journal_run;
DROP INDEX IF EXISTS idx_journal_comp;
DROP INDEX IF EXISTS idx_journal_wsession;
CREATE INDEX idx_journal_run ON journal (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX idx_journal_comp ON journal (composition_id) WHERE composition_id IS NOT NULL;
CREATE INDEX idx_journal_wsession ON journal (worker_session_id) WHERE worker_session_id IS NOT NULL;
";

const INSERT: &str = "INSERT INTO journal (event_id, ts, event_type, run_id, job_id, composition_id, node_id, \
     capability_instance_id, capability_name, config_hash, task_name, method, worker_session_id, actor, \
     worker_reported, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

const COLUMNS: &str = "seq, event_id, ts, event_type, run_id, job_id, composition_id, node_id, capability_instance_id, \
     capability_name, config_hash, task_name, method, worker_session_id, actor, worker_reported, payload";

/// Which jobs' newest rows [`JournalStore::latest_job_rows`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatestJobRows<'a> {
    /// Only jobs in this state now.
    pub status: Option<&'a str>,
    /// Only jobs of this run.
    pub run_id: Option<&'a str>,
    /// Only jobs on this instance.
    pub instance_id: Option<&'a str>,
    /// Only jobs whose newest row is before this `seq`.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// The journal store.
#[derive(Debug)]
pub struct JournalStore {
    db: Db,
}

impl JournalStore {
    /// Opens (creating) the journal at `path`.
    pub fn open(path: &Path) -> Result<JournalStore> {
        Ok(JournalStore {
            db: Db::open(path, "journal", MIGRATIONS)?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Appends one event in its own transaction and returns its `seq`. A failure is returned,
    /// never swallowed: the audit trail does not degrade quietly.
    pub fn append(&self, event: &JournalEvent) -> Result<i64> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(INSERT)?;
            insert(&mut stmt, event)?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Appends `events` in one transaction (all or none) and returns their `seq`s in order.
    pub fn append_batch(&self, events: &[JournalEvent]) -> Result<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.db.write(|tx| {
            let mut stmt = tx.prepare_cached(INSERT)?;
            let mut seqs = Vec::with_capacity(events.len());
            for event in events {
                insert(&mut stmt, event)?;
                seqs.push(tx.last_insert_rowid());
            }
            Ok(seqs)
        })
    }

    /// The events matching `query`.
    pub fn query(&self, query: &JournalQuery) -> Result<Vec<JournalEvent>> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        let filters = [
            ("job_id = ?", &query.job_id),
            ("run_id = ?", &query.run_id),
            ("composition_id = ?", &query.composition_id),
            ("capability_instance_id = ?", &query.capability_instance_id),
            ("capability_name = ?", &query.capability_name),
            ("worker_session_id = ?", &query.worker_session_id),
            ("event_type = ?", &query.event_type),
            ("ts >= ?", &query.since_ts),
            ("ts <= ?", &query.until_ts),
        ];
        for (clause, value) in filters {
            if let Some(v) = value {
                clauses.push(clause);
                args.push(SqlValue::Text(v.clone()));
            }
        }
        if let Some(after) = query.after_seq {
            clauses.push("seq > ?");
            args.push(SqlValue::Integer(after));
        }
        if let Some(before) = query.before_seq {
            clauses.push("seq < ?");
            args.push(SqlValue::Integer(before));
        }
        let mut sql = format!("SELECT {COLUMNS} FROM journal");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(if query.descending {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        if let Some(limit) = query.limit {
            sql.push_str(" LIMIT ?");
            args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_event)?;
            rows.collect()
        })
    }

    /// The newest row of each job among its `job_submitted`, `job_adopted` and
    /// `state_transition` rows (the row that says its state now), newest first, before cursor
    /// `before`, at most `limit`: of jobs whose newest row has state `status` (`pending` for a
    /// submission or adoption), `run_id` and `instance_id` where given. A page of a job
    /// listing, read through the indexes: a journal of millions of rows costs a page what a
    /// small one does (a filter on a rare state scans until it fills the page).
    pub fn latest_job_rows(&self, filter: &LatestJobRows<'_>) -> Result<Vec<JournalEvent>> {
        const STATES: &str = "('state_transition', 'job_submitted', 'job_adopted')";
        // The rows are read newest first by `seq` until the page is full: the unary `+`
        // keeps SQLite from reading them through the type or instance index instead, which
        // would sort every row of the journal first.
        let mut sql = format!(
            "SELECT {COLUMNS} FROM journal AS j WHERE +j.event_type IN {STATES} \
             AND j.job_id IS NOT NULL AND j.seq < ?"
        );
        let mut args = vec![SqlValue::Integer(filter.before.unwrap_or(i64::MAX))];
        for (clause, value) in [
            (" AND j.run_id = ?", filter.run_id),
            (" AND +j.capability_instance_id = ?", filter.instance_id),
            (
                " AND (CASE WHEN j.event_type = 'state_transition' \
                 THEN json_extract(j.payload, '$.to') ELSE 'pending' END) = ?",
                filter.status,
            ),
        ] {
            if let Some(v) = value {
                sql.push_str(clause);
                args.push(SqlValue::Text(v.to_owned()));
            }
        }
        sql.push_str(&format!(
            " AND NOT EXISTS (SELECT 1 FROM journal AS k WHERE k.job_id = j.job_id \
             AND k.seq > j.seq AND k.event_type IN {STATES}) ORDER BY j.seq DESC LIMIT ?"
        ));
        args.push(SqlValue::Integer(
            i64::try_from(filter.limit).unwrap_or(i64::MAX),
        ));
        self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_event)?;
            rows.collect()
        })
    }

    /// A job's `job_submitted` and `job_adopted` rows, newest first.
    pub fn job_submissions(&self, job_id: &str) -> Result<Vec<JournalEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM journal WHERE job_id = ?1 \
             AND event_type IN ('job_submitted', 'job_adopted') ORDER BY seq DESC"
        );
        self.db.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([job_id], row_to_event)?;
            rows.collect()
        })
    }

    /// Number of rows (of `event_type`, or all).
    pub fn count(&self, event_type: Option<&str>) -> Result<u64> {
        self.db.with(|conn| {
            let n: i64 = match event_type {
                Some(t) => conn
                    .prepare_cached("SELECT COUNT(*) FROM journal WHERE event_type = ?1")?
                    .query_row([t], |r| r.get(0))?,
                None => conn
                    .prepare_cached("SELECT COUNT(*) FROM journal")?
                    .query_row([], |r| r.get(0))?,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// The durable job history: `state_transition` rows into `completed`, `failed` or
    /// `cancelled`, newest first.
    pub fn terminal_state_events(&self, limit: Option<u64>) -> Result<Vec<JournalEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM journal WHERE event_type = 'state_transition' \
             AND json_extract(payload, '$.to') IN ('completed', 'failed', 'cancelled') \
             ORDER BY seq DESC LIMIT ?1"
        );
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([limit], row_to_event)?;
            rows.collect()
        })
    }

    /// The full job id that `part` starts or ends: itself when it is a job's id or no job's,
    /// the one job id it begins (`01a23e2a` for `01a23e2a-8673-...`) or, when none begins
    /// with it, the one it ends (`cjm-ctl logs` prints ids' last 8 characters: a UUIDv7
    /// begins with its timestamp, shared by a burst), or an error naming the candidates
    /// when several match.
    pub fn resolve_job(&self, part: &str) -> Result<String> {
        let literal = part.replace(['*', '?', '['], "");
        let find = |pattern: String| -> Result<Vec<String>> {
            self.db.with(|conn| {
                // GLOB is case-sensitive and uses the job index for a literal prefix (a
                // suffix scans).
                let mut stmt = conn.prepare_cached(
                    "SELECT DISTINCT job_id FROM journal WHERE job_id GLOB ?1 ORDER BY job_id LIMIT 5",
                )?;
                let rows = stmt.query_map([pattern], |r| r.get(0))?;
                rows.collect()
            })
        };
        let mut ids = find(format!("{literal}*"))?;
        if ids.is_empty() && !literal.is_empty() {
            ids = find(format!("*{literal}"))?;
        }
        match ids.as_slice() {
            [] => Ok(part.to_owned()),
            [one] => Ok(one.clone()),
            many if many.iter().any(|id| id == part) => Ok(part.to_owned()),
            many => Err(crate::Error::job(JobError::user_input(format!(
                "job id part '{part}' is ambiguous: {}{}",
                many.join(", "),
                if many.len() == 5 { ", ..." } else { "" }
            )))),
        }
    }

    /// The highest `seq` written (0 for an empty journal): where a tail starts.
    pub fn last_seq(&self) -> Result<i64> {
        self.db.with(|conn| {
            conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM journal")?
                .query_row([], |r| r.get(0))
        })
    }
}

fn insert(stmt: &mut rusqlite::CachedStatement<'_>, e: &JournalEvent) -> rusqlite::Result<usize> {
    let payload = if e.payload.is_null() {
        "{}".to_owned()
    } else {
        serde_json::to_string(&e.payload)
            .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?
    };
    stmt.execute(params![
        e.event_id,
        e.ts,
        e.event_type,
        e.run_id,
        e.job_id,
        e.composition_id,
        e.node_id,
        e.capability_instance_id,
        e.capability_name,
        e.config_hash,
        e.task_name,
        e.method,
        e.worker_session_id,
        e.actor,
        e.worker_reported,
        payload,
    ])
}

fn row_to_event(row: &Row<'_>) -> rusqlite::Result<JournalEvent> {
    let payload_text: Option<String> = row.get(16)?;
    // A payload another writer left unparseable is shown, not dropped (as cjm-substrate).
    let payload = match payload_text.as_deref() {
        None | Some("") => Value::Object(Map::new()),
        Some(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({"_unparseable": text}))
        }
    };
    Ok(JournalEvent {
        seq: Some(row.get(0)?),
        event_id: row.get(1)?,
        ts: row.get(2)?,
        event_type: row.get(3)?,
        run_id: row.get(4)?,
        job_id: row.get(5)?,
        composition_id: row.get(6)?,
        node_id: row.get(7)?,
        capability_instance_id: row.get(8)?,
        capability_name: row.get(9)?,
        config_hash: row.get(10)?,
        task_name: row.get(11)?,
        method: row.get(12)?,
        worker_session_id: row.get(13)?,
        actor: row.get(14)?,
        worker_reported: row.get::<_, i64>(15)? != 0,
        payload,
    })
}

#[cfg(test)]
mod tests;
