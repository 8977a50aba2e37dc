//! `cargo xtask deny`: cargo-deny over the workspace, configured by deny.toml at the root.
//!
//! Licenses, bans (duplicate versions, wildcards) and sources need nothing but Cargo.lock
//! and the crates' manifests: they always run and fail the task on any violation.
//! Advisories need the RustSec database, which cargo-deny clones from GitHub into
//! `$CARGO_HOME/advisory-dbs`:
//!
//! - fetched: advisories are checked and fail the task like the rest;
//! - not fetched, but a copy is there from an earlier fetch: advisories are checked
//!   against that copy (cargo-deny refuses one older than 90 days), and a line says so;
//! - neither: one line says that advisories were NOT checked and how to check them; the
//!   task then passes on the other checks alone.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};

/// The cargo-deny that `setup --tests` installs (0.20 needs rustc 1.88 or newer).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Installs cargo-deny CARGO_DENY_VERSION with `cargo install --locked`, unless present.
pub fn install() -> anyhow::Result<()> {
    let present = Command::new("cargo-deny")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-deny {CARGO_DENY_VERSION}"))
        .unwrap_or(false);
    if present {
        crate::step(&format!("cargo-deny {CARGO_DENY_VERSION}: present"));
        return Ok(());
    }
    crate::step(&format!("building cargo-deny {CARGO_DENY_VERSION} (takes a few minutes)"));
    let status = Command::new(crate::env_cargo())
        .args(["install", "cargo-deny", "--locked", "--force", "--version", CARGO_DENY_VERSION])
        .status()
        .context("running cargo install cargo-deny")?;
    if !status.success() {
        bail!("cargo install cargo-deny {CARGO_DENY_VERSION} failed ({status})");
    }
    Ok(())
}

/// `cargo deny --locked ARGS` in the workspace root; whether it passed.
fn deny(args: &[&str]) -> anyhow::Result<bool> {
    let status = Command::new(crate::env_cargo())
        .args(["deny", "--locked"])
        .args(args)
        .current_dir(crate::workspace_root())
        .status()
        .context("running cargo deny")?;
    Ok(status.success())
}

/// Where cargo-deny keeps its advisory databases.
fn db_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    home.join("advisory-dbs")
}

/// A copy of the advisory database from an earlier fetch, and the date of its newest commit.
fn local_db() -> Option<(PathBuf, String)> {
    let entries = std::fs::read_dir(db_dir()).ok()?;
    let copy = entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("advisory-db-")) && p.join(".git").exists()
    })?;
    let date = Command::new("git")
        .args(["-C"])
        .arg(&copy)
        .args(["log", "-1", "--format=%cs"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Some((copy, date))
}

/// Fetches the advisory database; None if that worked, else the last line cargo-deny said.
fn fetch_db() -> anyhow::Result<Option<String>> {
    let out = Command::new(crate::env_cargo())
        .args(["deny", "fetch", "db"])
        .current_dir(crate::workspace_root())
        .output()
        .context("running cargo deny fetch db")?;
    if out.status.success() {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
    Ok(Some(last))
}

/// Runs every check (see the module doc); fails on any violation found.
pub fn check() -> anyhow::Result<()> {
    crate::step("cargo deny: licenses, bans (duplicate versions), sources");
    if !deny(&["check", "licenses", "bans", "sources"])? {
        bail!("cargo deny check licenses bans sources failed (see above; policy in deny.toml)");
    }
    crate::step("cargo deny: fetching the RustSec advisory database");
    match (fetch_db()?, local_db()) {
        (None, _) => {
            crate::step("cargo deny: advisories");
            if !deny(&["check", "advisories"])? {
                bail!("cargo deny check advisories failed (see above)");
            }
        }
        (Some(_), Some((copy, date))) => {
            crate::step(&format!(
                "cargo deny: advisories, against the copy in {} (newest advisory {date}): it could not be updated",
                copy.display()
            ));
            if !deny(&["--offline", "check", "advisories"])? {
                bail!("cargo deny check advisories failed against the local copy (see above; update the copy if it is stale)");
            }
        }
        (Some(why), None) => {
            eprintln!(
                "xtask: WARNING: advisories NOT checked: the RustSec advisory database could not be fetched ({why}); \
                 licenses, bans and sources were checked. To check advisories run `cargo deny fetch db && cargo deny check advisories` \
                 where github.com is reachable, or copy {} from such a machine to this one",
                db_dir().display()
            );
        }
    }
    Ok(())
}
