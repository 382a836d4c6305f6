//! System CPU and RAM, and the CPU, RSS and pids of a process subtree, read with `sysinfo`.
//!
//! Two persistent `sysinfo::System`s, each behind its own mutex: one for the global figures,
//! one for the process table. They are kept apart because a process refresh also advances
//! the global CPU counters, which would shorten the window of the next system CPU figure.
//!
//! Process CPU percent is computed here from each process's accumulated CPU time and the
//! wall-clock time between two readings, rather than taken from `sysinfo`, so that it does
//! not depend on how recently anything else refreshed the global counters. A window is at
//! least [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] long: a reading sooner than that after the
//! previous one reports the previous window's figure again and keeps its baseline, so rapid
//! samples (one after every call) do not turn tick granularity into noise.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sysinfo::{
    CpuRefreshKind, MINIMUM_CPU_UPDATE_INTERVAL, MemoryRefreshKind, Pid, ProcessRefreshKind,
    ProcessesToUpdate, System,
};

const MIB: f64 = 1024.0 * 1024.0;

/// CPU and RAM of the whole machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemStats {
    /// Logical CPUs.
    pub cpu_count: usize,
    /// CPU use of all CPUs together since the previous reading (0–100). The first window
    /// starts when the [`Telemetry`](super::Telemetry) is created; readings closer together
    /// than [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] repeat the previous figure.
    pub cpu_percent: f64,
    /// Installed RAM, in MiB.
    pub memory_total_mb: f64,
    /// RAM available for new work without swapping (the kernel's `MemAvailable`), in MiB.
    pub memory_available_mb: f64,
    /// RAM in use, in MiB.
    pub memory_used_mb: f64,
}

/// CPU, resident memory and pids of a process and all its descendants (the fields of a
/// worker's `/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessTreeStats {
    /// The root of the subtree.
    pub pid: u32,
    /// CPU use of the subtree, summed over its processes (100 = one core), over the window
    /// since the previous reading of each process. A process seen for the first time has no
    /// window yet and counts 0.0: the first reading of a subtree reports 0.0.
    pub cpu_percent: f64,
    /// Resident memory of the subtree, in MiB.
    pub memory_rss_mb: f64,
    /// The root, then its descendants, breadth first (children in pid order).
    pub subtree_pids: Vec<u32>,
}

fn new_system() -> Option<System> {
    match System::new() {
        Ok(system) => Some(system),
        Err(e) => {
            tracing::warn!(error = %e, "system telemetry unavailable on this platform");
            None
        }
    }
}

/// The global CPU and RAM figures.
#[derive(Debug)]
pub(super) struct SystemProbe {
    system: Mutex<Option<System>>,
}

impl SystemProbe {
    /// A probe whose first CPU window starts now.
    pub(super) fn new() -> Self {
        let mut system = new_system();
        if let Some(system) = &mut system {
            system.refresh_cpu_usage();
        }
        SystemProbe {
            system: Mutex::new(system),
        }
    }

    /// Refreshes RAM and the global CPU counters (nothing else) and reads them.
    pub(super) fn sample(&self) -> Option<SystemStats> {
        let mut guard = self.system.lock();
        let system = guard.as_mut()?;
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        Some(SystemStats {
            cpu_count: system.cpus().len(),
            cpu_percent: f64::from(system.global_cpu_usage()).clamp(0.0, 100.0),
            memory_total_mb: system.total_memory() as f64 / MIB,
            memory_available_mb: system.available_memory() as f64 / MIB,
            memory_used_mb: system.used_memory() as f64 / MIB,
        })
    }
}

/// Where a process's current CPU window started.
#[derive(Debug, Clone, Copy)]
struct CpuWindow {
    /// Start time of the process (seconds since the epoch), to tell a reused pid apart.
    start_time: u64,
    /// Accumulated CPU time at the start of the window, in milliseconds.
    cpu_ms: u64,
    /// When the window started.
    at: Instant,
    /// The figure of the last completed window (0.0 before the first).
    percent: f64,
}

