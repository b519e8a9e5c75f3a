//! The `guest` bench: how fast a CPU-bound guest runs under Lull, against the same program
//! built natively and against the `wasmtime` command line of the wasmtime version the agent
//! uses.
//!
//! The program is the `crunch` example (five kernels: a sieve, an n-body simulation, a sort, a
//! hash table, a CRC), built from one source for the host and for `wasm32-wasip1`. Each round
//! runs it three ways, in an order that rotates from round to round so that the noise of a
//! shared machine falls on all of them alike:
//!
//! - **native**: the host build as a child process; its wall time.
//! - **wasmtime CLI**: `wasmtime run` of the module compiled beforehand with `wasmtime compile`
//!   (so compilation is not in the time; it is reported once, apart); its wall time.
//! - **Lull**: a one-task job of the module on `lull dev` (release build, one agent of one
//!   slot, its policy off: the machine lent whole); the run time the agent measured
//!   (`elapsed_ms` of the attempt's result: instantiation and the guest's run, after the module
//!   was fetched, checked and compiled) and the wall time from `lull submit` to the job's end
//!   seen over the HTTP API.
//!
//! A first round, not counted, warms the caches up and has the agent compile the module. Every
//! run's standard output must be the same. CPU times (the child's, or the `lull dev` process's)
//! are reported beside the wall times, and the CPU other programs used meanwhile: guests run at
//! idle priority (`SCHED_IDLE`), so on a busy machine Lull's wall time grows where the others'
//! do not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lull_agent::sandbox::WASMTIME_VERSION;

use super::procfs::{machine_cpu_s, process_cpu_s};
use super::{median, round3, tempfile_dir};
use crate::util::{self, Dev};

/// `--scale` of the runs unless the bench is told otherwise: a few seconds natively here.
const DEFAULT_SCALE: u32 = 8;

/// The ways a round runs the program.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Native,
    Cli,
    /// The CLI with epoch interruption on, as the agent's engine has it (`--cli-epoch`).
    CliEpoch,
    Lull,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Native => "native",
            Way::Cli => "wasmtime_cli",
            Way::CliEpoch => "wasmtime_cli_epoch",
            Way::Lull => "lull",
        }
    }
}

/// One run: times in seconds, what it printed.
struct Run {
    way: Way,
    /// Native and CLI: wall time of the child. Lull: the agent's `elapsed_ms`.
    secs: f64,
    /// Lull: from the submit to the job's end; others: as `secs`.
    end_to_end: f64,
    /// CPU time of the child, or of the `lull dev` process over the job.
    cpu: f64,
    /// Cores' worth of CPU the rest of the machine used meanwhile.
    others: f64,
    stdout: String,
    /// `crunch: time KERNEL SECONDS` lines.
    kernels: Vec<(String, f64)>,
}

