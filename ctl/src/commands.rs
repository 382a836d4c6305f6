//! The subcommands, one file each.

mod bench;
mod cancel;
mod completions;
mod demo;
mod dev;
mod estimate_size;
mod generate_adapter_manifest;
mod info;
mod install_all;
mod jobs;
mod list;
mod list_secrets;
mod logs;
mod mcp;
mod new;
mod regenerate_manifest;
mod remove;
mod retention;
mod run;
mod serve;
mod set_secret;
mod submit;
mod validate;

use clap::Subcommand;

use crate::ctx::Ctx;

/// What `cjm-ctl` can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a capability project (wasm, native or Python) that builds, installs and runs
    New(new::Args),
    /// Install and register every capability of a capabilities.yaml
    InstallAll(install_all::Args),
    /// What installing a capabilities.yaml would download and take on disk (installs nothing)
    EstimateSize(estimate_size::Args),
    /// Watch capabilities' sources; on an edit, rebuild, reinstall and reload them in the
    /// running host
    Dev(dev::Args),
    /// List the installed capabilities
    List(list::Args),
    /// What a capability is: config fields, tasks, methods and parameters, fitting adapters, grants
    Info(info::Args),
    /// Remove a capability: its manifest, component, adapters and environment
    Remove(remove::Args),
    /// Validate a manifest, a capabilities.yaml or a wasm component
    Validate(validate::Args),
    /// Re-introspect an installed capability and rewrite its manifest
    RegenerateManifest(regenerate_manifest::Args),
    /// Introspect a Python task adapter in an environment and write its adapter manifest
    GenerateAdapterManifest(generate_adapter_manifest::Args),
    /// Show diagnostics records, raw worker output or the journal
    Logs(logs::Args),
    /// Apply the diagnostics retention policy now
    Retention(retention::Args),
    /// Store a secret of a capability (the value is never printed)
    SetSecret(set_secret::Args),
    /// List the secret names stored for capabilities (never the values)
    ListSecrets(list_secrets::Args),
    /// Load a capability, call it once and print the JSON result
    Run(run::Args),
    /// Run a job (or a composition) through the job queue, with progress
    Submit(submit::Args),
    /// Serve the data dir's capabilities and queue over HTTP/JSON (`/v1`) until stopped
    Serve(serve::Args),
    /// Serve the data dir's capabilities as MCP tools over stdin/stdout (for agent clients)
    Mcp(mcp::Args),
    /// Jobs of this data dir, from the journal
    Jobs(jobs::Args),
    /// Ask the host running a job to cancel it
    Cancel(cancel::Args),
    /// Measure the host on this machine with the example capabilities (a table of medians)
    Bench(bench::Args),
    /// Print shell completions
    Completions(completions::Args),
    /// Build and install the examples, run a composition mixing wasm and native through the
    /// queue on the embedded default (`./.cjm`)
    Demo(demo::DemoArgs),
}

/// Runs one command.
pub fn run(command: Command, ctx: &Ctx) -> anyhow::Result<()> {
    match command {
        Command::New(args) => new::run(args, ctx),
        Command::InstallAll(args) => install_all::run(args, ctx),
        Command::Dev(args) => dev::run(args, ctx),
        Command::EstimateSize(args) => estimate_size::run(args, ctx),
        Command::List(args) => list::run(args, ctx),
        Command::Info(args) => info::run(args, ctx),
        Command::Remove(args) => remove::run(args, ctx),
        Command::Validate(args) => validate::run(args, ctx),
        Command::RegenerateManifest(args) => regenerate_manifest::run(args, ctx),
        Command::GenerateAdapterManifest(args) => generate_adapter_manifest::run(args, ctx),
        Command::Logs(args) => logs::run(args, ctx),
        Command::Retention(args) => retention::run(args, ctx),
        Command::SetSecret(args) => set_secret::run(args, ctx),
        Command::ListSecrets(args) => list_secrets::run(args, ctx),
        Command::Run(args) => {
            let _traces = serve::init_traces()?;
            run::run(args, ctx)
        }
        Command::Submit(args) => {
            let _traces = serve::init_traces()?;
            submit::run(args, ctx)
        }
        Command::Serve(args) => serve::run(args, ctx),
        Command::Mcp(args) => mcp::run(args, ctx),
        Command::Jobs(args) => jobs::run(args, ctx),
        Command::Cancel(args) => cancel::run(args, ctx),
        Command::Bench(args) => bench::run(args, ctx),
        Command::Completions(args) => completions::run(args),
        Command::Demo(args) => demo::run(args, ctx),
    }
}