#[derive(Debug)]
struct ProcessState {
    system: System,
    windows: HashMap<Pid, CpuWindow>,
}

/// The process table and the CPU windows of the processes read so far.
#[derive(Debug)]
pub(super) struct ProcessProbe {
    state: Mutex<Option<ProcessState>>,
}

impl ProcessProbe {
    pub(super) fn new() -> Self {
        ProcessProbe {
            state: Mutex::new(new_system().map(|system| ProcessState {
                system,
                windows: HashMap::new(),
            })),
        }
    }

    /// Reads the subtree rooted at `pid`.
    ///
    /// Two scoped refreshes: every process's parent link and CPU time (one `stat` read each,
    /// no threads), to find the descendants; then memory for the subtree only.
    pub(super) fn tree(&self, pid: u32) -> Option<ProcessTreeStats> {
        let mut guard = self.state.lock();
        let state = guard.as_mut()?;
        let root = Pid::from_u32(pid);
        state.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().without_tasks().with_cpu(),
        );
        state.system.process(root)?;
        let subtree = descendants(&state.system, root);
        state.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&subtree),
            false,
            ProcessRefreshKind::nothing().without_tasks().with_memory(),
        );

        let now = Instant::now();
        let (mut cpu, mut rss) = (0.0f64, 0u64);
        for pid in &subtree {
            if let Some(process) = state.system.process(*pid) {
                rss += process.memory();
                cpu += cpu_percent(
                    &mut state.windows,
                    *pid,
                    process.start_time(),
                    process.accumulated_cpu_time(),
                    now,
                );
            }
        }
        // Forget the windows of processes that are gone, so the map stays the size of the
        // subtrees being watched.
        let alive: &HashMap<Pid, sysinfo::Process> = state.system.processes();
        state.windows.retain(|pid, _| alive.contains_key(pid));

        Some(ProcessTreeStats {
            pid,
            cpu_percent: cpu,
            memory_rss_mb: rss as f64 / MIB,
            subtree_pids: subtree.iter().map(|p| p.as_u32()).collect(),
        })
    }
}

