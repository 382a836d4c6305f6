//! `cjm-ctl completions SHELL`: a completion script on stdout.

use clap::CommandFactory as _;

/// Options of `completions`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl completions bash > ~/.local/share/bash-completion/completions/cjm-ctl\n  cjm-ctl completions zsh > ~/.zfunc/_cjm-ctl"
)]
pub struct Args {
    /// The shell
    shell: clap_complete::Shell,
}

/// Runs `completions`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "cjm-ctl", &mut script);
    use std::io::Write as _;
    match std::io::stdout().write_all(&script) {
        // The reader left (`| head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
