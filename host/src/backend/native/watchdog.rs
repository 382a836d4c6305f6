//! Nothing a worker started outlives the host.
//!
//! A worker runs in its own process group with `PR_SET_PDEATHSIG`, so the worker itself dies
//! with the host and [`Process::terminate`](super::process::Process) kills its group. A
//! descendant that leaves the group (`setsid`, a daemonising model server) escapes both. Two
//! things catch it:
//!
//! - every worker is started with `CJM_HOST_WATCH=<token>` (one token per host process) and
//!   `CJM_WORKER_SESSION_ID` in its environment, which its descendants inherit. Stopping a
//!   worker kills every process of this user whose environment carries its session
//!   ([`kill_session`]);
//! - one watchdog process per host (`sh`, started with the first worker, in its own process
//!   group) holds the read end of a pipe whose write end only the host holds. When the host
//!   dies however it dies (`kill -9` included), the pipe closes and the watchdog kills every
//!   process carrying the host's token, then exits.
//!
//! The environment is the mark because it is inherited across `setsid`, `fork` and `exec`
//! without cooperation, and readable in `/proc` for one's own processes. A descendant that
//! `exec`s with a scrubbed environment is not found (a cgroup per worker would find it; this
//! machine's cgroup v2 hierarchy is not delegated to users, so that stays future work).

use parking_lot::Mutex;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The environment variable that marks a host's workers and their descendants.
pub(crate) const HOST_WATCH_ENV: &str = "CJM_HOST_WATCH";

/// The environment variable that marks one worker's session.
pub(crate) const SESSION_ENV: &str = "CJM_WORKER_SESSION_ID";

/// The watchdog: kills every process marked with the token once its stdin closes.
const SCRIPT: &str = r#"
mark="CJM_HOST_WATCH=$1"
while IFS= read -r _; do :; done
for round in 1 2 3 4 5; do
  pids=$(grep -lzxF -- "$mark" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
  [ -z "$pids" ] && exit 0
  kill -9 $pids 2>/dev/null
  sleep 0.05
done
"#;

struct Watchdog {
    token: String,
    /// The write end of the watchdog's stdin: closed only when the process exits.
    _pipe: Option<std::process::ChildStdin>,
}

fn watchdog() -> &'static Mutex<Watchdog> {
    static WATCHDOG: OnceLock<Mutex<Watchdog>> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let pipe = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("cjm-watchdog")
            .arg(&token)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A Ctrl-C at the host's terminal must not take the watchdog with the host.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot start the worker watchdog (sh): descendants that leave their worker's process group may outlive a killed host");
            })
            .ok()
            .and_then(|mut child| child.stdin.take());
        Mutex::new(Watchdog { token, _pipe: pipe })
    })
}

/// The environment marking a worker started now: the host's watch token, and the
/// watchdog running.
pub(crate) fn mark() -> (&'static str, String) {
    let w = watchdog().lock();
    (HOST_WATCH_ENV, w.token.clone())
}

/// SIGKILLs every process of this user whose environment carries `CJM_WORKER_SESSION_ID` =
/// `session` (the worker's descendants, wherever they moved); returns how many.
pub(crate) fn kill_session(session: &str) -> usize {
    let needle = format!("{SESSION_ENV}={session}");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let mut environ = Vec::new();
        let readable = std::fs::File::open(entry.path().join("environ"))
            .and_then(|mut f| f.read_to_end(&mut environ));
        if readable.is_err() {
            continue;
        }
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let target = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}
