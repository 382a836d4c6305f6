#![allow(clippy::expect_used)]
//! Builds the wasm fixtures once for the integration tests and benchmarks: the test guests of
//! `tests/guests` and the example capabilities, for `wasm32-wasip2`, in release. Writes
//! `gen.rs` with the path of each component.
//!
//! Each nested cargo gets its own target dir (the outer cargo holds the lock of the main one)
//! and a clean environment (no outer RUSTFLAGS, no clippy wrapper).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    for watched in ["tests/guests", "guest-sdk", "wit", "examples", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let target_base = root.join("target");
    let guests = build(
        &root.join("tests/guests/Cargo.toml"),
        &target_base.join("wasm-guests"),
        &["hostile", "noop", "not-a-capability"],
    );
    // The examples share the main workspace's release profile (which keeps line tables for
    // the host binaries); components are shipped stripped.
    let examples = build(
        &root.join("Cargo.toml"),
        &target_base.join("wasm-examples"),
        &["text-stats", "sentence-split"],
    );

    let mut generated = String::new();
    for (name, path) in guests.iter().chain(examples.iter()) {
        let ident = name.to_uppercase().replace('-', "_");
        writeln!(
            generated,
            "/// The `{name}` component.\npub const {ident}: &str = {:?};",
            path.display()
        )
        .expect("writing to a String cannot fail");
    }
    std::fs::write(out_dir.join("gen.rs"), generated).expect("cannot write gen.rs");
}

fn build(manifest: &Path, target_dir: &Path, packages: &[&str]) -> Vec<(String, PathBuf)> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--lib")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the wasm fixtures");
    if !status.success() {
        panic!(
            "building the wasm fixtures of {} failed. Is the {TARGET} target installed? \
             `rustup target add {TARGET}` (rust-toolchain.toml lists it, so rustup normally \
             fetches it by itself)",
            manifest.display()
        );
    }
    packages
        .iter()
        .map(|p| {
            let file = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{}.wasm", p.replace('-', "_")));
            assert!(
                file.is_file(),
                "expected {} after the build",
                file.display()
            );
            (p.to_string(), file)
        })
        .collect()
}
