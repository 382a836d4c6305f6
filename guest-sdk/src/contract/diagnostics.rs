//! The diagnostics database schema (`CONTRACT.md`): the Python worker's own, because Python
//! workers, native workers and the host all write into the same SQLite file. Idempotent
//! (`IF NOT EXISTS`), so any writer may run it first.

/// DDL of the `records` and `stream_chunks` tables, their indexes and the `meta` table.
pub const DIAGNOSTICS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    worker_session_id TEXT,
    job_id TEXT,
    level TEXT NOT NULL DEFAULT 'INFO',
    logger_name TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL,
    exc_text TEXT
);
CREATE INDEX IF NOT EXISTS idx_records_job ON records (job_id);
CREATE INDEX IF NOT EXISTS idx_records_session ON records (worker_session_id);
CREATE INDEX IF NOT EXISTS idx_records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS stream_chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    worker_session_id TEXT,
    stream TEXT NOT NULL DEFAULT 'stdout',
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_chunks_session ON stream_chunks (worker_session_id);
CREATE INDEX IF NOT EXISTS idx_chunks_ts ON stream_chunks (ts);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";
