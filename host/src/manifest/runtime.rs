//! The `install.runtime` extension of v2.0 manifests: how a capability runs, and for wasm
//! components the sandbox grants.
//!
//! ```json
//! "install": {
//!   "runtime": "wasm",
//!   "wasm": {
//!     "component": "components/text-stats.wasm",
//!     "sha256": "sha256:<hex>",
//!     "sandbox": {
//!       "preopens": [{"host": "/srv/in", "guest": "/in", "mode": "ro"}],
//!       "env": ["LANG"],
//!       "memory_limit_mb": 256,
//!       "time_limit_seconds": 30.0,
//!       "capture_output": true,
//!       "network": "none",
//!       "pool_size": 2,
//!       "max_concurrency": 2
//!     }
//!   }
//! }
//! "install": {"runtime": "native", "native": {"command": ["/opt/tool/bin/worker", "--quiet"]}}
//! ```
//!
//! `runtime` absent means `python` (every manifest cjm-substrate writes). The `wasm` and
//! `native` blocks, and everything inside them, are *closed*: an unknown key there is an
//! error, because a misspelt grant (`"mdoe": "rw"`) must never silently change what a
//! sandbox allows. Every grant defaults to *deny*: no preopened dirs, no env vars, no network.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a capability runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A Python capability served by the cjm-substrate worker (the default of v2.0 manifests).
    #[default]
    Python,
    /// A wasm component run in the host's sandbox.
    Wasm,
    /// A native binary serving the worker contract (for example built on cjm-native-worker).
    Native,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Python => "python",
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Native => "native",
        })
    }
}

/// `install.wasm`: the component and its sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmInstall {
    /// The component file. A relative path is relative to the manifest file's directory.
    pub component: PathBuf,
    /// `"sha256:<hex>"` of the component file: the key of the precompiled-component cache,
    /// and checked before the component is loaded.
    pub sha256: String,
    /// What the component may touch.
    #[serde(default)]
    pub sandbox: Sandbox,
}

impl WasmInstall {
    /// The component path, relative paths resolved against `manifest_dir`.
    pub fn component_path(&self, manifest_dir: &Path) -> PathBuf {
        if self.component.is_absolute() {
            self.component.clone()
        } else {
            manifest_dir.join(&self.component)
        }
    }
}

/// `install.native`: a binary serving the worker contract (for example one built on
/// cjm-native-worker). The host appends `--fd <N> --ppid <pid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeInstall {
    /// The argv: program first, then its arguments. A relative program path is relative to
    /// the manifest file's directory; a bare name is looked up on `PATH`.
    pub command: Vec<String>,
}

impl NativeInstall {
    /// The program it runs: [`resolve_program`] of `command[0]` against `manifest_dir`, the
    /// manifest file's directory. `None` when the command is empty or there is no such file.
    pub fn program(&self, manifest_dir: &Path) -> Option<PathBuf> {
        resolve_program(self.command.first()?, manifest_dir)
    }
}

/// Where a command's program is, the one rule for native commands: a path (it has a `/`)
/// relative to `base` unless absolute, a bare name looked up on `PATH`. `None` when there is
/// no such file.
pub fn resolve_program(program: &str, base: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let path = base.join(program);
        return path.is_file().then_some(path);
    }
    which::which(program).ok()
}

/// The grants of a wasm component. The default grants nothing beyond computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// Host directories the guest may see, each at a guest path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preopens: Vec<Preopen>,
    /// Names of host environment variables passed through to the guest (values are read at
    /// instantiation; nothing else of the host environment is visible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Names of this capability's secrets (`cjm-ctl set-secret`) the guest sees as
    /// environment variables; no other secret reaches it, and a secret it is not granted is
    /// refused when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Linear-memory limit per instance, in MiB (`None`: the host's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    /// Wall-clock limit per call, in seconds (`None`: the host's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_seconds: Option<f64>,
    /// Whether the guest's stdout and stderr are captured into the diagnostics store (true)
    /// or discarded.
    #[serde(default = "default_true")]
    pub capture_output: bool,
    /// Network access: `none`, the default and the only grant a wasm capability gets (the
    /// host refuses to load one asking for `loopback` or `any`, naming why).
    #[serde(default)]
    pub network: NetworkGrant,
    /// Instances kept ready in the pool.
    #[serde(default = "default_one")]
    pub pool_size: u32,
    /// Calls allowed at once on this capability (each on its own instance).
    #[serde(default = "default_one")]
    pub max_concurrency: u32,
    /// Whether an instance serves many calls (`reuse`, the default: what a guest keeps in
    /// memory carries from one call to the next) or one (`per_call`: every call gets a
    /// fresh, initialized instance and nothing carries between callers).
    #[serde(default, skip_serializing_if = "Isolation::is_reuse")]
    pub isolation: Isolation,
    /// The largest result a call may return, in bytes (`None`: the host's default, 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<u64>,
    /// The largest progress or log message kept, in bytes; longer ones are cut (`None`: the
    /// host's default, 16 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    /// Log records and captured output lines stored per second per instance; the rest are
    /// dropped and counted (`None`: the host's default, 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_records_per_second: Option<u32>,
}

