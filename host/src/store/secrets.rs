//! The secret store: API keys and tokens per capability, in `secrets/secrets.json` (file
//! 0600, directory 0700), cjm-substrate's format:
//!
//! ```json
//! {"<scope or __default__>": {"<capability>": {"<KEY>": "<value>"}}}
//! ```
//!
//! Secrets never appear in manifests, config, journal, logs or API output. Here that means:
//! values are [`SecretValue`]s, whose `Debug` prints `***` and which have no `Display` and no
//! `Serialize`; key *names* can be listed, values only read one at a time by whoever injects
//! them into a worker's environment; errors about the file (a corrupt file, say) name the
//! position of the problem, never its text. Writes are atomic (a 0600 temporary file, fsync,
//! rename) under an exclusive lock on `secrets.json.lock`, so concurrent writers, threads or
//! processes, never lose each other's keys; a corrupt file is reported, never replaced.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::store::StoreError;
use cjm_guest::python::json as pyjson;

/// The scope used when none is given (cjm-substrate's single-user scope).
pub const DEFAULT_SCOPE: &str = "__default__";

/// A secret value. It prints as `***`, cannot be displayed or serialized, and gives its text
/// only through [`SecretValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The secret text, for the one place that needs it (a worker's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        SecretValue(s)
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        SecretValue(s.to_owned())
    }
}

/// scope -> capability -> key -> value.
type Data = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

/// The file-backed secret store.
#[derive(Debug)]
pub struct SecretStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl SecretStore {
    /// A store in the file `path` (usually [`crate::config::HostConfig::secrets_path`]);
    /// nothing is read or created until used.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SecretStore {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// The secrets file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` for `capability` in `scope` (default scope when `None`).
    pub fn get(
        &self,
        capability: &str,
        key: &str,
        scope: Option<&str>,
    ) -> Result<Option<SecretValue>> {
        let data = self.load()?;
        Ok(data
            .get(scope_key(scope))
            .and_then(|caps| caps.get(capability))
            .and_then(|keys| keys.get(key))
            .map(|v| SecretValue(v.clone())))
    }

