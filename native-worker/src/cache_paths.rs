//! Per-(input content, action, config) cache directories, as cjm-substrate's
//! `utils/cache_paths`: a capability that writes derived files (a transcript of an audio
//! file, frames of a video) keeps them under a directory that is the same for the same
//! input content and configuration and different as soon as either changes:
//! `<capability data dir>/<action>/<sanitized stem>/<input hash[:6]>_<config hash[:12]>/`.
//!
//! Input-content hashes are memoised by `(absolute path, mtime_ns, size)` in [`StatCache`],
//! the `input_hash_cache` table of the data dir's `input_hash_cache.db` (the Python tools'
//! schema, so both share it). The config hash is the host's empirical key
//! ([`cjm_guest::python::hash::config_hash`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cjm_guest::python::hash::{config_hash, hash_bytes, hash_file};
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

/// Memoises input-file content hashes by `(absolute path, mtime_ns, size)`.
///
/// The cache is an optimisation, never a correctness input: any cache database error is
/// logged and the file is hashed directly.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl StatCache {
    /// A cache in the database at `path` (opened on first use; the host's is
    /// `$CJM_DATA_DIR/input_hash_cache.db`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StatCache {
            path: path.into(),
            conn: Mutex::new(None),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content hash of `input`, from the cache when its path, mtime and size match.
    /// `skip_cache` hashes the file and leaves the cache alone (for a file that was just
    /// written). A missing or unreadable file is an error.
    pub fn hash(&self, input: &Path, skip_cache: bool) -> std::io::Result<String> {
        let abs = std::fs::canonicalize(input)?;
        if skip_cache {
            return hash_file(&abs);
        }
        let meta = std::fs::metadata(&abs)?;
        let mtime_ns = meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec());
        let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
        let key = abs.to_string_lossy().into_owned();
        let mut guard = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.lookup(&mut guard, &key, mtime_ns, size) {
            Ok(Some(hash)) => return Ok(hash),
            Ok(None) => {}
            Err(e) => {
                eprintln!(
                    "stat cache {} unavailable ({e}); hashing directly",
                    self.path.display()
                );
                return hash_file(&abs);
            }
        }
        let hash = hash_file(&abs)?;
        if let Err(e) = self.store(&mut guard, &key, mtime_ns, size, &hash) {
            eprintln!("stat cache {} write failed: {e}", self.path.display());
        }
        Ok(hash)
    }

    fn connection<'a>(&self, slot: &'a mut Option<Connection>) -> rusqlite::Result<&'a Connection> {
        if slot.is_none() {
            if let Some(parent) = self.path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let conn = Connection::open(&self.path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS input_hash_cache (
                    path TEXT NOT NULL,
                    mtime_ns INTEGER NOT NULL,
                    size INTEGER NOT NULL,
                    content_hash TEXT NOT NULL,
                    PRIMARY KEY (path, mtime_ns, size)
                )",
            )?;
            *slot = Some(conn);
        }
        slot.as_ref().ok_or(rusqlite::Error::InvalidQuery)
    }

    fn lookup(
        &self,
        slot: &mut Option<Connection>,
        key: &str,
        mtime_ns: i64,
        size: i64,
    ) -> rusqlite::Result<Option<String>> {
        let conn = self.connection(slot)?;
        conn.prepare_cached(
            "SELECT content_hash FROM input_hash_cache WHERE path = ?1 AND mtime_ns = ?2 AND size = ?3",
        )?
        .query_row(rusqlite::params![key, mtime_ns, size], |row| row.get(0))
        .optional()
    }

    fn store(
        &self,
        slot: &mut Option<Connection>,
        key: &str,
        mtime_ns: i64,
        size: i64,
        hash: &str,
    ) -> rusqlite::Result<()> {
        let conn = self.connection(slot)?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO input_hash_cache (path, mtime_ns, size, content_hash) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(rusqlite::params![key, mtime_ns, size, hash])?;
        Ok(())
    }
}

/// How [`cache_dir_for_config`] names and creates the directory (Python's keyword defaults).
#[derive(Debug, Clone)]
pub struct CacheDirOptions<'a> {
    /// Hex digits of the input hash in the leaf name (6).
    pub input_hash_length: usize,
    /// Hex digits of the config hash in the leaf name (12).
    pub config_hash_length: usize,
    /// Create the directory (true).
    pub create: bool,
    /// Hash the input file's content (true); false hashes the input string itself (a URL,
    /// a row id).
    pub hash_input_content: bool,
    /// Recompute the content hash even when the stat cache has it (false).
    pub skip_input_cache: bool,
    /// The stat cache to use; `None` hashes directly.
    pub stat_cache: Option<&'a StatCache>,
}

impl Default for CacheDirOptions<'_> {
    fn default() -> Self {
        CacheDirOptions {
            input_hash_length: 6,
            config_hash_length: 12,
            create: true,
            hash_input_content: true,
            skip_input_cache: false,
            stat_cache: None,
        }
    }
}

