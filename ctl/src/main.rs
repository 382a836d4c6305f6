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

/// mimalloc rather than the C library's malloc: the queue allocates and frees per job across
/// threads, where glibc's arenas spend a sixth of a burst consolidating (the queue benchmark
/// uses the same allocator). Built without its transparent-huge-page requests (the workspace's
/// `no_thp`), which made an idle host's heap resident 2 MiB at a time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    quiet_on_broken_pipe();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commands::run(cli.command, &ctx)
    }));
    match ran {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            ctx.out.error(&e);
            if ctx::is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        // The reader of stdout went away (`cjm-ctl logs | head -1`): done, as for `cat`.
        Err(panic) if broken_pipe(panic.as_ref()) => ExitCode::SUCCESS,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether a panic is a write to a closed stdout failing (`println!`). (Rust ignores SIGPIPE so that
/// a socket's peer going away is an error, not death; the CLI talks to sockets too, so the
/// signal stays ignored and the print's panic is what says the reader left.)
fn broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    is_broken_pipe_text(text)
}

/// `println!`'s "failed printing to stdout: Broken pipe (os error 32)" and the like.
fn is_broken_pipe_text(text: &str) -> bool {
    text.contains("Broken pipe") || text.contains("BrokenPipe")
}

/// No panic message for a closed stdout; any other panic is reported as usual.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe_text(info.payload_as_str().unwrap_or("")) {
            report(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
