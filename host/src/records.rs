//! A data dir's records, read without running a host: what `cjm-ctl` shows when no
//! `cjm-ctl serve` runs there (jobs and their journal rows, logs, secret names, instance
//! configs), and the two writes a client makes of its own: a cancel request and the
//! diagnostics retention. It opens a store when first asked for it, and only one that
//! exists; it creates nothing.
//!
//! The rows are interpreted here, once (a job's state from its transitions, a cancel's
//! protocol), so the CLI and the service answer alike.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::json;

use crate::config::HostConfig;
use crate::error::Result;
use crate::queue::{CANCEL_REQUESTED, JobFilter, JobPage};
use crate::store::{
    CapabilityConfigRecord, ChunkQuery, ConfigStore, DiagnosticRecord, DiagnosticsStore,
    JournalEvent, JournalQuery, JournalStore, OrphanCancel, RecordQuery, RetentionOutcome,
    SecretStore, StreamChunk,
};

/// The records of one data dir.
pub struct Records {
    config: HostConfig,
    journal: OnceLock<Option<JournalStore>>,
    diagnostics: OnceLock<Option<DiagnosticsStore>>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("data_dir", &self.config.data_dir)
            .field("journal", &self.journal.get().map(Option::is_some))
            .field("diagnostics", &self.diagnostics.get().map(Option::is_some))
            .finish()
    }
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No job has that id in the journal.
    Unknown,
    /// The job had already ended (its terminal status).
    Finished(String),
    /// Its host is gone: the job was ended `cancelled` here (the host's id, and why it is
    /// held gone).
    Ended {
        /// The gone host.
        host: String,
        /// Why it is held gone (its lease expired, its process is gone).
        why: String,
    },
    /// A `cancel_requested` row was journaled: the host running the job stops it (it
    /// follows these rows within a second).
    Requested,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Rows deleted.
    pub deleted: RetentionOutcome,
    /// The store's size before, in bytes.
    pub used_bytes_before: u64,
    /// And after.
    pub used_bytes_after: u64,
}

impl Records {
    /// The records of `config`'s data dir (nothing is opened yet).
    pub fn new(config: HostConfig) -> Self {
        Records {
            config,
            journal: OnceLock::new(),
            diagnostics: OnceLock::new(),
        }
    }

    /// The journal, opened on first use; `None` when there is none.
    fn journal_store(&self) -> Result<Option<&JournalStore>> {
        opened(
            &self.journal,
            &self.config.journal_db_path(),
            JournalStore::open,
        )
    }

