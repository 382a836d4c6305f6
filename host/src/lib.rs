//! `cjm-host`: the embeddable capability host.
//!
//! A *capability* is a tool with a declared contract. It runs either as a sandboxed
//! WebAssembly component inside the host or as an isolated native subprocess worker, behind
//! one contract ([`backend::Backend`]).
//!
//! Modules, one concept each:
//! - [`adapter`]: adapter compatibility, manifest against manifest over every kind of capability;
//! - [`bounds`]: bounds on callers' JSON (depth, size) checked at every entry point;
//! - [`backend`]: the one contract as a trait, with the wasm sandbox (`backend::wasm`) and
//!   the native worker supervisor and client (`backend::native`);
//! - [`manifest`]: v2.0 capability and adapter manifests (Python-compatible), canonical
//!   hashing, validation, discovery;
//! - [`config`]: layered configuration (CLI > `CJM_*` env > `cjm.yaml` > defaults) and the
//!   data dir layout;
//! - [`store`]: the SQLite stores (config, empirical, journal, diagnostics) and the secrets
//!   file;
//! - [`manager`]: one manager over both kinds: lifecycle, config validation, calls with
//!   empirical samples, reload-and-retry;
//! - [`queue`]: the job queue: admission over lanes, cancellation, events, compositions;
//! - [`host`]: [`Host::builder`] assembles manager and queue in one call;
//! - [`install`]: the install pipeline behind `cjm-ctl install-all` (wasm, Python, native);
//! - [`trace`]: one trace per job (W3C trace context in, OpenTelemetry spans, OTLP export
//!   with the `otlp` feature);
//! - [`telemetry`]: system CPU/RAM, process-subtree and GPU (NVML) telemetry, the platform string;
//! - [`error`]: the host's error type; the domain taxonomy travels as `JobError` data;
//! - `server` (feature `server`): the host as an HTTP/JSON service under `/v1` (axum), and
//!   `client`, its Rust client.
//!
//! The contract types shared with guests and workers (JobError, envelope, capability info,
//! structural surface) live in `cjm_guest::contract` and are re-exported as [`contract`].

pub mod adapter;
pub mod backend;
pub mod bounds;
#[cfg(feature = "server")]
pub mod client;
pub mod config;
pub mod error;
pub mod host;
pub mod install;
pub mod manager;
pub mod manifest;
pub mod queue;
pub mod records;
pub mod reference;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use cjm_guest::contract;
pub use error::{Error, Result};
pub use host::{Host, HostBuilder};

#[cfg(test)]
mod layers {
    //! The modules form layers: each reaches only the ones below it, so none can be
    //! understood (or replaced, as the cluster will replace the journal's transport) only
    //! together with one above it.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules whose dependencies are checked, and what each may reach.
    const ALLOWED: &[(&str, &[&str])] = &[
        ("manifest", &[]),
        ("telemetry", &[]),
        ("config", &["manifest"]),
        ("store", &["config"]),
        ("backend", &["config", "manifest", "store"]),
        ("adapter", &["backend", "manifest"]),
        (
            "manager",
            &[
                "adapter",
                "backend",
                "config",
                "manifest",
                "store",
                "telemetry",
            ],
        ),
        (
            "queue",
            &[
                "backend",
                "config",
                "manager",
                "manifest",
                "store",
                "telemetry",
            ],
        ),
        ("records", &["config", "manifest", "queue", "store"]),
    ];

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        // A module of one file has no dir.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn modules_reach_only_the_layers_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let names: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
        let mut found: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (module, _) in ALLOWED {
            let mut files = vec![src.join(format!("{module}.rs"))];
            sources(&src.join(module), &mut files);
            for file in files.iter().filter(|f| f.is_file()) {
                let text = std::fs::read_to_string(file).unwrap();
                for (i, _) in text.match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name != *module && names.contains(name.as_str()) {
                        found.entry(module).or_default().insert(name);
                    }
                }
            }
        }
        for (module, allowed) in ALLOWED {
            let reached = found.remove(module).unwrap_or_default();
            let extra: Vec<&String> = reached
                .iter()
                .filter(|r| !allowed.contains(&r.as_str()))
                .collect();
            assert!(
                extra.is_empty(),
                "`{module}` reaches {extra:?}, above it or beside it"
            );
        }
    }
}
