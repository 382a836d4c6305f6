//! NVIDIA GPUs through NVML: totals, free memory, utilisation, and the GPU memory each
//! process holds.
//!
//! `nvml-wrapper` loads `libnvidia-ml` at run time, so the host builds and runs on machines
//! without NVIDIA software. Initialisation is attempted once per process, on the first GPU
//! reading, and its outcome is kept: a machine without the library (or whose driver is not
//! loaded) reports [`GpuStatus::Unavailable`] with NVML's reason from then on, at no further
//! cost. A later failure of a single reading (a GPU that fell off the bus) is reported the
//! same way for that reading only.
//!
//! Per-process figures carry the pids NVML sees, which are the host's: inside a container
//! without the host's pid namespace they match no local pid, and attribution sums to 0.0.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use serde::{Deserialize, Serialize};

const MIB: f64 = 1024.0 * 1024.0;

/// The GPUs of this machine, or why there are none to report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuStatus {
    /// NVML answered: every GPU it sees (never empty).
    Available {
        /// The NVIDIA driver version, when NVML reports it.
        driver_version: Option<String>,
        /// The GPUs, in NVML index order.
        devices: Vec<GpuDevice>,
    },
    /// No GPU telemetry: no NVIDIA library, no driver, no GPU, or NVML failed.
    Unavailable {
        /// Why, in NVML's words where it gave any.
        reason: String,
    },
}

impl GpuStatus {
    /// Whether GPU figures are available.
    pub fn is_available(&self) -> bool {
        matches!(self, GpuStatus::Available { .. })
    }

    /// The GPUs (empty when unavailable).
    pub fn devices(&self) -> &[GpuDevice] {
        match self {
            GpuStatus::Available { devices, .. } => devices,
            GpuStatus::Unavailable { .. } => &[],
        }
    }

    /// Memory of all GPUs together, in MiB; `None` when unavailable.
    pub fn total_memory_mb(&self) -> Option<f64> {
        self.is_available()
            .then(|| self.devices().iter().map(|d| d.memory_total_mb).sum())
    }

    /// Free memory of all GPUs together, in MiB; `None` when unavailable.
    pub fn free_memory_mb(&self) -> Option<f64> {
        self.is_available()
            .then(|| self.devices().iter().map(|d| d.memory_free_mb).sum())
    }
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML's index of the GPU.
    pub index: u32,
    /// The product name (`NVIDIA H100 80GB HBM3`), when NVML reports it.
    pub name: Option<String>,
    /// The GPU's UUID, when NVML reports it.
    pub uuid: Option<String>,
    /// Installed memory, in MiB.
    pub memory_total_mb: f64,
    /// Unallocated memory, in MiB.
    pub memory_free_mb: f64,
    /// Allocated memory, in MiB.
    pub memory_used_mb: f64,
    /// Percent of the last sample period during which a kernel ran; `None` where the GPU
    /// does not report it (MIG, some virtual GPUs).
    pub utilization_percent: Option<u32>,
    /// Percent of the last sample period during which device memory was read or written.
    pub memory_utilization_percent: Option<u32>,
}

/// GPU memory held by one process on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// The process (as NVML sees it: the host's pid namespace).
    pub pid: u32,
    /// The GPU's index.
    pub gpu_index: u32,
    /// GPU memory it holds, in MiB; `None` where the driver does not tell (Windows WDDM).
    pub gpu_memory_mb: Option<f64>,
}

/// GPU memory attributed to a set of processes (a worker's subtree), as cjm-substrate's
/// `attribute_gpu_to_worker_subtree` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuAttribution {
    /// GPU memory the processes hold, summed over processes and GPUs, in MiB.
    pub gpu_memory_mb: f64,
    /// The GPU of the process holding the most; `None` when none holds any.
    pub gpu_index: Option<u32>,
    /// Each process of the set that holds GPU memory, per GPU.
    pub processes: Vec<GpuProcess>,
}

/// NVML, initialised on first use, or why it could not be.
fn nvml() -> Result<&'static Nvml, &'static str> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| {
        Nvml::init().map_err(|e| {
            let reason = init_reason(&e);
            tracing::info!(%reason, "gpu telemetry unavailable");
            reason
        })
    })
    .as_ref()
    .map_err(String::as_str)
}

fn init_reason(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(e) => format!("nvidia management library not found: {e}"),
        NvmlError::DriverNotLoaded => "nvidia driver not loaded".to_owned(),
        other => format!("nvml initialisation failed: {other}"),
    }
}

/// The GPUs now.
pub(super) fn status() -> GpuStatus {
    match read_devices() {
        Ok((driver_version, devices)) => GpuStatus::Available {
            driver_version,
            devices,
        },
        Err(reason) => GpuStatus::Unavailable { reason },
    }
}

fn read_devices() -> Result<(Option<String>, Vec<GpuDevice>), String> {
    let nvml = nvml()?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("nvml device count: {e}"))?;
    if count == 0 {
        return Err("nvml reports no gpu".to_owned());
    }
    let devices = (0..count)
        .map(|index| read_device(nvml, index))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nvml.sys_driver_version().ok(), devices))
}

/// One GPU; an error names the GPU, and fails the whole reading, because admission must
/// not mistake a GPU it cannot read for one that is not there.
fn read_device(nvml: &Nvml, index: u32) -> Result<GpuDevice, String> {
    let device = nvml
        .device_by_index(index)
        .map_err(|e| format!("gpu {index}: {e}"))?;
    let memory = device
        .memory_info()
        .map_err(|e| format!("gpu {index}: memory info: {e}"))?;
    let utilization = device.utilization_rates().ok();
    Ok(GpuDevice {
        index,
        name: device.name().ok(),
        uuid: device.uuid().ok(),
        memory_total_mb: memory.total as f64 / MIB,
        memory_free_mb: memory.free as f64 / MIB,
        memory_used_mb: memory.used as f64 / MIB,
        utilization_percent: utilization.as_ref().map(|u| u.gpu),
        memory_utilization_percent: utilization.as_ref().map(|u| u.memory),
    })
}

