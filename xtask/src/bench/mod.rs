//! `cargo xtask bench NAME`: benchmarks. Each prints one JSON object of named figures on its
//! last line.
//!
//! - `dispatch`: many trivial tasks through `lull dev` on loopback.
//! - `fleet`: thousands of simulated agents over QUIC against one coordinator process.
//! - `footprint`: a release `lull-agent` process's memory and CPU, idle and paused with guests.
//! - `guest`: a CPU-bound guest under Lull against its native build and the wasmtime CLI.
//! - `start`: warm instantiation (pooled and not), cold starts, and what a submit and a
//!   1,000-task job send and fetch.
//! - `schedule`: the scheduler alone, placing 1,000,000 tasks on 10,000 simulated agents with
//!   each strategy.
//! - `scavenge`: the agent's sandbox, scavenger and policy in this process against incumbent
//!   child processes: pause latency, reaction, incumbent slowdown, harvest.

mod dispatch;
mod fleet;
mod footprint;
mod guest;
mod procfs;
mod scavenge;
mod schedule;
mod start;

use anyhow::bail;

use crate::util;

/// Runs a benchmark.
pub fn run(name: Option<&str>, args: &[String]) -> anyhow::Result<()> {
    match name {
        Some("dispatch") => dispatch::run(args),
        Some("fleet") => fleet::run(args),
        Some("footprint") => footprint::run(args),
        Some("guest") => guest::run(args),
        Some("scavenge") => scavenge::run(args),
        Some("schedule") => schedule::run(args),
        Some("start") => start::run(args),
        // The scavenge bench's child processes (incumbents), started from this same binary.
        Some(helper) if helper.starts_with(scavenge::HELPER_PREFIX) => {
            scavenge::helper(helper, args)
        }
        _ => bail!(
            "usage: cargo xtask bench NAME [--tasks N | --quick] [--plot PATH]; benches: {}",
            crate::BENCHES.join(", ")
        ),
    }
}

/// The number after `name` in `args` (`--tasks 6000`), or `default` when `name` is absent.
fn number_option(args: &[String], name: &str, default: u32) -> anyhow::Result<u32> {
    use anyhow::Context;
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// The median of a sample by nearest rank (sorts it); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * 0.5).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = util::target_dir().join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
