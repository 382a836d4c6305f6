//! The worker process: spawned per the contract (a listening socket bound by the host and
//! inherited as `--fd`, `--ppid`, its own process group, the env contract), its stdout and
//! stderr pumped line by line into the diagnostics store, and terminated as a group.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::backend::DiagnosticsSink;
use crate::error::{Error, Result};

/// The descriptor number the listening socket has in the child.
pub const CHILD_FD: i32 = 3;

/// How many output lines are kept for error messages.
const TAIL_LINES: usize = 40;

/// How to start one worker. `Debug` shows environment names, never values (they may be
/// secrets).
#[derive(Clone)]
pub struct WorkerSpec {
    /// The capability name (for messages and the journal).
    pub name: String,
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments, before the `--fd`/`--ppid` the host appends.
    pub args: Vec<String>,
    /// Environment variables set for the worker (manifest env vars, resolved worker env,
    /// data dirs). The worker also inherits the host's environment.
    pub env: Vec<(String, String)>,
    /// How long the worker may take to answer `GET /health`.
    pub ready_timeout: Duration,
    /// How long a worker gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How long `prefetch` may go without progress before the worker is stopped.
    pub prefetch_stall: Duration,
    /// How often a running call's progress is polled (`GET /progress`).
    pub progress_poll: Duration,
    /// How often an idle worker's `/health` is probed; one that does not answer within
    /// [`IDLE_HEALTH_TIMEOUT`](super::IDLE_HEALTH_TIMEOUT), or has exited, is replaced (the
    /// next call starts a fresh one).
    pub idle_probe: Duration,
    /// The secret values put into its environment: masked in all the host records of it.
    pub masker: crate::backend::mask::Masker,
}

impl std::fmt::Debug for WorkerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSpec")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("args", &self.args)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("ready_timeout", &self.ready_timeout)
            .finish_non_exhaustive()
    }
}

impl WorkerSpec {
    /// A worker for a native binary (`command[0]` with `command[1..]`).
    pub fn native(name: impl Into<String>, command: &[String]) -> Result<Self> {
        let name = name.into();
        let (program, args) = command.split_first().ok_or_else(|| {
            Error::job(cjm_guest::JobError::user_input(format!(
                "capability '{name}' has an empty native command"
            )))
        })?;
        Ok(Self::new(name, program.into(), args.to_vec()))
    }

    /// A Python capability served by the cjm-substrate worker of `python`.
    pub fn python(
        name: impl Into<String>,
        python: impl Into<PathBuf>,
        module: &str,
        class: &str,
        adapters: &[String],
    ) -> Self {
        let mut args = vec![
            "-m".into(),
            "cjm_substrate.core.worker".into(),
            "--module".into(),
            module.into(),
            "--class".into(),
            class.into(),
        ];
        if !adapters.is_empty() {
            args.push("--adapters".into());
            args.push(adapters.join(","));
        }
        Self::new(name.into(), python.into(), args)
    }

    fn new(name: String, program: PathBuf, args: Vec<String>) -> Self {
        WorkerSpec {
            name,
            program,
            args,
            env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(3),
            prefetch_stall: Duration::from_secs(300),
            progress_poll: Duration::from_millis(200),
            idle_probe: Duration::from_secs(5),
            masker: crate::backend::mask::Masker::default(),
        }
    }