    /// Every secret of `capability` in `scope`, for injection into its worker's environment.
    pub fn secrets_for(
        &self,
        capability: &str,
        scope: Option<&str>,
    ) -> Result<BTreeMap<String, SecretValue>> {
        let data = self.load()?;
        Ok(data
            .get(scope_key(scope))
            .and_then(|caps| caps.get(capability))
            .map(|keys| {
                keys.iter()
                    .map(|(k, v)| (k.clone(), SecretValue(v.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The key names stored for `capability` in `scope`, sorted. Never the values.
    pub fn list_keys(&self, capability: &str, scope: Option<&str>) -> Result<Vec<String>> {
        let data = self.load()?;
        Ok(data
            .get(scope_key(scope))
            .and_then(|caps| caps.get(capability))
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Stores `value` as `key` of `capability` in `scope`.
    pub fn set(
        &self,
        capability: &str,
        key: &str,
        value: SecretValue,
        scope: Option<&str>,
    ) -> Result<()> {
        self.update(|data| {
            data.entry(scope_key(scope).to_owned())
                .or_default()
                .entry(capability.to_owned())
                .or_default()
                .insert(key.to_owned(), value.0);
            true
        })
        .map(|_| ())
    }

    /// Removes `key` of `capability` in `scope` (and containers left empty); whether it was
    /// there.
    pub fn delete(&self, capability: &str, key: &str, scope: Option<&str>) -> Result<bool> {
        self.update(|data| {
            let scope = scope_key(scope);
            let Some(caps) = data.get_mut(scope) else {
                return false;
            };
            let Some(keys) = caps.get_mut(capability) else {
                return false;
            };
            if keys.remove(key).is_none() {
                return false;
            }
            if keys.is_empty() {
                caps.remove(capability);
            }
            if caps.is_empty() {
                data.remove(scope);
            }
            true
        })
    }

    /// Read-modify-write under the in-process mutex and the cross-process file lock; writes
    /// only when `change` says it changed something.
    fn update(&self, change: impl FnOnce(&mut Data) -> bool) -> Result<bool> {
        let _guard = self.lock.lock();
        let dir = self.dir();
        make_private_dir(&dir)?;
        let lock_path = dir.join(format!("{}.lock", self.file_name()));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock_file.lock().map_err(|e| Error::io(&lock_path, e))?;
        let mut data = self.load()?;
        let changed = change(&mut data);
        if changed {
            self.save(&data)?;
        }
        // The lock is released when `lock_file` closes.
        Ok(changed)
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    fn file_name(&self) -> String {
        self.path.file_name().map_or_else(
            || "secrets.json".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn load(&self) -> Result<Data> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Data::new()),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        if !meta.is_file() {
            return Err(Error::not_a_file(&self.path, &meta));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %self.path.display(), mode = format!("{mode:o}"), "secrets file is readable by others; expected 0600");
        }
        let text = fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        if text.trim().is_empty() {
            return Ok(Data::new());
        }
        // serde_json's messages can quote the offending text (a secret): only its position
        // and kind leave this function.
        serde_json::from_str(&text).map_err(|e| {
            Error::Store(StoreError::CorruptSecrets {
                path: self.path.clone(),
                what: match e.classify() {
                    serde_json::error::Category::Data => {
                        "unexpected shape (expected {scope: {capability: {key: string}}})"
                    }
                    _ => "invalid JSON",
                },
                line: e.line(),
                column: e.column(),
            })
        })
    }

    fn save(&self, data: &Data) -> Result<()> {
        let dir = self.dir();
        let value = Value::Object(
            data.iter()
                .map(|(scope, caps)| {
                    let caps = caps
                        .iter()
                        .map(|(cap, keys)| {
                            let keys: Map<String, Value> = keys
                                .iter()
                                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                                .collect();
                            (cap.clone(), Value::Object(keys))
                        })
                        .collect();
                    (scope.clone(), Value::Object(caps))
                })
                .collect(),
        );
        let text = pyjson::pretty(&value);
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            self.file_name(),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename itself is durable once the directory is synced.
            File::open(&dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&self.path, e));
        }
        Ok(())
    }
}

fn scope_key(scope: Option<&str>) -> &str {
    scope.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SCOPE)
}

fn make_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SECRET: &str = "sk-live-very-secret-0123456789";

    fn store() -> (tempfile::TempDir, SecretStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::new(dir.path().join("secrets/secrets.json"));
        (dir, store)
    }

    #[test]
    fn values_are_kept_by_capability_and_scope() {
        let (_dir, store) = store();
        assert_eq!(store.get("gemini", "API_KEY", None).unwrap(), None);
        store.set("gemini", "API_KEY", SECRET.into(), None).unwrap();
        store.set("gemini", "ORG", "org-1".into(), None).unwrap();
        store
            .set("gemini", "API_KEY", "other-user".into(), Some("alice"))
            .unwrap();
        assert_eq!(
            store
                .get("gemini", "API_KEY", None)
                .unwrap()
                .unwrap()
                .expose(),
            SECRET
        );
        assert_eq!(
            store
                .get("gemini", "API_KEY", Some("alice"))
                .unwrap()
                .unwrap()
                .expose(),
            "other-user"
        );
        assert_eq!(store.list_keys("gemini", None).unwrap(), ["API_KEY", "ORG"]);
        assert_eq!(store.secrets_for("gemini", None).unwrap().len(), 2);
        assert!(store.delete("gemini", "API_KEY", Some("alice")).unwrap());
        assert!(!store.delete("gemini", "API_KEY", Some("alice")).unwrap());
        let on_disk: Value =
            serde_json::from_str(&fs::read_to_string(store.path()).unwrap()).unwrap();
        assert_eq!(
            on_disk,
            serde_json::json!({"__default__": {"gemini": {"API_KEY": SECRET, "ORG": "org-1"}}})
        );
    }

    #[test]
    fn the_file_is_private_and_written_atomically() {
        let (dir, store) = store();
        store.set("c", "K", SECRET.into(), None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&dir.path().join("secrets")), 0o700);
        let names: Vec<String> = fs::read_dir(dir.path().join("secrets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".tmp-")),
            "temporary files left: {names:?}"
        );
    }

    #[test]
    fn values_never_show_in_debug_or_errors() {
        let (_dir, store) = store();
        store.set("c", "K", SECRET.into(), None).unwrap();
        let value = store.get("c", "K", None).unwrap().unwrap();
        assert_eq!(format!("{value:?}"), "***");
        assert!(!format!("{:?}", store.secrets_for("c", None).unwrap()).contains(SECRET));
        assert!(!format!("{store:?}").contains(SECRET));
        // A value where a map should be, and broken JSON after a secret: the errors say where,
        // never what.
        for text in [
            format!(r#"{{"__default__": {{"c": "{SECRET}"}}}}"#),
            format!(r#"{{"__default__": {{"c": {{"K": "{SECRET}" oops"#),
        ] {
            fs::write(store.path(), &text).unwrap();
            let err = store.get("c", "K", None).unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(
                matches!(err, Error::Store(StoreError::CorruptSecrets { .. })),
                "{msg}"
            );
            assert!(!msg.contains(SECRET), "the secret leaked: {msg}");
            assert!(msg.contains("line 1 column"), "{msg}");
            // A corrupt file is never replaced by a write.
            assert!(store.set("c", "NEW", "v".into(), None).is_err());
            assert_eq!(fs::read_to_string(store.path()).unwrap(), text);
        }
    }

    #[test]
    fn a_python_written_file_reads() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        fs::write(store.path(), "{\n  \"__default__\": {\n    \"cjm-gemini\": {\n      \"GEMINI_API_KEY\": \"k\\u00e9y\"\n    }\n  }\n}").unwrap();
        assert_eq!(
            store
                .get("cjm-gemini", "GEMINI_API_KEY", None)
                .unwrap()
                .unwrap()
                .expose(),
            "kéy"
        );
        assert_eq!(
            store.list_keys("nobody", None).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn concurrent_writers_keep_every_key() {
        let (dir, _) = store();
        let path = dir.path().join("secrets/secrets.json");
        let handles: Vec<_> = (0..4)
            .map(|t| {
                // Separate store objects: only the file lock serialises them, as across processes.
                let store = Arc::new(SecretStore::new(&path));
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .set("c", &format!("K{t}_{i}"), format!("v{i}").into(), None)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            SecretStore::new(&path).list_keys("c", None).unwrap().len(),
            100
        );
    }
}
