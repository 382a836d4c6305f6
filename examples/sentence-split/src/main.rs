//! `sentence-split-worker`: the `sentence-split` capability as a native subprocess worker,
//! serving the HTTP/JSON worker contract (`sentence-split-worker --fd N --ppid PID`, or
//! `--port P`).
//!
//! Only meaningful off wasm32: the wasm build of this package is its library (a component).

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cjm_native_worker::serve::<sentence_split::SentenceSplit>()
}

#[cfg(target_arch = "wasm32")]
fn main() {
    eprintln!(
        "sentence-split-worker is a native worker; on wasm32 use the sentence-split component"
    );
}
