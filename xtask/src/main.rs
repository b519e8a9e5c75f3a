//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `demo`: installs the wasm targets if missing, builds, starts `lull dev`, submits the
//!   examples, watches them and prints their results, then shuts down.
//! - `test`: everything CI runs: formatting, clippy, docs, `cargo deny`, a few seconds of each
//!   protocol fuzz target, the agent's Windows and macOS builds (`cross`), and every test (with a throwaway PostgreSQL server for the tests of
//!   the PostgreSQL store).
//! - `bench NAME`: a benchmark; its last line is one JSON object of named figures. The
//!   benchmarks need the agent, the scheduler and a chart library, which the other tasks do
//!   not: they are behind the `bench` feature, and `cargo xtask bench` runs xtask again built
//!   with it.
//! - `fuzz [SECONDS]`: builds the fuzz targets (nightly, cargo-fuzz) and runs each for SECONDS
//!   seconds (10); `fuzz bench [MINUTES]` runs each for MINUTES minutes (3): see fuzz/README.md.
//! - `cross`: the agent for Windows (built, its self-test run under Wine) and macOS (checked);
//!   see `cross.rs` for what is and is not verified.
//! - `package`: the agent as a static (musl) binary and a `.deb` with its systemd unit, each
//!   checked; their sizes as JSON on the last line.
//! - `systemd`: the agent installed in a Debian container booted with systemd, and its unit
//!   checked running (dynamic user, capabilities, key ownership, connected).
//! - `deny`: cargo-deny's license, ban and source checks, and advisories (offline) when the
//!   RustSec database is on the machine.
//! - `postgres CMD [ARGS]`: runs a command (say, `cargo test -p lull-coordinator store`) with a
//!   throwaway PostgreSQL server and the variables its tests read, as `test` does.

#[cfg(feature = "bench")]
mod bench;
mod cross;
mod demo;
mod deny;
mod fuzz;
mod package;
mod postgres;
mod systemd;
mod util;

use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("test") => test(),
        Some("fuzz") => fuzz::run(args.get(1..).unwrap_or_default()),
        Some("deny") => deny::check(),
        Some("cross") => cross::run(),
        Some("package") => package::run(),
        Some("systemd") => systemd::run(),
        Some("postgres") if args.len() > 1 => with_postgres(&args[1..]),
        #[cfg(feature = "bench")]
        Some("bench") => bench::run(
            args.get(1).map(String::as_str),
            args.get(2..).unwrap_or_default(),
        ),
        // The benchmarks need xtask built with them: built and run again, with the arguments.
        #[cfg(not(feature = "bench"))]
        Some("bench") => return util::with_benches(&args),
        _ => {
            eprintln!(
                "usage: cargo xtask demo | test | bench NAME | fuzz [SECONDS] | fuzz bench [MINUTES] | cross | package | systemd | deny | postgres CMD [ARGS]\n  benches: {}",
                BENCHES.join(", ")
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

/// The benchmarks `cargo xtask bench` runs.
const BENCHES: &[&str] = &[
    "dispatch",
    "fleet",
    "footprint",
    "guest",
    "scavenge",
    "schedule",
    "start",
];

/// Everything CI runs.
fn test() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    util::ensure_wasm_targets()?;
    util::ensure_targets(&cross::targets())?;
    // The tools of the checks that come later (cargo-deny, the nightly toolchain, cargo-fuzz,
    // the protocol fuzz targets, the systemd container's Debian root) build on a second thread
    // meanwhile: on two cores, in the time
    // the packages download and in the gaps where one crate holds up the build. Its commands'
    // output goes to a file. It waits for the packages (a C++ compiler among them) before the
    // fuzz build: apt-get takes one at a time.
    let (packages_ready, packages) = std::sync::mpsc::channel::<()>();
    let tools_log = util::target_dir().join("xtask").join("tools.log");
    let tools = {
        let log = tools_log.clone();
        std::thread::spawn(move || {
            util::logged_to(&log, || -> anyhow::Result<std::time::Duration> {
                deny::install()?;
                let _ = packages.recv();
                let fuzz_build = fuzz::smoke_build()?;
                // The Debian root of the systemd container (downloads, mostly).
                systemd::prepare_root()?;
                Ok(fuzz_build)
            })?
        })
    };
    // Signatures are checked against the real OpenSSH tools; the dashboard in a real browser.
    // faketime brings the library that skews one coordinator's clock; ip makes the network
    // namespaces of the fault tests; libFuzzer is built with c++; systemd-analyze checks the
    // unit `lull-agent install` writes, and systemd-nspawn and debootstrap start it in a
    // container; the agent's logind reader is tested on a bus of its own;
    // the cross builds need mingw-w64, clang and Wine.
    let mut commands = vec![
        ("ssh-keygen", "openssh-client"),
        ("chromium", "chromium"),
        ("faketime", "faketime"),
        ("ip", "iproute2"),
        ("systemd-analyze", "systemd"),
        ("c++", "g++"),
        ("dbus-daemon", "dbus-daemon"),
    ];
    commands.extend(cross::COMMANDS);
    commands.extend(systemd::COMMANDS);
    let needed = util::ensure_commands(&commands);
    drop(packages_ready);
    needed?;
    util::build_examples()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo_env(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-Dwarnings")],
    )?;
    let fuzz_build = tools
        .join()
        .map_err(|_| anyhow::anyhow!("the thread building the tools panicked"))?
        .with_context(|| format!("preparing the tools (see {})", tools_log.display()))?;
    // The dependency graph: licenses, duplicate versions, sources (and advisories offline).
    deny::check()?;
    // A few seconds of each protocol fuzz target: a decoder that crashes on some input fails
    // here (`cargo xtask fuzz` runs them all for longer).
    fuzz::smoke_run(5, fuzz_build)?;
    // The agent on the owners' other systems: linted for Windows and macOS, and the Windows
    // build self-tested under Wine. Before the tests, which must have the machine to themselves.
    cross::clippy(cross::Lint::Quick)?;
    cross::windows_self_test()?;
    // The binaries the end-to-end tests start, built with the tests: with the tests' dev
    // dependencies in the build, shared crates get the same features as under `cargo test`, so
    // the test run below reuses every artifact instead of building the stack a second time.
    util::cargo(&["build", "--workspace", "--bins", "--tests"])?;
    // The agent installed as an IT person would, in a container booted with systemd: its unit
    // started for real.
    systemd::check_installed()?;
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
    eprintln!(
        "xtask: cargo xtask test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if counts.failed > 0 {
        anyhow::bail!("{} test(s) failed", counts.failed);
    }
    Ok(())
}

/// Runs a command with a throwaway PostgreSQL server, and `LULL_TEST_POSTGRES` and
/// `LULL_TEST_POSTGRES_CTL` set for it.
fn with_postgres(command: &[String]) -> anyhow::Result<()> {
    let postgres = postgres::Server::start()?;
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("LULL_TEST_POSTGRES", &postgres.url)
        .env("LULL_TEST_POSTGRES_CTL", postgres.ctl())
        .status()
        .with_context(|| format!("running {}", command[0]))?;
    drop(postgres);
    anyhow::ensure!(status.success(), "{} failed: {status}", command.join(" "));
    Ok(())
}
