//! `cjm-ctl info NAME`: what a capability is — kind, version, config fields with types,
//! defaults and bounds, tasks, methods with their parameters, the adapters that fit (and why
//! the others do not), sandbox grants. From the serving host when one runs (the live
//! instance: current config, state), else from the manifest.

use serde_json::Value;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `info`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  cjm-ctl info text-stats\n  cjm-ctl --json info text-stats")]
pub struct Args {
    /// A capability name (or, with a serving host, an instance id)
    name: String,
}

/// Runs `info`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let view = match ctx.client()? {
        Some(client) => runtime()?.block_on(client.json(
            reqwest::Method::GET,
            &format!("/v1/capabilities/{}", args.name),
            None,
        ))?,
        None => {
            let config = ctx.config()?;
            let found = cjm_host::manifest::discover(&config.manifest_search_paths());
            if found.capability(&args.name).is_none() {
                return Err(hint(
                    format!("unknown capability '{}'", args.name),
                    "see the installed capabilities with `cjm-ctl list`",
                ));
            }
            let manager = cjm_host::manager::CapabilityManager::open(config)?;
            manager.describe(&args.name)?
        }
    };
    if ctx.out.json {
        ctx.out.json(&view);
        return Ok(());
    }
    ctx.out.info(render(&view));
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The view for people.
fn render(v: &Value) -> String {
    let mut out = Vec::new();
    let state = if v["loaded"] == true {
        format!("loaded as '{}', {}", text(&v["id"]), text(&v["state"]))
    } else {
        "not loaded".to_owned()
    };
    out.push(format!(
        "{} ({} {}) — {state}",
        text(&v["name"]),
        text(&v["kind"]),
        text(&v["version"])
    ));
    if !text(&v["description"]).is_empty() {
        out.push(format!("  {}", text(&v["description"])));
    }
    if let Some(props) = v["config_schema"]["properties"].as_object() {
        out.push("config:".to_owned());
        for (name, p) in props {
            let mut line = format!("  {name}: {}", schema_type(p));
            if let Some(d) = p.get("default") {
                line.push_str(&format!(", default {d}"));
            }
            if let (Some(lo), Some(hi)) = (p.get("minimum"), p.get("maximum")) {
                line.push_str(&format!(", {lo}..={hi}"));
            }
            if let Some(options) = p.get("enum") {
                line.push_str(&format!(", one of {options}"));
            }
            if let Some(current) = v["config"].get(name) {
                line.push_str(&format!(" (now {current})"));
            }
            if let Some(d) = p.get("description").and_then(Value::as_str) {
                line.push_str(&format!(" — {d}"));
            }
            out.push(line);
        }
    }
    if let Some(tasks) = v["tasks"].as_array().filter(|t| !t.is_empty()) {
        let tasks: Vec<&str> = tasks.iter().map(text).collect();
        out.push(format!("tasks: {}", tasks.join(", ")));
    }
    if let Some(methods) = v["structural_surface"]["methods"].as_array() {
        out.push("methods:".to_owned());
        for m in methods {
            let params: Vec<String> = m["params"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| match p {
                            // A typed method's parameters carry their JSON type.
                            Value::String(s) => {
                                match m["params_schema"]["properties"][s]["type"].as_str() {
                                    Some(ty) => format!("{s}: {ty}"),
                                    None => s.clone(),
                                }
                            }
                            other => other["name"].as_str().unwrap_or("?").to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(format!("  {}({})", text(&m["name"]), params.join(", ")));
        }
    }
    if let Some(adapters) = v["adapters"].as_array().filter(|a| !a.is_empty()) {
        out.push("adapters:".to_owned());
        for a in adapters {
            let verdict = if a["compatible"] == true {
                "compatible".to_owned()
            } else {
                format!("not compatible: {}", a["verdict"])
            };
            out.push(format!(
                "  {} (task {}): {verdict}",
                text(&a["name"]),
                text(&a["task"])
            ));
        }
    }
    if !v["grants"].is_null() {
        out.push(format!("sandbox grants: {}", v["grants"]));
    }
    out.join("\n")
}

fn schema_type(p: &Value) -> String {
    match &p["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts.iter().map(text).collect::<Vec<_>>().join(" | "),
        _ => "any".to_owned(),
    }
}
