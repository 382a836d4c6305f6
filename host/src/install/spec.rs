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

/// Checks `text`, resolving relative paths against `base`: the valid entries and every
/// problem found.
pub fn check(base: &Path, text: &str) -> (Vec<Entry>, Vec<SpecProblem>) {
    let mut c = Checker {
        problems: Vec::new(),
        base: base.to_owned(),
    };
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let doc: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        match serde_saphyr::from_str_with_options(text, options) {
            Ok(v) => v,
            Err(e) => {
                c.push("<root>", "", format!("not valid YAML: {e}"));
                return (Vec::new(), c.problems);
            }
        }
    };
    let Some(root) = doc.as_object() else {
        c.push(
            "<root>",
            "",
            format!(
                "expected a mapping with a `capabilities:` list, found {}",
                type_name(&doc)
            ),
        );
        return (Vec::new(), c.problems);
    };
    for key in root.keys() {
        if key != "capabilities" {
            c.push(
                "<root>",
                key,
                "unknown key (expected only `capabilities`)".into(),
            );
        }
    }
    let list = match root.get("capabilities") {
        None => {
            c.push("<root>", "capabilities", "required field is missing".into());
            return (Vec::new(), c.problems);
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            c.push(
                "<root>",
                "capabilities",
                format!("expected a list, found {}", type_name(other)),
            );
            return (Vec::new(), c.problems);
        }
    };
    let mut seen = BTreeSet::new();
    let mut entries = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let label = match item.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => format!("capabilities[{i}] ({name})"),
            _ => format!("capabilities[{i}]"),
        };
        if let Some(name) = item.get("name").and_then(Value::as_str)
            && !name.is_empty()
            && !seen.insert(name.to_owned())
        {
            c.push(
                &label,
                "name",
                format!("duplicate capability name {name:?}"),
            );
        }
        if let Some(entry) = c.entry(&label, item) {
            entries.push(entry);
        }
    }
    (entries, c.problems)
}

