//! The subcommands, one file each.

mod demo;

use clap::Subcommand;

/// What `cjm-ctl` can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the example capabilities and run them on the embedded default (`./.cjm`).
    ///
    /// Example: `cjm-ctl demo` (or `cargo run --release -p cjm-ctl -- demo`)
    Demo(demo::DemoArgs),
}

/// Runs one command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args),
    }
}