/// `root`, then its descendants breadth first (children in pid order). Threads are not
/// processes here (the refresh leaves them out; the filter keeps it so on any platform).
fn descendants(system: &System, root: Pid) -> Vec<Pid> {
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, process) in system.processes() {
        if let Some(parent) = process.parent()
            && process.thread_kind().is_none()
        {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut seen: HashSet<Pid> = HashSet::from([root]);
    let mut subtree = vec![root];
    let mut next = 0;
    while let Some(&pid) = subtree.get(next) {
        if let Some(kids) = children.get_mut(&pid) {
            kids.sort_unstable();
            // `seen` guards against a parent cycle from pid reuse between two /proc reads.
            subtree.extend(kids.iter().copied().filter(|kid| seen.insert(*kid)));
        }
        next += 1;
    }
    subtree
}

/// The CPU percent of one process (100 = one core) over its current window, closing the
/// window when it is long enough.
fn cpu_percent(
    windows: &mut HashMap<Pid, CpuWindow>,
    pid: Pid,
    start_time: u64,
    cpu_ms: u64,
    now: Instant,
) -> f64 {
    let fresh = CpuWindow {
        start_time,
        cpu_ms,
        at: now,
        percent: 0.0,
    };
    let Some(window) = windows.get_mut(&pid).filter(|w| w.start_time == start_time) else {
        windows.insert(pid, fresh);
        return 0.0;
    };
    let elapsed = now.duration_since(window.at);
    if elapsed >= MINIMUM_CPU_UPDATE_INTERVAL {
        let used = cpu_ms.saturating_sub(window.cpu_ms) as f64;
        let percent = used / (elapsed.as_secs_f64() * 1000.0) * 100.0;
        *window = CpuWindow { percent, ..fresh };
    }
    window.percent
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::Duration;

    /// A child in its own process group, killed with all its descendants on drop.
    struct Group(Child);

    impl Drop for Group {
        fn drop(&mut self) {
            let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }

    fn spawn_group(script: &str) -> Group {
        Group(
            Command::new("sh")
                .args(["-c", script])
                .process_group(0)
                .spawn()
                .unwrap(),
        )
    }

    fn vm_rss_mb(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb / 1024.0
    }

    fn parent_of(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn the_tree_of_a_child_includes_its_grandchild_and_sums_rss() {
        let probe = ProcessProbe::new();
        let child = spawn_group("sleep 5 & sleep 5");
        let root = child.0.id();

        // The shell forks its background job right after it starts: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let tree = loop {
            let tree = probe.tree(root).expect("the child is running");
            if tree.subtree_pids.len() >= 2 || Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(Duration::from_millis(20));
        };

        assert_eq!(tree.pid, root);
        assert_eq!(tree.subtree_pids[0], root);
        let grandchildren: Vec<u32> = tree.subtree_pids[1..].to_vec();
        assert!(!grandchildren.is_empty(), "{tree:?}");
        for pid in &grandchildren {
            assert_eq!(parent_of(*pid), root, "{tree:?}");
        }
        let expected: f64 = tree.subtree_pids.iter().map(|p| vm_rss_mb(*p)).sum();
        assert!(expected > 0.0);
        assert!(
            (tree.memory_rss_mb - expected).abs() < 0.5,
            "rss {} vs /proc {expected}: {tree:?}",
            tree.memory_rss_mb
        );
        assert!(tree.memory_rss_mb > vm_rss_mb(root), "{tree:?}");
        assert!(tree.cpu_percent >= 0.0);

        // From this test process, the shell's children are grandchildren: two levels down.
        let mine = probe.tree(std::process::id()).unwrap();
        let at = |pid: u32| mine.subtree_pids.iter().position(|p| *p == pid);
        assert!(at(root).is_some(), "{mine:?}");
        for pid in &grandchildren {
            assert!(at(*pid) > at(root), "{mine:?}");
        }
        assert!(mine.memory_rss_mb > tree.memory_rss_mb, "{mine:?}");
    }

    #[test]
    fn a_pid_that_is_not_running_has_no_tree() {
        let probe = ProcessProbe::new();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(probe.tree(pid), None);
    }

    #[test]
    fn a_busy_process_shows_cpu_after_its_first_window() {
        let probe = ProcessProbe::new();
        let child = spawn_group("while :; do :; done");
        let root = child.0.id();
        let first = probe.tree(root).unwrap();
        assert_eq!(first.cpu_percent, 0.0, "no window yet: {first:?}");
        std::thread::sleep(MINIMUM_CPU_UPDATE_INTERVAL + Duration::from_millis(300));
        let second = probe.tree(root).unwrap();
        // A spinning shell uses about one core; a loaded machine may give it less.
        assert!(second.cpu_percent > 5.0, "{second:?}");
        // Read again at once: too short a window, the previous figure is repeated.
        let third = probe.tree(root).unwrap();
        assert_eq!(third.cpu_percent, second.cpu_percent, "{third:?}");
    }

    #[test]
    fn cpu_windows_restart_for_a_reused_pid() {
        let mut windows = HashMap::new();
        let pid = Pid::from_u32(42);
        let t0 = Instant::now();
        assert_eq!(cpu_percent(&mut windows, pid, 100, 1_000, t0), 0.0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(cpu_percent(&mut windows, pid, 100, 1_500, t1), 50.0);
        // Same pid, another process: no window for it yet.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(cpu_percent(&mut windows, pid, 200, 10, t2), 0.0);
    }

    #[test]
    fn the_system_probe_reads_ram() {
        let stats = SystemProbe::new().sample().unwrap();
        assert!(stats.memory_total_mb > 0.0, "{stats:?}");
        assert!(stats.memory_available_mb > 0.0, "{stats:?}");
    }
}
