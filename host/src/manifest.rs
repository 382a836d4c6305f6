//! Manifests: what is installed, in cjm-substrate's v2.0 format.
//!
//! Two kinds of manifest file live side by side in the search paths, told apart by the
//! `unit` discriminator: capability manifests (no `unit`; [`CapabilityManifest`]) and adapter
//! manifests (`"unit": "adapter"`; [`AdapterManifest`]). Files written by the Python tools
//! load unchanged and are written back byte for byte (Python's `json.dump(indent=2)` form,
//! keys this version does not know kept); this host adds the `install.runtime` extension
//! ([`runtime`]) for wasm components and native binaries.
//!
//! Loading validates first ([`validate`]) and reports every problem with the file and the
//! JSON path of the field; a `format_version` other than `"2.0"` is refused. Discovery over
//! search paths ([`discover`]) never lets one bad file stop the others: it returns what
//! loaded and one error per file that did not.
//!
//! Hashing ([`hash`]) is byte-compatible with Python's canonical JSON, so drift witnesses
//! written by either side agree.

pub mod adapter;
pub mod capability;
mod error;
pub mod hash;
mod on_disk;
/// JSON exactly as Python writes it (shared with the native worker).
pub use cjm_guest::python::json as pyjson;
pub mod runtime;
pub mod validate;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use adapter::{ADAPTER_UNIT, AdapterManifest, ProtocolMembers};
pub use capability::{
    CapabilityManifest, CodeSection, DriftTracking, EnvVarSpec, FORMAT_VERSION, InstallSection,
    ResourceRequirements,
};
pub use error::ManifestError;
pub use runtime::{
    DirAccess, Isolation, NativeInstall, NetworkGrant, Preopen, RuntimeKind, Sandbox, WasmInstall,
};
pub use validate::ManifestProblem;

use crate::error::{Error, Result};

/// Manifest files larger than this are refused unread (a manifest is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// Either kind of manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A capability manifest.
    Capability(Box<CapabilityManifest>),
    /// An adapter manifest.
    Adapter(Box<AdapterManifest>),
}

/// A manifest and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The file.
    pub path: PathBuf,
    /// What it holds.
    pub manifest: T,
}

impl<T> Loaded<T> {
    /// The directory of the file (relative component paths resolve against it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Reads and validates the manifest at `path`, routing by its `unit`.
pub fn load(path: &Path) -> Result<Manifest> {
    let text = read_manifest_file(path)?;
    parse(path, &text)
}

/// Reads the capability manifest at `path` (an adapter manifest there is an error).
pub fn load_capability(path: &Path) -> Result<CapabilityManifest> {
    match load(path)? {
        Manifest::Capability(m) => Ok(*m),
        Manifest::Adapter(_) => Err(invalid(
            path,
            "unit",
            "expected a capability manifest (no unit), found an adapter manifest",
        )),
    }
}

/// Reads the adapter manifest at `path` (a capability manifest there is an error).
pub fn load_adapter(path: &Path) -> Result<AdapterManifest> {
    match load(path)? {
        Manifest::Adapter(m) => Ok(*m),
        Manifest::Capability(_) => Err(invalid(
            path,
            "unit",
            "required field is missing (expected \"adapter\")",
        )),
    }
}

fn invalid(path: &Path, field: &str, message: impl Into<String>) -> Error {
    Error::Manifest(ManifestError::InvalidManifest {
        path: path.to_owned(),
        problems: vec![ManifestProblem::new(field, message)],
    })
}

/// Parses manifest `text`; `path` names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
    if text.trim().is_empty() {
        return Err(invalid(
            path,
            validate::ROOT,
            "expected a JSON object, found an empty file",
        ));
    }
    let doc: Value = serde_json::from_str(text).map_err(|source| Error::Json {
        what: format!("manifest {} (expected a JSON object)", path.display()),
        source,
    })?;
    parse_value(path, doc)
}

