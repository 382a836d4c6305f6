//! What an installed capability's files say without loading it: drift that can be seen on
//! disk, and what runs it. `cjm-ctl list` and the service's capability list show both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::{CapabilityManifest, Loaded, RuntimeKind, hash};

impl Loaded<CapabilityManifest> {
    /// Drift visible without loading: the witnesses against the manifest's own code
    /// section, the component against its recorded sha256, the python env and the native
    /// program.
    pub fn drift_on_disk(&self) -> Vec<&'static str> {
        let m = &self.manifest;
        let mut flags = Vec::new();
        if m.config_schema_drifted(m.code.config_schema.as_ref()) {
            flags.push("schema-hash");
        }
        if m.structural_surface_drifted(m.code.structural_surface.as_ref()) {
            flags.push("surface-hash");
        }
        match m.runtime() {
            RuntimeKind::Wasm => {
                if let Some(w) = &m.install.wasm {
                    match component_hash(&w.component_path(self.dir())) {
                        None => flags.push("component-missing"),
                        Some(h) if h != w.sha256 => flags.push("component-changed"),
                        Some(_) => {}
                    }
                }
            }
            RuntimeKind::Python => {
                if !Path::new(&m.install.python_path).is_file() {
                    flags.push("env-missing");
                }
            }
            RuntimeKind::Native => {
                if let Some(n) = &m.install.native
                    && n.program(self.dir()).is_none()
                {
                    flags.push("program-missing");
                }
            }
        }
        flags
    }

    /// What runs it: the python env, the component file or the native command.
    pub fn runs(&self) -> String {
        let m = &self.manifest;
        match m.runtime() {
            RuntimeKind::Python => m.install.python_path.clone(),
            RuntimeKind::Wasm => m
                .install
                .wasm
                .as_ref()
                .map_or_else(String::new, |w| normalize(&w.component_path(self.dir()))),
            RuntimeKind::Native => m
                .install
                .native
                .as_ref()
                .map_or_else(String::new, |n| n.command.join(" ")),
        }
    }
}

/// A file's sha256, remembered by its size and modification time: the service's capability
/// list is polled (the dashboard asks every 2 s), and a component of tens of MB would be
/// read and hashed each time.
fn component_hash(path: &Path) -> Option<String> {
    type Seen = HashMap<PathBuf, (u64, SystemTime, String)>;
    static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(Mutex::default);
    let meta = std::fs::metadata(path).ok()?;
    let stamp = (meta.len(), meta.modified().ok()?);
    if let Some((len, modified, sha)) = SEEN.lock().get(path)
        && (*len, *modified) == stamp
    {
        return Some(sha.clone());
    }
    let sha = hash::hash_file(path).ok()?;
    SEEN.lock()
        .insert(path.to_owned(), (stamp.0, stamp.1, sha.clone()));
    Some(sha)
}

/// `a/manifests/../components/x.wasm` -> `a/components/x.wasm`, lexically.
fn normalize(p: &Path) -> String {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_remembered_hash_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        std::fs::write(&path, b"one").unwrap();
        let first = super::component_hash(&path).unwrap();
        assert_eq!(super::component_hash(&path).unwrap(), first);
        std::fs::write(&path, b"other").unwrap();
        let second = super::component_hash(&path).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, super::hash::hash_file(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(super::component_hash(&path), None);
    }
}
