//! `cjm-ctl new NAME --kind wasm|native|python`: a capability project that builds, installs
//! and runs as generated (its code, a test, and a `capabilities.yaml` naming it).
//!
//! The Rust kinds depend on this cjm's `cjm-guest` (and `cjm-native-worker`) by path: the
//! source tree this `cjm-ctl` was built from, or `--cjm-source`.

use std::path::{Path, PathBuf};

use crate::ctx::{Ctx, hint, usage};

/// What to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A Rust crate built into a wasm component (runs in the sandbox)
    Wasm,
    /// A Rust crate whose binary is a native worker (a subprocess)
    Native,
    /// A Python package on cjm-substrate (a ToolCapability, its own environment)
    Python,
}

/// Options of `new`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    cjm-ctl new word-count                   # a wasm capability in ./word-count\n  \
    cjm-ctl new word-count --kind native     # the same as a native worker\n  \
    cjm-ctl new word-count --kind python     # a cjm-substrate package\n  \
    cd word-count && cjm-ctl install-all --capabilities capabilities.yaml && cjm-ctl run word-count '{\"name\": \"you\"}'")]
pub struct Args {
    /// The capability's name: lowercase letters, digits and `-` (also its crate or package name)
    name: String,
    /// What kind of capability
    #[arg(long, value_enum, default_value = "wasm")]
    kind: Kind,
    /// The directory to create [default: ./NAME]; it must not exist, or be empty
    #[arg(long)]
    path: Option<PathBuf>,
    /// The cjm source tree whose `guest-sdk` and `native-worker` the Rust kinds depend on
    /// [default: the one this cjm-ctl was built from]
    #[arg(long, env = "CJM_SOURCE")]
    cjm_source: Option<PathBuf>,
}

