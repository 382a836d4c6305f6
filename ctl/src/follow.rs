//! Following queue work from the command line: a progress bar on stderr (drawn only on a
//! terminal, never with `--json` or `--quiet`), and waiting for a composition while the bar
//! advances per finished member.

use std::time::Duration;

use cjm_host::queue::{CompositionRun, EventKind, JobQueue, Subscription};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ctx::Ctx;

/// A progress bar of `len` steps (a spinner when `None`).
pub fn bar(ctx: &Ctx, len: Option<u64>) -> ProgressBar {
    let target = if ctx.out.stderr_tty && !ctx.out.quiet && !ctx.out.json {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(len, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Waits for composition `id` (`events` subscribed before it was submitted), one bar step
/// per member that finished.
pub async fn composition(
    ctx: &Ctx,
    queue: &JobQueue,
    mut events: Subscription,
    id: &str,
    total: u64,
    timeout: Option<Duration>,
) -> anyhow::Result<CompositionRun> {
    let progress = bar(ctx, Some(total));
    let wait = queue.wait_composition(id, timeout);
    tokio::pin!(wait);
    let run = loop {
        tokio::select! {
            run = &mut wait => break run?,
            Some(e) = events.next() => {
                if e.composition_id.as_deref() == Some(id)
                    && e.kind == EventKind::StateTransition
                    && e.payload["to"] != "running"
                {
                    progress.inc(1);
                    progress.set_message(format!(
                        "{} {}",
                        e.node_id.unwrap_or_default(),
                        e.payload["to"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    };
    progress.finish_and_clear();
    Ok(run)
}
