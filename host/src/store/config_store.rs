//! The config store: per capability instance, its config, whether it is enabled, and its
//! non-secret worker-env overrides; survives restarts.
//!
//! Keyed by instance id (the default instance's id is the capability name), in
//! cjm-substrate's `capability_configs` table. Only deterministic ids belong here: an
//! auto-generated instance lives for one run and is not written.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{OptionalExtension, Row, params};
use serde_json::{Map, Value};

use super::{Db, Migration, unix_now};
use crate::error::{Error, Result};

/// What is kept for one capability instance.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityConfigRecord {
    /// The capability's config (an object).
    pub config: Value,
    /// Whether the host accepts jobs for it.
    pub enabled: bool,
    /// Non-secret worker-env overrides (manifest default < override < secret).
    pub worker_env: BTreeMap<String, String>,
    /// Seconds since the Unix epoch of the last write (stamped by the store).
    pub updated_at: f64,
}

impl Default for CapabilityConfigRecord {
    fn default() -> Self {
        CapabilityConfigRecord {
            config: Value::Object(Map::new()),
            enabled: true,
            worker_env: BTreeMap::new(),
            updated_at: 0.0,
        }
    }
}

impl CapabilityConfigRecord {
    /// An enabled record with `config`.
    pub fn with_config(config: Value) -> Self {
        CapabilityConfigRecord {
            config,
            ..CapabilityConfigRecord::default()
        }
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS capability_configs (
    instance_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    worker_env_json TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
)";

const MIGRATIONS: &[Migration] = &[|tx| {
    tx.execute_batch(SCHEMA_V1)?;
    // A table from an older cjm-substrate (before the worker-env column): add it.
    let has_env: bool = tx
        .prepare(
            "SELECT 1 FROM pragma_table_info('capability_configs') WHERE name = 'worker_env_json'",
        )?
        .exists([])?;
    if !has_env {
        tx.execute_batch(
            "ALTER TABLE capability_configs ADD COLUMN worker_env_json TEXT NOT NULL DEFAULT '{}'",
        )?;
    }
    Ok(())
}];

/// The config store.
#[derive(Debug)]
pub struct ConfigStore {
    db: Db,
}

impl ConfigStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<ConfigStore> {
        Ok(ConfigStore {
            db: Db::open(path, "config", MIGRATIONS)?,
        })
    }

    /// The record of `instance_id`, if one was written.
    pub fn get(&self, instance_id: &str) -> Result<Option<CapabilityConfigRecord>> {
        let row = self.db.with(|conn| {
            conn.prepare_cached(
                "SELECT config_json, enabled, worker_env_json, updated_at FROM capability_configs WHERE instance_id = ?1",
            )?
            .query_row([instance_id], raw_row)
            .optional()
        })?;
        row.map(|raw| decode(instance_id, raw)).transpose()
    }

    /// Writes the record of `instance_id` (replacing any), stamping `updated_at`; returns the
    /// stamp.
    pub fn set(&self, instance_id: &str, record: &CapabilityConfigRecord) -> Result<f64> {
        let now = unix_now();
        let config = json_text(&record.config)?;
        let env = json_text(&record.worker_env)?;
        self.db.with(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO capability_configs (instance_id, config_json, enabled, worker_env_json, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![instance_id, config, record.enabled, env, now])
        })?;
        Ok(now)
    }

    /// Sets only the enabled flag (a missing record is created with an empty config).
    pub fn set_enabled(&self, instance_id: &str, enabled: bool) -> Result<()> {
        let now = unix_now();
        self.db.with(|conn| {
            conn.prepare_cached(
                "INSERT INTO capability_configs (instance_id, config_json, enabled, worker_env_json, updated_at) \
                 VALUES (?1, '{}', ?2, '{}', ?3) \
                 ON CONFLICT(instance_id) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at",
            )?
            .execute(params![instance_id, enabled, now])
        })?;
        Ok(())
    }

    /// Removes the record of `instance_id`; whether there was one.
    pub fn delete(&self, instance_id: &str) -> Result<bool> {
        let n = self.db.with(|conn| {
            conn.prepare_cached("DELETE FROM capability_configs WHERE instance_id = ?1")?
                .execute([instance_id])
        })?;
        Ok(n > 0)
    }

