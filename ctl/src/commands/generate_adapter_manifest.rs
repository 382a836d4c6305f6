//! `cjm-ctl generate-adapter-manifest ENV module:Class`: introspect a Python task adapter in
//! an environment with cjm-substrate's own tooling and write its adapter manifest.

use std::path::{Path, PathBuf};

use cjm_host::install::{self, Installer};
use cjm_host::manifest;
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `generate-adapter-manifest`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl generate-adapter-manifest cjm-capability-echo cjm_capability_echo.adapter:EchoTaskAdapter\n  cjm-ctl generate-adapter-manifest /path/to/venv/bin/python my_pkg.adapter:MyAdapter\n\nENV is an installed python capability, an env name under <data dir>/envs, or a python interpreter or env directory."
)]
pub struct Args {
    /// The environment: a python capability, an env name, or an interpreter / env path
    env: String,
    /// The adapter class, `module:ClassName`
    target: String,
}

/// The interpreter and env name `env` designates.
fn resolve(config: &cjm_host::config::HostConfig, env: &str) -> Option<(PathBuf, String)> {
    let found = manifest::discover(&config.manifest_search_paths());
    if let Some(c) = found.capability(env)
        && !c.manifest.install.python_path.is_empty()
    {
        let name = if c.manifest.install.conda_env.is_empty() {
            env.to_owned()
        } else {
            c.manifest.install.conda_env.clone()
        };
        return Some((PathBuf::from(&c.manifest.install.python_path), name));
    }
    let named = install::envs_dir(config).join(env).join("bin/python");
    if named.is_file() {
        return Some((named, env.to_owned()));
    }
    let p = Path::new(env);
    let python = if p.is_dir() {
        p.join("bin/python")
    } else {
        p.to_owned()
    };
    if python.is_file() {
        let name = python
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map_or_else(|| "env".to_owned(), |n| n.to_string_lossy().into_owned());
        return Some((python, name));
    }
    None
}

/// Runs `generate-adapter-manifest`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    if !args.target.contains(':') {
        return Err(hint(
            format!(
                "adapter target must be 'module:ClassName', found {:?}",
                args.target
            ),
            "for example cjm_capability_echo.adapter:EchoTaskAdapter",
        ));
    }
    let config = ctx.config()?;
    let (python, env_name) = resolve(&config, &args.env).ok_or_else(|| {
        hint(
            format!("no python environment '{}'", args.env),
            "name an installed python capability (`cjm-ctl list --envs`), an env under <data dir>/envs, or a python interpreter",
        )
    })?;
    let installer = Installer::new(config);
    let path = runtime()?.block_on(installer.generate_adapter_manifest(
        &python,
        &env_name,
        &args.target,
    ))?;
    let m = manifest::load_adapter(&path)?;
    if ctx.out.json {
        ctx.out.json(&json!({
            "manifest": path,
            "task": m.task_name,
            "protocol": m.required_tool_protocol,
            "methods": m.protocol_members.methods.len(),
        }));
    } else {
        ctx.out.info(format!("wrote {}", path.display()));
        ctx.out.info(format!(
            "  task: {}  protocol: {}  methods: {}",
            m.task_name,
            m.required_tool_protocol,
            m.protocol_members.methods.len()
        ));
    }
    Ok(())
}
