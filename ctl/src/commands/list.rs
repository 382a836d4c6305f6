//! `cjm-ctl list`: the installed capabilities, with what the stores know of them and drift
//! that can be seen without loading them (a changed component, a gone environment, a
//! manifest whose witnesses disagree with its own code section).

use cjm_host::manifest;
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
    kind: String,
    version: String,
    instances: usize,
    enabled: usize,
    drift: Vec<String>,
    path: String,
    runs: String,
}

impl Row {
    /// A capability as the service lists it (its instances: those it holds).
    fn served(item: &Value) -> Row {
        let text = |key: &str| item[key].as_str().unwrap_or_default().to_owned();
        let instances = item["instances"].as_array().map_or(&[][..], Vec::as_slice);
        Row {
            name: text("name"),
            kind: text("kind"),
            version: text("version"),
            instances: instances.len(),
            enabled: instances.iter().filter(|i| i["enabled"] == true).count(),
            drift: item["drift"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|f| f.as_str())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            path: text("manifest"),
            runs: text("runs"),
        }
    }
}

/// Runs `list`: through the host serving the data dir when one runs (or `--host`), else
/// from the data dir's manifests and config store.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let mut place = config.manifests_dir().display().to_string();
    let rows = match ctx.client()? {
        Some(client) => {
            place = format!("the host at {}", client.url());
            let answer = crate::ctx::runtime()?.block_on(client.json(
                reqwest::Method::GET,
                "/v1/capabilities",
                None,
            ))?;
            let Some(items) = answer["capabilities"].as_array() else {
                anyhow::bail!(
                    "unexpected answer from {}: no `capabilities` list",
                    client.url()
                );
            };
            items.iter().map(Row::served).collect()
        }
        None => local_rows(ctx, &config)?,
    };
    if ctx.out.json {
        ctx.out.json(&Value::Array(
            rows.iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "kind": r.kind,
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
        ctx.out
            .info(format!("no capabilities installed in {place}"));
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
            comfy_table::Cell::new(&r.kind),
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

/// The rows from the data dir: its manifests and the instances its config store records.
fn local_rows(ctx: &Ctx, config: &cjm_host::config::HostConfig) -> anyhow::Result<Vec<Row>> {
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
    Ok(found
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
                kind: c.manifest.runtime().to_string(),
                version: c.manifest.code.version.clone(),
                instances,
                enabled,
                drift: c.drift_on_disk().into_iter().map(str::to_owned).collect(),
                path: c.path.display().to_string(),
                runs: c.runs(),
            }
        })
        .collect())
}
