//! The `text-stats` capability as a native worker, built by `cargo test -p cjm-ctl` (examples
//! are built with the tests) so the CLI tests can install a native capability without
//! depending on another package's binaries having been built.

fn main() -> std::process::ExitCode {
    cjm_native_worker::serve::<text_stats::TextStats>()
}
