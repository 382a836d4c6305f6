//! `capabilities.yaml`: the declarative install file, its schema and its validation.
//!
//! ```yaml
//! capabilities:
//!   # A wasm component: a file, or a cargo package built for wasm32-wasip2.
//!   - name: text-stats
//!     kind: wasm
//!     component: components/text_stats.wasm   # or: cargo: text-stats (+ workspace: .)
//!     sandbox:                                 # the manifest's install.wasm.sandbox block
//!       memory_limit_mb: 128
//!       max_concurrency: 2
//!   # A native binary serving the worker contract, introspected by starting it once.
//!   - name: text-stats-native
//!     kind: native
//!     command: [bin/text-stats-worker]         # or: cargo: text-stats (+ workspace: .)
//!     env_vars: {RUST_LOG: info}
//!   # A Python capability of the cjm ecosystem (cjm-substrate's own entry shape; `kind`
//!   # defaults to python so the Python tool's files load unchanged).
//!   - name: cjm-capability-echo
//!     package: ./cjm-capability-echo           # a pip spec or a path
//!     python_version: "3.12"                   # optional (`python:` is the same key)
//!     env_name: echo                           # optional: the env's name (default: name)
//!     interface_libs: [cjm-capability-primitives]
//!     adapters:
//!       - impl: cjm_capability_echo.adapter:EchoTaskAdapter
//!         lib: null                            # optional pip spec providing it
//! ```
//!
//! Validation lists every problem, each with the file, the entry (its name, or its index
//! when it has none) and the field. Relative paths are relative to the file's directory.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::config::EnvManager;
use crate::manifest::Sandbox;

/// The kinds of entry.
pub const KINDS: &[&str] = &["wasm", "python", "native"];

/// One key of a `capabilities.yaml` entry: the kinds it belongs to, its shape and what it
/// means. This table is the one list the validator checks keys against and the reference
/// (`docs/reference.md`) is made from.
#[derive(Debug, Clone, Copy)]
pub struct EntryKey {
    /// The key.
    pub key: &'static str,
    /// The kinds of entry it belongs to.
    pub kinds: &'static [&'static str],
    /// Its YAML shape.
    pub shape: &'static str,
    /// What it means.
    pub doc: &'static str,
}

const ALL_KINDS: &[&str] = &["wasm", "python", "native"];

/// Every key an entry may have.
pub const ENTRY_KEYS: &[EntryKey] = &[
    EntryKey {
        key: "name",
        kinds: ALL_KINDS,
        shape: "string",
        doc: "The capability's name (required; letters, digits, `-`, `_`, `.`): its manifest, instance and log names.",
    },
    EntryKey {
        key: "kind",
        kinds: ALL_KINDS,
        shape: "`wasm` \\| `python` \\| `native`",
        doc: "What it is; `python` when absent (cjm-substrate's files load unchanged).",
    },
    EntryKey {
        key: "env_vars",
        kinds: ALL_KINDS,
        shape: "map of string",
        doc: "Environment variables of its worker (recorded in the manifest's `install.env_vars`).",
    },
    EntryKey {
        key: "component",
        kinds: &["wasm"],
        shape: "path",
        doc: "The `.wasm` component file (relative to the file's directory); or `cargo`.",
    },
    EntryKey {
        key: "cargo",
        kinds: &["wasm", "native"],
        shape: "string",
        doc: "A cargo package to build: wasm, its `cdylib` for wasm32-wasip2; native, its worker binary (`<package>-worker` when it has several).",
    },
    EntryKey {
        key: "workspace",
        kinds: &["wasm", "native"],
        shape: "path",
        doc: "Where cargo runs for `cargo` (default: the file's directory).",
    },
    EntryKey {
        key: "sandbox",
        kinds: &["wasm"],
        shape: "map",
        doc: "The component's grants: the manifest's `install.wasm.sandbox` block (below); the default grants nothing.",
    },
    EntryKey {
        key: "command",
        kinds: &["native"],
        shape: "list of string",
        doc: "The worker's argv; a program with a `/` is relative to the file's directory, a bare name is looked up on `PATH`; or `cargo`.",
    },
    EntryKey {
        key: "package",
        kinds: &["python"],
        shape: "string",
        doc: "A pip spec (`cjm-capability-x>=0.1`, a git URL) or a local path (`./dir`, `.`); required.",
    },
    EntryKey {
        key: "env_name",
        kinds: &["python"],
        shape: "string",
        doc: "The environment's name under `envs/` (default: the entry's name).",
    },
    EntryKey {
        key: "python_version",
        kinds: &["python"],
        shape: "string",
        doc: "The environment's Python (`'3.12'`, or an interpreter's path); default: the first local 3.12+, else `python3`.",
    },
    EntryKey {
        key: "python",
        kinds: &["python"],
        shape: "string",
        doc: "The same as `python_version`.",
    },
    EntryKey {
        key: "env_file",
        kinds: &["python"],
        shape: "path",
        doc: "A conda environment file the environment is created from (a conda-like manager).",
    },
    EntryKey {
        key: "env_manager",
        kinds: &["python"],
        shape: "`uv` \\| `venv` \\| `conda` \\| `micromamba` \\| `miniforge`",
        doc: "How the environment is made (default: cjm.yaml's `runtime.env_manager`, else uv when available, else venv).",
    },
    EntryKey {
        key: "interface_libs",
        kinds: &["python"],
        shape: "list of string",
        doc: "pip specs installed before the package (shared interface libraries).",
    },
    EntryKey {
        key: "adapters",
        kinds: &["python"],
        shape: "list of `{impl, lib}`",
        doc: "Task adapters bound to it: `impl` is `module:Class`, `lib` an optional pip spec providing it; each gets an adapter manifest.",
    },
    EntryKey {
        key: "substrate",
        kinds: &["python"],
        shape: "string",
        doc: "The cjm-substrate pip spec for this environment (default: the version this host speaks).",
    },
];

