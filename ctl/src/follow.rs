//! Following queue work from the command line: a progress bar on stderr (drawn only on a
//! terminal, never with `--json` or `--quiet`), and waiting for a composition while the bar
//! advances per finished member.

use std::time::Duration;

use cjm_host::queue::{CompositionRun, EventKind, JobQueue, Subscription};
use cjm_host::store::event_types;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::ctx::{Ctx, hint};

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

/// Resolves with the signal's name at the first SIGINT or SIGTERM.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// What a followed job reports while it runs.
#[derive(Debug)]
pub enum Update {
    /// Progress (0..1) and the capability's message.
    Progress(f64, String),
    /// It moved to this state.
    State(String),
}

impl Update {
    /// The update an event of type `kind` with `payload` brings (`None`: nothing to show).
    /// The same for the queue's own events and the service's SSE events.
    pub fn of(kind: &str, payload: &Value) -> Option<Update> {
        let text = |key: &str| payload[key].as_str().unwrap_or("").to_owned();
        match kind {
            event_types::PROGRESS_CHANGED => Some(Update::Progress(
                payload["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0),
                text("message"),
            )),
            event_types::STATE_TRANSITION => Some(Update::State(text("to"))),
            _ => None,
        }
    }
}

/// Follows job `id` to its end, in-process or through a service alike: a bar fed by
/// `updates`; Ctrl-C or SIGTERM runs `cancel` once (the job is cancelled, its record says
/// so, rather than left running with nobody to finish it); then the job is printed (the
/// record with `--json`, else its result) and its status becomes the exit.
pub async fn job(
    ctx: &Ctx,
    id: &str,
    wait: impl Future<Output = anyhow::Result<Value>>,
    cancel: impl Future<Output = ()>,
    mut updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
) -> anyhow::Result<()> {
    let progress = bar(ctx, Some(1000));
    tokio::pin!(wait);
    tokio::pin!(cancel);
    let stop = interrupted();
    tokio::pin!(stop);
    let mut cancelling = false;
    let job = loop {
        tokio::select! {
            job = &mut wait => break job?,
            signal = &mut stop, if !cancelling => {
                cancelling = true;
                ctx.out.note(format!("{signal}: cancelling job {id}"));
                (&mut cancel).await;
            }
            Some(update) = updates.recv() => match update {
                Update::Progress(p, message) => {
                    progress.set_position((p * 1000.0) as u64);
                    progress.set_message(message);
                }
                Update::State(state) => progress.set_message(state),
            }
        }
    };
    progress.finish_and_clear();
    if ctx.out.json {
        ctx.out.json(&job);
    } else if let Some(result) = job.get("result").filter(|r| !r.is_null()) {
        ctx.out.json(result);
    }
    match job["status"].as_str() {
        Some("completed") => Ok(()),
        Some("cancelled") => Err(anyhow::anyhow!("job {id} was cancelled")),
        _ => Err(hint(
            format!(
                "job {id} failed: [{}] {}",
                job["error"]["category"].as_str().unwrap_or("fatal"),
                job["error"]["message"].as_str().unwrap_or("failed")
            ),
            format!("its log: `cjm-ctl logs --job {id}`"),
        )),
    }
}
