//! `cjm-ctl validate PATH`: a manifest, a capabilities.yaml or a wasm component, every
//! problem listed; exit 1 on any.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cjm_host::Error;
use cjm_host::backend::launch::Launch;
use cjm_host::backend::wasm::{Allocation, SandboxGrants, WasmRuntime};
use cjm_host::backend::{NoDiagnostics, NoEvents};
use cjm_host::install;
use cjm_host::manifest::{self, Manifest, RuntimeKind, hash};
use serde_json::{Value, json};

use crate::ctx::{Ctx, hint};

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A capability or adapter manifest (JSON).
    Manifest,
    /// A capabilities.yaml.
    Capabilities,
    /// A wasm component.
    Component,
}

/// Options of `validate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl validate capabilities.yaml\n  cjm-ctl validate .cjm/manifests/text-stats.json\n  cjm-ctl validate target/wasm32-wasip2/release/text_stats.wasm\n  cjm-ctl validate notes.txt --kind capabilities"
)]
pub struct Args {
    /// The file
    path: PathBuf,
    /// What it is [default: from the extension or the content]
    #[arg(long, value_enum)]
    kind: Option<Kind>,
}

fn detect(path: &Path) -> Kind {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("wasm") => Kind::Component,
        Some("yaml" | "yml") => Kind::Capabilities,
        Some("json") => Kind::Manifest,
        _ => {
            let head = std::fs::read(path)
                .map(|b| b.into_iter().take(64).collect::<Vec<u8>>())
                .unwrap_or_default();
            if head.starts_with(b"\0asm") {
                Kind::Component
            } else if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                Kind::Manifest
            } else {
                Kind::Capabilities
            }
        }
    }
}

/// Runs `validate`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let path = &args.path;
    if !path.exists() {
        return Err(anyhow::anyhow!("{} does not exist", path.display()));
    }
    let kind = args.kind.unwrap_or_else(|| detect(path));
    let (errors, facts) = match kind {
        Kind::Manifest => manifest_errors(path),
        Kind::Capabilities => capabilities_errors(path),
        Kind::Component => component_errors(path),
    };
    let kind_name = match kind {
        Kind::Manifest => "manifest",
        Kind::Capabilities => "capabilities",
        Kind::Component => "component",
    };
    if ctx.out.json {
        ctx.out.json(&json!({
            "path": path,
            "kind": kind_name,
            "valid": errors.is_empty(),
            "errors": errors,
            "facts": facts,
        }));
    } else {
        for e in &errors {
            println!("{}: {e}", path.display());
        }
        if errors.is_empty() {
            let what = facts
                .as_str()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            ctx.out
                .info(format!("{}: a valid {kind_name}{what}", path.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(hint(
            format!(
                "{}: {} error(s) in this {kind_name}",
                path.display(),
                errors.len()
            ),
            if args.kind.is_none() {
                "the kind was guessed from the file; pass --kind to say what it is"
            } else {
                "fix the fields listed above"
            },
        ))
    }
}

fn manifest_errors(path: &Path) -> (Vec<String>, Value) {
    match manifest::load(path) {
        Ok(Manifest::Adapter(a)) => (
            Vec::new(),
            json!(format!("adapter {} for task {}", a.name, a.task_name)),
        ),
        Ok(Manifest::Capability(m)) => {
            let mut errors = Vec::new();
            let dir = path.parent().unwrap_or(Path::new("."));
            match m.runtime() {
                RuntimeKind::Wasm => {
                    if let Some(w) = &m.install.wasm {
                        let c = w.component_path(dir);
                        match hash::hash_file(&c) {
                            Err(e) => errors.push(format!("install.wasm.component: {e}")),
                            Ok(h) if h != w.sha256 => errors.push(format!(
                                "install.wasm.sha256: the component hashes to {h}, not {}",
                                w.sha256
                            )),
                            Ok(_) => {}
                        }
                    }
                }
                RuntimeKind::Python => {
                    if !m.install.python_path.is_empty()
                        && !Path::new(&m.install.python_path).is_file()
                    {
                        errors.push(format!(
                            "install.python_path: {} does not exist",
                            m.install.python_path
                        ));
                    }
                }
                RuntimeKind::Native => {}
            }
            (
                errors,
                json!(format!("{} {} v{}", m.runtime(), m.name(), m.code.version)),
            )
        }
        Err(Error::Manifest(cjm_host::manifest::ManifestError::InvalidManifest {
            problems,
            ..
        })) => (
            problems.iter().map(ToString::to_string).collect(),
            Value::Null,
        ),
        Err(e) => (vec![e.to_string()], Value::Null),
    }
}

fn capabilities_errors(path: &Path) -> (Vec<String>, Value) {
    match install::spec::load(path) {
        Ok(file) => {
            let kinds: Vec<String> = file
                .entries
                .iter()
                .map(|e| format!("{} ({})", e.name, e.kind()))
                .collect();
            (
                Vec::new(),
                json!(format!("{} entries: {}", kinds.len(), kinds.join(", "))),
            )
        }
        Err(install::InstallError::InvalidCapabilitiesFile { problems, .. }) => (
            problems.iter().map(ToString::to_string).collect(),
            Value::Null,
        ),
        Err(e) => (vec![e.to_string()], Value::Null),
    }
}

fn component_errors(path: &Path) -> (Vec<String>, Value) {
    let loaded = crate::ctx::runtime()
        .map_err(|e| e.to_string())
        .and_then(|tokio| {
            tokio
                .block_on(async {
                    let rt = WasmRuntime::with_allocation(None, Allocation::OnDemand)?;
                    Launch::Wasm {
                        runtime: &rt,
                        component: path.to_owned(),
                        grants: SandboxGrants::default(),
                    }
                    .start(Arc::new(NoDiagnostics), Arc::new(NoEvents))
                    .await
                })
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(b) => {
            let info = b.info().clone();
            (
                Vec::new(),
                json!(format!(
                    "{} v{}, {} methods, tasks: {}",
                    info.name,
                    info.version,
                    info.structural_surface.methods.len(),
                    if info.tasks.is_empty() {
                        "-".to_owned()
                    } else {
                        info.tasks.join(", ")
                    }
                )),
            )
        }
        Err(e) => (vec![e], Value::Null),
    }
}
