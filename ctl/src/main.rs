//! `cjm-ctl`: the command line of the cjm capability host.
//!
//! One file per command under `commands/`; `main` prints errors as `{:#}` and exits 1.

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// The cjm capability host: sandboxed wasm components and native workers behind one contract.
#[derive(Debug, Parser)]
#[command(name = "cjm-ctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
