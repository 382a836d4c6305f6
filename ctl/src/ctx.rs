//! What every command shares: the global options, the configuration they resolve to, and
//! output (text for people, JSON for scripts, colour only where it is wanted).

use std::fmt;
use std::io::IsTerminal as _;
use std::path::PathBuf;

use cjm_host::config::{ConfigLoader, HostConfig, RawConfig};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets};

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The data dir: manifests, environments, stores [default: ./.cjm, or cjm.yaml's
    /// data_dir]
    #[arg(
        long = "data-dir",
        id = "global_data_dir",
        global = true,
        env = "CJM_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
    /// The cjm.yaml to read [default: the first cjm.yaml from here upward]
    #[arg(
        long = "cjm-config",
        id = "global_config",
        global = true,
        env = "CJM_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Talk to the host serving at URL [default: the data dir's `cjm-ctl serve`, when one
    /// runs]; its token, if it needs one, in CJM_TOKEN
    #[arg(long = "host", global = true, env = "CJM_HOST", value_name = "URL", value_parser = host_url)]
    pub host: Option<String>,
    /// Run in this process even when a host serves the data dir
    #[arg(long, global = true, conflicts_with = "host")]
    pub local: bool,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors (and the asked-for data)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to use colour (NO_COLOR is respected by `auto`)
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// When the stream is a terminal and NO_COLOR is not set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The shared state of one invocation.
#[derive(Debug)]
pub struct Ctx {
    /// The global options.
    pub global: GlobalArgs,
    /// Output.
    pub out: Out,
}

impl Ctx {
    /// From the parsed global options.
    pub fn new(global: GlobalArgs) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = |tty: bool| match global.color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => tty && !no_color,
        };
        let out = Out {
            json: global.json,
            quiet: global.quiet,
            color: color(std::io::stdout().is_terminal()),
            err_color: color(std::io::stderr().is_terminal()),
            stdout_tty: std::io::stdout().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
        };
        Ctx { global, out }
    }

    /// The configuration: `--data-dir` > `CJM_*` > cjm.yaml > defaults.
    pub fn config(&self) -> anyhow::Result<HostConfig> {
        let raw = RawConfig {
            data_dir: self.global.data_dir.clone(),
            ..RawConfig::default()
        };
        let mut loader = ConfigLoader::new().cli(raw);
        if let Some(file) = &self.global.config {
            loader = loader.config_file(file);
        }
        loader.load().map_err(|e| {
            hint(
                format!("cannot load the configuration: {e}"),
                "check cjm.yaml and the CJM_* environment variables",
            )
        })
    }
}

impl Ctx {
    /// The data dir's records, read without a host.
    pub fn records(&self) -> anyhow::Result<cjm_host::records::Records> {
        Ok(cjm_host::records::Records::new(self.config()?))
    }

    /// The service to go through: `--host`, else the live `cjm-ctl serve` of the data dir;
    /// `None` with `--local` or when none runs (the command then hosts in-process).
    pub fn client(&self) -> anyhow::Result<Option<cjm_host::client::Client>> {
        if self.global.local {
            return Ok(None);
        }
        if let Some(url) = &self.global.host {
            let token = std::env::var("CJM_TOKEN")
                .ok()
                .and_then(|t| cjm_host::server::Token::new(&t));
            return Ok(Some(cjm_host::client::Client::new(url.clone(), token)));
        }
        let config = self.config()?;
        Ok(cjm_host::client::Client::discover(&config.data_dir))
    }
}

/// Parses a `--host`: an `http://` or `https://` URL.
fn host_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "'{text}' is not an http(s) URL (for example http://127.0.0.1:8631)"
        )),
    }
}

/// Parses a `--timeout`: a positive number of seconds, within the host's bound.
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    parse_seconds(text, true)
}

/// Parses a `--grace`: a number of seconds, 0 or more, within the host's bound.
pub fn seconds(text: &str) -> Result<f64, String> {
    parse_seconds(text, false)
}

fn parse_seconds(text: &str, positive: bool) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    cjm_host::bounds::seconds(secs, positive).map(|_| secs)
}

/// A tokio runtime for the commands that talk to capabilities.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Output of one invocation.
#[derive(Debug, Clone)]
pub struct Out {
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// Colour on stdout.
    pub color: bool,
    /// Colour on stderr.
    pub err_color: bool,
    /// Whether stdout is a terminal.
    pub stdout_tty: bool,
    /// Whether stderr is a terminal.
    pub stderr_tty: bool,
}

impl Out {
    /// A line for people on stdout (not with `--json` or `--quiet`).
    pub fn info(&self, text: impl fmt::Display) {
        if !self.json && !self.quiet {
            println!("{text}");
        }
    }

    /// A progress note for people on stderr (not with `--json` or `--quiet`).
    pub fn note(&self, text: impl fmt::Display) {
        if !self.json && !self.quiet {
            eprintln!("{text}");
        }
    }

    /// A warning on stderr (not with `--quiet`).
    pub fn warn(&self, text: impl fmt::Display) {
        if !self.quiet {
            eprintln!("{}: {text}", self.paint_err("warning", Color::Yellow));
        }
    }

    /// A JSON document on stdout.
    pub fn json(&self, value: &serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }

