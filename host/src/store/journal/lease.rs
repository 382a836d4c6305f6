//! Host identity and liveness on a data dir: the `hosts` table of the journal database.
//!
//! Every queue registers a row (its host id, hostname, pid and the pid's start time) and
//! renews `heartbeat_at` on an interval: its *lease*. Any process can tell whether the host
//! behind a row is gone: it stopped cleanly, its lease expired, or (on the same machine) its
//! process no longer exists. A host that finds a gone host *claims* it (`reconciled_by`, set
//! once, in the same transaction as the rows that adopt or end its open jobs), so exactly one
//! host reconciles each gone host, whatever number share the data dir. A host whose row was
//! claimed while it still ran (its lease expired: it was suspended, or its clock jumped)
//! learns it at its next journal write, which is refused (see
//! [`JournalStore::append_batch_as`]): it can no longer write a job outcome another host
//! already decided.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{JournalEvent, JournalStore, event_types};
use crate::error::Result;

/// A host's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRecord {
    /// Its id (a UUIDv7).
    pub host_id: String,
    /// The machine it runs on.
    pub hostname: String,
    /// Its process.
    pub pid: i64,
    /// The start time of that process (`/proc/PID/stat` field 22), so a reused pid is not
    /// taken for the host.
    pub pid_start: Option<i64>,
    /// When it registered (ISO-8601).
    pub started_at: String,
    /// Its last heartbeat (Unix seconds).
    pub heartbeat_at: f64,
    /// How long a heartbeat holds (seconds).
    pub lease_ttl_s: f64,
    /// When it stopped cleanly.
    pub stopped_at: Option<String>,
    /// The host that reconciled it after it was gone.
    pub reconciled_by: Option<String>,
}

/// Whether a host is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its lease holds.
    Alive,
    /// It is gone (why, in words).
    Gone(String),
}

impl HostRecord {
    /// Whether the host is alive at `now` (Unix seconds), seen from the machine `here`.
    pub fn liveness(&self, now: f64, here: &str) -> Liveness {
        if let Some(at) = &self.stopped_at {
            return Liveness::Gone(format!("stopped at {at}"));
        }
        if self.hostname == here && !process_alive(self.pid, self.pid_start) {
            return Liveness::Gone(format!("its process {} no longer exists", self.pid));
        }
        let age = now - self.heartbeat_at;
        if age > self.lease_ttl_s {
            return Liveness::Gone(format!(
                "its lease expired {:.1} s ago (no heartbeat for {age:.1} s)",
                age - self.lease_ttl_s
            ));
        }
        Liveness::Alive
    }
}

/// This machine's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn process_start(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(pid: i64, start: Option<i64>) -> bool {
    match (process_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
    }
}

pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    started_at TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    lease_ttl_s REAL NOT NULL,
    stopped_at TEXT,
    reconciled_by TEXT,
    reconciled_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_journal_owner ON journal (json_extract(payload, '$.host_id'))
    WHERE event_type IN ('job_submitted', 'job_adopted', 'composition_submitted');
";

/// Compositions change owner too (`composition_adopted`): the owner index covers it.
pub(super) const SCHEMA_V3: &str = "
DROP INDEX IF EXISTS idx_journal_owner;
CREATE INDEX idx_journal_owner ON journal (json_extract(payload, '$.host_id'))
    WHERE event_type IN ('job_submitted', 'job_adopted', 'composition_submitted', 'composition_adopted');
";

const HOST_COLUMNS: &str = "host_id, hostname, pid, pid_start, started_at, heartbeat_at, lease_ttl_s, \
     stopped_at, reconciled_by";

fn row_to_host(row: &rusqlite::Row<'_>) -> rusqlite::Result<HostRecord> {
    Ok(HostRecord {
        host_id: row.get(0)?,
        hostname: row.get(1)?,
        pid: row.get(2)?,
        pid_start: row.get(3)?,
        started_at: row.get(4)?,
        heartbeat_at: row.get(5)?,
        lease_ttl_s: row.get(6)?,
        stopped_at: row.get(7)?,
        reconciled_by: row.get(8)?,
    })
}

