//! `cargo xtask deny`: cargo-deny's checks of the dependency graph against `deny.toml`:
//! licenses, bans (duplicate versions, each one allowed there with its reason) and sources
//! (crates.io only), then security advisories when the RustSec database is on the machine.
//!
//! The advisory database is a git repository that cargo-deny clones from GitHub; where GitHub
//! cannot be reached the advisories are checked offline (`cargo deny --offline check
//! advisories`) against a copy already under the `db-path` of `deny.toml`
//! (`$CARGO_HOME/advisory-dbs`), and skipped, saying so, when there is none.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util;

/// Installs cargo-deny when missing.
pub fn install() -> anyhow::Result<()> {
    let installed = Command::new("cargo-deny")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        util::cargo_install("cargo-deny")?;
    }
    Ok(())
}

/// Installs cargo-deny when missing, then runs its checks.
pub fn check() -> anyhow::Result<()> {
    install()?;
    util::cargo(&["deny", "check", "licenses", "bans", "sources"])?;
    match advisory_db() {
        Some(db) => {
            eprintln!(
                "xtask: checking advisories against the copy of the database in {}",
                db.display()
            );
            util::cargo(&["deny", "--offline", "check", "advisories"])
        }
        None => {
            eprintln!(
                "xtask: advisories not checked: no RustSec advisory database under {} (cargo-deny \
                 fetches it from GitHub: `cargo deny fetch` where GitHub is reachable)",
                advisory_dbs().display()
            );
            Ok(())
        }
    }
}

/// `db-path` of deny.toml: where cargo-deny keeps its clones of advisory databases.
fn advisory_dbs() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("advisory-dbs")
}

/// The RustSec database's clone under [`advisory_dbs`], if there is one (cargo-deny names it
/// `advisory-db-<hash of its URL>`).
fn advisory_db() -> Option<PathBuf> {
    std::fs::read_dir(advisory_dbs())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("advisory-db"))
                && p.join("crates").is_dir()
        })
}