impl Sandbox {
    /// Every key of the block, in the order the manifest reference lists them: the one list
    /// the capabilities file and the manifest validator check grants against.
    pub const KEYS: &'static [&'static str] = &[
        "preopens",
        "env",
        "secrets",
        "memory_limit_mb",
        "time_limit_seconds",
        "capture_output",
        "network",
        "pool_size",
        "max_concurrency",
        "isolation",
        "max_result_bytes",
        "max_message_bytes",
        "log_records_per_second",
    ];
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            preopens: Vec::new(),
            env: Vec::new(),
            secrets: Vec::new(),
            memory_limit_mb: None,
            time_limit_seconds: None,
            capture_output: true,
            network: NetworkGrant::None,
            pool_size: 1,
            max_concurrency: 1,
            isolation: Isolation::Reuse,
            max_result_bytes: None,
            max_message_bytes: None,
            log_records_per_second: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_one() -> u32 {
    1
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    /// The host directory. `${CJM_CAPABILITY_DATA_DIR}`, `${CAPABILITY_DATA_DIR}`,
    /// `${CJM_MODELS_DIR}` and `${CAPABILITY_NAME}` are expanded by the host at
    /// instantiation ([`expand_placeholders`]).
    pub host: String,
    /// Where the guest sees it (an absolute guest path such as `/in`).
    pub guest: String,
    /// Read-only (the default) or read-write.
    #[serde(default)]
    pub mode: DirAccess,
}

/// Access to a preopened directory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DirAccess {
    /// Read files and list directories only.
    #[default]
    #[serde(rename = "ro", alias = "read_only")]
    ReadOnly,
    /// Also create, write and remove.
    #[serde(rename = "rw", alias = "read_write")]
    ReadWrite,
}

/// Network access of a wasm component.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NetworkGrant {
    /// No sockets, no name lookups (the default).
    #[default]
    None,
    /// Sockets to loopback addresses only (refused for wasm capabilities).
    Loopback,
    /// Any address, and name lookups (refused for wasm capabilities).
    Any,
}

/// How many calls one wasm instance serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// An instance returns to the pool after a call and serves the next (the default).
    #[default]
    Reuse,
    /// Every call runs on a fresh instance, initialized with the current configuration and
    /// dropped after the call: no guest state is shared between calls.
    PerCall,
}

impl Isolation {
    fn is_reuse(&self) -> bool {
        *self == Isolation::Reuse
    }
}

/// The placeholder names a worker-env default or a preopen host path may use (cjm-substrate's
/// `WORKER_ENV_TEMPLATE_PLACEHOLDERS`).
pub const PLACEHOLDERS: &[&str] = &[
    "CJM_MODELS_DIR",
    "CJM_CAPABILITY_DATA_DIR",
    "CAPABILITY_DATA_DIR",
    "CAPABILITY_NAME",
];

/// The placeholder names `template` references, in Python `string.Template` syntax
/// (`$NAME` or `${NAME}`; `$$` is a literal dollar).
pub fn placeholders_in(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => break,
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if !name.is_empty() {
            names.push(name.to_owned());
        }
        rest = after;
    }
    names
}

/// Expands `$NAME` / `${NAME}` in `template` from `lookup`; `None` when a referenced name has
/// no value (the caller reports which).
pub fn expand_placeholders(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}')?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(&lookup(name)?);
        }
        rest = after;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sandbox_defaults_deny_everything() {
        let s: Sandbox = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, Sandbox::default());
        assert!(s.preopens.is_empty() && s.env.is_empty());
        assert_eq!(s.network, NetworkGrant::None);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"capture_output": true, "network": "none", "pool_size": 1, "max_concurrency": 1})
        );
    }

    #[test]
    fn preopen_modes_read_both_spellings() {
        let p: Preopen =
            serde_json::from_value(json!({"host": "/a", "guest": "/b", "mode": "read_write"}))
                .unwrap();
        assert_eq!(p.mode, DirAccess::ReadWrite);
        assert_eq!(serde_json::to_value(&p).unwrap()["mode"], "rw");
        let p: Preopen = serde_json::from_value(json!({"host": "/a", "guest": "/b"})).unwrap();
        assert_eq!(p.mode, DirAccess::ReadOnly);
    }

    #[test]
    fn placeholders_follow_python_template_syntax() {
        assert_eq!(
            placeholders_in("${CJM_MODELS_DIR}/x/$CAPABILITY_NAME-$$y"),
            ["CJM_MODELS_DIR", "CAPABILITY_NAME"]
        );
        let lookup = |n: &str| (n == "CJM_MODELS_DIR").then(|| "/m".to_owned());
        assert_eq!(
            expand_placeholders("${CJM_MODELS_DIR}/a$$b", lookup).as_deref(),
            Some("/m/a$b")
        );
        assert_eq!(expand_placeholders("$CAPABILITY_NAME", lookup), None);
    }

    #[test]
    fn relative_components_resolve_against_the_manifest_dir() {
        let w = WasmInstall {
            component: "c/x.wasm".into(),
            sha256: String::new(),
            sandbox: Sandbox::default(),
        };
        assert_eq!(
            w.component_path(Path::new("/d/manifests")),
            Path::new("/d/manifests/c/x.wasm")
        );
    }
}