/// A job a gone host left unfinished, as the journal has it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenJob {
    /// The job.
    pub job_id: String,
    /// Its submission (or latest adoption) row: the spec in the payload.
    pub submitted: JournalEvent,
    /// The `to` of its latest `state_transition` (`None`: never admitted).
    pub state: Option<String>,
    /// The attempt it was on (1-based): its row's, or a later retry's.
    pub attempt: u32,
}

/// A composition a gone host left unfinished.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenComposition {
    /// Its submission row (the definition in the payload).
    pub submitted: JournalEvent,
    /// Its members' submission, adoption and state rows, in order: where each node got to.
    pub members: Vec<JournalEvent>,
    /// Whether it was cancelled as a unit.
    pub cancel_requested: bool,
}

/// What a gone host left unfinished.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leftovers {
    /// Jobs with no terminal row whose latest owner is the gone host.
    pub jobs: Vec<OpenJob>,
    /// Compositions with no `composition_finished` row.
    pub compositions: Vec<OpenComposition>,
}

impl JournalStore {
    /// Registers host `host_id` (this process) with a lease of `ttl_s` seconds.
    pub fn register_host(&self, host_id: &str, ttl_s: f64) -> Result<HostRecord> {
        let pid = i64::from(std::process::id());
        let record = HostRecord {
            host_id: host_id.to_owned(),
            hostname: hostname(),
            pid,
            pid_start: process_start(pid),
            started_at: super::now_iso(),
            heartbeat_at: super::super::unix_now(),
            lease_ttl_s: ttl_s,
            stopped_at: None,
            reconciled_by: None,
        };
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO hosts (host_id, hostname, pid, pid_start, started_at, heartbeat_at, lease_ttl_s) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record.host_id,
                    record.hostname,
                    record.pid,
                    record.pid_start,
                    record.started_at,
                    record.heartbeat_at,
                    record.lease_ttl_s
                ],
            )
        })?;
        Ok(record)
    }

    /// Renews the lease of `host_id`. `false` when the host was claimed by another (it lost
    /// its lease and must stop writing job outcomes).
    /// A host not registered yet holds its lease.
    pub fn heartbeat(&self, host_id: &str) -> Result<bool> {
        let now = super::super::unix_now();
        self.db.with(|conn| {
            let renewed = conn
                .prepare_cached(
                    "UPDATE hosts SET heartbeat_at = ?2 WHERE host_id = ?1 \
                     AND reconciled_by IS NULL AND stopped_at IS NULL",
                )?
                .execute(params![host_id, now])?;
            if renewed == 1 {
                return Ok(true);
            }
            let known = conn
                .prepare_cached("SELECT 1 FROM hosts WHERE host_id = ?1")?
                .query_row([host_id], |_| Ok(()))
                .optional()?;
            Ok(known.is_none())
        })
    }

    /// Marks `host_id` stopped cleanly.
    pub fn stop_host(&self, host_id: &str) -> Result<()> {
        let now = super::now_iso();
        self.db.with(|conn| {
            conn.prepare_cached(
                "UPDATE hosts SET stopped_at = ?2 WHERE host_id = ?1 AND stopped_at IS NULL",
            )?
            .execute(params![host_id, now])
            .map(|_| ())
        })
    }

    /// Every host row, newest first.
    pub fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {HOST_COLUMNS} FROM hosts ORDER BY started_at DESC"
            ))?;
            let rows = stmt.query_map([], row_to_host)?;
            rows.collect()
        })
    }

    /// Hosts nobody reconciled yet that are gone at `now`, seen from this machine.
    pub fn gone_hosts(&self, now: f64) -> Result<Vec<(HostRecord, String)>> {
        let here = hostname();
        let rows = self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {HOST_COLUMNS} FROM hosts WHERE reconciled_by IS NULL"
            ))?;
            let rows = stmt.query_map([], row_to_host)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|h| match h.liveness(now, &here) {
                Liveness::Gone(why) => Some((h, why)),
                Liveness::Alive => None,
            })
            .collect())
    }

    /// Claims gone host `gone` for `me` and, in the same transaction, reads what it left
    /// unfinished and appends the rows `decide` makes of it (adoptions, terminal
    /// transitions). `None` when another host claimed it first (nothing written). A crash
    /// in between leaves the host unclaimed: the next host redoes it all.
    pub fn reconcile(
        &self,
        gone: &str,
        me: &str,
        decide: impl FnOnce(&Leftovers) -> Vec<JournalEvent>,
    ) -> Result<Option<(Leftovers, Vec<JournalEvent>)>> {
        let now = super::now_iso();
        self.db.write(|tx| {
            let claimed = tx.execute(
                "UPDATE hosts SET reconciled_by = ?2, reconciled_at = ?3 WHERE host_id = ?1 \
                 AND reconciled_by IS NULL",
                params![gone, me, now],
            )?;
            if claimed != 1 {
                return Ok(None);
            }
            let left = leftovers(tx, gone)?;
            let mut rows = decide(&left);
            let mut stmt = tx.prepare_cached(super::INSERT)?;
            for row in &mut rows {
                super::insert(&mut stmt, row)?;
                row.seq = Some(tx.last_insert_rowid());
            }
            Ok(Some((left, rows)))
        })
    }

    /// Appends `rows` for job `job_id` of a gone host unless the job already has a terminal
    /// row: how a process that runs no queue (`cjm-ctl cancel`) ends an orphan exactly once.
    /// `false` when the job had already ended.
    pub fn end_orphan(&self, job_id: &str, rows: &[JournalEvent]) -> Result<bool> {
        self.db.write(|tx| {
            if has_terminal(tx, job_id)? {
                return Ok(false);
            }
            let mut stmt = tx.prepare_cached(super::INSERT)?;
            for row in rows {
                super::insert(&mut stmt, row)?;
            }
            Ok(true)
        })
    }

    /// Cancels job `job_id` by writing its terminal `cancelled` row itself, when the host
    /// that owns it is gone (nobody else would ever end it) and it has not ended: checked
    /// and written in one transaction, so it cannot race the host that reconciles the gone
    /// one. `actor` is recorded as who cancelled it.
    pub fn cancel_orphan(&self, job_id: &str, actor: &str) -> Result<OrphanCancel> {
        let here = hostname();
        let now = super::super::unix_now();
        self.db.write(|tx| {
            let Some((owner, state)) = owner_and_state(tx, job_id)? else {
                return Ok(OrphanCancel::NotOrphan);
            };
            let host = tx
                .prepare_cached(&format!(
                    "SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = ?1"
                ))?
                .query_row([&owner], row_to_host)
                .optional()?;
            let why = match host.map(|h| h.liveness(now, &here)) {
                Some(Liveness::Gone(why)) => why,
                _ => return Ok(OrphanCancel::NotOrphan),
            };
            if has_terminal(tx, job_id)? {
                return Ok(OrphanCancel::Finished);
            }
            let submitted = tx
                .prepare_cached(&format!(
                    "SELECT {} FROM journal WHERE job_id = ?1 AND event_type IN \
                     ('job_submitted', 'job_adopted') ORDER BY seq LIMIT 1",
                    super::COLUMNS
                ))?
                .query_row([job_id], super::row_to_event)?;
            let from = state.unwrap_or_else(|| "pending".to_owned());
            let snapshot = serde_json::json!({
                "id": job_id,
                "capability_instance_id": submitted.capability_instance_id,
                "status": "cancelled",
                "submitted_at": submitted.ts,
                "completed_at": super::now_iso(),
                "composition_id": submitted.composition_id,
                "node_id": submitted.node_id,
                "run_id": submitted.run_id,
                "actor": actor,
            });
            let mut row = JournalEvent::new(event_types::STATE_TRANSITION)
                .job(job_id)
                .payload(serde_json::json!({
                    "from": from, "to": "cancelled", "job_snapshot": snapshot,
                    "orphan_of": owner, "host_gone": why,
                }));
            row.capability_instance_id = submitted.capability_instance_id;
            row.capability_name = submitted.capability_name;
            row.composition_id = submitted.composition_id;
            row.node_id = submitted.node_id;
            row.run_id = submitted.run_id;
            row.actor = Some(actor.to_owned());
            super::insert(&mut tx.prepare_cached(super::INSERT)?, &row)?;
            Ok(OrphanCancel::Cancelled { host: owner, why })
        })
    }

    /// The host that owns job `job_id` now (its latest submission or adoption row), and the
    /// `to` of its latest state transition.
    pub fn job_owner(&self, job_id: &str) -> Result<Option<(String, Option<String>)>> {
        self.db.with(|conn| owner_and_state(conn, job_id))
    }

    /// The row of host `host_id`.
    pub fn host(&self, host_id: &str) -> Result<Option<HostRecord>> {
        self.db.with(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = ?1"
            ))?
            .query_row([host_id], row_to_host)
            .optional()
        })
    }

    /// Appends `events` in one transaction, only while host `host_id` holds its lease (its
    /// row is not claimed by another host): a host that lost its lease can no longer write
    /// outcomes the reconciler already wrote. [`Error::LeaseLost`](crate::Error::LeaseLost)
    /// otherwise.
    pub fn append_batch_as(&self, host_id: &str, events: &[JournalEvent]) -> Result<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut lost = None;
        let out = self.db.write(|tx| {
            let by: Option<Option<String>> = tx
                .prepare_cached("SELECT reconciled_by FROM hosts WHERE host_id = ?1")?
                .query_row([host_id], |r| r.get(0))
                .optional()?;
            if let Some(Some(by)) = by {
                lost = Some(by);
                return Ok(Vec::new());
            }
            let mut stmt = tx.prepare_cached(super::INSERT)?;
            let mut seqs = Vec::with_capacity(events.len());
            for event in events {
                super::insert(&mut stmt, event)?;
                seqs.push(tx.last_insert_rowid());
            }
            Ok(seqs)
        })?;
        match lost {
            Some(by) => Err(crate::Error::LeaseLost {
                host_id: host_id.to_owned(),
                by,
            }),
            None => Ok(out),
        }
    }
}