/// Every process holding GPU memory, per GPU; `None` when GPU telemetry is unavailable.
fn processes() -> Option<Vec<GpuProcess>> {
    let nvml = nvml().ok()?;
    let count = nvml.device_count().ok()?;
    let mut out = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).ok()?;
        out.extend(device_processes(&device, index));
    }
    Some(out)
}

/// The compute and graphics processes of one GPU. A process in both lists (CUDA and
/// graphics in one process) is one allocation seen twice: keep the larger figure. A list
/// the GPU does not support is skipped.
fn device_processes(device: &Device<'_>, gpu_index: u32) -> Vec<GpuProcess> {
    let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    let lists = [
        device.running_compute_processes(),
        device.running_graphics_processes(),
    ];
    for info in lists.into_iter().flat_map(Result::unwrap_or_default) {
        let bytes = match info.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        };
        let entry = by_pid.entry(info.pid).or_insert(bytes);
        *entry = (*entry).max(bytes);
    }
    by_pid
        .into_iter()
        .map(|(pid, bytes)| GpuProcess {
            pid,
            gpu_index,
            gpu_memory_mb: bytes.map(|b| b as f64 / MIB),
        })
        .collect()
}

/// GPU memory held by `pids`; `None` when GPU telemetry is unavailable.
pub(super) fn attribute(pids: &[u32]) -> Option<GpuAttribution> {
    processes().map(|all| attribute_among(all, pids))
}

fn attribute_among(all: Vec<GpuProcess>, pids: &[u32]) -> GpuAttribution {
    let mb = |p: &GpuProcess| p.gpu_memory_mb.unwrap_or(0.0);
    let processes: Vec<GpuProcess> = all.into_iter().filter(|p| pids.contains(&p.pid)).collect();
    let gpu_memory_mb = processes.iter().filter_map(|p| p.gpu_memory_mb).sum();
    let gpu_index = processes
        .iter()
        .filter(|p| mb(p) > 0.0)
        .max_by(|a, b| mb(a).total_cmp(&mb(b)))
        .map(|p| p.gpu_index);
    GpuAttribution {
        gpu_memory_mb,
        gpu_index,
        processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True where this machine has no NVIDIA library: the tests below then check the
    /// unavailable path; on a GPU machine they check the available one.
    fn has_nvml() -> bool {
        nvml().is_ok()
    }

    #[test]
    fn without_nvml_the_status_says_why_and_nothing_fails() {
        let status = status();
        if has_nvml() {
            assert!(status.is_available(), "{status:?}");
            assert!(!status.devices().is_empty());
            assert!(status.total_memory_mb().unwrap() > 0.0);
            return;
        }
        let GpuStatus::Unavailable { reason } = &status else {
            panic!("no nvml here, yet {status:?}");
        };
        assert!(!reason.is_empty());
        if cfg!(target_os = "linux") {
            assert!(
                reason.starts_with("nvidia management library not found: ")
                    && reason.contains("libnvidia-ml.so.1"),
                "{reason}"
            );
        }
        assert_eq!(status.devices(), &[] as &[GpuDevice]);
        assert_eq!(status.total_memory_mb(), None);
        assert_eq!(status.free_memory_mb(), None);
        assert_eq!(attribute(&[std::process::id()]), None);
        // The outcome of the one initialisation is kept: asking again gives the same answer.
        assert_eq!(super::status(), status);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["status"], "unavailable");
        assert_eq!(json["reason"], reason.as_str());
    }

    #[test]
    fn attribution_sums_the_given_pids_over_gpus() {
        let all = vec![
            GpuProcess {
                pid: 10,
                gpu_index: 0,
                gpu_memory_mb: Some(100.0),
            },
            GpuProcess {
                pid: 11,
                gpu_index: 1,
                gpu_memory_mb: Some(300.0),
            },
            GpuProcess {
                pid: 12,
                gpu_index: 0,
                gpu_memory_mb: None,
            },
            GpuProcess {
                pid: 99,
                gpu_index: 0,
                gpu_memory_mb: Some(5000.0),
            },
        ];
        let got = attribute_among(all.clone(), &[10, 11, 12, 13]);
        assert_eq!(got.gpu_memory_mb, 400.0);
        assert_eq!(got.gpu_index, Some(1));
        assert_eq!(
            got.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [10, 11, 12]
        );

        let none = attribute_among(all, &[13]);
        assert_eq!(none.gpu_memory_mb, 0.0);
        assert_eq!(none.gpu_index, None);
        assert!(none.processes.is_empty());
    }

    #[test]
    fn an_available_status_serializes_with_its_devices() {
        let status = GpuStatus::Available {
            driver_version: Some("580.82.07".into()),
            devices: vec![GpuDevice {
                index: 0,
                name: Some("NVIDIA H100".into()),
                uuid: None,
                memory_total_mb: 81_559.0,
                memory_free_mb: 80_000.0,
                memory_used_mb: 1_559.0,
                utilization_percent: Some(3),
                memory_utilization_percent: None,
            }],
        };
        assert_eq!(status.total_memory_mb(), Some(81_559.0));
        assert_eq!(status.free_memory_mb(), Some(80_000.0));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["status"], "available");
        assert_eq!(json["devices"][0]["memory_free_mb"], 80_000.0);
        let back: GpuStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
