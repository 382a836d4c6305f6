//! Running a worker process: parse the command line, take the listening socket, arm the
//! parent watchdog, serve on a single-threaded tokio runtime (capability calls run on its
//! blocking pool) until SIGTERM, SIGINT or the parent's death, then shut down in order:
//! cancel the running call, stop accepting, give in-flight requests [`GRACE`], call the
//! capability's `cleanup`, flush the diagnostics records.
//!
//! Nothing heavy happens before the socket serves: no process table, no SQLite connection,
//! no config schema. Those are built on first use.

use std::future::IntoFuture as _;
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use cjm_guest::Capability;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{USAGE, WorkerArgs};
use crate::diagnostics::{LogConfig, LogSink};
use crate::error::{Error, Result, report};
use crate::worker::Worker;
use crate::{listener, server, watchdog};

/// How long in-flight requests may run on after a shutdown signal.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long shutdown waits for a running call to release the capability before skipping
/// its `cleanup`.
pub const CLEANUP_WAIT: Duration = Duration::from_secs(1);

/// How long shutdown waits for diagnostics records to be committed.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The `main` of a worker binary: serves capability `C` as the process's command line and
/// environment say. Exits 0 after a clean shutdown, 2 on a bad command line, 1 when the
/// worker cannot start.
///
/// ```no_run
/// # struct MyCapability;
/// # impl cjm_guest::Capability for MyCapability {
/// #     type Config = ();
/// #     const NAME: &'static str = "x";
/// #     const VERSION: &'static str = "0";
/// #     fn initialize(_: &(), _: &cjm_guest::Ctx<'_>) -> Result<Self, cjm_guest::JobError> { Ok(MyCapability) }
/// #     fn execute(&mut self, _: &cjm_guest::Ctx<'_>, _: Vec<serde_json::Value>, _: cjm_guest::Kwargs) -> cjm_guest::CallResult { Ok(serde_json::Value::Null) }
/// # }
/// fn main() -> std::process::ExitCode {
///     cjm_native_worker::serve::<MyCapability>()
/// }
/// ```
pub fn serve<C: Capability>() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match WorkerArgs::parse(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{USAGE}\nerror: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let worker = Worker::new::<C>(LogSink::new(LogConfig::from_env(args.log_level)));
    match run(worker, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FATAL: {}", report(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Serves `worker` as `args` say until shutdown. Blocks the calling thread; must not be
/// called inside an async runtime.
pub fn run(worker: Worker, args: &WorkerArgs) -> Result<()> {
    let listener = listener::open(args.listen)?;
    if let Some(ppid) = args.ppid
        && !watchdog::arm(ppid)?
    {
        parent_gone_notice(ppid);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Server)?;
    let result = runtime.block_on(serve_until_shutdown(worker, listener, args.ppid));
    // A call that ignored the cancellation is abandoned with its blocking thread.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve_until_shutdown(
    worker: Worker,
    listener: listener::Listener,
    ppid: Option<u32>,
) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Server)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Server)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let app = server::router(worker.clone());
    let mut serving = match listener {
        listener::Listener::Tcp(l) => {
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(Error::Server)?
                .tap_io(|tcp| {
                    // Small request/response pairs: never wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                });
            tokio::spawn(
                axum::serve(l, app)
                    .with_graceful_shutdown(stopped)
                    .into_future(),
            )
        }
        listener::Listener::Unix(l) => {
            let l = tokio::net::UnixListener::from_std(l).map_err(Error::Server)?;
            tokio::spawn(
                axum::serve(l, app)
                    .with_graceful_shutdown(stopped)
                    .into_future(),
            )
        }
    };
    // The CPU baseline for /stats, taken once serving has started.
    let probe = worker.clone();
    drop(tokio::task::spawn_blocking(move || {
        let _ = probe.shared().stats.prime();
    }));
    let parent = async {
        match ppid {
            Some(ppid) => watchdog::parent_gone(ppid).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut serving => {
            return match result {
                Ok(served) => served.map_err(Error::Server),
                Err(e) => Err(Error::Aborted(e)),
            };
        }
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = parent => {
            if let Some(ppid) = ppid {
                parent_gone_notice(ppid);
            }
        }
    }
    worker.cancel();
    let _ = stop.send(());
    if tokio::time::timeout(GRACE, &mut serving).await.is_err() {
        eprintln!("[cjm-native-worker] requests still running at shutdown were dropped");
    }
    let last = worker.clone();
    let _ = tokio::task::spawn_blocking(move || {
        last.cleanup_at_exit(CLEANUP_WAIT);
        last.logs().flush(FLUSH_WAIT);
    })
    .await;
    Ok(())
}

/// The Python worker's line when its parent dies.
fn parent_gone_notice(ppid: u32) {
    eprintln!(
        "[Worker {}] Parent {ppid} gone. Shutting down.",
        std::process::id()
    );
}