fn owner_and_state(
    conn: &rusqlite::Connection,
    job_id: &str,
) -> rusqlite::Result<Option<(String, Option<String>)>> {
    let owner: Option<String> = conn
        .prepare_cached(
            "SELECT json_extract(payload, '$.host_id') FROM journal WHERE job_id = ?1 \
             AND event_type IN ('job_submitted', 'job_adopted') ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([job_id], |r| r.get(0))
        .optional()?
        .flatten();
    let Some(owner) = owner else { return Ok(None) };
    let state: Option<String> = conn
        .prepare_cached(
            "SELECT json_extract(payload, '$.to') FROM journal WHERE job_id = ?1 \
             AND event_type = 'state_transition' ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([job_id], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(Some((owner, state)))
}

/// What [`JournalStore::cancel_orphan`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanCancel {
    /// The job's host is alive (or the job is unknown, or older than host leases): it is
    /// cancelled through that host.
    NotOrphan,
    /// The job had already ended.
    Finished,
    /// Its host is gone: its terminal `cancelled` row was written here.
    Cancelled {
        /// The gone host.
        host: String,
        /// How it was found gone.
        why: String,
    },
}

fn has_terminal(tx: &Transaction<'_>, job_id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM journal WHERE job_id = ?1 AND event_type = 'state_transition' \
         AND json_extract(payload, '$.to') IN ('completed', 'failed', 'cancelled') LIMIT 1",
    )?
    .query_row([job_id], |_| Ok(()))
    .optional()
    .map(|r| r.is_some())
}

