//! `cjm-ctl list-secrets [NAME]`: the secret key names stored per capability, never values.

use cjm_host::manifest;
use serde_json::{Map, Value, json};

use crate::ctx::Ctx;

/// Options of `list-secrets`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl list-secrets\n  cjm-ctl list-secrets my-api-capability"
)]
pub struct Args {
    /// Only this capability [default: every installed capability]
    name: Option<String>,
}

/// Runs `list-secrets`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let records = ctx.records()?;
    let names: Vec<String> = match args.name {
        Some(n) => vec![n],
        None => manifest::discover(&config.manifest_search_paths())
            .capabilities
            .iter()
            .map(|c| c.manifest.name().to_owned())
            .collect(),
    };
    let mut all = Map::new();
    for name in &names {
        let keys = records.secret_names(name)?;
        all.insert(name.clone(), json!(keys));
    }
    if ctx.out.json {
        ctx.out.json(&Value::Object(all));
        return Ok(());
    }
    let mut any = false;
    for (name, keys) in &all {
        let keys: Vec<&str> = keys
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if keys.is_empty() {
            continue;
        }
        any = true;
        ctx.out.info(format!("{name}: {}", keys.join(", ")));
    }
    if !any {
        ctx.out.info("no secrets stored");
    }
    Ok(())
}