/// The deterministic cache directory of `(input content, action, config)`:
/// `<capability_data_dir>/<action>/<sanitized stem>/<input_hex[:6]>_<config_hex[:12]>`, as
/// cjm-substrate's `cache_dir_for_config`. Same inputs, same directory; any change to the
/// input's content or to the config, a different one.
pub fn cache_dir_for_config(
    capability_data_dir: &Path,
    input: &Path,
    action: &str,
    config: &Value,
    options: &CacheDirOptions<'_>,
) -> std::io::Result<PathBuf> {
    let stem = sanitize_stem(input);
    let input_hash = if options.hash_input_content {
        match options.stat_cache {
            Some(cache) => cache.hash(input, options.skip_input_cache)?,
            None => hash_file(input)?,
        }
    } else {
        hash_bytes(input.to_string_lossy().as_bytes())
    };
    let config_hash = config_hash(Some(config));
    let hex = |h: &str| h.split_once(':').map_or(h, |(_, x)| x).to_owned();
    let (input_hex, config_hex) = (hex(&input_hash), hex(&config_hash));
    let leaf = format!(
        "{}_{}",
        &input_hex[..options.input_hash_length.min(input_hex.len())],
        &config_hex[..options.config_hash_length.min(config_hex.len())]
    );
    let dir = capability_data_dir.join(action).join(stem).join(leaf);
    if options.create {
        std::fs::create_dir_all(&dir)?;
    }
    Ok(dir)
}

const MAX_STEM_CHARS: usize = 100;

/// Python's `_sanitize_stem`: the path's stem with characters unsafe on some filesystem
/// (`<>:"/\|?*` and control characters) replaced by `_`, dots and blanks trimmed from both
/// ends, capped at 100 characters; `_` when nothing is left.
pub fn sanitize_stem(input: &Path) -> String {
    let raw = python_stem(&input.to_string_lossy());
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if matches!(c, '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*')
                || (c as u32) < 0x20
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(['.', ' ', '\t']);
    if trimmed.is_empty() {
        return "_".to_owned();
    }
    trimmed.chars().take(MAX_STEM_CHARS).collect()
}

/// `pathlib.PurePosixPath(s).stem`: the last non-empty component (`.` components skipped),
/// without its last suffix; a leading-dot name such as `.bashrc` keeps its dot.
fn python_stem(s: &str) -> String {
    let name = s
        .split('/')
        .rev()
        .find(|c| !c.is_empty() && *c != ".")
        .unwrap_or("");
    if name == ".." {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(i) if i > 0 && i < name.len() - 1 => name[..i].to_owned(),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use cjm_guest::python::hash::canonical_hash;

    #[test]
    fn stat_cache_serves_hits_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::new(dir.path().join("input_hash_cache.db"));
        let input = dir.path().join("in.txt");
        std::fs::write(&input, "one").unwrap();
        assert_eq!(cache.hash(&input, false).unwrap(), hash_bytes(b"one"));
        // A hit is served from the table: poison the row and see it come back.
        let conn = Connection::open(cache.path()).unwrap();
        conn.execute(
            "UPDATE input_hash_cache SET content_hash = 'sha256:cached'",
            [],
        )
        .unwrap();
        assert_eq!(cache.hash(&input, false).unwrap(), "sha256:cached");
        assert_eq!(cache.hash(&input, true).unwrap(), hash_bytes(b"one"));
        // A new size (and mtime) misses.
        std::fs::write(&input, "two!").unwrap();
        assert_eq!(cache.hash(&input, false).unwrap(), hash_bytes(b"two!"));
        // A broken cache database falls back to direct hashing.
        let broken = StatCache::new(dir.path().join("not-a-dir/\0bad"));
        assert_eq!(broken.hash(&input, false).unwrap(), hash_bytes(b"two!"));
    }

    #[test]
    fn cache_dir_is_deterministic_per_input_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("My Talk: part 1.mp3");
        std::fs::write(&input, "audio").unwrap();
        let base = dir.path().join("data/whisper");
        let opts = CacheDirOptions::default();
        let at = |config: Value| {
            cache_dir_for_config(&base, &input, "transcribe", &config, &opts).unwrap()
        };
        let a = at(json!({"model": "base"}));
        let input_hex = &hash_bytes(b"audio")[7..13];
        let config_hex = &canonical_hash(&json!({"model": "base"}))[7..19];
        assert_eq!(
            a,
            base.join("transcribe/My Talk_ part 1")
                .join(format!("{input_hex}_{config_hex}"))
        );
        assert!(a.is_dir());
        assert_eq!(a, at(json!({"model": "base"})));
        assert_ne!(a, at(json!({"model": "large"})));
        // The stat cache gives the same directory.
        let cache = StatCache::new(dir.path().join("input_hash_cache.db"));
        let cached = CacheDirOptions {
            stat_cache: Some(&cache),
            ..CacheDirOptions::default()
        };
        let b = cache_dir_for_config(
            &base,
            &input,
            "transcribe",
            &json!({"model": "base"}),
            &cached,
        );
        assert_eq!(a, b.unwrap());
        let url = CacheDirOptions {
            hash_input_content: false,
            create: false,
            ..CacheDirOptions::default()
        };
        let u = cache_dir_for_config(
            &base,
            Path::new("https://x.org/a/clip.wav"),
            "t",
            &json!({}),
            &url,
        )
        .unwrap();
        assert!(u.starts_with(base.join("t/clip")));
        assert!(!u.exists());
        assert!(
            cache_dir_for_config(&base, &dir.path().join("missing"), "t", &json!({}), &opts)
                .is_err()
        );
    }

    #[test]
    fn stems_are_sanitized_like_python() {
        assert_eq!(
            sanitize_stem(Path::new("/a/b/report.final.pdf")),
            "report.final"
        );
        assert_eq!(sanitize_stem(Path::new(".bashrc")), "bashrc");
        assert_eq!(sanitize_stem(Path::new("")), "_");
        assert_eq!(sanitize_stem(Path::new("...")), "_");
        assert_eq!(sanitize_stem(Path::new("a|b?.txt")), "a_b_");
        assert_eq!(sanitize_stem(Path::new("dir/")), "dir");
        assert_eq!(sanitize_stem(Path::new(&"x".repeat(300))).len(), 100);
    }
}