    /// Every record, by instance id.
    pub fn list_all(&self) -> Result<BTreeMap<String, CapabilityConfigRecord>> {
        let rows = self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT instance_id, config_json, enabled, worker_env_json, updated_at FROM capability_configs ORDER BY instance_id",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, raw_row_at(row, 1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(id, raw)| decode(&id, raw).map(|record| (id, record)))
            .collect()
    }
}

type RawRow = (String, bool, String, f64);

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    raw_row_at(row, 0)
}

fn raw_row_at(row: &Row<'_>, at: usize) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(at)?,
        row.get(at + 1)?,
        row.get(at + 2)?,
        row.get(at + 3)?,
    ))
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Json {
        what: "config store value".to_owned(),
        source,
    })
}

/// A row whose JSON does not parse is an error naming the instance, never an empty config
/// in its place.
fn decode(
    instance_id: &str,
    (config, enabled, env, updated_at): RawRow,
) -> Result<CapabilityConfigRecord> {
    let parse = |text: &str, what: &str| -> Result<Value> {
        if text.is_empty() {
            return Ok(Value::Object(Map::new()));
        }
        serde_json::from_str(text).map_err(|source| Error::Json {
            what: format!("config store {what} of {instance_id:?}"),
            source,
        })
    };
    let config = parse(&config, "config")?;
    let env_value = parse(&env, "worker_env")?;
    let worker_env = serde_json::from_value(env_value).map_err(|source| Error::Json {
        what: format!("config store worker_env of {instance_id:?}"),
        source,
    })?;
    Ok(CapabilityConfigRecord {
        config,
        enabled,
        worker_env,
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capability_configs.db");
        {
            let store = ConfigStore::open(&path).unwrap();
            assert_eq!(store.get("whisper").unwrap(), None);
            let mut record =
                CapabilityConfigRecord::with_config(json!({"model": "base", "temperature": 0.0}));
            record.worker_env.insert("HF_HOME".into(), "/m".into());
            let stamp = store.set("whisper", &record).unwrap();
            assert!(stamp > 1.7e9);
            store.set_enabled("whisper", false).unwrap();
            store.set_enabled("fresh", false).unwrap();
        }
        let store = ConfigStore::open(&path).unwrap();
        let whisper = store.get("whisper").unwrap().unwrap();
        assert_eq!(whisper.config, json!({"model": "base", "temperature": 0.0}));
        assert_eq!(whisper.config["temperature"].to_string(), "0.0");
        assert!(!whisper.enabled);
        assert_eq!(whisper.worker_env["HF_HOME"], "/m");
        let all = store.list_all().unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["fresh", "whisper"]);
        assert_eq!(all["fresh"].config, json!({}));
        assert!(store.delete("fresh").unwrap());
        assert!(!store.delete("fresh").unwrap());
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = ConfigStore::open(&path).unwrap();
        store
            .db
            .with(|c| {
                c.execute(
                    "INSERT INTO capability_configs VALUES ('bad', '{oops', 1, '{}', 0)",
                    [],
                )
            })
            .unwrap();
        let err = store.get("bad").unwrap_err();
        assert!(
            err.to_string().contains("config store config of \"bad\""),
            "{err}"
        );
        assert!(store.list_all().is_err());
    }

    #[test]
    fn an_older_python_table_gains_the_worker_env_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE capability_configs (instance_id TEXT PRIMARY KEY, config_json TEXT NOT NULL, \
                 enabled INTEGER NOT NULL DEFAULT 1, updated_at REAL NOT NULL);
                 INSERT INTO capability_configs VALUES ('old', '{\"a\": 1}', 0, 5.0);",
            )
            .unwrap();
        }
        let store = ConfigStore::open(&path).unwrap();
        let old = store.get("old").unwrap().unwrap();
        assert_eq!(
            (
                old.config,
                old.enabled,
                old.worker_env.len(),
                old.updated_at
            ),
            (json!({"a": 1}), false, 0, 5.0)
        );
    }
}
