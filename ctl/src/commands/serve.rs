//! `cjm-ctl serve`: a long-running host on the data dir, as an HTTP/JSON service (`/v1`).
//!
//! It loads the enabled capabilities (each installed capability once, as its own name, when
//! the config store records no instance of it), keeps their workers warm, runs the queue and
//! recovers what gone hosts left. It writes `serve.json` (address, pid, how to authenticate)
//! into the data dir, so other `cjm-ctl` commands on that data dir become its clients, and
//! removes it on exit. SIGINT or SIGTERM: stop accepting, let running jobs finish within
//! `--grace`, leave waiting jobs journaled for the next host.

use std::net::SocketAddr;
use std::time::Duration;

use cjm_host::Host;
use cjm_host::server::discovery::{self, Discovery, ServeLock};
use cjm_host::server::{Server, ServerConfig, Token};
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl serve\n  cjm-ctl serve --bind 127.0.0.1:0\n  cjm-ctl serve --bind 0.0.0.0:8631   (requires the token in <data dir>/serve.token)\n  curl -s http://127.0.0.1:8631/v1/capabilities\n\nLogs go to stderr; set the level with --log-level or CJM_LOG (error, warn, info, debug, trace, or targets such as cjm_host=debug)."
)]
pub struct Args {
    /// The address to listen on (any address but loopback requires a token)
    #[arg(long, default_value = "127.0.0.1:8631", value_name = "ADDR")]
    bind: SocketAddr,
    /// Require the bearer token on loopback too
    #[arg(long)]
    require_token: bool,
    /// Seconds running jobs get to finish on shutdown
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = crate::ctx::seconds)]
    grace: f64,
    /// Log level or filter (default: info)
    #[arg(long, env = "CJM_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// The largest request body accepted, in bytes
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    max_body: usize,
}

