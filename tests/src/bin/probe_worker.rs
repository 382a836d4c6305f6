//! The `probe` capability served as a native worker (cjm-native-worker).

fn main() -> std::process::ExitCode {
    cjm_native_worker::serve::<cjm_tests::probe::Probe>()
}