/// The keys of an entry of `kind`.
fn keys_of(kind: &str) -> Vec<&'static str> {
    ENTRY_KEYS
        .iter()
        .filter(|k| k.kinds.contains(&kind))
        .map(|k| k.key)
        .collect()
}

const ADAPTER_KEYS: &[&str] = &["impl", "lib"];
const SANDBOX_KEYS: &[&str] = Sandbox::KEYS;

/// A parsed, validated `capabilities.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilitiesFile {
    /// The file.
    pub path: PathBuf,
    /// Its entries, in file order.
    pub entries: Vec<Entry>,
}

impl CapabilitiesFile {
    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// One capability to install.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The capability name (its manifest is `<name>.json`).
    pub name: String,
    /// What to install and how.
    pub source: Source,
    /// Environment variables for the worker (`install.env_vars` of the manifest).
    pub env_vars: IndexMap<String, String>,
    /// The entry as written (paths resolved): the install fingerprint hashes it.
    pub raw: Value,
}

impl Entry {
    /// `wasm`, `python` or `native`.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Wasm(_) => "wasm",
            Source::Python(_) => "python",
            Source::Native(_) => "native",
        }
    }
}

/// What an entry installs.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A wasm component.
    Wasm(WasmSource),
    /// A Python package in its own environment.
    Python(PythonSource),
    /// A native worker binary.
    Native(NativeSource),
}

/// Where a wasm component comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Component {
    /// A `.wasm` file (absolute).
    File(PathBuf),
    /// A cargo package built with `cargo build --release --target wasm32-wasip2 --lib -p
    /// <package>` in its workspace.
    Cargo(CargoPackage),
}

/// A cargo package an entry is built from (`cargo:`, `workspace:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CargoPackage {
    /// The package.
    pub package: String,
    /// Where cargo runs (absolute; the file's directory unless `workspace:` says).
    pub workspace: PathBuf,
}

/// A `kind: wasm` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmSource {
    /// The component.
    pub component: Component,
    /// Its grants (`install.wasm.sandbox`).
    pub sandbox: Sandbox,
}

/// A `kind: python` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PythonSource {
    /// The pip spec (a name with an optional version clause, a git URL, a path made
    /// absolute).
    pub package: String,
    /// The environment's name (its directory under `envs/`, and `install.conda_env`).
    pub env_name: String,
    /// A Python version (`3.12`) or an interpreter path.
    pub python: Option<String>,
    /// A conda environment file (conda-like managers only).
    pub env_file: Option<PathBuf>,
    /// The environment manager for this entry (default: see the install module).
    pub env_manager: Option<EnvManager>,
    /// More pip specs installed into the env.
    pub interface_libs: Vec<String>,
    /// Task adapters to register from the same env.
    pub adapters: Vec<AdapterEntry>,
    /// The cjm-substrate spec (default: the release this host is tested against).
    pub substrate: Option<String>,
}

/// An `adapters:` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterEntry {
    /// `module:ClassName`.
    pub impl_spec: String,
    /// The pip spec of the library providing it, when not the capability's package.
    pub lib: Option<String>,
}

/// A `kind: native` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeSource {
    /// The argv; a program with a `/` is resolved against the file's directory. For a
    /// `cargo:` entry, the built binary once prepared (empty before).
    pub command: Vec<String>,
    /// The package whose binary is the worker (`cargo build --release --bins -p
    /// <package>`), instead of a `command`.
    pub cargo: Option<CargoPackage>,
}

/// One problem of a `capabilities.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The entry: `capabilities[i] (name)`, or `<root>`.
    pub entry: String,
    /// The field (`component`, `adapters[0].impl`, or empty for the entry itself).
    pub field: String,
    /// What was expected and found.
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.entry, self.message)
        } else {
            write!(f, "{}: {}: {}", self.entry, self.field, self.message)
        }
    }
}

/// Reads and validates `path`; every problem is listed in the error.
pub fn load(path: &Path) -> Result<CapabilitiesFile, super::InstallError> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    parse(path, &text)
}

/// Validates `text` (the content of `path`); every problem is listed in the error.
pub fn parse(path: &Path, text: &str) -> Result<CapabilitiesFile, super::InstallError> {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(
            || std::env::current_dir().unwrap_or_default(),
            Path::to_path_buf,
        );
    let base = if base.is_absolute() {
        base
    } else {
        std::env::current_dir().unwrap_or_default().join(base)
    };
    let (entries, problems) = check(&base, text);
    if problems.is_empty() {
        Ok(CapabilitiesFile {
            path: path.to_owned(),
            entries,
        })
    } else {
        Err(super::InstallError::InvalidCapabilitiesFile {
            path: path.to_owned(),
            problems,
        })
    }
}

/// Capability and env names: they become file and directory names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

mod check;
#[cfg(test)]
mod tests;

pub use check::check;