/// The unfinished jobs and compositions whose latest owner is `host`.
///
/// Only the rows of jobs without a terminal row are read into memory: a host that ran a
/// million jobs and left three is reconciled from three rows, not a million.
fn leftovers(tx: &Transaction<'_>, host: &str) -> rusqlite::Result<Leftovers> {
    let owned = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {} FROM journal AS s WHERE json_extract(payload, '$.host_id') = ?1 \
             AND event_type IN ('job_submitted', 'job_adopted', 'composition_submitted', \
             'composition_adopted') \
             AND (job_id IS NULL OR NOT EXISTS (SELECT 1 FROM journal AS t \
                  WHERE t.job_id = s.job_id AND t.event_type = 'state_transition' \
                  AND json_extract(t.payload, '$.to') IN ('completed', 'failed', 'cancelled'))) \
             ORDER BY seq",
            super::COLUMNS
        ))?;
        let rows = stmt.query_map([host], super::row_to_event)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut left = Leftovers::default();
    for row in owned {
        if row.event_type.starts_with("composition_") {
            if let Some(open) = open_composition(tx, host, &row)?
                && !left
                    .compositions
                    .iter()
                    .any(|c| c.submitted.composition_id == open.submitted.composition_id)
            {
                left.compositions.push(open);
            }
            continue;
        }
        let Some(job) = row.job_id.clone() else {
            continue;
        };
        // Adopted since by another host: not this host's any more.
        let latest_owner: Option<String> = tx
            .prepare_cached(
                "SELECT json_extract(payload, '$.host_id') FROM journal WHERE job_id = ?1 \
                 AND event_type IN ('job_submitted', 'job_adopted') ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([&job], |r| r.get(0))
            .optional()?
            .flatten();
        if latest_owner.as_deref() != Some(host) {
            continue;
        }
        let state: Option<String> = tx
            .prepare_cached(
                "SELECT json_extract(payload, '$.to') FROM journal WHERE job_id = ?1 \
                 AND event_type = 'state_transition' AND seq > ?2 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![job, row.seq.unwrap_or(0)], |r| r.get(0))
            .optional()?
            .flatten();
        let retried: Option<i64> = tx
            .prepare_cached(
                "SELECT MAX(json_extract(payload, '$.retry.attempt')) FROM journal WHERE job_id = ?1 \
                 AND event_type = 'state_transition' AND seq > ?2",
            )?
            .query_row(params![job, row.seq.unwrap_or(0)], |r| r.get(0))?;
        let own = row
            .payload
            .get("attempt")
            .and_then(serde_json::Value::as_i64);
        let attempt = own
            .unwrap_or(1)
            .max(retried.unwrap_or(1))
            .clamp(1, i64::from(u32::MAX));
        // A job adopted twice by the same host appears twice: keep the latest row.
        left.jobs.retain(|j| j.job_id != job);
        left.jobs.push(OpenJob {
            job_id: job,
            submitted: row,
            state,
            attempt: u32::try_from(attempt).unwrap_or(1),
        });
    }
    Ok(left)
}

/// The composition of `row` (its submission or an adoption) when `host` still owns it and it
/// has not finished: its submission row and its members' rows.
fn open_composition(
    tx: &Transaction<'_>,
    host: &str,
    row: &JournalEvent,
) -> rusqlite::Result<Option<OpenComposition>> {
    let Some(id) = row.composition_id.clone() else {
        return Ok(None);
    };
    let latest_owner: Option<String> = tx
        .prepare_cached(
            "SELECT json_extract(payload, '$.host_id') FROM journal WHERE composition_id = ?1 \
             AND event_type IN ('composition_submitted', 'composition_adopted') \
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([&id], |r| r.get(0))
        .optional()?
        .flatten();
    if latest_owner.as_deref() != Some(host)
        || composition_has(tx, &id, event_types::COMPOSITION_FINISHED)?
    {
        return Ok(None);
    }
    let submitted = tx
        .prepare_cached(&format!(
            "SELECT {} FROM journal WHERE composition_id = ?1 \
             AND event_type = 'composition_submitted' ORDER BY seq LIMIT 1",
            super::COLUMNS
        ))?
        .query_row([&id], super::row_to_event)
        .optional()?;
    let Some(submitted) = submitted else {
        return Ok(None);
    };
    let members = tx
        .prepare_cached(&format!(
            "SELECT {} FROM journal WHERE composition_id = ?1 AND job_id IS NOT NULL \
             AND event_type IN ('job_submitted', 'job_adopted', 'state_transition') ORDER BY seq",
            super::COLUMNS
        ))?
        .query_map([&id], super::row_to_event)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let cancel_requested = composition_has(tx, &id, event_types::COMPOSITION_CANCEL_REQUESTED)?;
    Ok(Some(OpenComposition {
        submitted,
        members,
        cancel_requested,
    }))
}

/// Whether composition `id` has a row of `event_type`.
fn composition_has(tx: &Transaction<'_>, id: &str, event_type: &str) -> rusqlite::Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT 1 FROM journal WHERE composition_id = ?1 AND event_type = ?2 LIMIT 1",
        )?
        .query_row(params![id, event_type], |_| Ok(()))
        .optional()?
        .is_some())
}
