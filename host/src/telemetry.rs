//! Resource telemetry: what this machine has and what a worker's process subtree uses.
//!
//! - System CPU and RAM, and per-process-subtree CPU, RSS and pid list, read with `sysinfo`
//!   ([`system`]).
//! - GPU totals, free memory, utilisation and per-pid GPU memory, read with NVML
//!   ([`gpu`]). NVML is optional at run time: `libnvidia-ml` is loaded once, on first use,
//!   and when it is missing (or finds no GPU) telemetry reports
//!   [`GpuStatus::Unavailable`] with the reason; nothing fails.
//! - The [`platform()`] string of the manifest platform filter (`linux-x64`, `darwin-arm64`,
//!   `win-x64`, cjm-substrate's `get_current_platform`).
//!
//! [`Telemetry`] is a cheap handle (an `Arc` inside): clone it into the manager, the queue
//! and the server. Every reading refreshes only what it reports — [`Telemetry::snapshot`] the
//! RAM and the global CPU counters, [`Telemetry::process_tree`] the process table's parent
//! links, CPU times and (for the subtree only) memory, [`Telemetry::gpu_memory_of`] the NVML
//! process lists. Readings block for a few milliseconds (they read `/proc` and call the
//! driver): from async code, call them on a blocking thread.
//!
//! CPU percentages are deltas between two readings, so the first reading of anything has no
//! real CPU figure: see [`SystemStats::cpu_percent`] and [`ProcessTreeStats::cpu_percent`].
//!
//! The snapshot types serialize with serde (they go into journal events and `/stats`); their
//! field names follow cjm-substrate's (`memory_available_mb`, `memory_rss_mb`,
//! `subtree_pids`, `gpu_memory_mb`), and sizes are in MiB as there.

pub mod gpu;
pub mod system;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

pub use gpu::{GpuAttribution, GpuDevice, GpuProcess, GpuStatus};
pub use system::{ProcessTreeStats, SystemStats};

/// The machine's resources, read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The platform string ([`platform()`]).
    pub platform: String,
    /// CPU and RAM; `None` only where `sysinfo` cannot read this operating system.
    pub system: Option<SystemStats>,
    /// The GPUs, or why there are none to report.
    pub gpu: GpuStatus,
}

impl Snapshot {
    /// RAM available for new work, in MiB (cjm-substrate's `memory_available_mb`).
    pub fn memory_available_mb(&self) -> Option<f64> {
        self.system.as_ref().map(|s| s.memory_available_mb)
    }

    /// GPU memory of all GPUs together, in MiB (`gpu_total_memory_mb`); `None` without GPU
    /// telemetry.
    pub fn gpu_total_memory_mb(&self) -> Option<f64> {
        self.gpu.total_memory_mb()
    }

    /// Free GPU memory of all GPUs together, in MiB (`gpu_free_memory_mb`); `None` without
    /// GPU telemetry.
    pub fn gpu_free_memory_mb(&self) -> Option<f64> {
        self.gpu.free_memory_mb()
    }
}

/// The telemetry source of one host: a cheap, thread-safe handle (clones share one state).
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    system: system::SystemProbe,
    processes: system::ProcessProbe,
}

impl Telemetry {
    /// A telemetry source. Primes the global CPU counters, so a [`Telemetry::snapshot`] taken
    /// a moment later already has a CPU figure. NVML is not touched until a GPU reading is
    /// asked for.
    pub fn new() -> Self {
        Telemetry {
            inner: Arc::new(Inner {
                system: system::SystemProbe::new(),
                processes: system::ProcessProbe::new(),
            }),
        }
    }