/// Runs the bench: `--rounds N` (5), `--scale N` (the program's work), `--cli-epoch` (a fourth
/// way: the CLI with epoch interruption, to tell its cost apart).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let option = |name: &str, default: u32| super::number_option(args, name, default);
    let rounds = option("--rounds", 5)?.max(1);
    let scale = option("--scale", DEFAULT_SCALE)?;
    let mut ways = vec![Way::Native, Way::Cli, Way::Lull];
    if args.iter().any(|a| a == "--cli-epoch") {
        ways.insert(2, Way::CliEpoch);
    }

    let (native, module) = build_crunch()?;
    util::cargo(&["build", "--release", "-p", "lull", "--bins"])?;
    let wasmtime = wasmtime_cli()?;

    let dir = tempfile_dir()?;
    let wasm = dir.join("crunch.wasm");
    std::fs::copy(&module, &wasm)?;
    let module_bytes = std::fs::metadata(&wasm)?.len();
    let precompiled = |flags: &[&str], name: &str| -> anyhow::Result<(PathBuf, f64)> {
        let out = dir.join(name);
        let started = Instant::now();
        let status = Command::new(&wasmtime)
            .arg("compile")
            .args(flags)
            .arg(&wasm)
            .arg("-o")
            .arg(&out)
            .status()
            .context("running wasmtime compile")?;
        ensure!(status.success(), "wasmtime compile failed: {status}");
        Ok((out, started.elapsed().as_secs_f64()))
    };
    let (cwasm, compile_s) = precompiled(&[], "crunch.cwasm")?;
    let (cwasm_epoch, _) = precompiled(&["-W", "epoch-interruption=y"], "crunch-epoch.cwasm")?;
    let guest_dirs = ["output", "scratch"].map(|d| dir.join(d));
    for d in &guest_dirs {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"guest-bench\"\ncount = 1\n[[module]]\npath = \"crunch.wasm\"\nargs = [\"--scale\", \"{scale}\"]\n[resources]\nmemory = \"256MiB\"\ntimeout = \"30m\"\n"
        ),
    )?;

    let dev = Dev::start_release(1, 1)?;
    let scale_arg = scale.to_string();
    let run_way = |way: Way| -> anyhow::Result<Run> {
        match way {
            Way::Native => child(way, Command::new(&native).args(["--scale", &scale_arg])),
            Way::Cli | Way::CliEpoch => {
                let mut cmd = Command::new(&wasmtime);
                cmd.arg("run").arg("--allow-precompiled");
                if way == Way::CliEpoch {
                    // A deadline too, or the first check would stop the guest.
                    cmd.args(["-W", "epoch-interruption=y,timeout=3600s"]);
                }
                for (host, guest) in guest_dirs.iter().zip(["/output", "/scratch"]) {
                    cmd.arg("--dir").arg(format!("{}::{guest}", host.display()));
                }
                let compiled = if way == Way::Cli {
                    &cwasm
                } else {
                    &cwasm_epoch
                };
                cmd.arg(compiled).args(["--scale", &scale_arg]);
                child(way, &mut cmd)
            }
            Way::Lull => lull(&dev, &dir),
        }
    };

    // The first round warms up and compiles; it is not counted.
    eprintln!("xtask: guest bench: a round to warm up, then {rounds} rounds");
    let mut first_setup_s = None;
    for &way in &ways {
        let run = run_way(way)?;
        if way == Way::Lull {
            first_setup_s = Some(run.end_to_end - run.secs);
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..rounds as usize {
        for i in 0..ways.len() {
            let way = ways[(round + i) % ways.len()];
            let run = run_way(way)?;
            eprintln!(
                "xtask: round {} {}: {:.3} s (cpu {:.3} s, others {:.2} cores)",
                round + 1,
                way.name(),
                run.secs,
                run.cpu,
                run.others
            );
            if let Some(first) = runs.first()
                && first.stdout != run.stdout
            {
                bail!(
                    "{} printed\n{}\nbut {} printed\n{}",
                    run.way.name(),
                    run.stdout,
                    first.way.name(),
                    first.stdout
                );
            }
            runs.push(run);
        }
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);

    let median_of = |way: Way, f: &dyn Fn(&Run) -> f64| -> f64 {
        median(
            &mut runs
                .iter()
                .filter(|r| r.way == way)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let secs = |way: Way| median_of(way, &|r| r.secs);
    let cpu = |way: Way| median_of(way, &|r| r.cpu);
    let mut figures = serde_json::json!({
        "rounds": rounds,
        "scale": scale,
        "module_bytes": module_bytes,
        "wasmtime_version": WASMTIME_VERSION,
        "native_s": round3(secs(Way::Native)),
        "wasmtime_cli_s": round3(secs(Way::Cli)),
        "lull_run_s": round3(secs(Way::Lull)),
        "lull_end_to_end_s": round3(median_of(Way::Lull, &|r| r.end_to_end)),
        "lull_vs_native": round3(secs(Way::Native) / secs(Way::Lull)),
        "lull_vs_wasmtime_cli": round3(secs(Way::Lull) / secs(Way::Cli)),
        "native_cpu_s": round3(cpu(Way::Native)),
        "wasmtime_cli_cpu_s": round3(cpu(Way::Cli)),
        "lull_cpu_s": round3(cpu(Way::Lull)),
        "lull_vs_native_cpu": round3(cpu(Way::Native) / cpu(Way::Lull)),
        "lull_vs_wasmtime_cli_cpu": round3(cpu(Way::Lull) / cpu(Way::Cli)),
        "wasmtime_cli_compile_s": round3(compile_s),
        "lull_first_setup_s": round3(first_setup_s.unwrap_or(0.0)),
        "others_cores_median": round3(median(&mut runs.iter().map(|r| r.others).collect::<Vec<_>>())),
        "others_cores_max": round3(runs.iter().map(|r| r.others).fold(0.0, f64::max)),
        "outputs_agree": true,
    });
    let all = figures.as_object_mut().context("figures")?;
    if ways.contains(&Way::CliEpoch) {
        all.insert(
            "wasmtime_cli_epoch_s".into(),
            round3(secs(Way::CliEpoch)).into(),
        );
        all.insert(
            "lull_vs_wasmtime_cli_epoch".into(),
            round3(secs(Way::Lull) / secs(Way::CliEpoch)).into(),
        );
    }
    // Each kernel's own time (the program's clock), Lull against the others.
    let kernel = |way: Way, name: &str| {
        median_of(way, &|r| {
            r.kernels
                .iter()
                .find(|(k, _)| k == name)
                .map_or(f64::NAN, |(_, s)| *s)
        })
    };
    let names: Vec<String> = runs[0].kernels.iter().map(|(k, _)| k.clone()).collect();
    for name in &names {
        let lull = kernel(Way::Lull, name);
        all.insert(
            format!("{name}_lull_vs_native"),
            round3(kernel(Way::Native, name) / lull).into(),
        );
        all.insert(
            format!("{name}_lull_vs_wasmtime_cli"),
            round3(lull / kernel(Way::Cli, name)).into(),
        );
    }
    println!("{figures}");
    Ok(())
}

/// Builds the `crunch` example for the host and for `wasm32-wasip1` (in the examples'
/// workspace); returns the paths of the program and of the module.
fn build_crunch() -> anyhow::Result<(PathBuf, PathBuf)> {
    let examples = util::root().join("examples");
    for target in [None, Some("wasm32-wasip1")] {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "-p", "crunch"])
            .current_dir(&examples)
            .env_remove("CARGO_TARGET_DIR");
        if let Some(target) = target {
            cmd.args(["--target", target]);
        }
        util::run(
            &mut cmd,
            &format!("building crunch for {}", target.unwrap_or("the host")),
        )?;
    }
    let target = examples.join("target");
    Ok((
        target.join("release/crunch"),
        target.join("wasm32-wasip1/release/crunch.wasm"),
    ))
}

/// The `wasmtime` command line of the version the agent uses, installed under the target
/// directory's `tools/` on first use (a build of several minutes).
fn wasmtime_cli() -> anyhow::Result<PathBuf> {
    let root = util::target_dir().join("tools");
    let bin = root.join("bin").join("wasmtime");
    let version = |bin: &Path| -> Option<String> {
        let out = Command::new(bin).arg("--version").output().ok()?;
        String::from_utf8(out.stdout).ok()
    };
    let wanted = |v: &str| v.split_whitespace().nth(1) == Some(WASMTIME_VERSION);
    if version(&bin).is_some_and(|v| wanted(&v)) {
        return Ok(bin);
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "wasmtime-cli", "--locked", "--version"])
        .arg(WASMTIME_VERSION)
        .arg("--root")
        .arg(&root)
        // Built in a directory of its own: the workspace's target directory stays unlocked.
        .env_remove("CARGO_TARGET_DIR");
    util::run(
        &mut cmd,
        &format!("cargo install wasmtime-cli --version {WASMTIME_VERSION} (several minutes)"),
    )?;
    match version(&bin) {
        Some(v) if wanted(&v) => Ok(bin),
        other => bail!("{} reports {other:?}", bin.display()),
    }
}

