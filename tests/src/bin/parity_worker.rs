//! The `text-stats` example served as a native worker, built inside this package so the
//! integration tests reach it through `CARGO_BIN_EXE_parity_worker`.

fn main() -> std::process::ExitCode {
    cjm_native_worker::serve::<text_stats::TextStats>()
}
