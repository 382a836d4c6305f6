//! Content hashing, byte for byte as cjm-substrate does it.
//!
//! Every hash is a self-describing `"sha256:<hex>"` string. JSON values are hashed over their
//! canonical text, `json.dumps(obj, sort_keys=True, separators=(",", ":"))` encoded as UTF-8
//! ([`super::pyjson`] writes it), so a config-schema hash written by the Python tools equals
//! the one this host computes and no Python-installed capability reports false drift.
//!
//! Two entry points for JSON:
//! - [`canonical_hash`] over a [`serde_json::Value`]: what the host holds in memory;
//! - [`canonical_json_text`] over raw JSON text: exact even for integers beyond 64 bits, which
//!   Python keeps as integers but a `Value` (without serde_json's `arbitrary_precision`) turns
//!   into floats.
//!
//! Files: [`hash_file`] streams; [`StatCache`] memoises input-content hashes by
//! `(absolute path, mtime_ns, size)` in the same `input_hash_cache` table as Python; and
//! [`cache_dir_for_config`] derives the per-(input content, action, config) cache directory
//! `<capability data dir>/<action>/<stem>/<input hash[:6]>_<config hash[:12]>/`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::pyjson;
use crate::error::{Error, Result};

/// The algorithm prefix of every hash string.
pub const SHA256_PREFIX: &str = "sha256:";

/// `"sha256:<hex>"` of `bytes` (Python's `hash_bytes`).
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `content` hashes to `expected` (`"sha256:<hex>"`; other algorithms never match).
pub fn verify_hash(content: &[u8], expected: &str) -> bool {
    expected.starts_with(SHA256_PREFIX) && hash_bytes(content) == expected
}