/// Runs a child process to its end: wall and CPU time, what it printed.
fn child(way: Way, cmd: &mut Command) -> anyhow::Result<Run> {
    let busy = machine_cpu_s()?.0;
    let cpu = children_cpu();
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu;
    let others = (machine_cpu_s()?.0 - busy - cpu).max(0.0) / secs;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Run {
        way,
        secs,
        end_to_end: secs,
        cpu,
        others,
        stdout: String::from_utf8(out.stdout)?,
        kernels: kernel_times(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// Runs the job in `dir` on the cluster: the agent's run time, the end-to-end time, what the
/// guest printed.
fn lull(dev: &Dev, dir: &Path) -> anyhow::Result<Run> {
    let busy = machine_cpu_s()?.0;
    let cpu = process_cpu_s(dev.pid())?;
    let submitted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64()
        * 1000.0;
    let started = Instant::now();
    let out = dev.output(&["submit", &dir.join("job.toml").to_string_lossy(), "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let job = v["job"].as_u64().context("lull submit printed no job")?;
    // Polled gently (the end's time comes from the coordinator's record, not from here).
    let state = loop {
        let detail = dev.get_json(&format!("/api/v1/jobs/{job}"))?;
        if let Some(state @ ("succeeded" | "failed" | "cancelled")) = detail["state"].as_str() {
            break state.to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let polled = started.elapsed().as_secs_f64();
    let cpu = process_cpu_s(dev.pid())? - cpu;
    let others = (machine_cpu_s()?.0 - busy - cpu).max(0.0) / polled;
    ensure!(state == "succeeded", "benchmark job {job} ended {state}");
    let task = dev.get_json(&format!("/api/v1/jobs/{job}/tasks/0"))?;
    let attempt = task["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .context("the task has no attempt")?;
    let elapsed_ms = attempt["result"]["elapsed_ms"]
        .as_f64()
        .context("the attempt has no run time")?;
    let finished_ms = attempt["finished_ms"]
        .as_f64()
        .context("the attempt has no end")?;
    let end_to_end = (finished_ms - submitted_ms) / 1000.0;
    let results = dir.join(format!("results-{job}"));
    dev.output(&[
        "results",
        &job.to_string(),
        "-o",
        &results.to_string_lossy(),
    ])?;
    let read = |name: &str| std::fs::read_to_string(results.join("0").join(name));
    let run = Run {
        way: Way::Lull,
        secs: elapsed_ms / 1000.0,
        end_to_end,
        cpu,
        others,
        stdout: read("stdout")?,
        kernels: kernel_times(&read("stderr")?),
    };
    let _ = std::fs::remove_dir_all(&results);
    Ok(run)
}

/// `crunch: time KERNEL SECONDS` lines.
fn kernel_times(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("crunch: time ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// User and system CPU seconds of the children this process has waited for.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
