//! `text-stats-worker`: the `text-stats` capability as a native subprocess worker, serving the
//! HTTP/JSON worker contract (`text-stats-worker --fd N --ppid PID`, or `--port P`).
//!
//! Only meaningful off wasm32: the wasm build of this package is its library (a component).

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cjm_native_worker::serve::<text_stats::TextStats>()
}

#[cfg(target_arch = "wasm32")]
fn main() {
    eprintln!("text-stats-worker is a native worker; on wasm32 use the text-stats component");
}
