//! `cjm-ctl mcp`: the data dir's capabilities as MCP tools over stdin/stdout, for agent
//! clients that spawn their server (Claude Desktop, editors, the Python `mcp` client).
//!
//! It hosts in-process (never through `--host`: a running service serves MCP itself at
//! `/mcp`): loads the enabled capabilities as `serve` does, runs the queue (every
//! call is a journaled job), and ends when the client closes its side. Stdout carries the
//! protocol only; logs go to stderr (`--log-level` / `CJM_LOG`, default `warn`). The same
//! tools are served over HTTP at `/mcp` by `cjm-ctl serve`.

use std::time::Duration;

use cjm_host::Host;

use crate::ctx::{Ctx, runtime};

/// Options of `mcp`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl mcp\n  cjm-ctl --data-dir /srv/cjm mcp --log-level info\n\nAn MCP client's configuration (Claude Desktop's claude_desktop_config.json, say):\n  {\"mcpServers\": {\"cjm\": {\"command\": \"cjm-ctl\", \"args\": [\"--data-dir\", \"/srv/cjm\", \"mcp\"]}}}\n\n`cjm-ctl serve` serves the same tools over streamable HTTP at http://127.0.0.1:8631/mcp."
)]
pub struct Args {
    /// Log level or filter, to stderr (default: warn)
    #[arg(long, env = "CJM_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// Seconds running jobs get to finish once the client is gone
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS", value_parser = crate::ctx::seconds)]
    grace: f64,
}

/// Runs `mcp`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let _traces = super::serve::init_logging(args.log_level.as_deref().unwrap_or("warn"))?;
    if let Some(url) = &ctx.global.host {
        return Err(crate::ctx::usage(
            "`cjm-ctl mcp` hosts in-process: it does not go through --host",
            format!(
                "an MCP client that speaks streamable HTTP reaches that service at {}/mcp",
                url.trim_end_matches('/')
            ),
        ));
    }
    let config = ctx.config()?;
    if let Some(running) = cjm_host::server::discovery::Discovery::find(&config.data_dir) {
        // Two hosts on one data dir share its journal and recover each other's jobs; tell
        // the operator this one is separate (its own workers and queue).
        tracing::warn!(
            "a service already runs on this data dir ({}); this MCP server is another host \
             on the same journal. MCP clients that speak HTTP can use {}/mcp instead",
            running.url,
            running.url
        );
    }
    let grace = Duration::from_secs_f64(args.grace);
    runtime()?.block_on(async {
        let host = Host::builder().config(config).build().await?;
        super::serve::load_enabled(&host).await;
        let served = cjm_host::server::mcp::serve_stdio(host.clone()).await;
        host.stop_leaving_pending(grace).await?;
        served?;
        Ok(())
    })
}