/// Validates and types an already parsed manifest document.
pub fn parse_value(path: &Path, doc: Value) -> Result<Manifest> {
    let Some(obj) = doc.as_object() else {
        let found = match doc {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(invalid(
            path,
            validate::ROOT,
            format!("expected a JSON object, found {found}"),
        ));
    };
    match obj.get("unit") {
        Some(Value::String(unit)) if unit == ADAPTER_UNIT => {
            let problems = validate::check_adapter(&doc);
            if !problems.is_empty() {
                return Err(Error::Manifest(ManifestError::InvalidManifest {
                    path: path.to_owned(),
                    problems,
                }));
            }
            let m = typed(path, doc)?;
            Ok(Manifest::Adapter(Box::new(m)))
        }
        Some(other) => Err(invalid(
            path,
            "unit",
            format!(
                "expected \"adapter\" (or no unit for a capability manifest), found {}",
                serde_json::to_string(other).unwrap_or_default()
            ),
        )),
        None => {
            match obj.get("format_version") {
                Some(Value::String(v)) if v == FORMAT_VERSION => {}
                other => {
                    return Err(Error::Manifest(ManifestError::UnsupportedManifestVersion {
                        path: path.to_owned(),
                        found: other.map_or_else(
                            || "(missing)".to_owned(),
                            |v| serde_json::to_string(v).unwrap_or_default(),
                        ),
                    }));
                }
            }
            let problems = validate::check_capability(&doc);
            if !problems.is_empty() {
                return Err(Error::Manifest(ManifestError::InvalidManifest {
                    path: path.to_owned(),
                    problems,
                }));
            }
            let m = typed(path, doc)?;
            Ok(Manifest::Capability(Box::new(m)))
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(path: &Path, doc: Value) -> Result<T> {
    // Validation has checked every field the types read, so this only fails on a bug in the
    // validation tables; it is still reported, never unwrapped.
    serde_json::from_value(doc).map_err(|e| {
        invalid(
            path,
            validate::ROOT,
            format!("expected the manifest shape: {e}"),
        )
    })
}

/// Reads a manifest file's text: a regular file (symlinks followed), at most
/// [`MAX_MANIFEST_BYTES`], UTF-8. A FIFO is refused before it is opened (opening one would
/// block until a writer came).
pub fn read_manifest_file(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::not_a_file(path, &meta));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(
            path,
            validate::ROOT,
            format!(
                "expected a manifest of at most {MAX_MANIFEST_BYTES} bytes, found {} bytes",
                meta.len()
            ),
        ));
    }
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        invalid(
            path,
            validate::ROOT,
            format!(
                "expected UTF-8 JSON text, found invalid UTF-8 at byte {}",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The file text of a capability manifest, as Python's `json.dump(indent=2)` writes it.
pub fn capability_to_string(manifest: &CapabilityManifest) -> String {
    pyjson::pretty(&manifest.to_value())
}

/// The file text of an adapter manifest, as Python's `json.dump(indent=2)` writes it.
pub fn adapter_to_string(manifest: &AdapterManifest) -> String {
    pyjson::pretty(&manifest.to_value())
}

/// The file name the Python installer gives a capability manifest (`<name>.json`).
pub fn capability_file_name(name: &str) -> String {
    format!("{name}.json")
}

/// The file name the Python tools give an adapter manifest (`adapter-<task>-<Class>.json`).
pub fn adapter_file_name(manifest: &AdapterManifest) -> String {
    format!(
        "adapter-{}-{}.json",
        manifest.task_name, manifest.class_name
    )
}

/// Writes a capability manifest atomically (a temporary file beside it, then a rename).
pub fn write_capability(path: &Path, manifest: &CapabilityManifest) -> Result<()> {
    write_atomic(path, capability_to_string(manifest).as_bytes())
}

/// Writes an adapter manifest atomically.
pub fn write_adapter(path: &Path, manifest: &AdapterManifest) -> Result<()> {
    write_atomic(path, adapter_to_string(manifest).as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// a reader sees the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// What discovery found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Capability manifests, the first of each name (earlier search paths shadow later ones).
    pub capabilities: Vec<Loaded<CapabilityManifest>>,
    /// Adapter manifests, the first of each name.
    pub adapters: Vec<Loaded<AdapterManifest>>,
    /// Files that loaded but were shadowed by an earlier manifest of the same name.
    pub shadowed: Vec<PathBuf>,
    /// One error per file (or search path) that could not be loaded.
    pub errors: Vec<Error>,
}

impl Discovered {
    /// The capability manifest named `name`.
    pub fn capability(&self, name: &str) -> Option<&Loaded<CapabilityManifest>> {
        self.capabilities.iter().find(|m| m.manifest.name() == name)
    }

    /// The adapter manifests serving `task_name`.
    pub fn adapters_for(&self, task_name: &str) -> impl Iterator<Item = &Loaded<AdapterManifest>> {
        self.adapters
            .iter()
            .filter(move |a| a.manifest.task_name == task_name)
    }
}

/// Loads every `*.json` file of each search path (a directory, not recursed; or a single
/// file), in path order then file-name order. A missing search directory holds nothing; a
/// file that fails to load becomes an entry of [`Discovered::errors`] and discovery goes on.
pub fn discover<P: AsRef<Path>>(search_paths: &[P]) -> Discovered {
    let mut out = Discovered::default();
    for base in search_paths {
        let base = base.as_ref();
        let files = match fs::metadata(base) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.errors.push(Error::io(base, e));
                continue;
            }
            Ok(meta) if meta.is_dir() => match list_json_files(base) {
                Ok(files) => files,
                Err(e) => {
                    out.errors.push(e);
                    continue;
                }
            },
            Ok(_) => vec![base.to_owned()],
        };
        for path in files {
            match load(&path) {
                Ok(Manifest::Capability(m)) => {
                    if out
                        .capabilities
                        .iter()
                        .any(|c| c.manifest.name() == m.name())
                    {
                        out.shadowed.push(path);
                    } else {
                        out.capabilities.push(Loaded { path, manifest: *m });
                    }
                }
                Ok(Manifest::Adapter(m)) => {
                    if out.adapters.iter().any(|a| a.manifest.name == m.name) {
                        out.shadowed.push(path);
                    } else {
                        out.adapters.push(Loaded { path, manifest: *m });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "manifest skipped");
                    out.errors.push(e);
                }
            }
        }
    }
    out
}

fn list_json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".json") {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
