//! `cjm-ctl list`: the installed capabilities, with what the stores know of them and drift
//! that can be seen without loading them (a changed component, a gone environment, a
//! manifest whose witnesses disagree with its own code section).

use std::path::Path;

use cjm_host::manifest::{self, CapabilityManifest, Loaded, RuntimeKind, hash};
use comfy_table::Color;
use serde_json::{Value, json};

use crate::ctx::Ctx;

/// Options of `list`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  cjm-ctl list\n  cjm-ctl list --envs\n  cjm-ctl --json list")]
pub struct Args {
    /// Also show where each runs (python env, component, command)
    #[arg(short, long)]
    envs: bool,
}

/// One row.
struct Row {
    name: String,
    kind: RuntimeKind,
    version: String,
    instances: usize,
    enabled: usize,
    drift: Vec<&'static str>,
    path: String,
    runs: String,
}

/// Runs `list`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let found = manifest::discover(&config.manifest_search_paths());
    for e in &found.errors {
        ctx.out.warn(format!("skipped: {e}"));
    }
    let configs = ctx.records()?.instance_configs()?;
    let names: Vec<&str> = found
        .capabilities
        .iter()
        .map(|c| c.manifest.name())
        .collect();
    let rows: Vec<Row> = found
        .capabilities
        .iter()
        .map(|c| {
            // Instance ids are the name itself or `name-<suffix>`; the longest matching
            // name owns an id (so `a-b-1234` is `a-b`'s, not `a`'s).
            let owned = configs.iter().filter(|(id, _)| {
                cjm_host::manager::instance_owner(id, &names) == Some(c.manifest.name())
            });
            let (instances, enabled) =
                owned.fold((0, 0), |(n, e), (_, r)| (n + 1, e + usize::from(r.enabled)));
            Row {
                name: c.manifest.name().to_owned(),
                kind: c.manifest.runtime(),
                version: c.manifest.code.version.clone(),
                instances,
                enabled,
                drift: drift(c),
                path: c.path.display().to_string(),
                runs: runs(&c.manifest, c.dir()),
            }
        })
        .collect();

    if ctx.out.json {
        ctx.out.json(&Value::Array(
            rows.iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "kind": r.kind.to_string(),
                        "version": r.version,
                        "instances": r.instances,
                        "enabled": r.enabled,
                        "drift": r.drift,
                        "manifest": r.path,
                        "runs": r.runs,
                    })
                })
                .collect(),
        ));
        return Ok(());
    }
    if rows.is_empty() {
        ctx.out.info(format!(
            "no capabilities installed in {}",
            config.manifests_dir().display()
        ));
        ctx.out
            .note("hint: install some with `cjm-ctl install-all --capabilities capabilities.yaml`");
        return Ok(());
    }
    let mut header = vec!["name", "kind", "version", "instances", "drift", "manifest"];
    if args.envs {
        header.push("runs");
    }
    let mut table = ctx.out.table(&header);
    for r in &rows {
        let drift = if r.drift.is_empty() {
            ctx.out.cell("-", Color::DarkGrey)
        } else {
            ctx.out.cell(r.drift.join(","), Color::Yellow)
        };
        let mut row = vec![
            comfy_table::Cell::new(&r.name),
            comfy_table::Cell::new(r.kind.to_string()),
            comfy_table::Cell::new(&r.version),
            comfy_table::Cell::new(if r.instances == 0 {
                "-".to_owned()
            } else {
                format!("{} ({} enabled)", r.instances, r.enabled)
            }),
            drift,
            comfy_table::Cell::new(&r.path),
        ];
        if args.envs {
            row.push(comfy_table::Cell::new(&r.runs));
        }
        table.add_row(row);
    }
    println!("{table}");
    Ok(())
}

/// Drift visible without loading: the witnesses against the manifest's own code section,
/// the component against its recorded sha256, the python env and the native program.
fn drift(c: &Loaded<CapabilityManifest>) -> Vec<&'static str> {
    let m = &c.manifest;
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
                match hash::hash_file(&w.component_path(c.dir())) {
                    Err(_) => flags.push("component-missing"),
                    Ok(h) if h != w.sha256 => flags.push("component-changed"),
                    Ok(_) => {}
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
                && n.program(c.dir()).is_none()
            {
                flags.push("program-missing");
            }
        }
    }
    flags
}

fn runs(m: &CapabilityManifest, dir: &Path) -> String {
    match m.runtime() {
        RuntimeKind::Python => m.install.python_path.clone(),
        RuntimeKind::Wasm => m
            .install
            .wasm
            .as_ref()
            .map_or_else(String::new, |w| normalize(&w.component_path(dir))),
        RuntimeKind::Native => m
            .install
            .native
            .as_ref()
            .map_or_else(String::new, |n| n.command.join(" ")),
    }
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