struct Checker {
    problems: Vec<SpecProblem>,
    base: PathBuf,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

impl Checker {
    fn push(&mut self, entry: &str, field: &str, message: String) {
        self.problems.push(SpecProblem {
            entry: entry.to_owned(),
            field: field.to_owned(),
            message,
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        // `components()` drops the `.` segments (`./pkg` -> `pkg`).
        let joined = if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        };
        joined.components().collect()
    }

    fn string(&mut self, label: &str, obj: &Map<String, Value>, key: &str) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.push(label, key, "expected a non-empty string".into());
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            // A YAML `python_version: 3.12` reads as a number: take it as written.
            Some(Value::Number(n)) if key == "python_version" || key == "python" => {
                Some(n.to_string())
            }
            Some(other) => {
                self.push(
                    label,
                    key,
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn string_list(&mut self, label: &str, obj: &Map<String, Value>, key: &str) -> Vec<String> {
        match obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        other => self.push(
                            label,
                            &format!("{key}[{i}]"),
                            format!("expected a non-empty string, found {}", type_name(other)),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.push(
                    label,
                    key,
                    format!("expected a list of strings, found {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    fn entry(&mut self, label: &str, item: &Value) -> Option<Entry> {
        let Some(obj) = item.as_object() else {
            self.push(
                label,
                "",
                format!(
                    "expected a mapping (name, kind, ...), found {}",
                    type_name(item)
                ),
            );
            return None;
        };
        let before = self.problems.len();
        let name = match obj.get("name") {
            None | Some(Value::Null) => {
                self.push(label, "name", "required field is missing".into());
                None
            }
            Some(Value::String(s)) if valid_name(s) => Some(s.clone()),
            Some(Value::String(s)) => {
                self.push(
                    label,
                    "name",
                    format!(
                        "expected a name of letters, digits, `-`, `_` and `.` (not starting with `.`), found {s:?}"
                    ),
                );
                None
            }
            Some(other) => {
                self.push(
                    label,
                    "name",
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        };
        let kind = match obj.get("kind") {
            None => Some("python"),
            Some(Value::String(k)) if KINDS.contains(&k.as_str()) => {
                KINDS.iter().copied().find(|x| x == k)
            }
            Some(other) => {
                let found = match other {
                    Value::String(s) => format!("{s:?}"),
                    v => type_name(v).to_owned(),
                };
                self.push(
                    label,
                    "kind",
                    format!("unknown kind {found} (expected one of wasm, python, native)"),
                );
                None
            }
        };
        let env_vars = self.env_vars(label, obj);
        let kind = kind?;
        let allowed = keys_of(kind);
        for key in obj.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let other = KINDS
                .iter()
                .find(|k| **k != kind && keys_of(k).contains(&key.as_str()));
            let message = match other {
                Some(k) => format!("unknown key for kind {kind} (it belongs to kind: {k})"),
                None => {
                    let mut keys = allowed.clone();
                    keys.sort_unstable();
                    format!(
                        "unknown key for kind {kind} (expected one of {})",
                        keys.join(", ")
                    )
                }
            };
            self.push(label, key, message);
        }
        let source = match kind {
            "wasm" => self.wasm(label, obj).map(Source::Wasm),
            "native" => self.native(label, obj).map(Source::Native),
            _ => self.python(label, obj, name.as_deref()).map(Source::Python),
        };
        if self.problems.len() != before {
            return None;
        }
        let mut raw = obj.clone();
        match &source {
            Some(Source::Wasm(w)) => {
                if let Component::File(p) = &w.component {
                    raw.insert("component".into(), Value::String(p.display().to_string()));
                }
                if let Component::Cargo(c) = &w.component {
                    raw.insert(
                        "workspace".into(),
                        Value::String(c.workspace.display().to_string()),
                    );
                }
            }
            Some(Source::Python(p)) => {
                raw.insert("package".into(), Value::String(p.package.clone()));
            }
            Some(Source::Native(n)) => match &n.cargo {
                Some(c) => {
                    raw.insert(
                        "workspace".into(),
                        Value::String(c.workspace.display().to_string()),
                    );
                }
                None => {
                    raw.insert(
                        "command".into(),
                        Value::Array(n.command.iter().cloned().map(Value::String).collect()),
                    );
                }
            },
            None => {}
        }
        Some(Entry {
            name: name?,
            source: source?,
            env_vars,
            raw: Value::Object(raw),
        })
    }

    fn env_vars(&mut self, label: &str, obj: &Map<String, Value>) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        match obj.get("env_vars") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        Value::Number(n) => {
                            out.insert(k.clone(), n.to_string());
                        }
                        Value::Bool(b) => {
                            out.insert(k.clone(), b.to_string());
                        }
                        other => self.push(
                            label,
                            &format!("env_vars.{k}"),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
            }
            Some(other) => self.push(
                label,
                "env_vars",
                format!(
                    "expected a mapping of NAME: value, found {}",
                    type_name(other)
                ),
            ),
        }
        out
    }

    fn wasm(&mut self, label: &str, obj: &Map<String, Value>) -> Option<WasmSource> {
        let file = self.string(label, obj, "component");
        let cargo = self.string(label, obj, "cargo");
        let workspace = self.string(label, obj, "workspace");
        let component = match (file, cargo) {
            (Some(_), Some(_)) => {
                self.push(
                    label,
                    "component",
                    "give either `component` (a .wasm file) or `cargo` (a package to build), not both"
                        .into(),
                );
                None
            }
            (None, None) => {
                self.push(
                    label,
                    "component",
                    "required field is missing (give `component: path.wasm` or `cargo: <package>`)"
                        .into(),
                );
                None
            }
            (Some(f), None) => {
                if workspace.is_some() {
                    self.push(label, "workspace", "only meaningful with `cargo`".into());
                }
                Some(Component::File(self.path(&f)))
            }
            (None, Some(package)) => Some(Component::Cargo(CargoPackage {
                package,
                workspace: workspace.map_or_else(|| self.base.clone(), |w| self.path(&w)),
            })),
        };
        let sandbox = self.sandbox(label, obj.get("sandbox"));
        Some(WasmSource {
            component: component?,
            sandbox: sandbox?,
        })
    }

    fn sandbox(&mut self, label: &str, value: Option<&Value>) -> Option<Sandbox> {
        let value = match value {
            None | Some(Value::Null) => return Some(Sandbox::default()),
            Some(v) => v,
        };
        let Some(obj) = value.as_object() else {
            self.push(
                label,
                "sandbox",
                format!("expected a mapping of grants, found {}", type_name(value)),
            );
            return None;
        };
        let mut ok = true;
        for (key, v) in obj {
            if !SANDBOX_KEYS.contains(&key.as_str()) {
                self.push(
                    label,
                    &format!("sandbox.{key}"),
                    format!(
                        "unknown grant (expected one of {})",
                        SANDBOX_KEYS.join(", ")
                    ),
                );
                ok = false;
                continue;
            }
            // Each grant on its own, so every bad one is reported.
            let mut one = Map::new();
            one.insert(key.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<Sandbox>(Value::Object(one)) {
                self.push(label, &format!("sandbox.{key}"), e.to_string());
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        match serde_json::from_value::<Sandbox>(value.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push(label, "sandbox", e.to_string());
                None
            }
        }
    }

    fn native(&mut self, label: &str, obj: &Map<String, Value>) -> Option<NativeSource> {
        let cargo = self.string(label, obj, "cargo");
        let workspace = self.string(label, obj, "workspace");
        match (obj.contains_key("command"), cargo) {
            (true, Some(_)) => {
                self.push(
                    label,
                    "command",
                    "give either `command` (a program) or `cargo` (a package to build), not both"
                        .into(),
                );
                return None;
            }
            (false, Some(package)) => {
                return Some(NativeSource {
                    command: Vec::new(),
                    cargo: Some(CargoPackage {
                        package,
                        workspace: workspace.map_or_else(|| self.base.clone(), |w| self.path(&w)),
                    }),
                });
            }
            (false, None) => {
                self.push(
                    label,
                    "command",
                    "required field is missing (expected [program, args...], or `cargo: <package>`)"
                        .into(),
                );
                return None;
            }
            (true, None) => {
                if workspace.is_some() {
                    self.push(label, "workspace", "only meaningful with `cargo`".into());
                }
            }
        }
        let mut command = self.string_list(label, obj, "command");
        if command.is_empty() {
            if matches!(obj.get("command"), Some(Value::Array(a)) if a.is_empty()) {
                self.push(
                    label,
                    "command",
                    "expected [program, args...], found an empty list".into(),
                );
            }
            return None;
        }
        if command[0].contains('/') {
            command[0] = self.path(&command[0]).display().to_string();
        }
        Some(NativeSource {
            command,
            cargo: None,
        })
    }

    fn python(
        &mut self,
        label: &str,
        obj: &Map<String, Value>,
        name: Option<&str>,
    ) -> Option<PythonSource> {
        let package = match obj.get("package") {
            None | Some(Value::Null) => {
                self.push(
                    label,
                    "package",
                    "required field is missing (a pip spec or a path; for a wasm component or a native binary set `kind`)"
                        .into(),
                );
                None
            }
            _ => self.string(label, obj, "package"),
        };
        let env_name = self.string(label, obj, "env_name");
        if let Some(e) = &env_name
            && !valid_name(e)
        {
            self.push(
                label,
                "env_name",
                format!("expected letters, digits, `-`, `_` and `.`, found {e:?}"),
            );
        }
        let python = match (
            self.string(label, obj, "python_version"),
            self.string(label, obj, "python"),
        ) {
            (Some(_), Some(_)) => {
                self.push(
                    label,
                    "python",
                    "give `python_version` or `python`, not both (they are the same setting)"
                        .into(),
                );
                None
            }
            (a, b) => a.or(b),
        };
        let env_file = self.string(label, obj, "env_file").map(|f| {
            if f.contains("://") {
                PathBuf::from(f)
            } else {
                self.path(&f)
            }
        });
        let env_manager = match self.string(label, obj, "env_manager") {
            None => None,
            Some(m) => {
                let found = [
                    EnvManager::Uv,
                    EnvManager::Venv,
                    EnvManager::Conda,
                    EnvManager::Micromamba,
                    EnvManager::Miniforge,
                ]
                .into_iter()
                .find(|e| e.as_str().eq_ignore_ascii_case(&m));
                if found.is_none() {
                    self.push(
                        label,
                        "env_manager",
                        format!(
                            "expected one of uv, venv, conda, micromamba, miniforge, found {m:?}"
                        ),
                    );
                }
                found
            }
        };
        if env_file.is_some() && matches!(env_manager, Some(EnvManager::Uv | EnvManager::Venv)) {
            self.push(
                label,
                "env_file",
                "a conda environment file needs a conda-like env_manager (conda, micromamba, miniforge)"
                    .into(),
            );
        }
        let interface_libs = self.string_list(label, obj, "interface_libs");
        let adapters = self.adapters(label, obj.get("adapters"));
        let substrate = self.string(label, obj, "substrate");
        let package = package.map(|p| {
            if p.starts_with("./") || p.starts_with("../") || p == "." || p == ".." {
                self.path(&p).display().to_string()
            } else {
                p
            }
        });
        Some(PythonSource {
            package: package?,
            env_name: env_name.or_else(|| name.map(str::to_owned))?,
            python,
            env_file,
            env_manager,
            interface_libs,
            adapters,
            substrate,
        })
    }

    fn adapters(&mut self, label: &str, value: Option<&Value>) -> Vec<AdapterEntry> {
        let items = match value {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.push(
                    label,
                    "adapters",
                    format!(
                        "expected a list of {{impl, lib}}, found {}",
                        type_name(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let field = format!("adapters[{j}]");
            let Some(obj) = item.as_object() else {
                self.push(
                    label,
                    &field,
                    format!(
                        "expected a mapping {{impl: module:Class, lib: spec}}, found {}",
                        type_name(item)
                    ),
                );
                continue;
            };
            for key in obj.keys() {
                if !ADAPTER_KEYS.contains(&key.as_str()) {
                    self.push(
                        label,
                        &format!("{field}.{key}"),
                        "unknown key (expected impl, lib)".into(),
                    );
                }
            }
            let impl_spec = match obj.get("impl") {
                Some(Value::String(s)) if s.contains(':') && !s.starts_with(':') => Some(s.clone()),
                Some(Value::String(s)) => {
                    self.push(
                        label,
                        &format!("{field}.impl"),
                        format!("expected 'module:ClassName', found {s:?}"),
                    );
                    None
                }
                None | Some(Value::Null) => {
                    self.push(
                        label,
                        &format!("{field}.impl"),
                        "required field is missing ('module:ClassName')".into(),
                    );
                    None
                }
                Some(other) => {
                    self.push(
                        label,
                        &format!("{field}.impl"),
                        format!("expected a string, found {}", type_name(other)),
                    );
                    None
                }
            };
            let lib = match obj.get("lib") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    self.push(
                        label,
                        &format!("{field}.lib"),
                        format!("expected a pip spec string, found {}", type_name(other)),
                    );
                    None
                }
            };
            if let Some(impl_spec) = impl_spec {
                out.push(AdapterEntry { impl_spec, lib });
            }
        }
        out
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

#[cfg(test)]
mod tests;
