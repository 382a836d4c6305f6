//! `GET /stats`: CPU and resident memory of the worker and every process below it (a
//! capability may run a server of its own), measured with `sysinfo` as the Python worker
//! measures with psutil, and the I/O counters a task account carries.
//!
//! CPU percent is a delta since the previous sample, summed over the subtree, 100 = one core,
//! each process rounded to one decimal as psutil does. The worker's own baseline is primed
//! when serving starts ([`StatsProbe::prime`]); a child is primed the first time it is seen
//! (0.0 that sample). The process table is only read on demand, so an idle worker holds none.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::{Map, Value};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::error::{Error, Result};

/// One measurement of the worker's process subtree.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    /// The worker's pid.
    pub pid: u32,
    /// CPU use since the previous sample, summed over the subtree (100 = one core).
    pub cpu_percent: f64,
    /// Resident memory of the subtree, in MiB.
    pub memory_rss_mb: f64,
    /// The worker's pid, then its descendants' (breadth first).
    pub subtree_pids: Vec<u32>,
}

/// Samples the worker's subtree, keeping the previous sample for CPU deltas.
#[derive(Debug, Default)]
pub struct StatsProbe {
    system: Mutex<Option<System>>,
}

impl StatsProbe {
    /// A probe that has read nothing yet.
    pub fn new() -> Self {
        StatsProbe::default()
    }

    /// Records the worker's CPU baseline, so the first sample has a delta to report.
    pub fn prime(&self) -> Result<()> {
        let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
        let system = system(&mut guard)?;
        let me = Pid::from_u32(std::process::id());
        system.refresh_processes_specifics(ProcessesToUpdate::Some(&[me]), true, kind());
        Ok(())
    }

    /// Measures the subtree now. Blocks for a few milliseconds (it reads `/proc`): call it
    /// off the async runtime.
    pub fn sample(&self) -> Result<ProcessSample> {
        let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
        let system = system(&mut guard)?;
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind());
        let me = Pid::from_u32(std::process::id());
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, process) in system.processes() {
            if let Some(parent) = process.parent()
                && process.thread_kind().is_none()
            {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let mut subtree = vec![me];
        let mut next = 0;
        while next < subtree.len() {
            if let Some(kids) = children.get_mut(&subtree[next]) {
                kids.sort_unstable();
                subtree.extend(kids.iter().copied());
            }
            next += 1;
        }
        let (mut cpu, mut rss) = (0.0f64, 0u64);
        for pid in &subtree {
            if let Some(process) = system.process(*pid) {
                cpu += (f64::from(process.cpu_usage()) * 10.0).round() / 10.0;
                rss += process.memory();
            }
        }
        Ok(ProcessSample {
            pid: me.as_u32(),
            cpu_percent: cpu,
            memory_rss_mb: rss as f64 / 1024.0 / 1024.0,
            subtree_pids: subtree.iter().map(|p| p.as_u32()).collect(),
        })
    }
}

fn kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_cpu().with_memory()
}

fn system(slot: &mut Option<System>) -> Result<&mut System> {
    if slot.is_none() {
        *slot = Some(System::new().map_err(|e| Error::Stats(e.to_string()))?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::Stats("no process table".into()))
}

/// The counters of `/proc/self/io` the Python worker reports per task (`read_bytes`,
/// `write_bytes`, `cancelled_write_bytes`, `rchar`, `wchar`); `None` where unreadable.
pub fn proc_io() -> Option<Vec<(&'static str, i64)>> {
    const KEYS: [&str; 5] = [
        "read_bytes",
        "write_bytes",
        "cancelled_write_bytes",
        "rchar",
        "wchar",
    ];
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let mut values: HashMap<&str, i64> = HashMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':')
            && let Ok(n) = value.trim().parse()
        {
            values.insert(key.trim(), n);
        }
    }
    let out: Vec<(&'static str, i64)> = KEYS
        .iter()
        .filter_map(|k| values.get(k).map(|v| (*k, *v)))
        .collect();
    (!out.is_empty()).then_some(out)
}

/// `after - before` per counter, as the JSON object a task account carries.
pub fn io_delta(before: &[(&'static str, i64)], after: &[(&'static str, i64)]) -> Value {
    let mut out = Map::new();
    for (key, value) in after {
        let base = before.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v);
        out.insert((*key).to_owned(), Value::from(value - base));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subtree_includes_children() {
        let probe = StatsProbe::new();
        probe.prime().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let sample = probe.sample().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(sample.pid, std::process::id());
        assert_eq!(sample.subtree_pids[0], std::process::id());
        assert!(sample.subtree_pids.contains(&child.id()), "{sample:?}");
        assert!(sample.memory_rss_mb > 1.0, "{sample:?}");
        assert!(sample.cpu_percent >= 0.0);
    }

    #[test]
    fn io_deltas() {
        let before = [("rchar", 10), ("wchar", 5)];
        let after = [("rchar", 25), ("wchar", 5)];
        assert_eq!(
            io_delta(&before, &after),
            serde_json::json!({"rchar": 15, "wchar": 0})
        );
    }
}
