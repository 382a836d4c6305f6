//! The empirical store: what running a capability instance with a given config actually
//! costs, one row per (instance id, config hash), aggregated online.
//!
//! Means are Welford running means (cpu %, memory and GPU-memory peaks, duration, with the
//! duration's M2 for its variance); memory and GPU memory also keep the max of peaks (the
//! worst observation drives admission and eviction); success and sample counts; API usage
//! is summed per unit name (tokens, credits, pages: the store does not know units). The
//! table is cjm-substrate's `empirical_resources` plus a `duration_seconds_m2` column (a
//! Python writer leaves it at 0, so the variance then restarts from its next samples).

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{OptionalExtension, Row, params};

use super::{Db, Migration, now_iso};
use crate::error::{Error, Result};

/// One observation after a call.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSample {
    /// CPU % of the worker (or instance).
    pub cpu_percent: f64,
    /// Peak resident memory, MB.
    pub memory_mb_peak: f64,
    /// Peak GPU memory, MB (0 without a GPU).
    pub gpu_memory_mb_peak: f64,
    /// Wall-clock duration, seconds.
    pub duration_seconds: f64,
    /// Whether the call succeeded.
    pub success: bool,
    /// When it was observed (ISO-8601 UTC).
    pub observed_at: String,
    /// Usage the capability reported, per unit.
    pub api_usage: BTreeMap<String, f64>,
}

impl ResourceSample {
    /// A sample observed now.
    pub fn new(
        cpu_percent: f64,
        memory_mb_peak: f64,
        gpu_memory_mb_peak: f64,
        duration_seconds: f64,
        success: bool,
    ) -> Self {
        ResourceSample {
            cpu_percent,
            memory_mb_peak,
            gpu_memory_mb_peak,
            duration_seconds,
            success,
            observed_at: now_iso(),
            api_usage: BTreeMap::new(),
        }
    }
}

/// The measured peaks of an (instance, config): what admission reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Peaks {
    /// Worst GPU memory peak, MB.
    pub gpu_mb: f64,
    /// Worst resident memory peak, MB.
    pub ram_mb: f64,
}

/// The aggregate of one (instance id, config hash).
#[derive(Debug, Clone, PartialEq)]
pub struct EmpiricalRecord {
    /// The capability instance.
    pub instance_id: String,
    /// Its capability.
    pub capability_name: String,
    /// The config hash (`"sha256:<hex>"` of the canonical effective config).
    pub config_hash: String,
    /// Samples folded in.
    pub sample_count: u64,
    /// Of which succeeded.
    pub success_count: u64,
    /// Mean CPU %.
    pub cpu_percent_mean: f64,
    /// Largest memory peak seen, MB.
    pub memory_mb_peak_max: f64,
    /// Mean memory peak, MB.
    pub memory_mb_peak_mean: f64,
    /// Largest GPU-memory peak seen, MB.
    pub gpu_memory_mb_peak_max: f64,
    /// Mean GPU-memory peak, MB.
    pub gpu_memory_mb_peak_mean: f64,
    /// Mean duration, seconds.
    pub duration_seconds_mean: f64,
    /// Welford M2 of the duration (sum of squared deviations).
    pub duration_seconds_m2: f64,
    /// The latest sample's time.
    pub last_observed: String,
    /// API usage summed over all samples, per unit.
    pub api_usage_totals: BTreeMap<String, f64>,
}

impl EmpiricalRecord {
    /// `success_count / sample_count` (0 without samples).
    pub fn success_rate(&self) -> f64 {
        if self.sample_count == 0 {
            0.0
        } else {
            self.success_count as f64 / self.sample_count as f64
        }
    }

    /// Sample variance of the duration (`None` under two samples).
    pub fn duration_variance(&self) -> Option<f64> {
        (self.sample_count >= 2).then(|| self.duration_seconds_m2 / (self.sample_count - 1) as f64)
    }