/// Runs `serve`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let _traces = init_logging(args.log_level.as_deref().unwrap_or("info"))?;
    let config = ctx.config()?;
    let data_dir = config.data_dir.clone();
    // Held until this process ends: a second service on the data dir, even one started at
    // the same moment, is refused.
    let Some(_lock) = ServeLock::take(&data_dir)? else {
        let what = match Discovery::find(&data_dir) {
            Some(running) => format!(
                "a host already serves {} at {} (pid {})",
                data_dir.display(),
                running.url,
                running.pid
            ),
            None => format!(
                "another cjm-ctl serve holds {} (it is starting or stopping)",
                data_dir.display()
            ),
        };
        return Err(hint(what, "stop it first, or use another --data-dir"));
    };
    let loopback = args.bind.ip().is_loopback();
    let needs_token = !loopback || args.require_token;
    let rt = runtime()?;
    rt.block_on(async {
        let host = Host::builder().config(config).build().await?;
        load_enabled(&host).await;
        let token_file = data_dir.join(discovery::TOKEN_FILE);
        let token = if needs_token {
            let token = match Token::read(&token_file) {
                Ok(token) => token,
                Err(e) => {
                    if token_file.exists() {
                        tracing::warn!(error = %e, "a new token replaces the one in the data dir");
                    }
                    let token = Token::generate();
                    token.write(&token_file)?;
                    token
                }
            };
            Some(token)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(args.bind).await.map_err(|e| {
            hint(
                format!("cannot listen on {}: {e}", args.bind),
                "another process may hold the port: pick another with --bind 127.0.0.1:<port> (0 picks a free one)",
            )
        })?;
        let listening = listener.local_addr()?;
        let mut addr = listening;
        if addr.ip().is_unspecified() {
            // Listening everywhere: clients on this machine connect through loopback.
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let url = format!("http://{addr}");
        let found = Discovery {
            url: url.clone(),
            pid: std::process::id(),
            host_id: host.queue().host_id().to_owned(),
            auth: if token.is_some() { "bearer" } else { "none" }.to_owned(),
            token_file: token.is_some().then(|| token_file.clone()),
            started_at: cjm_host::store::now_iso(),
        };
        found.write(&data_dir)?;
        let server = Server::new(
            host.clone(),
            ServerConfig {
                token,
                max_body_bytes: args.max_body,
                ..ServerConfig::default()
            },
        );
        announce(ctx, &host, &found, &data_dir, listening);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<&'static str>();
        let serving = tokio::spawn(server.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let signal = crate::follow::interrupted().await;
        tracing::info!("{signal}: stopping (running jobs get {}s)", args.grace);
        let _ = stop_tx.send(signal);
        let grace = Duration::from_secs_f64(args.grace);
        let stopped = host.stop_leaving_pending(grace).await;
        // Requests still in flight (a long poll) get a moment, then the connections close.
        let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
        Discovery::remove(&data_dir);
        stopped?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Loads the enabled instances ([`CapabilityManager::load_enabled`]); one that fails to
/// load is logged and skipped: the others still serve.
///
/// [`CapabilityManager::load_enabled`]: cjm_host::manager::CapabilityManager::load_enabled
pub(super) async fn load_enabled(host: &Host) {
    for (name, id, outcome) in host.manager().load_enabled().await {
        match outcome {
            Ok(i) => tracing::info!(instance = %i.id(), kind = ?i.backend().kind(), "loaded"),
            Err(e) => tracing::warn!(capability = %name, instance = %id, error = %e, "not loaded"),
        }
    }
}

fn announce(
    ctx: &Ctx,
    host: &Host,
    found: &Discovery,
    data_dir: &std::path::Path,
    listening: SocketAddr,
) {
    let instances: Vec<String> = host
        .manager()
        .instances()
        .iter()
        .map(|i| i.id().to_owned())
        .collect();
    if ctx.out.json {
        ctx.out.json(&json!({
            "url": found.url,
            "listening": listening.to_string(),
            "pid": found.pid,
            "host_id": found.host_id,
            "auth": found.auth,
            "token_file": found.token_file,
            "instances": instances,
        }));
        return;
    }
    ctx.out.note(format!(
        "cjm host serving {} at {} (listening on {listening})",
        data_dir.display(),
        found.url
    ));
    match &found.token_file {
        Some(file) => ctx.out.note(format!(
            "auth: bearer token required (Authorization: Bearer $(cat {}))",
            file.display()
        )),
        None => ctx.out.note("auth: none (loopback only)"),
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Some(endpoint) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            // Credentials in the URL stay out of the output.
            let shown = match endpoint.split_once("://") {
                Some((scheme, rest)) if rest.split('/').next().is_some_and(|a| a.contains('@')) => {
                    format!(
                        "{scheme}://…@{}",
                        rest.rsplit_once('@').map_or("", |(_, h)| h)
                    )
                }
                _ => endpoint,
            };
            ctx.out
                .note(format!("traces: OTLP/HTTP to {shown} ({var})"));
            break;
        }
    }
    ctx.out.note(format!(
        "instances: {}",
        if instances.is_empty() {
            "none (install capabilities with `cjm-ctl install-all`)".to_owned()
        } else {
            instances.join(", ")
        }
    ));
    ctx.out.note(format!(
        "API: {0}/v1 (OpenAPI at {0}/v1/openapi.json); Ctrl-C stops",
        found.url
    ));
}

/// For commands that host in-process without logging (`run`, `submit`): exports their jobs'
/// traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (nothing otherwise); keep the exporter
/// until the end.
pub(super) fn init_traces() -> anyhow::Result<Option<cjm_host::trace::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let Some((layer, exporter)) = otlp()? else {
        return Ok(None);
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(Some(exporter))
}

/// The trace layer and its exporter when the OTLP variables are set.
fn otlp<S>()
-> anyhow::Result<Option<(impl tracing_subscriber::Layer<S>, cjm_host::trace::Exporter)>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    cjm_host::trace::otlp_from_env().map_err(|e| {
        hint(
            format!("the OTLP trace exporter cannot start: {e}"),
            "check OTEL_EXPORTER_OTLP_ENDPOINT (an http:// URL), or unset it",
        )
    })
}

/// Logs to stderr at `filter`, and exports traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set: keep the exporter until the end (dropping it sends what is buffered).
pub(super) fn init_logging(filter: &str) -> anyhow::Result<Option<cjm_host::trace::Exporter>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let targets: tracing_subscriber::filter::Targets = filter.parse().map_err(|e| {
        hint(
            format!("bad log filter '{filter}': {e}"),
            "use a level (error, warn, info, debug, trace) or targets such as cjm_host=debug,info",
        )
    })?;
    // Spans and events of traces are for the exporter, never log lines.
    let targets = targets.with_target(
        cjm_host::trace::TARGET,
        tracing_subscriber::filter::LevelFilter::OFF,
    );
    let (otel, exporter) = match otlp()? {
        Some((layer, exporter)) => (Some(layer), Some(exporter)),
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(targets),
        )
        .with(otel)
        .try_init();
    Ok(exporter)
}
