//! Builds the kernel program (`ws-monitor-ebpf`) for `bpfel-unknown-none` and leaves the
//! object in OUT_DIR, where `capture` embeds it: the userspace binary is all a host needs.
//!
//! The BPF target's `core` comes prebuilt from Debian's `libstd-rust-web-dev-bpf`, so the
//! build uses that rustc (`/usr/bin/rustc`, override with `WS_MONITOR_BPF_RUSTC`) instead of
//! `-Z build-std`. `cargo xtask setup` installs it and `bpf-linker`.
//!
//! Without the `kernel` feature (on by default) nothing of that is needed: the object is
//! left empty, so the pure core (flow types, reassembly, engine, outputs) and replay build
//! and test on a stock Rust toolchain, and live capture says it was built without it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that use unstable features and need `RUSTC_BOOTSTRAP` on a stable rustc.
/// (Setting it to `1` instead would make tools add `-Z build-std`.)
const BOOTSTRAP_CRATES: &str = "aya_ebpf";

fn main() {
    if let Err(message) = build_ebpf() {
        // A build script can only fail loudly; say exactly what to do.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn build_ebpf() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    if env::var_os("CARGO_FEATURE_KERNEL").is_none() {
        return std::fs::write(out_dir.join("ws-monitor.bpf.o"), b"")
            .map_err(|e| format!("writing the empty eBPF object: {e}"));
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest_dir.parent().ok_or("ws-monitor has no parent directory")?;
    let ebpf_dir = workspace.join("ws-monitor-ebpf");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        workspace.join("ws-monitor-common/src"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=WS_MONITOR_BPF_RUSTC");

    let rustc = env::var("WS_MONITOR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let linker = find_bpf_linker(Path::new(&rustc))?;

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out_dir.join("bpf-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked", "--target", "bpfel-unknown-none"])
        .arg("--package=ws-monitor-ebpf")
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        .env("RUSTC_BOOTSTRAP", BOOTSTRAP_CRATES);
    // What the outer build set for the host must not leak into the BPF build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_FEATURE_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().map_err(|e| format!("could not run cargo to build the eBPF program: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the eBPF program failed ({status}); run `cargo xtask setup` to install the BPF toolchain"
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release/ws-monitor");
    let dest = out_dir.join("ws-monitor.bpf.o");
    std::fs::copy(&object, &dest).map_err(|e| format!("eBPF object {} missing after build: {e}", object.display()))?;
    Ok(())
}

/// Checks the BPF rustc and finds `bpf-linker` (on PATH or in cargo's bin directory).
fn find_bpf_linker(rustc: &Path) -> Result<PathBuf, String> {
    if !rustc.exists() {
        return Err(format!(
            "{} not found: the eBPF program needs Debian's rustc-web with the prebuilt BPF core; run `cargo xtask setup`",
            rustc.display()
        ));
    }
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
        .ok_or_else(|| "bpf-linker not found on PATH or in ~/.cargo/bin: run `cargo xtask setup` (it installs bpf-linker 0.13 for LLVM 22)".into())
}
