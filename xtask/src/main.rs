//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `demo`: installs the wasm targets if missing, builds, starts `lull dev`, submits the
//!   examples, watches them and prints their results, then shuts down.
//! - `test`: everything CI runs: formatting, clippy, docs, `cargo deny`, a few seconds of each
//!   protocol fuzz target, and every test (with a throwaway PostgreSQL server for the tests of
//!   the PostgreSQL store).
//! - `bench NAME`: a benchmark; its last line is one JSON object of named figures.
//! - `fuzz [SECONDS]`: builds the fuzz targets (nightly, cargo-fuzz) and runs each for SECONDS
//!   seconds (10); `fuzz bench [MINUTES]` runs each for MINUTES minutes (3): see fuzz/README.md.
//! - `deny`: cargo-deny's license, ban and source checks, and advisories (offline) when the
//!   RustSec database is on the machine.

mod bench;
mod demo;
mod deny;
mod fuzz;
mod postgres;
mod util;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("test") => test(),
        Some("fuzz") => fuzz::run(args.get(1..).unwrap_or_default()),
        Some("deny") => deny::check(),
        Some("bench") => bench::run(
            args.get(1).map(String::as_str),
            args.get(2..).unwrap_or_default(),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask demo | test | bench NAME | fuzz [SECONDS] | fuzz bench [MINUTES] | deny\n  benches: {}",
                bench::NAMES.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything CI runs.
fn test() -> anyhow::Result<()> {
    util::ensure_wasm_targets()?;
    // Signatures are checked against the real OpenSSH tools; the dashboard in a real browser.
    // faketime brings the library that skews one coordinator's clock; ip makes the network
    // namespaces of the fault tests.
    util::ensure_commands(&[
        ("ssh-keygen", "openssh-client"),
        ("chromium", "chromium"),
        ("faketime", "faketime"),
        ("ip", "iproute2"),
    ])?;
    util::build_examples()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo_env(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-Dwarnings")],
    )?;
    // The dependency graph: licenses, duplicate versions, sources (and advisories offline).
    deny::check()?;
    // A few seconds of each protocol fuzz target: a decoder that crashes on some input fails
    // here (`cargo xtask fuzz` runs them all for longer).
    fuzz::smoke(5)?;
    util::cargo(&["build", "--workspace", "--bins"])?;
    // The store's tests and the PostgreSQL end-to-end tests run against a real server.
    let postgres = postgres::Server::start()?;
    let counts = util::cargo_test(
        &["test", "--workspace"],
        &[
            ("LULL_TEST_POSTGRES", postgres.url.as_str()),
            ("LULL_TEST_POSTGRES_CTL", postgres.ctl().as_str()),
        ],
    )?;
    drop(postgres);
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if counts.failed > 0 {
        anyhow::bail!("{} test(s) failed", counts.failed);
    }
    Ok(())
}