/// Runs `new`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let name = args.name.as_str();
    if !valid(name) {
        return Err(usage(
            format!("'{name}' is not a capability name"),
            "use lowercase letters, digits and '-', starting with a letter (at most 64): word-count",
        ));
    }
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(hint(
            format!("{} exists and is not empty", dir.display()),
            "give another name or --path",
        ));
    }
    let files = match args.kind {
        Kind::Python => python(name),
        rust => {
            let source = cjm_source(args.cjm_source.as_deref())?;
            rust_files(name, rust == Kind::Native, &source)
        }
    };
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if ctx.global.json {
        ctx.out.json(&serde_json::json!({
            "name": name,
            "kind": format!("{:?}", args.kind).to_lowercase(),
            "path": dir.display().to_string(),
            "files": files.iter().map(|(f, _)| f).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    ctx.out.info(format!(
        "created {} capability '{name}' in {}:",
        format!("{:?}", args.kind).to_lowercase(),
        dir.display()
    ));
    for (rel, _) in &files {
        ctx.out.info(format!("  {rel}"));
    }
    let test = match args.kind {
        Kind::Python => "python -m pytest  (with cjm-substrate installed)",
        _ => "cargo test",
    };
    ctx.out.note(format!(
        "next:\n  cd {}\n  {test}\n  cjm-ctl install-all --capabilities capabilities.yaml\n  cjm-ctl run {name} '{{\"name\": \"you\"}}'\n  cjm-ctl info {name}",
        dir.display()
    ));
    Ok(())
}

fn valid(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `word-count` -> `WordCount`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The cjm source tree: given, or the one this binary was built from.
fn cjm_source(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = given.map_or(built_from, Path::to_path_buf);
    let dir = dir.canonicalize().unwrap_or(dir);
    if !dir.join("guest-sdk/Cargo.toml").is_file() {
        return Err(hint(
            format!(
                "{} is not a cjm source tree (no guest-sdk/Cargo.toml)",
                dir.display()
            ),
            "give a checkout of cjm with --cjm-source DIR (or CJM_SOURCE)",
        ));
    }
    Ok(dir)
}

/// The generated crate's `src/lib.rs`, with `@NAME@`, `@SUMMARY@` and `@TY@` (its type's
/// name) to fill in.
const LIB_TEMPLATE: &str = include_str!("../../assets/new/lib.rs.template");

fn rust_files(name: &str, native: bool, source: &Path) -> Vec<(String, String)> {
    let ty = type_name(name);
    let krate = name.replace('-', "_");
    let src = source.display();
    let (lib_section, worker_section, worker_dep, summary) = if native {
        (
            String::new(),
            format!(
                "# The worker the host spawns (`--fd N --ppid PID`, or `--port P` by hand).\n\
                 [[bin]]\nname = \"{name}-worker\"\npath = \"src/main.rs\"\n\n"
            ),
            format!("cjm-native-worker = {{ path = \"{src}/native-worker\" }}\n"),
            "a native worker",
        )
    } else {
        (
            "# A component for the sandbox (cdylib); a library for tests and native use (rlib).\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n"
                .to_owned(),
            String::new(),
            String::new(),
            "a wasm component",
        )
    };
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         {lib_section}{worker_section}[dependencies]\n\
         cjm-guest = {{ path = \"{src}/guest-sdk\" }}\n{worker_dep}\
         serde = {{ version = \"1\", features = [\"derive\"] }}\n\
         serde_json = \"1\"\nschemars = \"1.2\"\n\n\
         # A project of its own, also inside another workspace's directory.\n[workspace]\n"
    );
    let lib = LIB_TEMPLATE
        .replace("@NAME@", name)
        .replace("@SUMMARY@", summary)
        .replace("@TY@", &ty);
    let yaml = if native {
        format!(
            "# cjm-ctl install-all --capabilities capabilities.yaml\ncapabilities:\n  - name: {name}\n    kind: native\n    cargo: {name}   # its {name}-worker binary, built with cargo build --release\n"
        )
    } else {
        format!(
            "# cjm-ctl install-all --capabilities capabilities.yaml\ncapabilities:\n  - name: {name}\n    kind: wasm\n    cargo: {name}   # built with cargo build --release --target wasm32-wasip2\n    sandbox: {{max_concurrency: 2}}\n"
        )
    };
    let mut files = vec![
        ("Cargo.toml".to_owned(), cargo),
        ("src/lib.rs".to_owned(), lib),
        ("capabilities.yaml".to_owned(), yaml),
        (".gitignore".to_owned(), "/target\n".to_owned()),
    ];
    // The versions the cjm tree was built and tested with: the project starts from its lock
    // file (cargo drops what the project does not use).
    if let Ok(lock) = std::fs::read_to_string(source.join("Cargo.lock")) {
        files.push(("Cargo.lock".to_owned(), lock));
    }
    if native {
        files.push((
            "src/main.rs".to_owned(),
            format!(
                "//! `{name}-worker`: the `{name}` capability as a native worker, serving the\n\
                 //! HTTP/JSON worker contract to the host that spawns it.\n\n\
                 fn main() -> std::process::ExitCode {{\n    cjm_native_worker::serve::<{krate}::{ty}>()\n}}\n"
            ),
        ));
    }
    files
}

fn python(name: &str) -> Vec<(String, String)> {
    let ty = type_name(name);
    let module = name.replace('-', "_");
    let pyproject = format!(
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"The {name} cjm capability\"\n\
         requires-python = \">=3.12\"\ndependencies = [\"cjm-substrate\"]\n\n\
         [tool.setuptools]\npackages = [\"{module}\"]\n"
    );
    let capability = format!(
        r#""""`{name}`: a cjm capability (cjm-substrate's ToolCapability).

`execute` says hello; the greeting comes from the configuration. cjm-substrate finds the one
ToolCapability of `{module}.capability`. Replace it with what your capability does.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from cjm_substrate.core.capability import ToolCapability
from cjm_substrate.utils.validation import (SCHEMA_DESC, SCHEMA_TITLE, config_to_dict,
                                            dataclass_to_jsonschema, dict_to_config)

from {module} import __version__


@dataclass
class Config:
    """The configuration of {name}."""

    greeting: str = field(default="Hello", metadata={{SCHEMA_TITLE: "Greeting",
                                                     SCHEMA_DESC: "What to say before the name."}})


class {ty}(ToolCapability):
    """Says hello."""

    config_class = Config

    def __init__(self):
        self.config = Config()

    @property
    def name(self) -> str:
        return "{name}"

    @property
    def version(self) -> str:
        return __version__

    def get_config_schema(self) -> Dict[str, Any]:
        return dataclass_to_jsonschema(Config)

    def get_current_config(self) -> Dict[str, Any]:
        return config_to_dict(self.config)

    def initialize(self, config: Optional[Dict[str, Any]] = None) -> None:
        self.config = dict_to_config(Config, config or {{}}, validate=True)

    def execute(self, name: str, **kwargs) -> Dict[str, Any]:
        return {{"greeting": f"{{self.config.greeting}}, {{name}}!"}}
"#
    );
    let test = format!(
        "from {module}.capability import {ty}\n\n\n\
         def test_greets_with_the_configured_greeting():\n    \
         cap = {ty}()\n    cap.initialize({{\"greeting\": \"Hi\"}})\n    \
         assert cap.execute(name=\"you\") == {{\"greeting\": \"Hi, you!\"}}\n"
    );
    let yaml = format!(
        "# cjm-ctl install-all --capabilities capabilities.yaml\ncapabilities:\n  - name: {name}\n    package: .   # this directory, installed into the capability's own environment\n"
    );
    vec![
        ("pyproject.toml".to_owned(), pyproject),
        (
            format!("{module}/__init__.py"),
            "__version__ = \"0.1.0\"\n".to_owned(),
        ),
        (format!("{module}/capability.py"), capability),
        (format!("tests/test_{module}.py"), test),
        ("capabilities.yaml".to_owned(), yaml),
        (
            ".gitignore".to_owned(),
            "__pycache__/\n*.egg-info/\nbuild/\n".to_owned(),
        ),
    ]
}