    /// Adds the environment the worker contract promises (`CONTRACT.md`), with
    /// cjm-substrate's values: the data dirs (`CJM_DATA_DIR`, `CJM_CAPABILITY_DATA_DIR` =
    /// `<data dir>/data`, `CAPABILITY_DATA_DIR` = `<data dir>/data/<name>`, created),
    /// `CJM_MODELS_DIR` when set, `CJM_DIAGNOSTICS_DB` (Python workers write their log
    /// records into it) and `CJM_LOG_LEVEL`; and the configured prefetch stall threshold and
    /// progress poll interval.
    /// `CJM_WORKER_SESSION_ID` is set per spawn.
    pub fn with_host_env(mut self, config: &crate::config::HostConfig) -> Result<Self> {
        let own = config.capability_data_dir(&self.name);
        std::fs::create_dir_all(&own).map_err(|e| Error::io(&own, e))?;
        self = self
            .env("CJM_DATA_DIR", config.data_dir.display().to_string())
            .env("CAPABILITY_DATA_DIR", own.display().to_string())
            .env(
                "CJM_CAPABILITY_DATA_DIR",
                config.capability_data_root().display().to_string(),
            )
            .env(
                "CJM_DIAGNOSTICS_DB",
                config.diagnostics_db_path().display().to_string(),
            )
            .env("CJM_LOG_LEVEL", config.log_level.as_str());
        if let Some(models) = &config.models_dir {
            self = self.env("CJM_MODELS_DIR", models.display().to_string());
        }
        self.prefetch_stall = config.substrate.prefetch_stall_threshold;
        self.progress_poll = config.queue.progress_poll_interval;
        Ok(self)
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The last lines a worker printed, for error messages.
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines, oldest first, one per line.
    pub(crate) fn text(&self) -> String {
        let lines = self.0.lock();
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A running worker process.
pub(crate) struct Process {
    child: std::process::Child,
    pub(crate) pid: u32,
    /// Its private channel: a Unix socket in a directory only this user can enter.
    pub(crate) socket: PathBuf,
    pub(crate) session: String,
    pub(crate) tail: Tail,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    /// Spawns the worker of `spec`: binds the listening socket, starts the child in its own
    /// process group with the socket as fd 3, and pumps its output into `sink`.
    pub(crate) fn spawn(
        spec: &WorkerSpec,
        session: String,
        sink: Arc<dyn DiagnosticsSink>,
    ) -> Result<Self> {
        // The worker's private channel: no other user can reach a socket in a 0700 directory
        // (a loopback port answers any local process).
        let dir = private_dir(&session)?;
        // Removed again if the worker cannot be started (a spawned one's `Process` owns it).
        let unused = RemoveOnDrop(Some(dir.clone()));
        let socket = dir.join("w.sock");
        let listener = UnixListener::bind(&socket).map_err(|e| Error::io(&socket, e))?;
        let fd: OwnedFd = listener.into();

        let mut std_cmd = std::process::Command::new(&spec.program);
        std_cmd
            .args(&spec.args)
            .arg("--fd")
            .arg(CHILD_FD.to_string())
            .arg("--ppid")
            .arg(std::process::id().to_string())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(super::watchdog::SESSION_ENV, &session)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: termination signals the whole subtree (a model server the
            // worker started included), and a Ctrl-C at the host's terminal is the host's.
            .process_group(0);
        std_cmd
            .fd_mappings(vec![FdMapping {
                parent_fd: fd,
                child_fd: CHILD_FD,
            }])
            .map_err(|e| Error::io(&spec.program, std::io::Error::other(e.to_string())))?;
        // The kernel sends the worker SIGTERM when the host dies, however it dies: a worker
        // whose stdio pipes lost their reader cannot always report its parent's death itself
        // (the Python worker's watchdog dies on the broken pipe when it says so).
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            std_cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        // The mark that lets the watchdog find the worker's descendants if the host dies.
        let (key, token) = super::watchdog::mark();
        std_cmd.env(key, token);
        let mut child =
            spawn_from_lasting_thread(std_cmd).map_err(|e| Error::io(&spec.program, e))?;
        unused.keep();
        let pid = child.id();
        let tail = Tail::default();
        let mut pumps = Vec::new();
        let program = &spec.program;
        if let Some(out) = child.stdout.take() {
            let out =
                tokio::process::ChildStdout::from_std(out).map_err(|e| Error::io(program, e))?;
            pumps.push(pump(
                out,
                "stdout",
                session.clone(),
                Arc::clone(&sink),
                tail.clone(),
                spec.masker.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            let err =
                tokio::process::ChildStderr::from_std(err).map_err(|e| Error::io(program, e))?;
            pumps.push(pump(
                err,
                "stderr",
                session.clone(),
                sink,
                tail.clone(),
                spec.masker.clone(),
            ));
        }
        Ok(Process {
            child,
            pid,
            socket,
            session,
            tail,
            pumps,
        })
    }

    /// The exit status, if the worker has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Terminates the worker's whole process group: SIGTERM, up to `grace` for it to exit,
    /// then SIGKILL. Returns the worker's exit status.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let group = Pid::from_raw(self.pid as i32);
        if self.exited().is_none() {
            let _ = killpg(group, Signal::SIGTERM);
            let _ = self.wait_for(grace).await;
        }
        // Grandchildren may outlive the leader: the group gets a SIGKILL in any case, and so
        // does every descendant that left it.
        let _ = killpg(group, Signal::SIGKILL);
        super::watchdog::kill_session(&self.session);
        let status = self.wait_for(Duration::from_secs(5)).await;
        for p in self.pumps.drain(..) {
            // The pipes close when the group is gone; do not wait on stray holders forever.
            let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
        }
        status
    }

    /// Waits up to `limit` for the worker to exit (polling: the child is a std process).
    async fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        // A worker asked to stop is usually gone within a millisecond: look again soon,
        // then every 5 ms.
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Kills the group at once (forced cancellation).
    pub(crate) fn kill_now(&self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        super::watchdog::kill_session(&self.session);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Descendants outlive a worker that exited by itself, too.
        super::watchdog::kill_session(&self.session);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh directory for worker session `session`'s socket, mode 0700, under the temp dir
/// (`/tmp` when that path would make the socket's too long for `sun_path`), named after this
/// host process. Creating it fails if it exists: nobody can prepare it in advance. The first
/// call of a process removes the directories hosts that are gone left behind (killed before
/// their workers' directories were dropped).
fn private_dir(session: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let name = format!("{SOCKET_DIR_PREFIX}{}-{session}", std::process::id());
    let mut dir = std::env::temp_dir().join(&name);
    if dir.as_os_str().len() > 90 {
        dir = PathBuf::from("/tmp").join(&name);
    }
    static SWEPT: std::sync::Once = std::sync::Once::new();
    if let Some(parent) = dir.parent() {
        SWEPT.call_once(|| sweep_gone_hosts_dirs(parent));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// A directory removed when this value is dropped, unless [`kept`](Self::keep).
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// How a worker socket's directory is named: this prefix, the host's pid, `-`, the session.
const SOCKET_DIR_PREFIX: &str = "cjm-worker-";

/// Removes this user's worker socket directories in `parent` whose host process is gone.
fn sweep_gone_hosts_dirs(parent: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    // This process's user: the owner of its `/proc` entry (Linux; elsewhere nothing is swept).
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SOCKET_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        let gone = pid > 0
            && nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if mine && gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Spawns `cmd` from one thread that lives as long as the host. `PR_SET_PDEATHSIG` fires when
/// the *thread* that forked the child exits, not the process: forking from a short-lived
/// runtime thread would kill healthy workers when that thread is retired.
fn spawn_from_lasting_thread(cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    type Request = (
        std::process::Command,
        std::sync::mpsc::SyncSender<std::io::Result<std::process::Child>>,
    );
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let _ = std::thread::Builder::new()
            .name("cjm-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    spawner
        .lock()
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Describes how a worker ended, for errors and the journal.
pub(crate) fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!(
                "was killed by signal {sig} ({})",
                Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown")
            ),
            _ => "exited".to_owned(),
        },
        None => "is gone".to_owned(),
    }
}

/// The longest output line kept; the rest of a longer line is dropped (a progress bar
/// printed without newlines must not grow host memory).
const MAX_LINE: usize = 64 * 1024;

/// Pumps one pipe into the diagnostics store line by line (carriage-return progress frames
/// collapsed to the last, lines cut at [`MAX_LINE`], secrets masked), keeping the tail.
/// Reading continuously keeps a chatty worker from blocking on a full pipe.
fn pump(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: &'static str,
    session: String,
    sink: Arc<dyn DiagnosticsSink>,
    tail: Tail,
    masker: crate::backend::mask::Masker,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut line: Vec<u8> = Vec::new();
        // A carriage return seen: the next byte other than a newline starts a new frame.
        let mut cr = false;
        let emit = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            let text = masker.mask(&text);
            sink.chunk(&session, stream, &text);
            tail.push(text.into_owned());
        };
        loop {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            for &b in chunk {
                match b {
                    b'\n' => {
                        emit(&line);
                        line.clear();
                        cr = false;
                    }
                    b'\r' => cr = true,
                    other => {
                        if cr {
                            line.clear();
                            cr = false;
                        }
                        if line.len() < MAX_LINE {
                            line.push(other);
                        }
                    }
                }
            }
            let n = chunk.len();
            reader.consume(n);
        }
        if !line.is_empty() {
            emit(&line);
        }
    })
}
