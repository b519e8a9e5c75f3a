//! `cargo xtask fuzz [SECONDS]` and `cargo xtask fuzz bench [MINUTES]`: builds and runs the
//! fuzz targets under `fuzz/` (cargo-fuzz, libFuzzer, on the nightly toolchain), each for a
//! fixed time, one after the other, and reports what each did (runs, runs per second,
//! coverage); `bench` ends with one JSON object of named figures, as the benchmarks do.
//!
//! Each target fuzzes from its seeds in `fuzz/corpus/TARGET/` (read only) into a working corpus
//! under `fuzz/target/corpus/TARGET/`, which later runs start from. A crash stops the run and
//! names the target and the input libFuzzer kept (`fuzz/artifacts/TARGET/crash-...`), which
//! `cargo +nightly fuzz run TARGET PATH` replays.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util;

/// The targets, in the order they run.
pub const TARGETS: &[&str] = &[
    "frame",
    "messages",
    "job_file",
    "trust",
    "constraint",
    "host_calls",
];

/// The toolchain cargo-fuzz needs (for `-Zsanitizer=address`).
const TOOLCHAIN: &str = "nightly";

/// What one target did in its run, from libFuzzer's final statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRun {
    /// The target.
    pub target: String,
    /// The time it was given, in seconds.
    pub seconds: u64,
    /// Inputs run (`stat::number_of_executed_units`).
    pub runs: u64,
    /// Inputs run per second on average (`stat::average_exec_per_sec`).
    pub execs_per_sec: u64,
    /// Inputs added to the working corpus (`stat::new_units_added`).
    pub new_units: u64,
    /// Coverage points reached (`cov:` of the last status line).
    pub coverage: u64,
    /// The most memory it held, in MiB (`stat::peak_rss_mb`).
    pub peak_rss_mb: u64,
    /// Wall time of the run, including starting the process and reading the corpus.
    pub wall: Duration,
}

/// What [`run_all`] found: one entry per target, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FuzzSummary {
    /// The targets' runs.
    pub targets: Vec<TargetRun>,
    /// How long building every target took.
    pub build: Duration,
}

impl FuzzSummary {
    /// A Markdown table of the runs.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| target | seconds | wall | runs | execs/s | new corpus units | coverage | peak RSS | crashes |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for t in &self.targets {
            out.push_str(&format!(
                "| `{}` | {} | {:.0} s | {} | {} | {} | {} | {} MiB | 0 |\n",
                t.target,
                t.seconds,
                t.wall.as_secs_f64(),
                t.runs,
                t.execs_per_sec,
                t.new_units,
                t.coverage,
                t.peak_rss_mb
            ));
        }
        out
    }

    /// One JSON object of named figures (`<target>_runs`, `<target>_execs_per_sec`, ...).
    pub fn json(&self) -> String {
        let mut fields = vec![format!("\"build_s\":{:.1}", self.build.as_secs_f64())];
        for t in &self.targets {
            fields.push(format!("\"{}_runs\":{}", t.target, t.runs));
            fields.push(format!(
                "\"{}_execs_per_sec\":{}",
                t.target, t.execs_per_sec
            ));
            fields.push(format!("\"{}_coverage\":{}", t.target, t.coverage));
        }
        format!("{{{}}}", fields.join(","))
    }
}

/// `cargo xtask fuzz [SECONDS]`: every target for SECONDS seconds (default 10);
/// `cargo xtask fuzz bench [MINUTES]`: every target for MINUTES minutes (default 3), the
/// recorded run of fuzz/README.md.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let number = |arg: Option<&String>, default: u64| -> anyhow::Result<u64> {
        arg.map_or(Ok(default), |a| {
            a.parse()
                .with_context(|| format!("{a:?} is not a whole number"))
        })
    };
    match args.first().map(String::as_str) {
        Some("bench") => bench(number(args.get(1), 3)?),
        Some("smoke") => smoke(number(args.get(1), 5)?).map(drop),
        _ => run_all(number(args.first(), 10)?).map(drop),
    }
}

/// Installs what fuzzing needs when it is missing: the nightly toolchain (minimal profile), a
/// C++ compiler (libFuzzer is built from source) and cargo-fuzz.
pub fn ensure_toolchain() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (the Rust toolchain installer) to list toolchains")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    if !listed.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|t| t.starts_with("nightly-"))
    }) {
        // RUSTUP_AUTO_INSTALL=0 may be set: `cargo +nightly` would not install it by itself.
        util::run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                TOOLCHAIN,
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly --profile minimal",
        )?;
    }
    util::ensure_commands(&[("c++", "g++")])?;
    let has_cargo_fuzz = Command::new("cargo-fuzz")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        util::cargo_install("cargo-fuzz")?;
    }
    Ok(())
}

