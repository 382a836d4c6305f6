//! The discovery file: a running service says where it is (`<data dir>/serve.json`: address,
//! pid, how to authenticate), so the CLI on the same data dir becomes its client. Written
//! when the service listens, removed when it exits; a file whose process is gone is stale and
//! ignored. One service per data dir: it holds `serve.lock` while it runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The discovery file's name in the data dir.
pub const FILE: &str = "serve.json";
/// The token file's name in the data dir (0600).
pub const TOKEN_FILE: &str = "serve.token";

/// The lock file's name in the data dir: held (`flock`) by the one service of the data dir
/// for as long as it runs; the kernel releases it when the process ends, however it ends.
pub const LOCK_FILE: &str = "serve.lock";

/// The data dir's service lock, held while this value lives.
#[derive(Debug)]
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    /// Takes the service lock of `data_dir` (created as needed); `None` when another process
    /// holds it, even one still starting (two services started at the same moment: one
    /// wins).
    pub fn take(data_dir: &Path) -> crate::Result<Option<ServeLock>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(data_dir).map_err(|e| crate::Error::io(data_dir, e))?;
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| crate::Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ServeLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(crate::Error::io(&path, e)),
        }
    }
}

/// What the discovery file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The base URL (`http://127.0.0.1:8631`).
    pub url: String,
    /// The serving process.
    pub pid: u32,
    /// The host's id (its journal lease).
    pub host_id: String,
    /// `none` or `bearer`.
    pub auth: String,
    /// The token file when `auth` is `bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// When it started (ISO-8601 UTC).
    pub started_at: String,
}

impl Discovery {
    /// The discovery file of `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Writes it into `data_dir` (replaced atomically).
    pub fn write(&self, data_dir: &Path) -> crate::Result<()> {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| crate::Error::Json {
            what: "the discovery file".into(),
            source: e,
        })?;
        std::fs::write(&tmp, text).map_err(|e| crate::Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| crate::Error::io(&path, e))
    }

    /// The live service of `data_dir`: `None` when there is no file, it does not parse, or
    /// its process is gone.
    pub fn find(data_dir: &Path) -> Option<Discovery> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        let found: Discovery = serde_json::from_slice(&text).ok()?;
        found.alive().then_some(found)
    }

    /// Removes the file of `data_dir` if it is this process's.
    pub fn remove(data_dir: &Path) {
        let path = Self::path(data_dir);
        let mine = std::fs::read(&path)
            .ok()
            .and_then(|t| serde_json::from_slice::<Discovery>(&t).ok())
            .is_some_and(|d| d.pid == std::process::id());
        if mine {
            let _ = std::fs::remove_file(path);
        }
    }

    fn alive(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // Signal 0 checks existence; EPERM means it exists under another user.
        let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) => true,
            Err(e) => e == nix::errno::Errno::EPERM,
        };
        // A killed process its parent has not reaped yet (a zombie) serves nothing.
        exists && !zombie(pid)
    }
}

/// Whether `pid` is a zombie (Linux `/proc`; elsewhere never said).
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state ...`: the state follows the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}
