//! `cjm-ctl set-secret NAME KEY`: a secret for a capability's worker environment, stored in
//! `secrets/secrets.json` (0600). The value is never printed.

use std::io::{BufRead as _, IsTerminal as _};

use cjm_host::manager::CapabilityManager;
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `set-secret`. `Debug` never shows the value.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl set-secret my-api-capability MY_API_KEY          # prompts, input hidden\n  printf '%s\\n' \"$KEY\" | cjm-ctl set-secret my-api-capability MY_API_KEY\n\nPrefer the prompt or stdin: a --value stays in the shell history."
)]
pub struct Args {
    /// The capability (its manifest name)
    name: String,
    /// The variable the worker reads (e.g. MY_API_KEY)
    key: String,
    /// The value [default: prompted with hidden input, or one line of stdin]
    #[arg(long)]
    value: Option<String>,
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Runs `set-secret`.
pub fn run(mut args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let value = match args.value.take() {
        Some(v) => v,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("value of {} for {}: ", args.key, args.name))?
        }
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if value.is_empty() {
        return Err(hint(
            "the secret value is empty",
            "give it with --value, the prompt or stdin",
        ));
    }
    // Through a serving host: its loaded instances of the capability reload to see it.
    if let Some(client) = ctx.client()? {
        runtime()?.block_on(client.set_secret(&args.name, &args.key, &value))?;
        return stored(ctx, &args);
    }
    let config = ctx.config()?;
    // Checked before the manager opens (and creates) the stores.
    let found = cjm_host::manifest::discover(&config.manifest_search_paths());
    if found.capability(&args.name).is_none() {
        return Err(hint(
            format!("unknown capability '{}'", args.name),
            "secrets belong to installed capabilities; see `cjm-ctl list`",
        ));
    }
    let manager = CapabilityManager::open(config)?;
    runtime()?.block_on(async {
        let r = manager.set_secret(&args.name, &args.key, &value).await;
        let _ = manager.shutdown().await;
        r
    })?;
    stored(ctx, &args)
}

fn stored(ctx: &Ctx, args: &Args) -> anyhow::Result<()> {
    if ctx.out.json {
        ctx.out
            .json(&json!({"name": args.name, "key": args.key, "stored": true}));
    } else {
        ctx.out.info(format!(
            "stored secret {} for {} (value not shown)",
            args.key, args.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Args;

    #[test]
    fn debug_never_shows_the_value() {
        let a = Args {
            name: "cap".into(),
            key: "K".into(),
            value: Some("hunter2".into()),
        };
        let shown = format!("{a:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
