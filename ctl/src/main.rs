//! `cjm-ctl`: the command line of the cjm capability host.
//!
//! One file per command under `commands/`; [`ctx`] holds what every command shares (the
//! global options, the configuration, output in text or JSON). `main` prints an error as
//! one line `error: ...` (plus a `hint: ...` line when there is one) and exits 1; clap exits
//! 2 on a usage error.

mod commands;
mod ctx;
mod examples;
mod follow;

use std::process::ExitCode;

use clap::Parser;

/// The cjm capability host: sandboxed wasm components and native workers behind one contract.
#[derive(Debug, Parser)]
#[command(
    name = "cjm-ctl",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  cjm-ctl install-all --capabilities capabilities.yaml\n  cjm-ctl list\n  cjm-ctl run text-stats --task text_statistics --method compute_stats '{\"text\": \"a b\"}'\n\nEnvironment: CJM_DATA_DIR, CJM_CONFIG, NO_COLOR."
)]
struct Cli {
    #[command(flatten)]
    global: ctx::GlobalArgs,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = ctx::Ctx::new(cli.global);
    match commands::run(cli.command, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ctx.out.error(&e);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