/// Whether `s` has the `"sha256:<64 lowercase hex>"` shape.
pub fn is_sha256_hash(s: &str) -> bool {
    s.strip_prefix(SHA256_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The canonical JSON text of `value` (Python's `json.dumps(value, sort_keys=True,
/// separators=(",", ":"))`).
pub fn canonical_json(value: &Value) -> String {
    pyjson::canonical(value)
}

/// `"sha256:<hex>"` of the canonical JSON text of `value`.
pub fn canonical_hash(value: &Value) -> String {
    hash_bytes(canonical_json(value).as_bytes())
}

/// Python's `hash_dict_canonical(data)`: a value Python finds falsy (`None`, `{}`, `[]`, `""`,
/// `0`, `0.0`, `false`) hashes as `{}`, so a missing schema or config still has a stable hash.
pub fn hash_dict_canonical(value: Option<&Value>) -> String {
    match value {
        Some(v) if python_truthy(v) => canonical_hash(v),
        _ => canonical_hash(&Value::Object(serde_json::Map::new())),
    }
}

/// The drift witness of a config schema (`compute_config_schema_hash`; `None` hashes as `{}`).
pub fn config_schema_hash(schema: Option<&Value>) -> String {
    hash_dict_canonical(schema)
}

/// The drift witness of a structural surface (`compute_structural_surface_hash`).
pub fn structural_surface_hash(surface: Option<&Value>) -> String {
    hash_dict_canonical(surface)
}

/// The empirical-store key of an effective config (`compute_config_hash`).
pub fn config_hash(config: Option<&Value>) -> String {
    hash_dict_canonical(config)
}

fn python_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Streams `path` through sha256 (Python's `hash_file`).
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(format!("{SHA256_PREFIX}{}", hex::encode(hasher.finalize())))
}

// ---------------------------------------------------------------------------------------------
// Exact canonical form from raw text.

/// The canonical JSON text of raw JSON `text`, exactly as `json.dumps(json.loads(text),
/// sort_keys=True, separators=(",", ":"))` gives it: integers of any size stay integers,
/// `-0` becomes `0`, floats take Python's repr, duplicate keys keep the last value, and
/// `NaN` / `Infinity` / `-Infinity` (which Python reads and writes) are accepted.
pub fn canonical_json_text(text: &str) -> Result<String> {
    let mut parser = TextParser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("expected end of input"));
    }
    let mut out = String::with_capacity(text.len());
    write_py(&mut out, &value);
    Ok(out)
}

/// `"sha256:<hex>"` of [`canonical_json_text`].
pub fn canonical_hash_text(text: &str) -> Result<String> {
    Ok(hash_bytes(canonical_json_text(text)?.as_bytes()))
}

enum PyValue {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(String),
    Array(Vec<PyValue>),
    Object(Vec<(String, PyValue)>),
}

const MAX_DEPTH: usize = 512;

struct TextParser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl TextParser<'_> {
    fn error(&self, reason: &str) -> Error {
        Error::InvalidJsonText {
            offset: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.text[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyValue> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting deeper than 512 levels"));
        }
        match self.bytes.get(self.pos) {
            None => Err(self.error("expected a value, found end of input")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(PyValue::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => {
                if self.eat("null") {
                    Ok(PyValue::Null)
                } else if self.eat("true") {
                    Ok(PyValue::Bool(true))
                } else if self.eat("false") {
                    Ok(PyValue::Bool(false))
                } else if self.eat("NaN") {
                    Ok(PyValue::Float(f64::NAN))
                } else if self.eat("Infinity") {
                    Ok(PyValue::Float(f64::INFINITY))
                } else {
                    Err(self.error("expected a value"))
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<PyValue> {
        self.pos += 1;
        let mut entries: Vec<(String, PyValue)> = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(PyValue::Object(entries));
        }
        loop {
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if !self.eat(":") {
                return Err(self.error("expected ':'"));
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            // A dict keeps the last value of a duplicated key (its position does not matter:
            // the canonical form sorts).
            if let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                entries.push((key, value));
            }
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(PyValue::Object(entries));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<PyValue> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(PyValue::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(PyValue::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn number(&mut self) -> Result<PyValue> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
            if self.eat("Infinity") {
                return Ok(PyValue::Float(f64::NEG_INFINITY));
            }
        }
        let digits_start = self.pos;
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(self.error("expected a digit")),
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after '.'"));
            }
            self.skip_digits();
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if !matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.skip_digits();
            is_float = true;
        }
        let literal = &self.text[start..self.pos];
        if is_float {
            let f: f64 = literal.parse().map_err(|_| self.error("invalid number"))?;
            return Ok(PyValue::Float(f));
        }
        let digits = &self.text[digits_start..int_end];
        let negative = start != digits_start && digits != "0";
        Ok(PyValue::Int(if negative {
            format!("-{digits}")
        } else {
            digits.to_owned()
        }))
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u16> {
        let hex = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("expected four hex digits"))?;
        let unit =
            u16::from_str_radix(hex, 16).map_err(|_| self.error("expected four hex digits"))?;
        self.pos += 4;
        Ok(unit)
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.bytes.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = *self
                        .bytes
                        .get(self.pos)
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat("\\u") {
                                    return Err(self.error("lone surrogate in \\u escape"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error("lone surrogate in \\u escape"));
                                }
                                let code = 0x10000
                                    + ((u32::from(hi) - 0xD800) << 10)
                                    + (u32::from(lo) - 0xDC00);
                                char::from_u32(code)
                            } else {
                                char::from_u32(u32::from(hi))
                            };
                            out.push(c.ok_or_else(|| self.error("lone surrogate in \\u escape"))?);
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
    }
}

fn write_py(out: &mut String, value: &PyValue) {
    match value {
        PyValue::Null => out.push_str("null"),
        PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PyValue::Int(digits) => out.push_str(digits),
        PyValue::Float(f) => out.push_str(&pyjson::float_repr(*f)),
        PyValue::Str(s) => pyjson::write_str(out, s),
        PyValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_py(out, item);
            }
            out.push(']');
        }
        PyValue::Object(entries) => {
            let mut sorted: Vec<&(String, PyValue)> = entries.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pyjson::write_str(out, key);
                out.push(':');
                write_py(out, item);
            }
            out.push('}');
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input-content hashing with a stat cache, and per-(input, config) cache directories.

/// Memoises input-file content hashes by `(absolute path, mtime_ns, size)`, in the
/// `input_hash_cache` table of Python's `input_hash_cache.db` (same schema, so both share it).
///
/// The cache is an optimisation, never a correctness input: any cache database error is
/// logged and the file is hashed directly.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl StatCache {
    /// A cache in the database at `path` (opened on first use; usually
    /// [`crate::config::HostConfig::input_hash_cache_path`]).
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
    pub fn hash(&self, input: &Path, skip_cache: bool) -> Result<String> {
        let abs = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
        if skip_cache {
            return hash_file(&abs);
        }
        let meta = std::fs::metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        let mtime_ns = meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec());
        let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
        let key = abs.to_string_lossy().into_owned();
        let Ok(mut guard) = self.conn.lock() else {
            return hash_file(&abs);
        };
        match self.lookup(&mut guard, &key, mtime_ns, size) {
            Ok(Some(hash)) => return Ok(hash),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(cache = %self.path.display(), error = %e, "stat cache unavailable; hashing directly");
                return hash_file(&abs);
            }
        }
        let hash = hash_file(&abs)?;
        if let Err(e) = self.store(&mut guard, &key, mtime_ns, size, &hash) {
            tracing::warn!(cache = %self.path.display(), error = %e, "stat cache write failed");
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
) -> Result<PathBuf> {
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
    let input_hex = input_hash
        .split_once(':')
        .map_or(input_hash.as_str(), |(_, h)| h);
    let config_hex = config_hash
        .split_once(':')
        .map_or(config_hash.as_str(), |(_, h)| h);
    let leaf = format!(
        "{}_{}",
        &input_hex[..options.input_hash_length.min(input_hex.len())],
        &config_hex[..options.config_hash_length.min(config_hex.len())]
    );
    let dir = capability_data_dir.join(action).join(stem).join(leaf);
    if options.create {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
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
mod tests;
