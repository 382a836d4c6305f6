//! Checking a capabilities file: every entry's keys and values against the schema of its
//! kind, every problem listed with its entry and field.

use super::*;

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
        let name = self.name(label, obj);
        let kind = self.kind(label, obj);
        let env_vars = self.env_vars(label, obj);
        let kind = kind?;
        self.unknown_keys(label, kind, obj);
        let source = match kind {
            "wasm" => self.wasm(label, obj).map(Source::Wasm),
            "native" => self.native(label, obj).map(Source::Native),
            _ => self.python(label, obj, name.as_deref()).map(Source::Python),
        };
        if self.problems.len() != before {
            return None;
        }
        let raw = resolved_raw(obj, source.as_ref());
        Some(Entry {
            name: name?,
            source: source?,
            env_vars,
            raw: Value::Object(raw),
        })
    }

    /// The entry's `name`, valid and present.
    fn name(&mut self, label: &str, obj: &Map<String, Value>) -> Option<String> {
        match obj.get("name") {
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
        }
    }

    /// The entry's `kind` (python when absent, as cjm-substrate's files have none).
    fn kind(&mut self, label: &str, obj: &Map<String, Value>) -> Option<&'static str> {
        match obj.get("kind") {
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
        }
    }

    /// Every key that is not one of `kind`'s, named with the kind it belongs to when it is
    /// another kind's.
    fn unknown_keys(&mut self, label: &str, kind: &str, obj: &Map<String, Value>) {
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

/// The entry as given, with its paths made absolute (what the install record keeps).
fn resolved_raw(obj: &Map<String, Value>, source: Option<&Source>) -> Map<String, Value> {
    let mut raw = obj.clone();
    match source {
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
    raw
}
