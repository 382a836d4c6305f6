//! The suicide pact with the host: the worker exits when the `--ppid` process dies.
//!
//! Two mechanisms (the Python worker only polls, once a second):
//! - On Linux, when `--ppid` is the worker's actual parent, `PR_SET_PDEATHSIG` makes the
//!   kernel send SIGTERM the moment the parent goes; the worker's SIGTERM handler then shuts
//!   down gracefully. (The kernel ties this to the parent *thread* that spawned the worker:
//!   a host must spawn workers from a thread that lives as long as it does.)
//! - A poll every [`POLL_INTERVAL`] that the process still exists and is not a zombie, for
//!   every platform and for a `--ppid` that is not the direct parent.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// How often the parent is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Asks the kernel to SIGTERM this process when its parent dies, if `ppid` is that parent.
/// Returns `false` when `ppid` is already gone (the worker should not start).
pub fn arm(ppid: u32) -> Result<bool> {
    let pid = to_pid(ppid)?;
    #[cfg(target_os = "linux")]
    if nix::unistd::getppid() == pid {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
            .map_err(|source| Error::Watchdog { ppid, source })?;
        // The parent may have died before the request was made; then no signal comes.
        if nix::unistd::getppid() != pid {
            return Ok(false);
        }
    }
    Ok(is_alive(pid))
}

/// Completes when process `ppid` has died.
pub async fn parent_gone(ppid: u32) {
    let Ok(pid) = to_pid(ppid) else { return };
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !is_alive(pid) {
            return;
        }
    }
}

fn to_pid(ppid: u32) -> Result<Pid> {
    i32::try_from(ppid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or(Error::Watchdog {
            ppid,
            source: Errno::EINVAL,
        })
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: Pid) -> bool {
    match kill(pid, None) {
        // EPERM: it exists but belongs to someone else.
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (`Z`) or dead (`X`). Off Linux
/// (no procfs) nothing is a zombie.
fn is_zombie(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_self_children_and_the_dead() {
        assert!(is_alive(Pid::this()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Not reaped yet: a zombie once it exits, which counts as gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_alive(pid));
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert!(matches!(to_pid(0), Err(Error::Watchdog { .. })));
    }
}
