//! Install logs and the programs an install runs: one log per entry and attempt
//! (`logs/install/<name>.log`, the earlier attempts kept as `.log.1` to `.log.4`), what
//! each program printed appended to it, and a failing program reported with its step.

use parking_lot::Mutex;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{InstallError, Result};
use crate::config::HostConfig;

/// `logs/install/`: install logs.
pub fn logs_dir(config: &HostConfig) -> PathBuf {
    config.data_dir.join("logs").join("install")
}

/// The log an install attempt of entry `name` is writing (`logs/install/<name>.log.part`):
/// what a progress display tails while it runs.
pub fn attempt_log(config: &HostConfig, name: &str) -> PathBuf {
    logs_dir(config).join(format!("{name}.log.part"))
}

/// The last line a program wrote to `log` (of its last 4 KiB; a `\r`-redrawn progress
/// bar's latest state), without control characters; empty when there is none.
pub fn last_line(log: &Path) -> String {
    use std::io::{Read as _, Seek as _};
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text
        .lines()
        .rev()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    line.chars().filter(|c| !c.is_control()).collect()
}

/// Install logs kept per entry: the last attempt and this many before it.
const EARLIER_LOGS: usize = 4;

/// Makes attempt log `part` the entry's `log`, shifting the earlier ones (`<name>.log.1`
/// is the one before).
pub(crate) fn keep_attempt(part: &Path, log: &Path) {
    let nth = |n: usize| log.with_extension(format!("log.{n}"));
    let _ = std::fs::remove_file(nth(EARLIER_LOGS));
    for n in (1..EARLIER_LOGS).rev() {
        let _ = std::fs::rename(nth(n), nth(n + 1));
    }
    let _ = std::fs::rename(log, nth(1));
    let _ = std::fs::rename(part, log);
}

/// The log of one entry: steps and program output, appended.
#[derive(Clone)]
pub(crate) struct Log {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Log {
    pub(crate) fn open(path: PathBuf, truncate: bool) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!truncate)
            .write(true)
            .truncate(truncate)
            .open(&path)
            .map_err(|e| crate::Error::io(&path, e))?;
        Ok(Log {
            path,
            file: Arc::new(Mutex::new(file)),
            warnings: Arc::default(),
        })
    }

    /// Appends one line.
    pub(crate) fn line(&self, text: &str) {
        let mut f = self.file.lock();
        let _ = writeln!(f, "{text}");
    }

    /// Appends a warning, also kept for the entry's report.
    pub(crate) fn warn(&self, text: &str) {
        self.line(&format!("warning: {text}"));
        self.warnings.lock().push(text.to_owned());
    }

    /// The warnings so far.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// A handle for a child's stdout or stderr.
    fn stdio(&self) -> Result<std::process::Stdio> {
        let f = self.file.lock();
        let clone = f.try_clone().map_err(|e| crate::Error::io(&self.path, e))?;
        Ok(clone.into())
    }

    /// The last `n` lines.
    pub(crate) fn tail(&self, n: usize) -> String {
        tail_of(&self.path, n)
    }
}

/// The last `n` lines of the file at `path` (empty when unreadable).
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A diagnostics sink that writes what a worker logs or prints during introspection into
/// the entry's log.
pub(crate) struct LogSink(pub(crate) Log);

impl crate::backend::DiagnosticsSink for LogSink {
    fn record(&self, r: crate::backend::DiagnosticRecord) {
        self.0
            .line(&format!("[{}] {}: {}", r.level, r.logger_name, r.message));
    }
    fn chunk(&self, _: &str, stream: &str, content: &str) {
        self.0.line(&format!("[{stream}] {content}"));
    }
}

/// Runs `cmd` with its output appended to `log`; a non-zero exit is an error naming `step`.
pub(crate) async fn run(log: &Log, step: &str, cmd: &mut tokio::process::Command) -> Result<()> {
    exec(log, step, cmd, false).await.map(|_| ())
}

/// Runs `cmd` and returns its stdout (stderr to `log`).
pub(crate) async fn output(
    log: &Log,
    step: &str,
    cmd: &mut tokio::process::Command,
) -> Result<String> {
    exec(log, step, cmd, true).await
}

/// Runs `cmd` logged as `step`: stderr (and stdout unless `capture`) go to `log`; returns the
/// captured stdout. A missing program, a failed start and a non-zero exit are typed errors.
async fn exec(
    log: &Log,
    step: &str,
    cmd: &mut tokio::process::Command,
    capture: bool,
) -> Result<String> {
    let shown = describe(cmd);
    log.line(&format!("$ {shown}"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(if capture {
            std::process::Stdio::piped()
        } else {
            log.stdio()?
        })
        .stderr(log.stdio()?)
        .kill_on_drop(true);
    // `spawn` + `wait_with_output`, not `output()`: tokio's `output()` sets both streams back
    // to pipes, and the tool's own words (pip's "No matching distribution", cargo's errors)
    // never reached the log.
    let out = match cmd.spawn() {
        Ok(child) => child.wait_with_output().await,
        Err(e) => Err(e),
    }
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InstallError::ToolMissing {
                tool: cmd.as_std().get_program().to_string_lossy().into_owned(),
                hint: format!("needed for {step}"),
            }
        } else {
            InstallError::InstallFailed(format!("{step}: cannot run {shown}: {e}"))
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    if capture {
        log.line(&stdout);
    }
    use std::os::unix::process::ExitStatusExt as _;
    let status = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => out.status.to_string(),
    };
    Err(InstallError::InstallCommand {
        step: step.to_owned(),
        program: shown,
        status,
    })
}

fn describe(cmd: &tokio::process::Command) -> String {
    let std = cmd.as_std();
    let mut parts = vec![std.get_program().to_string_lossy().into_owned()];
    for a in std.get_args() {
        let a = a.to_string_lossy();
        // The introspection request is one long JSON argument: keep the log readable.
        if a.len() > 200 {
            parts.push(format!("'{}...'", a.chars().take(60).collect::<String>()));
        } else if a.contains(' ') || a.is_empty() {
            parts.push(format!("'{a}'"));
        } else {
            parts.push(a.into_owned());
        }
    }
    parts.join(" ")
}
