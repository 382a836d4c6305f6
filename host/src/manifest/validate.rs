//! Validation of manifest JSON: every problem, each with its JSON field path and what was
//! expected, before any typed parsing.
//!
//! Which levels are open (unknown keys kept and written back) and which are closed (unknown
//! keys are errors):
//!
//! | level | | why |
//! |---|---|---|
//! | top level, `install`, `code`, `code.resources`, `code.worker_env[]`, `code.structural_surface`, `drift_tracking` | open | written by the Python tools, which add fields over versions (`mode`, `resolved`, `observability_class` came late) and whose own reader ignores unknown keys: a manifest from a newer Python must still load |
//! | `overrides`, `code.config_schema`, `adapter.config_schema` | free-form | an operator overlay and JSON Schemas |
//! | `install.wasm`, `install.wasm.sandbox`, `install.wasm.sandbox.preopens[]`, `install.native` | closed | this host's own grants: a misspelt grant must not silently change what a sandbox allows |
//! | `code.structural_surface.methods[]`, `protocol_members.methods[]` | closed | the typed method record (`name`, `signature`, `params`, and cjm's `params_schema`: the JSON Schema of a typed method's arguments) would otherwise drop the key when written back |
//! | adapter top level, `protocol_members` | open | as for capability manifests |

use std::fmt;

use serde_json::{Map, Value};

use super::hash::is_sha256_hash;
use super::runtime::{PLACEHOLDERS, placeholders_in};

/// One problem of a manifest: the JSON path of the field and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    /// JSON path of the field (`install.wasm.sandbox.preopens[0].guest`; `<root>` for the
    /// document itself).
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