    /// `error: ...` and, when one is attached, `hint: ...` on stderr.
    pub fn error(&self, e: &anyhow::Error) {
        // A service that wants its token: that is what to do, whatever else the command
        // would hint.
        let unauthorized = e.chain().any(|c| {
            matches!(
                c.downcast_ref(),
                Some(cjm_host::client::ClientError::Api { status: 401, .. })
            )
        });
        let hint = e
            .chain()
            .find_map(|c| c.downcast_ref::<Hinted>())
            .map(|h| h.hint.as_str())
            .filter(|_| !unauthorized)
            .or(unauthorized.then_some(
                "the service requires its bearer token: set CJM_TOKEN to the contents of the data dir's serve.token",
            ));
        if self.json {
            // Scripts get the same shape as the API's errors, on stderr.
            let kind = error_kind(e);
            let mut error = serde_json::json!({"kind": kind, "message": format!("{e:#}")});
            if let Some(h) = hint {
                error["hint"] = serde_json::json!(h);
            }
            eprintln!("{}", serde_json::json!({ "error": error }));
            return;
        }
        eprintln!("{}: {e:#}", self.paint_err("error", Color::Red));
        if let Some(h) = hint {
            eprintln!("{}: {}", self.paint_err("hint", Color::Cyan), h);
        }
    }

    fn paint_err(&self, word: &str, color: Color) -> String {
        if self.err_color {
            let code = match color {
                Color::Red => 31,
                Color::Yellow => 33,
                Color::Green => 32,
                _ => 36,
            };
            format!("\x1b[1;{code}m{word}\x1b[0m")
        } else {
            word.to_owned()
        }
    }

    /// A table for stdout with `header`.
    pub fn table(&self, header: &[&str]) -> Table {
        let mut t = Table::new();
        t.load_preset(if self.stdout_tty {
            presets::UTF8_FULL_CONDENSED
        } else {
            presets::ASCII_BORDERS_ONLY_CONDENSED
        })
        .set_content_arrangement(ContentArrangement::Dynamic);
        if !self.color {
            t.force_no_tty();
        } else {
            t.enforce_styling();
        }
        t.set_header(header.iter().map(Cell::new));
        t
    }

    /// A cell coloured `color` when colour is on.
    pub fn cell(&self, text: impl fmt::Display, color: Color) -> Cell {
        let c = Cell::new(text);
        if self.color { c.fg(color) } else { c }
    }
}

/// An error with a hint for the user.
#[derive(Debug)]
pub struct Hinted {
    message: String,
    /// What to do about it.
    pub hint: String,
    /// The command line was wrong (exit 2, as clap's own usage errors).
    pub usage: bool,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// An error of a known kind (a typed job error's category), which `--json` reports.
#[derive(Debug)]
pub struct Kinded {
    message: String,
    kind: String,
}

impl fmt::Display for Kinded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Kinded {}

/// An error `message` of `kind`.
pub fn kinded(kind: impl fmt::Display, message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Kinded {
        message: message.to_string(),
        kind: kind.to_string(),
    })
}

/// An error `message` with `hint`.
pub fn hint(message: impl fmt::Display, hint: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        message: message.to_string(),
        hint: hint.to_string(),
        usage: false,
    })
}

/// A usage error (a malformed argument): `message` with `hint`, exit 2.
pub fn usage(message: impl fmt::Display, hint: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        message: message.to_string(),
        hint: hint.to_string(),
        usage: true,
    })
}

/// Whether `e` is a usage error.
/// The kind a `--json` error says: `usage`, the service's own kind, a typed job error's
/// category (`user_input`, `transient`, `resource`, `fatal`), `not_found`, `cancelled`, else
/// `failure`.
fn error_kind(e: &anyhow::Error) -> String {
    if is_usage(e) {
        return "usage".to_owned();
    }
    for cause in e.chain() {
        if let Some(k) = cause.downcast_ref::<Kinded>() {
            return k.kind.clone();
        }
        if let Some(cjm_host::client::ClientError::Api { kind, .. }) = cause.downcast_ref() {
            return kind.clone();
        }
        if let Some(job) = cause.downcast_ref::<cjm_guest::JobError>() {
            return job.category.to_string();
        }
        if let Some(host) = cause.downcast_ref::<cjm_host::Error>() {
            return match host {
                cjm_host::Error::Job(job) => job.category.to_string(),
                cjm_host::Error::NotFound(_) => "not_found".to_owned(),
                cjm_host::Error::Cancelled => "cancelled".to_owned(),
                _ => "failure".to_owned(),
            };
        }
    }
    "failure".to_owned()
}

pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<Hinted>().is_some_and(|h| h.usage))
}

/// A JSON argument (`what` names it in the error): malformed JSON is a usage error.
pub fn json_arg(what: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        usage(
            format!("{what} is not valid JSON: {e}"),
            "quote it for the shell: '{\"text\": \"hello\"}'",
        )
    })
}

/// The first 19 characters of an ISO timestamp, `T` as a space (`2026-11-25 12:00:11`).
pub fn short_ts(ts: &str) -> String {
    ts.chars()
        .take(19)
        .map(|c| if c == 'T' { ' ' } else { c })
        .collect()
}

/// The last 8 characters of an id, or `-` (a UUIDv7 begins with its timestamp, the same for
/// every id of a burst; its end tells them apart, and `--job`/`cancel` accept it).
pub fn short_id(id: Option<&str>) -> String {
    id.map_or_else(
        || "-".to_owned(),
        |s| {
            let chars: Vec<char> = s.chars().collect();
            chars[chars.len().saturating_sub(8)..].iter().collect()
        },
    )
}