    /// The aggregate before any sample.
    pub fn first(instance_id: &str, capability_name: &str, config_hash: &str) -> Self {
        EmpiricalRecord {
            instance_id: instance_id.to_owned(),
            capability_name: capability_name.to_owned(),
            config_hash: config_hash.to_owned(),
            sample_count: 0,
            success_count: 0,
            cpu_percent_mean: 0.0,
            memory_mb_peak_max: 0.0,
            memory_mb_peak_mean: 0.0,
            gpu_memory_mb_peak_max: 0.0,
            gpu_memory_mb_peak_mean: 0.0,
            duration_seconds_mean: 0.0,
            duration_seconds_m2: 0.0,
            last_observed: String::new(),
            api_usage_totals: BTreeMap::new(),
        }
    }

    /// Folds `s` in (Welford: `mean += (x - mean) / n`, `m2 += (x - old mean) * (x - new mean)`).
    /// Folds one sample in (Welford means, max of peaks, counts, usage sums).
    pub fn fold(&mut self, s: &ResourceSample) {
        let first = self.sample_count == 0;
        self.sample_count += 1;
        self.success_count += u64::from(s.success);
        let n = self.sample_count as f64;
        let mean = |m: f64, x: f64| m + (x - m) / n;
        self.cpu_percent_mean = mean(self.cpu_percent_mean, s.cpu_percent);
        self.memory_mb_peak_mean = mean(self.memory_mb_peak_mean, s.memory_mb_peak);
        self.gpu_memory_mb_peak_mean = mean(self.gpu_memory_mb_peak_mean, s.gpu_memory_mb_peak);
        let old = self.duration_seconds_mean;
        self.duration_seconds_mean = mean(old, s.duration_seconds);
        self.duration_seconds_m2 +=
            (s.duration_seconds - old) * (s.duration_seconds - self.duration_seconds_mean);
        if first {
            self.memory_mb_peak_max = s.memory_mb_peak;
            self.gpu_memory_mb_peak_max = s.gpu_memory_mb_peak;
        } else {
            self.memory_mb_peak_max = self.memory_mb_peak_max.max(s.memory_mb_peak);
            self.gpu_memory_mb_peak_max = self.gpu_memory_mb_peak_max.max(s.gpu_memory_mb_peak);
        }
        self.last_observed.clone_from(&s.observed_at);
        for (unit, amount) in &s.api_usage {
            *self.api_usage_totals.entry(unit.clone()).or_insert(0.0) += amount;
        }
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS empirical_resources (
    instance_id TEXT NOT NULL,
    capability_name TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    sample_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    cpu_percent_mean REAL NOT NULL DEFAULT 0.0,
    memory_mb_peak_max REAL NOT NULL DEFAULT 0.0,
    memory_mb_peak_mean REAL NOT NULL DEFAULT 0.0,
    gpu_memory_mb_peak_max REAL NOT NULL DEFAULT 0.0,
    gpu_memory_mb_peak_mean REAL NOT NULL DEFAULT 0.0,
    duration_seconds_mean REAL NOT NULL DEFAULT 0.0,
    last_observed TEXT NOT NULL,
    api_usage_totals TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (instance_id, config_hash)
)";

fn has_column(tx: &rusqlite::Transaction<'_>, column: &str) -> rusqlite::Result<bool> {
    tx.prepare("SELECT 1 FROM pragma_table_info('empirical_resources') WHERE name = ?1")?
        .exists([column])
}

const MIGRATIONS: &[Migration] = &[
    |tx| {
        tx.execute_batch(SCHEMA_V1)?;
        // A table from cjm-substrate before API usage was tracked.
        if !has_column(tx, "api_usage_totals")? {
            tx.execute_batch("ALTER TABLE empirical_resources ADD COLUMN api_usage_totals TEXT NOT NULL DEFAULT '{}'")?;
        }
        Ok(())
    },
    |tx| {
        if !has_column(tx, "duration_seconds_m2")? {
            tx.execute_batch("ALTER TABLE empirical_resources ADD COLUMN duration_seconds_m2 REAL NOT NULL DEFAULT 0.0")?;
        }
        tx.execute_batch("CREATE INDEX IF NOT EXISTS idx_empirical_capability ON empirical_resources (capability_name)")
    },
];

const COLUMNS: &str = "instance_id, capability_name, config_hash, sample_count, success_count, cpu_percent_mean, \
     memory_mb_peak_max, memory_mb_peak_mean, gpu_memory_mb_peak_max, gpu_memory_mb_peak_mean, \
     duration_seconds_mean, duration_seconds_m2, last_observed, api_usage_totals";

/// A sample waiting to be folded into its aggregate ([`EmpiricalStore::record_samples`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BufferedSample {
    /// The instance.
    pub instance_id: String,
    /// Its capability.
    pub capability_name: String,
    /// The hash of its config.
    pub config_hash: String,
    /// The observation.
    pub sample: ResourceSample,
}

/// Folds `samples`, in order, into the aggregate of (`instance_id`, `config_hash`): one read
/// and one write of its row, however many samples.
fn fold_into<'s>(
    tx: &rusqlite::Transaction<'_>,
    instance_id: &str,
    capability_name: &str,
    config_hash: &str,
    samples: impl IntoIterator<Item = &'s ResourceSample>,
) -> rusqlite::Result<EmpiricalRecord> {
    let select = format!(
        "SELECT {COLUMNS} FROM empirical_resources WHERE instance_id = ?1 AND config_hash = ?2"
    );
    let insert = format!(
        "INSERT OR REPLACE INTO empirical_resources ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    );
    let existing = tx
        .prepare_cached(&select)?
        .query_row([instance_id, config_hash], row_to_record)
        .optional()?;
    let mut record = existing
        .unwrap_or_else(|| EmpiricalRecord::first(instance_id, capability_name, config_hash));
    record.capability_name = capability_name.to_owned();
    for sample in samples {
        record.fold(sample);
    }
    let usage = serde_json::to_string(&record.api_usage_totals)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.prepare_cached(&insert)?.execute(params![
        record.instance_id,
        record.capability_name,
        record.config_hash,
        i64::try_from(record.sample_count).unwrap_or(i64::MAX),
        i64::try_from(record.success_count).unwrap_or(i64::MAX),
        record.cpu_percent_mean,
        record.memory_mb_peak_max,
        record.memory_mb_peak_mean,
        record.gpu_memory_mb_peak_max,
        record.gpu_memory_mb_peak_mean,
        record.duration_seconds_mean,
        record.duration_seconds_m2,
        record.last_observed,
        usage,
    ])?;
    Ok(record)
}

/// The empirical store.
#[derive(Debug)]
pub struct EmpiricalStore {
    db: Db,
}

impl EmpiricalStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<EmpiricalStore> {
        Ok(EmpiricalStore {
            db: Db::open(path, "empirical", MIGRATIONS)?,
        })
    }

    /// Folds `sample` into the aggregate of (`instance_id`, `config_hash`), creating it on the
    /// first sample, in one write transaction (safe against other writers and processes);
    /// returns the new aggregate.
    pub fn record_sample(
        &self,
        instance_id: &str,
        capability_name: &str,
        config_hash: &str,
        sample: &ResourceSample,
    ) -> Result<EmpiricalRecord> {
        self.db
            .write(|tx| fold_into(tx, instance_id, capability_name, config_hash, [sample]))
    }

    /// Folds many samples, each `(instance_id, capability_name, config_hash, sample)`, in one
    /// write transaction (all or none): how a busy host batches its after-call samples.
    pub fn record_samples(&self, samples: &[BufferedSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        // Grouped by aggregate, each group in arrival order: a busy instance's samples of one
        // flush cost one read and one write of its row, not one of each per call.
        let mut groups: BTreeMap<(&str, &str), Vec<&BufferedSample>> = BTreeMap::new();
        for s in samples {
            groups
                .entry((&s.instance_id, &s.config_hash))
                .or_default()
                .push(s);
        }
        self.db.write(|tx| {
            for ((instance_id, config_hash), group) in &groups {
                // The latest name, as folding them one by one left it.
                let name = group.last().map_or("", |s| s.capability_name.as_str());
                fold_into(
                    tx,
                    instance_id,
                    name,
                    config_hash,
                    group.iter().map(|s| &s.sample),
                )?;
            }
            Ok(())
        })
    }

    /// The aggregate of (`instance_id`, `config_hash`): `None` means no profile yet (the
    /// queue runs such a job alone: its first run is its measurement).
    pub fn get_record(
        &self,
        instance_id: &str,
        config_hash: &str,
    ) -> Result<Option<EmpiricalRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM empirical_resources WHERE instance_id = ?1 AND config_hash = ?2"
        );
        self.db.with(|conn| {
            conn.prepare_cached(&sql)?
                .query_row([instance_id, config_hash], row_to_record)
                .optional()
        })
    }

    /// Every aggregate, or those of `capability_name`.
    pub fn list_records(&self, capability_name: Option<&str>) -> Result<Vec<EmpiricalRecord>> {
        self.db.with(|conn| match capability_name {
            Some(name) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM empirical_resources WHERE capability_name = ?1 ORDER BY instance_id, config_hash"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([name], row_to_record)?;
                rows.collect()
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM empirical_resources ORDER BY instance_id, config_hash");
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([], row_to_record)?;
                rows.collect()
            }
        })
    }

    /// Removes an aggregate; whether there was one.
    pub fn delete_record(&self, instance_id: &str, config_hash: &str) -> Result<bool> {
        let n = self.db.with(|conn| {
            conn.prepare_cached(
                "DELETE FROM empirical_resources WHERE instance_id = ?1 AND config_hash = ?2",
            )?
            .execute([instance_id, config_hash])
        })?;
        Ok(n > 0)
    }
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<EmpiricalRecord> {
    let usage: String = row.get(13)?;
    let api_usage_totals = if usage.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&usage).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                13,
                rusqlite::types::Type::Text,
                Box::new(Error::Json {
                    what: "empirical api_usage_totals".to_owned(),
                    source: e,
                }),
            )
        })?
    };
    Ok(EmpiricalRecord {
        instance_id: row.get(0)?,
        capability_name: row.get(1)?,
        config_hash: row.get(2)?,
        sample_count: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        success_count: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        cpu_percent_mean: row.get(5)?,
        memory_mb_peak_max: row.get(6)?,
        memory_mb_peak_mean: row.get(7)?,
        gpu_memory_mb_peak_max: row.get(8)?,
        gpu_memory_mb_peak_mean: row.get(9)?,
        duration_seconds_mean: row.get(10)?,
        duration_seconds_m2: row.get(11)?,
        last_observed: row.get(12)?,
        api_usage_totals,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sample(cpu: f64, mem: f64, gpu: f64, dur: f64, ok: bool) -> ResourceSample {
        ResourceSample::new(cpu, mem, gpu, dur, ok)
    }

    #[test]
    fn aggregates_are_welford_means_max_peaks_and_usage_sums() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmpiricalStore::open(&dir.path().join("empirical_resources.db")).unwrap();
        assert_eq!(store.get_record("w", "h").unwrap(), None);
        let durations = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        for (i, d) in durations.iter().enumerate() {
            let mut s = sample(
                10.0 * (i as f64 + 1.0),
                100.0 + i as f64,
                if i == 3 { 900.0 } else { 50.0 },
                *d,
                i % 4 != 0,
            );
            s.api_usage.insert("tokens".into(), 100.0);
            if i == 0 {
                s.api_usage.insert("credits".into(), 0.5);
            }
            store
                .record_sample("whisper#1", "whisper", "h", &s)
                .unwrap();
        }
        let r = store.get_record("whisper#1", "h").unwrap().unwrap();
        assert_eq!((r.sample_count, r.success_count), (8, 6));
        assert_eq!(r.success_rate(), 0.75);
        assert!((r.cpu_percent_mean - 45.0).abs() < 1e-9);
        assert!((r.duration_seconds_mean - 5.0).abs() < 1e-9);
        // Population variance 4 over 8 samples: sample variance 32 / 7.
        assert!((r.duration_variance().unwrap() - 32.0 / 7.0).abs() < 1e-9);
        assert_eq!(r.memory_mb_peak_max, 107.0);
        assert!((r.memory_mb_peak_mean - 103.5).abs() < 1e-9);
        assert_eq!(r.gpu_memory_mb_peak_max, 900.0);
        assert_eq!(
            r.api_usage_totals,
            BTreeMap::from([("credits".into(), 0.5), ("tokens".into(), 800.0)])
        );
        store
            .record_sample(
                "whisper#1",
                "whisper",
                "other",
                &sample(1.0, 1.0, 0.0, 1.0, true),
            )
            .unwrap();
        store
            .record_sample("llm", "llm", "h", &sample(1.0, 1.0, 0.0, 1.0, true))
            .unwrap();
        assert_eq!(store.list_records(Some("whisper")).unwrap().len(), 2);
        assert_eq!(store.list_records(None).unwrap().len(), 3);
        assert!(store.delete_record("llm", "h").unwrap());
        assert!(!store.delete_record("llm", "h").unwrap());
    }

    #[test]
    fn a_batch_folds_as_its_samples_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let one = EmpiricalStore::open(&dir.path().join("one.db")).unwrap();
        let batch = EmpiricalStore::open(&dir.path().join("batch.db")).unwrap();
        // Two aggregates, their samples interleaved, one of them already on disk.
        let keys = [
            ("a", "h1"),
            ("b", "h2"),
            ("a", "h1"),
            ("a", "h1"),
            ("b", "h2"),
        ];
        let samples: Vec<BufferedSample> = keys
            .iter()
            .enumerate()
            .map(|(i, (id, hash))| {
                let f = i as f64;
                let mut s = sample(10.0 + f, 100.0 * f, f, 0.5 + f * f, i != 2);
                s.api_usage.insert("tokens".into(), f);
                BufferedSample {
                    instance_id: (*id).into(),
                    capability_name: format!("cap-{id}"),
                    config_hash: (*hash).into(),
                    sample: s,
                }
            })
            .collect();
        let first = sample(3.0, 7.0, 0.0, 2.0, true);
        for store in [&one, &batch] {
            store.record_sample("a", "cap-a", "h1", &first).unwrap();
        }
        for s in &samples {
            one.record_sample(
                &s.instance_id,
                &s.capability_name,
                &s.config_hash,
                &s.sample,
            )
            .unwrap();
        }
        batch.record_samples(&samples).unwrap();
        let strip = |mut records: Vec<EmpiricalRecord>| {
            for r in &mut records {
                r.last_observed = String::new();
            }
            records
        };
        let (by_one, by_batch) = (
            strip(one.list_records(None).unwrap()),
            strip(batch.list_records(None).unwrap()),
        );
        assert_eq!(by_one.len(), 2);
        assert_eq!(by_one, by_batch);
        assert_eq!(by_batch[0].sample_count, 4);
    }

    #[test]
    fn concurrent_writers_lose_no_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::new(EmpiricalStore::open(&path).unwrap());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store
                            .record_sample("i", "c", "h", &sample(1.0, 1.0, 0.0, 1.0, true))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let store = EmpiricalStore::open(&path).unwrap();
        assert_eq!(
            store.get_record("i", "h").unwrap().unwrap().sample_count,
            200
        );
    }

    #[test]
    fn a_python_table_is_adopted_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO empirical_resources (instance_id, capability_name, config_hash, sample_count, success_count, \
                 cpu_percent_mean, duration_seconds_mean, last_observed, api_usage_totals) \
                 VALUES ('i', 'c', 'h', 2, 2, 50.0, 3.0, '2026-01-01T00:00:00+00:00', '{\"tokens\": 7.0}')",
                [],
            )
            .unwrap();
        }
        let store = EmpiricalStore::open(&path).unwrap();
        let r = store.get_record("i", "h").unwrap().unwrap();
        assert_eq!(
            (
                r.sample_count,
                r.duration_seconds_m2,
                r.api_usage_totals["tokens"]
            ),
            (2, 0.0, 7.0)
        );
        let r = store
            .record_sample("i", "c", "h", &sample(50.0, 1.0, 0.0, 6.0, true))
            .unwrap();
        assert_eq!(r.sample_count, 3);
        assert!((r.duration_seconds_mean - 4.0).abs() < 1e-9);
    }
}