    /// The diagnostics store, opened on first use; `None` when there is none.
    fn diagnostics_store(&self) -> Result<Option<&DiagnosticsStore>> {
        opened(
            &self.diagnostics,
            &self.config.diagnostics_db_path(),
            DiagnosticsStore::open,
        )
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Whether anything was ever journaled here.
    pub fn has_journal(&self) -> bool {
        self.config.journal_db_path().is_file()
    }

    /// Whether any capability ever logged here.
    pub fn has_diagnostics(&self) -> bool {
        self.config.diagnostics_db_path().is_file()
    }

    /// The job id a unique prefix of one in the journal stands for (the id itself when
    /// nothing matches, or there is no journal).
    pub fn resolve_job(&self, given: &str) -> Result<String> {
        match self.journal_store()? {
            Some(j) => Ok(j.resolve_job(given)?),
            None => Ok(given.to_owned()),
        }
    }

    /// Jobs matching `filter`, newest first, as the service lists them.
    pub fn jobs(&self, filter: &JobFilter) -> Result<JobPage> {
        match self.journal_store()? {
            Some(j) => crate::queue::list_jobs(j, filter),
            None => Ok(JobPage {
                jobs: Vec::new(),
                next_cursor: None,
            }),
        }
    }

    /// Journal rows matching `query` (none without a journal).
    pub fn journal(&self, query: &JournalQuery) -> Result<Vec<JournalEvent>> {
        match self.journal_store()? {
            Some(j) => Ok(j.query(query)?),
            None => Ok(Vec::new()),
        }
    }

    /// Log records matching `query` (none without a diagnostics store).
    pub fn log_records(&self, query: &RecordQuery) -> Result<Vec<DiagnosticRecord>> {
        match self.diagnostics_store()? {
            Some(d) => Ok(d.query_records(query)?),
            None => Ok(Vec::new()),
        }
    }

    /// Raw output chunks matching `query`.
    pub fn chunks(&self, query: &ChunkQuery) -> Result<Vec<StreamChunk>> {
        match self.diagnostics_store()? {
            Some(d) => Ok(d.query_chunks(query)?),
            None => Ok(Vec::new()),
        }
    }

    /// Whether `job` has a journal row or a log record.
    pub fn knows_job(&self, job: &str) -> Result<bool> {
        if !self.journal(&JournalQuery::job(job).limit(1))?.is_empty() {
            return Ok(true);
        }
        let records = self.log_records(&RecordQuery {
            job_id: Some(job.to_owned()),
            limit: Some(1),
            ..RecordQuery::default()
        })?;
        Ok(!records.is_empty())
    }

    /// Asks for `job` to be cancelled by `actor` (`by`: the command or tool that asks): the
    /// host running it is told through the journal; a job whose host is gone is ended here,
    /// once, whoever else tries.
    pub fn cancel(&self, job: &str, actor: &str, by: &str) -> Result<CancelOutcome> {
        let Some(journal) = self.journal_store()? else {
            return Ok(CancelOutcome::Unknown);
        };
        let rows = journal.query(&JournalQuery::job(job))?;
        if rows.is_empty() {
            return Ok(CancelOutcome::Unknown);
        }
        if let Some(done) = rows.iter().rev().find(|e| e.is_terminal_transition()) {
            let status = done.payload["to"].as_str().unwrap_or("").to_owned();
            return Ok(CancelOutcome::Finished(status));
        }
        match journal.cancel_orphan(job, by)? {
            OrphanCancel::Cancelled { host, why } => return Ok(CancelOutcome::Ended { host, why }),
            OrphanCancel::Finished => return Ok(CancelOutcome::Finished(String::new())),
            OrphanCancel::NotOrphan => {}
        }
        let mut e = JournalEvent::new(CANCEL_REQUESTED)
            .job(job)
            .payload(json!({ "by": by }));
        e.capability_instance_id = rows.iter().find_map(|r| r.capability_instance_id.clone());
        e.actor = Some(actor.to_owned());
        journal.append(&e)?;
        Ok(CancelOutcome::Requested)
    }

    /// The names of the secrets set for capability `name` (never a value).
    pub fn secret_names(&self, name: &str) -> Result<Vec<String>> {
        let path = self.config.secrets_path();
        if !path.is_file() {
            return Ok(Vec::new());
        }
        SecretStore::new(path).list_keys(name, None)
    }

    /// Every instance's stored configuration record (config, enabled, worker env
    /// overrides), by instance id.
    pub fn instance_configs(&self) -> Result<BTreeMap<String, CapabilityConfigRecord>> {
        let path = self.config.config_store_path();
        if !path.is_file() {
            return Ok(BTreeMap::new());
        }
        ConfigStore::open(&path)?.list_all()
    }

    /// Applies the diagnostics retention now: rows older than `max_age_days`, then the
    /// oldest until the store uses at most `max_total_mb` (the journal is never touched).
    /// `None` when there is no diagnostics store.
    pub fn apply_retention(
        &self,
        max_age_days: Option<f64>,
        max_total_mb: Option<f64>,
    ) -> Result<Option<Retention>> {
        let Some(d) = self.diagnostics_store()? else {
            return Ok(None);
        };
        let used_bytes_before = d.used_bytes()?;
        let deleted = d.apply_retention(max_age_days, max_total_mb)?;
        Ok(Some(Retention {
            deleted,
            used_bytes_before,
            used_bytes_after: d.used_bytes()?,
        }))
    }
}

/// The store in `cell`, opened from `path` by `open` on first use; `None` when the file does
/// not exist (nothing is created).
fn opened<'c, T>(
    cell: &'c OnceLock<Option<T>>,
    path: &std::path::Path,
    open: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<Option<&'c T>> {
    if let Some(store) = cell.get() {
        return Ok(store.as_ref());
    }
    let store = path.is_file().then(|| open(path)).transpose()?;
    Ok(cell.get_or_init(|| store).as_ref())
}