/// `cargo +nightly fuzz ARGS` in the workspace root, as a command to run. (`rustup run` rather
/// than the `+nightly` shorthand: under `cargo xtask`, `cargo` may be the stable toolchain's own
/// binary, which knows no `+`.)
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "fuzz"])
        .args(args)
        .current_dir(util::root());
    // The fuzz package builds into fuzz/target with its own toolchain. What `cargo run` set
    // for xtask itself is not for it: the toolchain, the target directory, and the package
    // variables (ring's build script reruns when CARGO_MANIFEST_DIR changes, and everything
    // above ring with it).
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if matches!(
            name,
            "CARGO"
                | "CARGO_TARGET_DIR"
                | "CARGO_PRIMARY_PACKAGE"
                | "RUSTUP_TOOLCHAIN"
                | "RUSTUP_TOOLCHAIN_SOURCE"
                | "RUST_RECURSION_COUNT"
        ) || [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Builds every target (with coverage instrumentation and AddressSanitizer).
pub fn build() -> anyhow::Result<Duration> {
    let started = Instant::now();
    eprintln!("xtask: cargo +nightly fuzz build");
    let status = cargo_fuzz(&["build"])
        .status()
        .context("starting cargo +nightly fuzz build")?;
    if !status.success() {
        bail!("cargo +nightly fuzz build failed ({status})");
    }
    Ok(started.elapsed())
}

/// Builds every target, then runs each for `seconds_each` seconds, one after the other. Fails
/// on the first crash, naming the target and the input that crashed it.
pub fn run_all(seconds_each: u64) -> anyhow::Result<FuzzSummary> {
    ensure_toolchain()?;
    let build = build()?;
    let mut summary = FuzzSummary {
        targets: Vec::new(),
        build,
    };
    for target in TARGETS {
        let run = run_one(target, seconds_each)?;
        eprintln!(
            "xtask: fuzz {target}: {} runs in {} s ({} per second), coverage {}",
            run.runs, seconds_each, run.execs_per_sec, run.coverage
        );
        summary.targets.push(run);
    }
    println!("{}", summary.table());
    Ok(summary)
}

/// Runs every target for `minutes_each` minutes (a recorded run, for BENCHMARKS.md): prints the
/// table and, last, one JSON object of named figures.
pub fn bench(minutes_each: u64) -> anyhow::Result<()> {
    let summary = run_all(minutes_each * 60)?;
    println!("{}", summary.json());
    Ok(())
}

/// The targets that need no wasmtime, which a fresh machine builds in minutes: what
/// `cargo xtask test` runs for a few seconds each.
pub const PROTOCOL_TARGETS: &[&str] = &["frame", "messages", "job_file", "trust", "constraint"];

/// What `cargo xtask test` runs: the protocol targets, built without the agent, for `seconds`
/// each. Fails on the first crash, naming the target and its input.
pub fn smoke(seconds: u64) -> anyhow::Result<FuzzSummary> {
    let build = smoke_build()?;
    smoke_run(seconds, build)
}

/// How `cargo xtask test` builds the protocol targets: without the agent, and unoptimized
/// (`--dev`; still with AddressSanitizer and coverage), which builds in half the time and
/// is fast enough for seconds of fuzzing.
const SMOKE_BUILD: &[&str] = &["--no-default-features", "--dev"];

/// Installs what fuzzing needs and builds the protocol targets; how long the build took.
pub fn smoke_build() -> anyhow::Result<Duration> {
    ensure_toolchain()?;
    let started = Instant::now();
    let args: Vec<&str> = ["build"].iter().chain(SMOKE_BUILD).copied().collect();
    util::run(
        &mut cargo_fuzz(&args),
        &format!("cargo +nightly fuzz {}", args.join(" ")),
    )?;
    Ok(started.elapsed())
}

/// Runs the protocol targets, built by [`smoke_build`] in `build`, for `seconds` each.
pub fn smoke_run(seconds: u64, build: Duration) -> anyhow::Result<FuzzSummary> {
    let mut summary = FuzzSummary {
        targets: Vec::new(),
        build,
    };
    for target in PROTOCOL_TARGETS {
        summary
            .targets
            .push(run_with(target, seconds, SMOKE_BUILD)?);
    }
    println!("{}", summary.table());
    Ok(summary)
}

/// Runs one target for `seconds` seconds from its seeds and working corpus.
pub fn run_one(target: &str, seconds: u64) -> anyhow::Result<TargetRun> {
    run_with(target, seconds, &[])
}

/// Runs one target for `seconds` seconds, with `extra` arguments to `cargo fuzz run`.
fn run_with(target: &str, seconds: u64, extra: &[&str]) -> anyhow::Result<TargetRun> {
    let root = util::root();
    let seeds = root.join("fuzz").join("corpus").join(target);
    let corpus: PathBuf = root.join("fuzz").join("target").join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let max_time = format!("-max_total_time={seconds}");
    let (corpus_arg, seeds_arg) = (corpus.display().to_string(), seeds.display().to_string());
    let mut args = vec!["run", target];
    args.extend(extra);
    args.push(&corpus_arg);
    if seeds.is_dir() {
        args.push(&seeds_arg);
    }
    args.extend(["--", &max_time, "-print_final_stats=1", "-timeout=60"]);
    eprintln!("xtask: cargo +nightly fuzz {}", args.join(" "));
    let started = Instant::now();
    let mut child = cargo_fuzz(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting cargo +nightly fuzz run {target}"))?;
    // libFuzzer writes to stderr; stdout is drained on a thread so neither pipe fills.
    let stdout = child.stdout.take().context("cargo fuzz's stdout")?;
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    let stderr = child.stderr.take().context("cargo fuzz's stderr")?;
    let mut run = TargetRun {
        target: target.to_owned(),
        seconds,
        ..TargetRun::default()
    };
    let mut artifact = None;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        read_line(&line, &mut run, &mut artifact);
        // New corpus units and functions come by the thousand, and the dictionary at the end
        // by the dozen: the rest goes to the terminal.
        if !["\tNEW ", "\tREDUCE ", "NEW_FUNC[", "# Uses: "]
            .iter()
            .any(|noise| line.contains(noise))
        {
            eprintln!("{line}");
        }
        tail.push(line);
        if tail.len() > 60 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    let _ = echo.join();
    run.wall = started.elapsed();
    if let Some(path) = artifact {
        bail!(
            "fuzz target {target} crashed; the input is {path} (replay: cargo +nightly fuzz run {target} {path})"
        );
    }
    if !status.success() {
        bail!(
            "cargo +nightly fuzz run {target} failed ({status}):\n{}",
            tail.join("\n")
        );
    }
    Ok(run)
}

/// Takes what a line of libFuzzer's output says about the run.
fn read_line(line: &str, run: &mut TargetRun, artifact: &mut Option<String>) {
    let number = |text: &str| text.trim().parse::<u64>().ok();
    if let Some((name, value)) = line.strip_prefix("stat::").and_then(|s| s.split_once(':')) {
        let Some(value) = number(value) else { return };
        match name {
            "number_of_executed_units" => run.runs = value,
            "average_exec_per_sec" => run.execs_per_sec = value,
            "new_units_added" => run.new_units = value,
            "peak_rss_mb" => run.peak_rss_mb = value,
            _ => {}
        }
    } else if let Some(path) = line.split("Test unit written to ").nth(1) {
        *artifact = Some(path.trim().to_owned());
    } else if line.starts_with('#')
        && let Some(cov) = line.split("cov: ").nth(1)
        && let Some(cov) = cov.split_whitespace().next().and_then(number)
    {
        run.coverage = cov;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_output_is_read() {
        let mut run = TargetRun::default();
        let mut artifact = None;
        for line in [
            "#2\tINITED cov: 120 ft: 130 corp: 4/301b exec/s: 0 rss: 40Mb",
            "#1048576\tpulse  cov: 900 ft: 2000 corp: 80/4Kb lim: 4096 exec/s: 349525 rss: 60Mb",
            "#1500000\tDONE   cov: 912 ft: 2047 corp: 85/5Kb lim: 4096 exec/s: 300000 rss: 61Mb",
            "stat::number_of_executed_units: 1500000",
            "stat::average_exec_per_sec:     300000",
            "stat::new_units_added:          81",
            "stat::slowest_unit_time_sec:    0",
            "stat::peak_rss_mb:              61",
        ] {
            read_line(line, &mut run, &mut artifact);
        }
        assert_eq!(
            (
                run.runs,
                run.execs_per_sec,
                run.new_units,
                run.coverage,
                run.peak_rss_mb
            ),
            (1_500_000, 300_000, 81, 912, 61)
        );
        assert_eq!(artifact, None);
        read_line(
            "artifact_prefix='/w/fuzz/artifacts/frame/'; Test unit written to /w/fuzz/artifacts/frame/crash-0a1b",
            &mut run,
            &mut artifact,
        );
        assert_eq!(
            artifact.as_deref(),
            Some("/w/fuzz/artifacts/frame/crash-0a1b")
        );
    }
}