impl ManifestProblem {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestProblem {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The problems joined with `; ` (for one-line error messages).
    pub fn join(problems: &[ManifestProblem]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The JSON path of the document root.
pub const ROOT: &str = "<root>";

#[derive(Clone, Copy)]
enum Ty {
    /// A string.
    Str,
    /// A non-empty string.
    NonEmptyStr,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A `"sha256:<hex>"` string.
    Sha256,
    Bool,
    /// A number > 0.
    PositiveNumber,
    /// An integer >= 1.
    PositiveInt,
    /// Any object.
    AnyObject,
    /// An object of strings.
    StrMap,
    /// An array of strings.
    StrList,
    /// A non-empty array of non-empty strings.
    NonEmptyStrList,
    /// Any array.
    AnyArray,
    /// An object checked against a section.
    Object(&'static Section),
    /// An array of objects, each checked against a section.
    ArrayOf(&'static Section),
    /// `null` or the type.
    Nullable(&'static Ty),
}

struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
    }
}

const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
    }
}

struct Section {
    fields: &'static [Field],
    closed: bool,
}

static METHOD: Section = Section {
    fields: &[
        req("name", Ty::NonEmptyStr),
        opt("signature", Ty::Str),
        opt("params", Ty::StrList),
        opt("params_schema", Ty::AnyObject),
    ],
    closed: true,
};

static SURFACE: Section = Section {
    fields: &[
        opt("methods", Ty::ArrayOf(&METHOD)),
        opt("properties", Ty::StrList),
        opt("attributes", Ty::AnyArray),
    ],
    closed: false,
};

static RESOURCES: Section = Section {
    fields: &[
        opt("requires_gpu", Ty::Bool),
        opt("platforms", Ty::StrList),
        opt("accelerators", Ty::StrList),
    ],
    closed: false,
};

static ENV_SPEC: Section = Section {
    fields: &[
        req("name", Ty::NonEmptyStr),
        opt("secret", Ty::Bool),
        opt("required", Ty::Bool),
        opt("label", Ty::Str),
        opt("description", Ty::Str),
        opt("default", Ty::Nullable(&Ty::Str)),
        opt("options", Ty::Nullable(&Ty::StrList)),
    ],
    closed: false,
};

static PREOPEN: Section = Section {
    fields: &[
        req("host", Ty::NonEmptyStr),
        req("guest", Ty::NonEmptyStr),
        opt("mode", Ty::OneOf(&["ro", "rw", "read_only", "read_write"])),
    ],
    closed: true,
};

static SANDBOX: Section = Section {
    fields: &[
        opt("preopens", Ty::ArrayOf(&PREOPEN)),
        opt("env", Ty::StrList),
        opt("secrets", Ty::StrList),
        opt("memory_limit_mb", Ty::Nullable(&Ty::PositiveInt)),
        opt("time_limit_seconds", Ty::Nullable(&Ty::PositiveNumber)),
        opt("capture_output", Ty::Bool),
        opt("network", Ty::OneOf(&["none", "loopback", "any"])),
        opt("pool_size", Ty::PositiveInt),
        opt("max_concurrency", Ty::PositiveInt),
        opt("isolation", Ty::OneOf(&["reuse", "per_call"])),
        opt("max_result_bytes", Ty::Nullable(&Ty::PositiveInt)),
        opt("max_message_bytes", Ty::Nullable(&Ty::PositiveInt)),
        opt("log_records_per_second", Ty::Nullable(&Ty::PositiveInt)),
    ],
    closed: true,
};

static WASM: Section = Section {
    fields: &[
        req("component", Ty::NonEmptyStr),
        req("sha256", Ty::Sha256),
        opt("sandbox", Ty::Object(&SANDBOX)),
    ],
    closed: true,
};

static NATIVE: Section = Section {
    fields: &[req("command", Ty::NonEmptyStrList)],
    closed: true,
};

static INSTALL: Section = Section {
    fields: &[
        opt("python_path", Ty::Str),
        opt("conda_env", Ty::Str),
        opt("db_path", Ty::Str),
        opt("env_vars", Ty::StrMap),
        opt("installed_at", Ty::Str),
        opt("installer_version", Ty::Str),
        opt("package_source", Ty::Str),
        opt("mode", Ty::OneOf(&["", "dev", "distribution"])),
        opt("resolved", Ty::StrMap),
        opt("refreshed_at", Ty::Str),
        opt("runtime", Ty::OneOf(&["python", "wasm", "native"])),
        opt("wasm", Ty::Object(&WASM)),
        opt("native", Ty::Object(&NATIVE)),
    ],
    closed: false,
};

static CODE: Section = Section {
    fields: &[
        req("name", Ty::NonEmptyStr),
        req("version", Ty::NonEmptyStr),
        opt("description", Ty::Str),
        opt("module", Ty::Str),
        opt("class", Ty::Str),
        opt("resources", Ty::Nullable(&Ty::Object(&RESOURCES))),
        opt("config_schema", Ty::Nullable(&Ty::AnyObject)),
        opt("worker_env", Ty::Nullable(&Ty::ArrayOf(&ENV_SPEC))),
        opt("regenerated_at", Ty::Nullable(&Ty::Str)),
        opt("structural_surface", Ty::Nullable(&Ty::Object(&SURFACE))),
        opt(
            "observability_class",
            Ty::Nullable(&Ty::OneOf(&["full", "ambient"])),
        ),
    ],
    closed: false,
};

static DRIFT: Section = Section {
    fields: &[
        opt("config_schema_hash", Ty::Nullable(&Ty::Sha256)),
        opt("structural_surface_hash", Ty::Nullable(&Ty::Sha256)),
    ],
    closed: false,
};

static CAPABILITY: Section = Section {
    fields: &[
        req("format_version", Ty::Str),
        req("install", Ty::Object(&INSTALL)),
        req("code", Ty::Object(&CODE)),
        opt("drift_tracking", Ty::Nullable(&Ty::Object(&DRIFT))),
        opt("overrides", Ty::Nullable(&Ty::AnyObject)),
    ],
    closed: false,
};

static PROTOCOL: Section = Section {
    fields: &[
        opt("methods", Ty::ArrayOf(&METHOD)),
        opt("properties", Ty::StrList),
    ],
    closed: false,
};

static ADAPTER: Section = Section {
    fields: &[
        req("unit", Ty::OneOf(&["adapter"])),
        req("name", Ty::NonEmptyStr),
        opt("version", Ty::Str),
        req("task_name", Ty::NonEmptyStr),
        req("module", Ty::NonEmptyStr),
        req("class", Ty::NonEmptyStr),
        opt("required_tool_protocol", Ty::Str),
        opt("protocol_members", Ty::Object(&PROTOCOL)),
        opt("config_schema", Ty::AnyObject),
        opt("generated_at", Ty::Str),
        opt("conda_env", Ty::Str),
    ],
    closed: false,
};

/// Every problem of a v2.0 capability manifest document (`format_version` is checked by
/// the loader before this).
pub fn check_capability(doc: &Value) -> Vec<ManifestProblem> {
    let mut c = Checker::default();
    if c.check(doc, &Ty::Object(&CAPABILITY), ROOT) {
        c.capability_semantics(doc);
    }
    c.problems
}

/// Every problem of an adapter manifest document.
pub fn check_adapter(doc: &Value) -> Vec<ManifestProblem> {
    let mut c = Checker::default();
    c.check(doc, &Ty::Object(&ADAPTER), ROOT);
    c.problems
}

#[derive(Default)]
struct Checker {
    problems: Vec<ManifestProblem>,
}

fn join(path: &str, key: &str) -> String {
    if path == ROOT {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// How a value is described in a message: its JSON type, and short scalars verbatim.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.chars().count() <= 40 => format!("a string ({s:?})"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

impl Checker {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ManifestProblem::new(field, message));
    }

    fn expected(&mut self, path: &str, what: &str, found: &Value) {
        self.push(path, format!("expected {what}, found {}", describe(found)));
    }

    /// `ok`, or a problem saying `what` was expected at `path`.
    fn ensure(&mut self, ok: bool, path: &str, what: &str, found: &Value) -> bool {
        if !ok {
            self.expected(path, what, found);
        }
        ok
    }

    /// Checks `v` against `ty`; true when its type is right (inner problems may remain).
    fn check(&mut self, v: &Value, ty: &Ty, path: &str) -> bool {
        match *ty {
            Ty::Str => self.string(v, path, "a string").is_some(),
            Ty::NonEmptyStr => match self.string(v, path, "a non-empty string") {
                Some(s) if s.trim().is_empty() => {
                    self.push(path, "expected a non-empty string, found an empty one");
                    false
                }
                Some(_) => true,
                None => false,
            },
            Ty::OneOf(choices) => {
                let list = choices
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let ok = v.as_str().is_some_and(|s| choices.contains(&s));
                self.ensure(ok, path, &format!("one of {list}"), v)
            }
            Ty::Sha256 => self.ensure(
                v.as_str().is_some_and(is_sha256_hash),
                path,
                "a hash of the form \"sha256:<64 lowercase hex digits>\"",
                v,
            ),
            Ty::Bool => self.ensure(v.is_boolean(), path, "a boolean", v),
            Ty::PositiveNumber => self.ensure(
                v.as_f64().is_some_and(|f| f > 0.0),
                path,
                "a number greater than 0",
                v,
            ),
            Ty::PositiveInt => self.ensure(
                v.as_u64()
                    .is_some_and(|n| n >= 1 && n <= u64::from(u32::MAX)),
                path,
                "an integer from 1 to 4294967295",
                v,
            ),
            Ty::AnyObject => self.ensure(v.is_object(), path, "an object", v),
            Ty::StrMap => match v.as_object() {
                Some(map) => {
                    for (k, item) in map {
                        if !item.is_string() {
                            self.expected(&join(path, k), "a string", item);
                        }
                    }
                    true
                }
                None => {
                    self.expected(path, "an object of strings", v);
                    false
                }
            },
            Ty::StrList | Ty::NonEmptyStrList => match v.as_array() {
                Some(items) => {
                    let non_empty = matches!(ty, Ty::NonEmptyStrList);
                    if non_empty && items.is_empty() {
                        self.push(
                            path,
                            "expected a non-empty array of strings, found an empty array",
                        );
                        return false;
                    }
                    for (i, item) in items.iter().enumerate() {
                        let p = format!("{path}[{i}]");
                        if non_empty {
                            self.check(item, &Ty::NonEmptyStr, &p);
                        } else if !item.is_string() {
                            self.expected(&p, "a string", item);
                        }
                    }
                    true
                }
                None => {
                    self.expected(path, "an array of strings", v);
                    false
                }
            },
            Ty::AnyArray => self.ensure(v.is_array(), path, "an array", v),
            Ty::Object(section) => match v.as_object() {
                Some(map) => {
                    self.section(map, section, path);
                    true
                }
                None => {
                    self.expected(path, "an object", v);
                    false
                }
            },
            Ty::ArrayOf(section) => match v.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, &Ty::Object(section), &format!("{path}[{i}]"));
                    }
                    true
                }
                None => {
                    self.expected(path, "an array of objects", v);
                    false
                }
            },
            Ty::Nullable(inner) => v.is_null() || self.check(v, inner, path),
        }
    }

    fn string<'v>(&mut self, v: &'v Value, path: &str, what: &str) -> Option<&'v str> {
        let s = v.as_str();
        if s.is_none() {
            self.expected(path, what, v);
        }
        s
    }

    fn section(&mut self, map: &Map<String, Value>, section: &Section, path: &str) {
        for field in section.fields {
            match map.get(field.name) {
                Some(v) => {
                    self.check(v, &field.ty, &join(path, field.name));
                }
                None if field.required => {
                    self.push(join(path, field.name), "required field is missing");
                }
                None => {}
            }
        }
        if section.closed {
            let known: Vec<&str> = section.fields.iter().map(|f| f.name).collect();
            for key in map.keys() {
                if !known.contains(&key.as_str()) {
                    self.push(
                        join(path, key),
                        format!("unknown field; expected only {}", known.join(", ")),
                    );
                }
            }
        }
    }

    /// Rules across fields, run once the document has the right shape at the top.
    fn capability_semantics(&mut self, doc: &Value) {
        let empty = Map::new();
        let install = doc
            .get("install")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let code = doc.get("code").and_then(Value::as_object).unwrap_or(&empty);
        let runtime = install
            .get("runtime")
            .and_then(Value::as_str)
            .unwrap_or("python");
        let str_of = |m: &Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
        };

        match runtime {
            "python" => {
                if str_of(install, "python_path") {
                    self.push("install.python_path", "expected the path of the env's python for runtime \"python\", found it missing or empty");
                }
                for key in ["module", "class", "description"] {
                    if str_of(code, key) {
                        self.push(format!("code.{key}"), "expected a non-empty string for runtime \"python\", found it missing or empty");
                    }
                }
            }
            "wasm" if !install.contains_key("wasm") => {
                self.push("install.wasm", "required field is missing for runtime \"wasm\" (expected {\"component\", \"sha256\", \"sandbox\"})");
            }
            "native" if !install.contains_key("native") => {
                self.push("install.native", "required field is missing for runtime \"native\" (expected {\"command\": [...]})");
            }
            _ => {}
        }
        for block in ["wasm", "native"] {
            if install.contains_key(block) && runtime != block {
                self.push(
                    format!("install.{block}"),
                    format!("unexpected for runtime {runtime:?}; expected install.runtime to be {block:?}"),
                );
            }
        }

        if let Some(sandbox) = install
            .get("wasm")
            .and_then(|w| w.get("sandbox"))
            .and_then(Value::as_object)
        {
            self.sandbox_semantics(sandbox);
        }

        if let Some(specs) = code.get("worker_env").and_then(Value::as_array) {
            for (i, spec) in specs.iter().enumerate() {
                let secret = spec.get("secret").and_then(Value::as_bool).unwrap_or(false);
                match spec.get("default") {
                    Some(Value::String(d)) if secret && !d.is_empty() => {
                        self.push(format!("code.worker_env[{i}].default"), "expected no default for a secret variable (a baked-in secret is a leak)");
                    }
                    Some(Value::String(d)) => {
                        let unknown: Vec<String> = placeholders_in(d)
                            .into_iter()
                            .filter(|p| !PLACEHOLDERS.contains(&p.as_str()))
                            .collect();
                        if !unknown.is_empty() {
                            self.push(
                                format!("code.worker_env[{i}].default"),
                                format!("unknown placeholder(s) {unknown:?}; expected only {PLACEHOLDERS:?}"),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn sandbox_semantics(&mut self, sandbox: &Map<String, Value>) {
        let base = "install.wasm.sandbox";
        if let Some(preopens) = sandbox.get("preopens").and_then(Value::as_array) {
            let mut seen: Vec<&str> = Vec::new();
            for (i, p) in preopens.iter().enumerate() {
                if let Some(guest) = p.get("guest").and_then(Value::as_str) {
                    if !guest.starts_with('/') {
                        self.push(
                            format!("{base}.preopens[{i}].guest"),
                            format!(
                                "expected an absolute guest path (starting with /), found {guest:?}"
                            ),
                        );
                    }
                    if seen.contains(&guest) {
                        self.push(
                            format!("{base}.preopens[{i}].guest"),
                            format!("expected each guest path once, found {guest:?} again"),
                        );
                    }
                    seen.push(guest);
                }
                if let Some(host) = p.get("host").and_then(Value::as_str) {
                    let unknown: Vec<String> = placeholders_in(host)
                        .into_iter()
                        .filter(|n| !PLACEHOLDERS.contains(&n.as_str()))
                        .collect();
                    if !unknown.is_empty() {
                        self.push(
                            format!("{base}.preopens[{i}].host"),
                            format!(
                                "unknown placeholder(s) {unknown:?}; expected only {PLACEHOLDERS:?}"
                            ),
                        );
                    }
                }
            }
        }
        // Both become environment variables of the guest.
        for key in ["env", "secrets"] {
            let Some(names) = sandbox.get(key).and_then(Value::as_array) else {
                continue;
            };
            for (i, name) in names.iter().enumerate() {
                if let Some(name) = name.as_str() {
                    let valid = !name.is_empty()
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        self.push(format!("{base}.{key}[{i}]"), format!("expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*), found {name:?}"));
                    }
                }
            }
        }
        let pool = sandbox.get("pool_size").and_then(Value::as_u64);
        let conc = sandbox.get("max_concurrency").and_then(Value::as_u64);
        if let (Some(pool), Some(conc)) = (pool, conc)
            && pool > conc
        {
            self.push(
                format!("{base}.pool_size"),
                format!("expected at most max_concurrency ({conc}) instances, found {pool}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