    /// CPU, RAM and GPUs now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            platform: platform().to_owned(),
            system: self.inner.system.sample(),
            gpu: gpu::status(),
        }
    }

    /// CPU and RAM now, without touching the GPUs.
    pub fn system(&self) -> Option<SystemStats> {
        self.inner.system.sample()
    }

    /// The GPUs now, or why there are none to report.
    pub fn gpu_status(&self) -> GpuStatus {
        gpu::status()
    }

    /// CPU, resident memory and pids of `pid` and all its descendants; `None` when `pid` is
    /// not running (or the process table cannot be read here).
    pub fn process_tree(&self, pid: u32) -> Option<ProcessTreeStats> {
        self.inner.processes.tree(pid)
    }

    /// GPU memory held by the given processes, summed over every GPU (the worker's subtree:
    /// pass [`ProcessTreeStats::subtree_pids`]). `None` when GPU telemetry is unavailable
    /// ([`Telemetry::gpu_status`] says why); `gpu_memory_mb == 0.0` when it works and none
    /// of the pids holds GPU memory.
    pub fn gpu_memory_of(&self, pids: &[u32]) -> Option<GpuAttribution> {
        gpu::attribute(pids)
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The platform string of this build, in the manifest platform-filter spelling of
/// cjm-substrate: `{os}-{arch}` with `darwin` for macOS, `win` for Windows, `x64` for
/// x86-64 and `arm64` for AArch64 (`linux-x64`, `linux-arm64`, `darwin-arm64`, `win-x64`).
pub fn platform() -> &'static str {
    static PLATFORM: OnceLock<String> = OnceLock::new();
    PLATFORM.get_or_init(|| platform_for(std::env::consts::OS, std::env::consts::ARCH))
}

/// The platform string for a Rust `target_os` and `target_arch`; other names pass through
/// unchanged, as in cjm-substrate.
pub fn platform_for(os: &str, arch: &str) -> String {
    let os = match os {
        "macos" => "darwin",
        "windows" => "win",
        other => other,
    };
    let arch = match arch {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{os}-{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_strings_use_the_substrate_spelling() {
        assert_eq!(platform_for("linux", "x86_64"), "linux-x64");
        assert_eq!(platform_for("linux", "aarch64"), "linux-arm64");
        assert_eq!(platform_for("macos", "aarch64"), "darwin-arm64");
        assert_eq!(platform_for("macos", "x86_64"), "darwin-x64");
        assert_eq!(platform_for("windows", "x86_64"), "win-x64");
        assert_eq!(platform_for("freebsd", "riscv64"), "freebsd-riscv64");
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn this_machine_is_linux_x64() {
        assert_eq!(platform(), "linux-x64");
    }

    #[test]
    fn a_snapshot_of_this_machine_has_ram_and_serializes() {
        let telemetry = Telemetry::new();
        let snapshot = telemetry.snapshot();
        assert_eq!(snapshot.platform, platform());
        let system = snapshot.system.clone().expect("sysinfo reads this machine");
        assert!(system.memory_total_mb > 0.0, "{system:?}");
        assert!(system.memory_available_mb > 0.0, "{system:?}");
        assert!(
            system.memory_available_mb <= system.memory_total_mb,
            "{system:?}"
        );
        assert!(system.memory_used_mb > 0.0, "{system:?}");
        assert!(
            system.memory_used_mb <= system.memory_total_mb,
            "{system:?}"
        );
        assert!(system.cpu_count > 0, "{system:?}");
        assert!((0.0..=100.0).contains(&system.cpu_percent), "{system:?}");
        assert_eq!(
            snapshot.memory_available_mb(),
            Some(system.memory_available_mb)
        );

        // No NVIDIA library on a machine without GPUs: said, not failed.
        if let GpuStatus::Unavailable { reason } = &snapshot.gpu {
            assert!(!reason.is_empty());
            assert_eq!(snapshot.gpu_free_memory_mb(), None);
            assert_eq!(telemetry.gpu_memory_of(&[std::process::id()]), None);
        }

        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["platform"], platform());
        assert!(json["system"]["memory_total_mb"].as_f64().unwrap() > 0.0);
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snapshot);
    }

    #[test]
    fn clones_share_one_state() {
        let telemetry = Telemetry::new();
        let clone = telemetry.clone();
        assert!(Arc::ptr_eq(&telemetry.inner, &clone.inner));
    }
}
