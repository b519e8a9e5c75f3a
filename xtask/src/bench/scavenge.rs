//! The `scavenge` bench: how quickly and how completely the agent gets out of the machine's way,
//! and how much idle CPU it harvests meanwhile.
//!
//! The agent side is the agent's own code, in this process: one `Sandbox` (its epoch ticker
//! advancing every 1 ms), spinning WebAssembly guests each on a fresh thread calling
//! `Sandbox::run` (which lowers the thread to `SCHED_IDLE`), each guest with its own
//! `TaskControl` as one task, registered in the scavenger's `Shared` the way the daemon does it,
//! and the real scavenger thread reading the real `LoadSampler` every 20 ms into the policy with
//! `PolicyConfig::default()` except `start_after_idle = 0` and `resume_after = 300 ms` (the
//! longest dwell, instead of 3 s, so that the bench's many bursts fit in a few minutes).
//!
//! The incumbents are other processes: `sh` busy loops (burners), this same binary hashing a
//! buffer (the CPU-bound incumbent), and this same binary serving requests over TCP on
//! 127.0.0.1 (the request server). They are started as `xtask bench __scavenge-work N` and
//! `xtask bench __scavenge-serve N`.
//!
//! Figures:
//!
//! - `pause_p50_ms`, `pause_p99_ms`: `TaskControl::pause_and_wait` on one spinning guest, on an
//!   otherwise quiet machine, without the scavenger; resumed after each, 10-30 ms apart.
//! - `reaction_p50_ms`, `reaction_p99_ms`: guests spinning on every core, the scavenger running;
//!   one burner per core is spawned (this binary, which reads the monotonic clock as it starts
//!   spinning and prints it): from the first burner's reading until every guest has parked.
//!   `reaction_spawn_*` is the time from just before the spawn to that reading. A guest's
//!   parking instant is read back exactly from `TaskControl::paused_for` (it grows from the
//!   instant the guest parks), so the bench's polling adds nothing. `reaction_decision_*` is the
//!   same up to the policy's pause decision (the scavenger's state change to `paused`), and
//!   `reaction_guest_cpu_*` the CPU time all guests together used from the spawn until the last
//!   one parked: a starved `SCHED_IDLE` thread reaches its next epoch check late, but
//!   takes next to no CPU meanwhile.
//! - `incumbent_cpu_slowdown_pct`: one hashing process per core, wall time with guests on every
//!   core (`SCHED_IDLE`, scavenger on) against alone, medians of interleaved rounds. "Alone"
//!   still has the idle agent in this process (the scavenger sampling, no guests).
//!   `naive_incumbent_cpu_slowdown_pct`: the same with plain nice-0 spin threads instead (no
//!   sandbox, no policy); `idle_spinners_incumbent_cpu_slowdown_pct`: the same threads at
//!   `SCHED_IDLE`, what idle priority alone does on this machine.
//! - `incumbent_latency_p99_rise_pct` (and `naive_...`, `idle_spinners_...`): a request server
//!   doing ~1 ms of hashing per request, driven at 200 requests/s over one connection; the p99
//!   of the client's round trips, pooled over interleaved rounds, with guests against alone.
//! - `incumbent_cpu_guest_share_pct`, `incumbent_latency_guest_share_pct`: the share of the
//!   machine the guests used meanwhile (medians over the rounds with the agent).
//! - `harvest_pct`: the guest threads' CPU time over cores × wall time while no incumbent runs.
//! - The plot: incumbent (burner processes) and guest (guest threads) CPU as shares of the
//!   machine every 20 ms through quiet, burst, quiet.
//!
//! The machine is shared: a CPU or latency phase during which other programs used more than 3 %
//! of it (the machine's busy time in `/proc/stat` less the bench's own processes) is run again, up
//! to three times in all; `phases_repeated` counts those.
//!
//! CPU times of threads and processes come from `/proc/.../schedstat` (nanoseconds) and
//! `/proc/.../stat` (clock ticks), so this bench runs on Linux only.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use lull_agent::policy::{OwnerCommand, PolicyConfig, State};
use lull_agent::sampler::LoadSampler;
use lull_agent::sandbox::{Program, RunOutput, RunSpec, Sandbox, SandboxConfig, TaskControl};
use lull_agent::scavenger::{self, Events, ScavengerConfig, Shared};
use lull_protocol::message::{AttemptId, Outcome, TaskId};

use super::{median, round3, tempfile_dir};
use crate::util;

/// Names of this bench's helper processes start with this (`xtask bench __scavenge-...`).
pub const HELPER_PREFIX: &str = "__scavenge-";
/// `xtask bench __scavenge-work ROUNDS`: hashes a buffer ROUNDS times, prints the hash.
const WORK_HELPER: &str = "__scavenge-work";
/// `xtask bench __scavenge-serve ROUNDS`: serves requests on 127.0.0.1, each hashing a small
/// buffer ROUNDS times; prints its port.
const SERVE_HELPER: &str = "__scavenge-serve";
/// `xtask bench __scavenge-burn 1`: prints the monotonic clock (ns) at the moment it starts,
/// then spins forever: a burner that says when its CPU-bound part began.
const BURN_HELPER: &str = "__scavenge-burn";

/// The policy's quiet dwell before paused guests resume, for this bench (the default is 3 s).
const RESUME_AFTER: Duration = Duration::from_millis(300);
/// The scavenger's sampling interval, as in the agent.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Requests per second sent to the request server.
const REQUEST_RATE: f64 = 200.0;
/// CPU work per request.
const REQUEST_WORK: Duration = Duration::from_millis(1);
/// The buffer the CPU-bound incumbent hashes (fits in L2).
const WORK_BUFFER: usize = 64 << 10;
/// The buffer the request server hashes per request.
const SERVE_BUFFER: usize = 4 << 10;
/// Stack of a guest thread, as the agent's runner gives it.
const GUEST_STACK: usize = 8 << 20;
/// A CPU or latency phase during which programs other than the bench's used more than this
/// share of the machine is run again...
const FOREIGN_LIMIT: f64 = 0.03;
/// ...up to this many times in all.
const TRIES: usize = 3;
/// How long any wait for the agent may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// A guest that never ends: FNV-style mixing in a loop, stored to memory so nothing is idle.
const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i64) (local $h i64)
    (local.set $h (i64.const 0xcbf29ce484222325))
    (loop $spin
      (local.set $h (i64.mul (i64.xor (local.get $h) (local.get $i))
                             (i64.const 0x100000001b3)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (i64.store (i32.const 0) (local.get $h))
      (br $spin))))"#;

/// How long each part runs.
#[derive(Debug)]
struct Settings {
    quick: bool,
    plot: PathBuf,
    pause_samples: usize,
    reaction_samples: usize,
    harvest_window: Duration,
    /// Interleaved rounds of alone / agent / naive / idle spinners, for the CPU-bound incumbent.
    cpu_rounds: usize,
    /// The CPU-bound incumbent's wall time alone, roughly.
    cpu_target: Duration,
    /// Interleaved rounds of alone / agent / naive / idle spinners, for the request server.
    latency_rounds: usize,
    latency_phase: Duration,
    /// Each of the plot's three parts: quiet, burst, quiet.
    plot_part: Duration,
}

impl Settings {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let plot = match args.iter().position(|a| a == "--plot") {
            Some(i) => PathBuf::from(args.get(i + 1).context("--plot needs a path")?),
            None => util::root().join("docs").join("img").join("scavenge.png"),
        };
        for (i, a) in args.iter().enumerate() {
            let is_plot_path = i > 0 && args[i - 1] == "--plot";
            if a != "--quick" && a != "--plot" && !is_plot_path {
                bail!(
                    "unknown argument {a:?}; usage: cargo xtask bench scavenge [--quick] [--plot PATH]"
                );
            }
        }
        Ok(if quick {
            Self {
                quick,
                plot,
                pause_samples: 60,
                reaction_samples: 12,
                harvest_window: Duration::from_secs(2),
                cpu_rounds: 1,
                cpu_target: Duration::from_secs(1),
                latency_rounds: 1,
                latency_phase: Duration::from_secs(2),
                plot_part: Duration::from_millis(1500),
            }
        } else {
            Self {
                quick,
                plot,
                pause_samples: 200,
                reaction_samples: 50,
                harvest_window: Duration::from_secs(5),
                cpu_rounds: 11,
                cpu_target: Duration::from_millis(1500),
                latency_rounds: 5,
                latency_phase: Duration::from_secs(4),
                plot_part: Duration::from_secs(3),
            }
        })
    }
}

/// Runs the bench and prints its figures.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("the scavenge bench reads CPU times from /proc: it runs on Linux only");
    }
    let settings = Settings::parse(args)?;
    let dir = tempfile_dir()?;
    let result = bench(&settings, &dir);
    let _ = fs::remove_dir_all(&dir);
    println!("{}", result?);
    Ok(())
}

/// One of the bench's helper processes.
pub fn helper(name: &str, args: &[String]) -> anyhow::Result<()> {
    let rounds: u64 = args
        .first()
        .with_context(|| format!("{name} needs a number of rounds"))?
        .parse()?;
    match name {
        WORK_HELPER => {
            let hash = hash_rounds(&buffer(WORK_BUFFER), rounds);
            println!("{hash:016x}");
            Ok(())
        }
        SERVE_HELPER => serve(rounds),
        BURN_HELPER => {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", monotonic_ns())?;
            out.flush()?;
            drop(out);
            let mut h: u64 = rounds;
            loop {
                h = std::hint::black_box(h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        _ => bail!("unknown helper {name}"),
    }
}

fn bench(settings: &Settings, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let cores = thread::available_parallelism()?.get();
    let mut rng = Rng::new();
    say(&format!(
        "{cores} cores; {} run; xtask's own code unoptimised (dev profile), wasmtime and the other dependencies at opt-level 2",
        if settings.quick { "quick" } else { "full" }
    ));

    // Calibrate the incumbents' work on the quiet machine, before anything else runs.
    let work_rounds = rounds_for(WORK_BUFFER, settings.cpu_target, 4);
    let serve_rounds = rounds_for(SERVE_BUFFER, REQUEST_WORK, 50);
    say(&format!(
        "calibrated: CPU-bound incumbent {work_rounds} rounds of {} KiB per process (~{:.1} s alone), \
         request server {serve_rounds} rounds of {} KiB per request (~1 ms)",
        WORK_BUFFER >> 10,
        settings.cpu_target.as_secs_f64(),
        SERVE_BUFFER >> 10
    ));

    let mut agent = Agent::new(dir, cores)?;

    // 1. Pause latency: decision to guest stopped, without the scavenger.
    say(&format!(
        "pause: {} pause_and_wait calls on one spinning guest",
        settings.pause_samples
    ));
    let mut pauses = Vec::with_capacity(settings.pause_samples);
    {
        let guests = agent.start_guests(1, false)?;
        let control = &guests.list[0].control;
        for _ in 0..settings.pause_samples {
            thread::sleep(Duration::from_millis(10 + rng.below(21)));
            let took = control
                .pause_and_wait(Duration::from_secs(1))
                .context("the guest did not stop within a second")?;
            pauses.push(ms(took));
            control.resume();
        }
        guests.finish()?;
    }
    let pause = Percentiles::of(&mut pauses);
    say(&format!(
        "pause: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pause.p50, pause.p99, pause.max
    ));

    // The scavenger, as the daemon starts it.
    let (owner, owner_rx) = mpsc::channel::<OwnerCommand>();
    let scavenger = scavenger::start(
        ScavengerConfig {
            policy: PolicyConfig {
                start_after_idle: Duration::ZERO,
                resume_after: RESUME_AFTER,
                ..PolicyConfig::default()
            },
            sample_interval: SAMPLE_INTERVAL,
            dedicated: false,
            rules: Default::default(),
        },
        agent.shared.clone(),
        owner_rx,
        agent.changes.clone(),
    )
    .context("starting the scavenger")?;
    let figures = with_scavenger(
        settings,
        &mut agent,
        &mut rng,
        cores,
        work_rounds,
        serve_rounds,
    );
    drop(owner);
    scavenger
        .join()
        .map_err(|_| anyhow!("the scavenger thread panicked"))?;
    let s = figures?;

    Ok(serde_json::json!({
        "cores": cores,
        "quick": settings.quick,
        "resume_after_ms": RESUME_AFTER.as_millis() as u64,
        "pause_samples": pauses.len(),
        "pause_p50_ms": round3(pause.p50),
        "pause_p99_ms": round3(pause.p99),
        "reaction_samples": s.reaction.n,
        "reaction_p50_ms": round3(s.reaction.p50),
        "reaction_p99_ms": round3(s.reaction.p99),
        "reaction_decision_p50_ms": round3(s.decision.p50),
        "reaction_decision_p99_ms": round3(s.decision.p99),
        "reaction_guest_cpu_p50_ms": round3(s.reaction_guest_cpu.p50),
        "reaction_guest_cpu_p99_ms": round3(s.reaction_guest_cpu.p99),
        "reaction_spawn_p50_ms": round3(s.reaction_spawn.p50),
        "reaction_spawn_p99_ms": round3(s.reaction_spawn.p99),
        "incumbent_cpu_alone_s": round3(s.cpu[0]),
        "incumbent_cpu_with_agent_s": round3(s.cpu[1]),
        "incumbent_cpu_naive_s": round3(s.cpu[2]),
        "incumbent_cpu_slowdown_pct": round3(rise_pct(s.cpu[0], s.cpu[1])),
        "incumbent_cpu_guest_share_pct": round3(s.cpu_guests * 100.0),
        "naive_incumbent_cpu_slowdown_pct": round3(rise_pct(s.cpu[0], s.cpu[2])),
        "incumbent_cpu_idle_spinners_s": round3(s.cpu[3]),
        "idle_spinners_incumbent_cpu_slowdown_pct": round3(rise_pct(s.cpu[0], s.cpu[3])),
        "incumbent_latency_p50_alone_ms": round3(s.latency[0].p50),
        "incumbent_latency_p50_with_agent_ms": round3(s.latency[1].p50),
        "incumbent_latency_p50_naive_ms": round3(s.latency[2].p50),
        "incumbent_latency_p99_alone_ms": round3(s.latency[0].p99),
        "incumbent_latency_p99_with_agent_ms": round3(s.latency[1].p99),
        "incumbent_latency_p99_naive_ms": round3(s.latency[2].p99),
        "incumbent_latency_p99_rise_pct": round3(rise_pct(s.latency[0].p99, s.latency[1].p99)),
        "incumbent_latency_guest_share_pct": round3(s.latency_guests * 100.0),
        "naive_incumbent_latency_p99_rise_pct":
            round3(rise_pct(s.latency[0].p99, s.latency[2].p99)),
        "incumbent_latency_p99_idle_spinners_ms": round3(s.latency[3].p99),
        "idle_spinners_incumbent_latency_p99_rise_pct":
            round3(rise_pct(s.latency[0].p99, s.latency[3].p99)),
        "harvest_pct": round3(s.harvest * 100.0),
        "quiet_background_cpu_pct": round3(s.background * 100.0),
        "phases_repeated": s.repeats,
    }))
}

/// What the parts run with the scavenger measure.
struct ScavengerFigures {
    harvest: f64,
    background: f64,
    reaction: Percentiles,
    decision: Percentiles,
    /// CPU time (ms) the guests used from the burst's start until all had parked.
    reaction_guest_cpu: Percentiles,
    /// From just before the burners' spawn to the first one spinning (ms).
    reaction_spawn: Percentiles,
    /// Median wall time (s) of the CPU-bound incumbent: alone, with the agent, naive, idle spinners.
    cpu: [f64; 4],
    /// The share of the machine the guests used while the CPU-bound incumbent ran (median).
    cpu_guests: f64,
    /// Round trips of the request server: alone, with the agent, naive, idle spinners.
    latency: [Percentiles; 4],
    /// The share of the machine the guests used while the request server ran (median).
    latency_guests: f64,
    /// Phases of the CPU and latency parts run again because other programs were busy.
    repeats: usize,
}

fn with_scavenger(
    settings: &Settings,
    agent: &mut Agent,
    rng: &mut Rng,
    cores: usize,
    work_rounds: u64,
    serve_rounds: u64,
) -> anyhow::Result<ScavengerFigures> {
    agent.wait_running(&[])?;

    // 2. Harvest: guests on every core, nothing else running.
    say(&format!(
        "harvest: {cores} guests, {:.0} s with no incumbent",
        settings.harvest_window.as_secs_f64()
    ));
    let guests = agent.start_guests(cores, true)?;
    let mut sampler = LoadSampler::new()?;
    let changes = agent.changes.len();
    let (g0, t0) = (guests.cpu_ns()?, Instant::now());
    thread::sleep(settings.harvest_window);
    let (g1, t1) = (guests.cpu_ns()?, Instant::now());
    let background = sampler.sample().incumbent_cpu;
    let harvest = (g1 - g0) as f64 / (cores as f64 * (t1 - t0).as_nanos() as f64);
    say(&format!(
        "harvest: guests used {:.2} % of the machine; everything else (incumbents, as the agent's sampler sees them) {:.2} %{}",
        harvest * 100.0,
        background * 100.0,
        agent.changes.summary_since(changes)
    ));

    // 3. Reaction: burners start, guests park.
    say(&format!(
        "reaction: {} bursts of {cores} burner processes against {cores} guests",
        settings.reaction_samples
    ));
    let mut reactions = Vec::new();
    let mut decisions = Vec::new();
    let mut guest_cpu = Vec::new();
    let mut spawns = Vec::new();
    for i in 0..settings.reaction_samples {
        let r = reaction_once(agent, &guests, cores, rng)?;
        spawns.push(r.spawn_ms);
        reactions.push(r.parked_ms);
        decisions.push(r.decision_ms);
        guest_cpu.push(r.guest_cpu_ms);
        if (i + 1) % 10 == 0 || i + 1 == settings.reaction_samples {
            say(&format!(
                "reaction: {}/{}, last: decision at {:.1} ms, all parked at {:.1} ms, guests ran {:.1} ms of CPU meanwhile",
                i + 1,
                settings.reaction_samples,
                r.decision_ms,
                r.parked_ms,
                r.guest_cpu_ms
            ));
        }
    }
    let reaction = Percentiles::of(&mut reactions);
    let decision = Percentiles::of(&mut decisions);
    let guest_cpu = Percentiles::of(&mut guest_cpu);
    let spawn = Percentiles::of(&mut spawns);
    say(&format!(
        "reaction: from the spawn to the first burner spinning p50 {:.1} ms, p99 {:.1} ms; from then to the pause decision p50 {:.1} ms, p99 {:.1} ms; to every guest parked p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         guests' CPU from the spawn to parked p50 {:.1} ms, p99 {:.1} ms (all guests together)",
        spawn.p50,
        spawn.p99,
        decision.p50,
        decision.p99,
        reaction.p50,
        reaction.p99,
        reaction.max,
        guest_cpu.p50,
        guest_cpu.p99
    ));

    // 4. The plot: quiet, burst, quiet.
    say(&format!(
        "plot: {:.1} s quiet, {:.1} s with {cores} burners, {:.1} s quiet, sampled every 20 ms",
        settings.plot_part.as_secs_f64(),
        settings.plot_part.as_secs_f64(),
        settings.plot_part.as_secs_f64()
    ));
    agent.wait_running(&guests.list)?;
    let changes = agent.changes.len();
    let (start, trace) = burst_trace(&guests, cores, settings.plot_part)?;
    guests.finish()?;
    let mut marks = Vec::new();
    for (at, state, reason) in agent.changes.since(changes) {
        let t = at.saturating_duration_since(start).as_secs_f64();
        if t <= settings.plot_part.as_secs_f64() * 3.0 {
            say(&format!(
                "plot: at {t:.3} s the policy went {state:?}: {reason}"
            ));
            marks.push((t, state));
        }
    }
    draw_plot(&settings.plot, &trace, &marks, settings.plot_part, cores)?;
    say(&format!("plot: written to {}", settings.plot.display()));

    // 5. The CPU-bound incumbent: alone, with the agent's guests, with naive spinners.
    let mut cpu: [Vec<f64>; 4] = Default::default();
    let mut cpu_guests = Vec::new();
    let mut repeats = 0;
    for round in 0..settings.cpu_rounds {
        for mode in Mode::ALL {
            let changes = agent.changes.len();
            let phase = agent.undisturbed(mode, &[], "cpu", &mut repeats, || {
                run_work(cores, work_rounds)
            })?;
            let wall = phase.value;
            say(&format!(
                "cpu round {}/{}: {cores} hashing processes {}: {:.3} s; guests {:.2} %, other programs {:.1} % of the machine{}",
                round + 1,
                settings.cpu_rounds,
                mode.describe(),
                wall.as_secs_f64(),
                phase.guests * 100.0,
                phase.foreign * 100.0,
                agent.changes.summary_since(changes)
            ));
            if let Mode::Agent = mode {
                cpu_guests.push(phase.guests);
            }
            cpu[mode as usize].push(wall.as_secs_f64());
        }
    }
    let cpu = cpu.map(|mut v| median(&mut v));
    say(&format!(
        "cpu: medians alone {:.3} s, with the agent {:.3} s ({:+.2} %), naive {:.3} s ({:+.2} %), bare SCHED_IDLE {:.3} s ({:+.2} %)",
        cpu[0],
        cpu[1],
        rise_pct(cpu[0], cpu[1]),
        cpu[2],
        rise_pct(cpu[0], cpu[2]),
        cpu[3],
        rise_pct(cpu[0], cpu[3])
    ));

    // 6. The request server.
    let mut server = Server::start(serve_rounds)?;
    let server_pid = [server.pid()];
    // Warm up: connection, caches, the server's first requests.
    server.drive(Duration::from_millis(500))?;
    let mut latency: [Vec<f64>; 4] = Default::default();
    let mut latency_guests = Vec::new();
    for round in 0..settings.latency_rounds {
        for mode in Mode::ALL {
            let changes = agent.changes.len();
            let phase = agent.undisturbed(mode, &server_pid, "latency", &mut repeats, || {
                server.drive(settings.latency_phase)
            })?;
            let mut trips = phase.value;
            let p = Percentiles::of(&mut trips);
            say(&format!(
                "latency round {}/{}: {} requests {}: p50 {:.3} ms, p99 {:.3} ms; guests {:.1} %, other programs {:.1} % of the machine{}",
                round + 1,
                settings.latency_rounds,
                p.n,
                mode.describe(),
                p.p50,
                p.p99,
                phase.guests * 100.0,
                phase.foreign * 100.0,
                agent.changes.summary_since(changes)
            ));
            if let Mode::Agent = mode {
                latency_guests.push(phase.guests);
            }
            latency[mode as usize].extend(trips);
        }
    }
    drop(server);
    let latency = latency.map(|mut v| Percentiles::of(&mut v));
    say(&format!(
        "latency: p99 alone {:.3} ms, with the agent {:.3} ms ({:+.2} %), naive {:.3} ms ({:+.2} %), bare SCHED_IDLE {:.3} ms ({:+.2} %)",
        latency[0].p99,
        latency[1].p99,
        rise_pct(latency[0].p99, latency[1].p99),
        latency[2].p99,
        rise_pct(latency[0].p99, latency[2].p99),
        latency[3].p99,
        rise_pct(latency[0].p99, latency[3].p99)
    ));

    Ok(ScavengerFigures {
        harvest,
        background,
        reaction,
        decision,
        reaction_guest_cpu: guest_cpu,
        reaction_spawn: spawn,
        cpu,
        cpu_guests: median(&mut cpu_guests),
        latency,
        latency_guests: median(&mut latency_guests),
        repeats,
    })
}

/// What one burst of burners measured.
struct Reaction {
    /// From just before the burners are spawned to the first one spinning.
    spawn_ms: f64,
    /// From the first burner spinning to every guest parked.
    parked_ms: f64,
    /// From the first burner spinning to the policy's pause decision.
    decision_ms: f64,
    /// The guests' CPU time together in that time.
    guest_cpu_ms: f64,
}

/// One burst of burners, until every guest has parked.
fn reaction_once(
    agent: &Agent,
    guests: &Guests,
    cores: usize,
    rng: &mut Rng,
) -> anyhow::Result<Reaction> {
    agent.wait_running(&guests.list)?;
    // Let the guests run a while, and start at a random point of the sampler's 20 ms cycle.
    thread::sleep(Duration::from_millis(100 + rng.below(21)));
    let base = guests
        .list
        .iter()
        .map(|g| settled_paused_for(&g.control))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let changes = agent.changes.len();
    let cpu_before = guests.cpu_ns()?;
    let spawned = Instant::now();
    let (mut burners, go_ns) = Children::burners(cores)?;
    // The burst starts when the first burner starts spinning (its own clock reading, not when
    // this thread hears of it).
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    let start = now
        .checked_sub(Duration::from_nanos(now_ns.saturating_sub(go_ns)))
        .unwrap_or(spawned)
        .max(spawned);
    let mut parked: Vec<Option<Instant>> = vec![None; guests.list.len()];
    while parked.iter().any(Option::is_none) {
        if start.elapsed() > PATIENCE {
            bail!("the guests did not park within {PATIENCE:?} of the burners starting");
        }
        thread::sleep(Duration::from_micros(500));
        for ((guest, base), parked) in guests.list.iter().zip(&base).zip(&mut parked) {
            if parked.is_none() {
                let paused_for = guest.control.paused_for();
                let now = Instant::now();
                if paused_for > *base {
                    // It has been parked for the difference.
                    *parked = Some(now - (paused_for - *base));
                }
            }
        }
    }
    let cpu_after = guests.cpu_ns()?;
    burners.kill();
    let all_parked = parked.into_iter().flatten().max().unwrap_or(start);
    let decided = agent
        .changes
        .first_since(changes, State::Paused)
        .context("the guests parked without the policy pausing them")?;
    Ok(Reaction {
        spawn_ms: ms(start.saturating_duration_since(spawned)),
        parked_ms: ms(all_parked.saturating_duration_since(start)),
        decision_ms: ms(decided.saturating_duration_since(start)),
        guest_cpu_ms: (cpu_after - cpu_before) as f64 / 1e6,
    })
}

/// A control's `paused_for` once it has stopped growing: its guest has left any earlier pause.
fn settled_paused_for(control: &TaskControl) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let before = control.paused_for();
        thread::sleep(Duration::from_millis(2));
        let after = control.paused_for();
        if before == after {
            return Ok(after);
        }
        if Instant::now() > deadline {
            bail!("a guest stayed parked although resumed");
        }
    }
}

/// Quiet, burst, quiet: every 20 ms, the burners' and the guests' CPU use as shares of the
/// machine. Returns when it started, and (seconds from the start, incumbent share, guest share)
/// for each sample.
#[allow(clippy::type_complexity)]
fn burst_trace(
    guests: &Guests,
    cores: usize,
    part: Duration,
) -> anyhow::Result<(Instant, Vec<(f64, f64, f64)>)> {
    let start = Instant::now();
    let mut burners: Option<Children> = None;
    let mut burner_ns: Vec<u64> = Vec::new();
    let mut burst_done = false;
    let mut points = Vec::new();
    let mut last_guest = guests.cpu_ns()?;
    let mut last = start;
    let mut tick = 1;
    while SAMPLE_INTERVAL * tick <= part * 3 {
        sleep_until(start + SAMPLE_INTERVAL * tick);
        tick += 1;
        let guest = guests.cpu_ns()?;
        let mut incumbent = 0;
        if let Some(b) = &burners {
            for (child, seen) in b.0.iter().zip(&mut burner_ns) {
                // A burner that cannot be read any more has exited: nothing more from it.
                if let Ok(ns) = process_cpu_ns(child.id()) {
                    incumbent += ns.saturating_sub(*seen);
                    *seen = ns;
                }
            }
        }
        let now = Instant::now();
        let span = (now - last).as_nanos() as f64 * cores as f64;
        points.push((
            (now - start).as_secs_f64(),
            incumbent as f64 / span,
            (guest - last_guest) as f64 / span,
        ));
        last = now;
        last_guest = guest;
        let t = now - start;
        if burners.is_none() && !burst_done && t >= part {
            let (b, _) = Children::burners(cores)?;
            burner_ns = vec![0; b.0.len()];
            burners = Some(b);
        } else if burners.is_some() && t >= part * 2 {
            burners = None;
            burst_done = true;
        }
    }
    Ok((start, points))
}

/// The three ways the incumbents share the machine.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// No guests.
    Alone,
    /// The agent's guests on every core, `SCHED_IDLE`, the scavenger's policy on.
    Agent,
    /// Plain spin threads at nice 0 on every core, no policy.
    Naive,
    /// Plain spin threads at `SCHED_IDLE` on every core, no sandbox, no policy: what idle
    /// priority alone does, the floor for any harvester at that priority on this machine.
    Idle,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Alone, Mode::Agent, Mode::Naive, Mode::Idle];

    fn describe(self) -> &'static str {
        match self {
            Mode::Alone => "alone",
            Mode::Agent => "with the agent's guests",
            Mode::Naive => "with naive nice-0 spinners",
            Mode::Idle => "with bare SCHED_IDLE spinners",
        }
    }
}

/// The agent's side: the sandbox, the spinning guest's program, and what the scavenger shares.
struct Agent {
    sandbox: Arc<Sandbox>,
    program: Program,
    spec: RunSpec,
    shared: Arc<Shared>,
    changes: Changes,
    cores: usize,
    next_task: u32,
}

impl Agent {
    fn new(dir: &Path, cores: usize) -> anyhow::Result<Self> {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
        let program = sandbox.compile(&wat::parse_str(SPIN)?)?;
        let output_dir = dir.join("output");
        let scratch_dir = dir.join("scratch");
        fs::create_dir_all(&output_dir)?;
        fs::create_dir_all(&scratch_dir)?;
        Ok(Self {
            sandbox,
            program,
            spec: RunSpec {
                name: "spin".into(),
                args: Vec::new(),
                env: Vec::new(),
                stdin: Vec::new(),
                input_dir: None,
                mounts: Vec::new(),
                output_dir,
                scratch_dir,
                memory_limit: 16 << 20,
                timeout: Duration::from_secs(3600),
                pooled: false,
                hooks: None,
                seed: None,
            },
            shared: Arc::new(Shared::default()),
            changes: Changes::default(),
            cores,
            next_task: 0,
        })
    }

    /// Starts `n` spinning guests, each a task of its own on a fresh thread; `register` makes
    /// them known to the scavenger (and subject to its gate) the way the daemon does. Returns
    /// once every guest is running.
    fn start_guests(&mut self, n: usize, register: bool) -> anyhow::Result<Guests> {
        let mut guests = Guests {
            list: Vec::new(),
            shared: register.then(|| self.shared.clone()),
        };
        for _ in 0..n {
            self.next_task += 1;
            let id = AttemptId {
                task: TaskId {
                    job: 1,
                    index: self.next_task,
                },
                attempt: 1,
            };
            let control = TaskControl::new();
            if register {
                let mut running = lock(&self.shared.running);
                running.insert(id, control.clone());
                lock(&self.shared.gate).apply(&control);
            }
            let (tid_tx, tid_rx) = mpsc::channel();
            let (sandbox, program, spec, run_control) = (
                self.sandbox.clone(),
                self.program.clone(),
                self.spec.clone(),
                control.clone(),
            );
            let spawned = thread::Builder::new()
                .name(format!("guest-{}", id.task.index))
                .stack_size(GUEST_STACK)
                .spawn(move || {
                    let _ = tid_tx.send(current_tid());
                    sandbox.run(&program, &spec, &run_control)
                });
            guests.list.push(Guest {
                id,
                control,
                tid: 0,
                thread: None,
            });
            let guest = guests.list.last_mut().expect("just pushed");
            guest.thread = Some(spawned.context("starting a guest thread")?);
            guest.tid = tid_rx
                .recv_timeout(PATIENCE)
                .context("the guest thread did not start")??;
        }
        guests.wait_spinning()?;
        Ok(guests)
    }

    /// Waits until the policy runs guests at full speed: state `running`, and none of `guests`
    /// paused or capped.
    fn wait_running(&self, guests: &[Guest]) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let running = lock(&self.shared.status).state == State::Running;
            let open = {
                let gate = lock(&self.shared.gate);
                !gate.paused && gate.cpu_share >= 1.0
            };
            if running
                && open
                && guests
                    .iter()
                    .all(|g| !g.control.is_paused() && g.control.cpu_share() >= 1.0)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let (state, reason) = {
                    let status = lock(&self.shared.status);
                    (status.state, status.reason.clone())
                };
                bail!(
                    "the policy did not let guests run within {PATIENCE:?}: state {state:?}, {reason}; gate {:?}; guests {:?}; recent changes: {}",
                    lock(&self.shared.gate),
                    guests.iter().map(|g| &g.control).collect::<Vec<_>>(),
                    self.changes.recent(5)
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `f` with the machine shared as `mode` says, once the policy is back to running.
    fn under<T>(
        &mut self,
        mode: Mode,
        ours: &[u32],
        f: &mut impl FnMut() -> anyhow::Result<T>,
    ) -> anyhow::Result<Phase<T>> {
        self.wait_running(&[])?;
        thread::sleep(Duration::from_millis(200));
        let cores = self.cores;
        let measured = |f: &mut dyn FnMut() -> anyhow::Result<T>, guests: Option<&Guests>| {
            let cpu = |g: Option<&Guests>| g.map_or(Ok(0), Guests::cpu_ns);
            let (ticks, guest_ns, start) = (Ticks::now(ours)?, cpu(guests)?, Instant::now());
            let value = f()?;
            let wall = start.elapsed().as_nanos() as f64 * cores as f64;
            Ok::<_, anyhow::Error>(Phase {
                value,
                foreign: Ticks::now(ours)?.foreign_since(&ticks),
                guests: (cpu(guests)? - guest_ns) as f64 / wall,
            })
        };
        match mode {
            Mode::Alone => measured(f, None),
            Mode::Agent => {
                let guests = self.start_guests(self.cores, true)?;
                thread::sleep(Duration::from_millis(100));
                let result = measured(f, Some(&guests));
                guests.finish()?;
                result
            }
            Mode::Naive | Mode::Idle => {
                let spinners = Spinners::start(self.cores, matches!(mode, Mode::Idle))?;
                thread::sleep(Duration::from_millis(100));
                let result = measured(f, None);
                drop(spinners);
                result
            }
        }
    }

    /// [`Agent::under`], again (up to [`TRIES`] times in all) while other programs on the
    /// machine used more than [`FOREIGN_LIMIT`] of it meanwhile. Counts the repeats in
    /// `repeats`.
    fn undisturbed<T>(
        &mut self,
        mode: Mode,
        ours: &[u32],
        what: &str,
        repeats: &mut usize,
        mut f: impl FnMut() -> anyhow::Result<T>,
    ) -> anyhow::Result<Phase<T>> {
        let mut tries = 1;
        loop {
            let phase = self.under(mode, ours, &mut f)?;
            if phase.foreign <= FOREIGN_LIMIT || tries == TRIES {
                return Ok(phase);
            }
            say(&format!(
                "{what} {}: other programs used {:.1} % of the machine meanwhile; once more",
                mode.describe(),
                phase.foreign * 100.0
            ));
            tries += 1;
            *repeats += 1;
        }
    }
}

/// What a phase of the CPU or latency part returned, and how the machine was shared meanwhile.
struct Phase<T> {
    value: T,
    /// The share of the machine that programs other than the bench's used.
    foreign: f64,
    /// The share of the machine the agent's guests used (0 without them).
    guests: f64,
}

/// One guest: a task with its own control, on its own thread.
struct Guest {
    id: AttemptId,
    control: TaskControl,
    /// Its thread's ID, for its CPU time.
    tid: u32,
    thread: Option<JoinHandle<RunOutput>>,
}

/// Running guests; cancelled, joined and unregistered when finished or dropped.
struct Guests {
    list: Vec<Guest>,
    shared: Option<Arc<Shared>>,
}

impl Guests {
    /// The guest threads' CPU time together, in nanoseconds.
    fn cpu_ns(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for g in &self.list {
            total += thread_cpu_ns(g.tid).with_context(|| format!("guest {}'s CPU time", g.id))?;
        }
        Ok(total)
    }

    /// Waits until every guest has used 20 ms of CPU.
    fn wait_spinning(&self) -> anyhow::Result<()> {
        let start = self
            .list
            .iter()
            .map(|g| thread_cpu_ns(g.tid))
            .collect::<io::Result<Vec<_>>>()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut all = true;
            for (g, start) in self.list.iter().zip(&start) {
                all &= thread_cpu_ns(g.tid)? >= start + 20_000_000;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the guests did not start spinning within {PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Cancels the guests and checks that they ended that way.
    fn finish(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        for g in &self.list {
            g.control.cancel("the bench part is over");
        }
        let mut problem = None;
        for g in &mut self.list {
            if let Some(thread) = g.thread.take() {
                match thread.join() {
                    Ok(out) if matches!(out.outcome, Outcome::Cancelled { .. }) => {}
                    Ok(out) => {
                        problem.get_or_insert(format!("guest {} ended: {:?}", g.id, out.outcome));
                    }
                    Err(_) => {
                        problem.get_or_insert(format!("guest {}'s thread panicked", g.id));
                    }
                }
            }
            if let Some(shared) = &self.shared {
                lock(&shared.running).remove(&g.id);
            }
        }
        self.list.clear();
        match problem {
            Some(problem) => bail!(problem),
            None => Ok(()),
        }
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The naive alternative to the agent: plain spin threads at normal priority (nice 0), the same
/// mixing loop as the guest, no sandbox, no policy; or the same at `SCHED_IDLE`. Stopped when
/// dropped.
struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Spinners {
    fn start(n: usize, idle: bool) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut spinners = Self {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for i in 0..n {
            let stop = stop.clone();
            spinners
                .threads
                .push(
                    thread::Builder::new()
                        .name(format!("naive-{i}"))
                        .spawn(move || {
                            if idle {
                                let param = libc::sched_param { sched_priority: 0 };
                                // SAFETY: `param` outlives the call; pid 0 is this thread.
                                let rc = unsafe {
                                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                                };
                                assert_eq!(rc, 0, "SCHED_IDLE for an idle spinner");
                            }
                            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                            let mut i: u64 = 0;
                            while !stop.load(Ordering::Relaxed) {
                                for _ in 0..1000 {
                                    h = (h ^ i).wrapping_mul(0x0000_0100_0000_01b3);
                                    i = i.wrapping_add(1);
                                }
                                h = std::hint::black_box(h);
                            }
                            h
                        })?,
                );
        }
        Ok(spinners)
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Child processes, killed and reaped when dropped.
struct Children(Vec<Child>);

impl Children {
    /// One `sh` busy loop per core.
    /// One burner per core (`xtask bench __scavenge-burn`), and the monotonic clock (ns) at which
    /// the first of them started spinning.
    fn burners(n: usize) -> anyhow::Result<(Self, u64)> {
        let exe = std::env::current_exe()?;
        let mut children = Children(Vec::new());
        for _ in 0..n {
            children.0.push(
                Command::new(&exe)
                    .args(["bench", BURN_HELPER, "1"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        let mut first = u64::MAX;
        for child in &mut children.0 {
            let out = child.stdout.take().context("a burner's stdout")?;
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            let go: u64 = line
                .trim()
                .parse()
                .with_context(|| format!("a burner said {line:?}"))?;
            first = first.min(go);
        }
        Ok((children, first))
    }

    fn kill(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The CPU-bound incumbent: `n` processes each hashing `rounds` times; their wall time together,
/// from just before the first is spawned to the last one's exit.
fn run_work(n: usize, rounds: u64) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children = Children(Vec::new());
    for _ in 0..n {
        children.0.push(
            Command::new(&exe)
                .args(["bench", WORK_HELPER, &rounds.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    for child in &mut children.0 {
        let status = child.wait()?;
        if !status.success() {
            bail!("a hashing process failed ({status})");
        }
    }
    Ok(start.elapsed())
}

/// The request server's child process and the client's connection to it.
struct Server {
    stream: TcpStream,
    child: Children,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.0[0].id()
    }

    fn start(rounds: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", SERVE_HELPER, &rounds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let child = Children(vec![child]);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("the server printed {line:?}, not its port"))?;
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { stream, child })
    }

    /// Sends requests at [`REQUEST_RATE`] for `duration`; each round trip in milliseconds,
    /// measured from just before the request is written until its answer is read.
    fn drive(&mut self, duration: Duration) -> anyhow::Result<Vec<f64>> {
        let count = (duration.as_secs_f64() * REQUEST_RATE) as u32;
        let interval = Duration::from_secs_f64(1.0 / REQUEST_RATE);
        let mut trips = Vec::with_capacity(count as usize);
        let start = Instant::now();
        let mut answer = [0u8; 8];
        for i in 0..count {
            sleep_until(start + interval * i);
            let sent = Instant::now();
            self.stream.write_all(&u64::from(i).to_le_bytes())?;
            self.stream.read_exact(&mut answer)?;
            trips.push(ms(sent.elapsed()));
        }
        Ok(trips)
    }
}

/// The request server (a helper process): prints its port, then answers each 8-byte request on
/// its one connection with 8 bytes after hashing a small buffer `rounds` times.
fn serve(rounds: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    io::stdout().flush()?;
    let buf = buffer(SERVE_BUFFER);
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut request = [0u8; 8];
    while stream.read_exact(&mut request).is_ok() {
        let answer = hash_rounds(&buf, rounds) ^ u64::from_le_bytes(request);
        stream.write_all(&answer.to_le_bytes())?;
    }
    Ok(())
}

/// The incumbents' CPU work: FNV-1a over `buf`, `rounds` times.
fn hash_rounds(buf: &[u8], rounds: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0..rounds {
        for &b in buf {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= round;
    }
    h
}

/// A buffer of `len` bytes of something to hash.
fn buffer(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8)
        .collect()
}

/// How many rounds over a buffer of `len` bytes take `target`, measured here in `probe`-round
/// runs (the best of five).
fn rounds_for(len: usize, target: Duration, probe: u64) -> u64 {
    let buf = buffer(len);
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(hash_rounds(&buf, probe));
            start.elapsed()
        })
        .min()
        .unwrap_or_default();
    let per_round = best.as_secs_f64() / probe as f64;
    ((target.as_secs_f64() / per_round).round() as u64).max(1)
}

/// The policy's state changes, as the scavenger reports them.
#[derive(Clone, Default)]
struct Changes(Arc<Mutex<Vec<(Instant, State, String)>>>);

impl Events for Changes {
    fn state_changed(&self, _from: State, to: State, reason: &str, _attempts: Vec<AttemptId>) {
        lock(&self.0).push((Instant::now(), to, reason.to_owned()));
    }

    fn stop(&self) {}
}

impl Changes {
    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// When the policy first entered `state` among the changes after the first `skip`.
    fn first_since(&self, skip: usize, state: State) -> Option<Instant> {
        lock(&self.0)
            .iter()
            .skip(skip)
            .find(|(_, s, _)| *s == state)
            .map(|(at, _, _)| *at)
    }

    /// The changes after the first `skip`.
    fn since(&self, skip: usize) -> Vec<(Instant, State, String)> {
        lock(&self.0).iter().skip(skip).cloned().collect()
    }

    /// The last `n` changes, for error messages.
    fn recent(&self, n: usize) -> String {
        let changes = lock(&self.0);
        let skip = changes.len().saturating_sub(n);
        changes
            .iter()
            .skip(skip)
            .map(|(at, state, reason)| format!("{:?} ago to {state:?}: {reason}", at.elapsed()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// " (policy: paused 1×, throttled 2×; first pause: why)" for the changes after the first
    /// `skip`.
    fn summary_since(&self, skip: usize) -> String {
        let changes = lock(&self.0);
        let count = |state| {
            changes
                .iter()
                .skip(skip)
                .filter(|(_, s, _)| *s == state)
                .count()
        };
        let (paused, throttled) = (count(State::Paused), count(State::Throttled));
        let first = changes
            .iter()
            .skip(skip)
            .find(|(_, s, _)| *s == State::Paused)
            .map(|(_, _, why)| format!("; first pause: {why}"))
            .unwrap_or_default();
        if paused + throttled == 0 {
            String::new()
        } else {
            format!(" (policy: paused {paused}×, throttled {throttled}×{first})")
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `Instant` reads on Linux, and the same in every
/// process, so a burner's reading can be placed on this process's timeline.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The chart: incumbent and guest CPU through the burst.
fn draw_plot(
    path: &Path,
    points: &[(f64, f64, f64)],
    marks: &[(f64, State)],
    part: Duration,
    cores: usize,
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"))?;
    let end = points.last().map_or(1.0, |p| p.0);
    let (burst_start, burst_end) = (part.as_secs_f64(), 2.0 * part.as_secs_f64());

    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Scavenging through an incumbent burst ({cores} cores, sampled every 20 ms, resume after {} ms quiet)",
                RESUME_AFTER.as_millis()
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..1.05)?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(burst_start, 0.0), (burst_end, 1.05)],
        RGBColor(255, 236, 214).filled(),
    )))?;
    chart
        .configure_mesh()
        .x_desc("time (s); shaded: burners running, one per core")
        .y_desc("share of the machine's CPU")
        .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
        .light_line_style(RGBColor(242, 242, 242))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    // The policy's state changes: a thin line and the new state's name.
    for &(t, state) in marks {
        let name = match state {
            State::Paused => "paused",
            State::Running => "running",
            State::Throttled => "throttled",
            State::Evicting => "evicting",
            State::WaitingForIdle => "waiting",
        };
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(t, 0.0), (t, 1.05)],
            RGBColor(110, 110, 110).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" policy: {name}"),
            (t, 0.62),
            ("sans-serif", 13).into_font().color(&RGBColor(70, 70, 70)),
        )))?;
    }
    let incumbent = RGBColor(214, 80, 32);
    let guest = RGBColor(40, 96, 200);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            incumbent.stroke_width(2),
        ))?
        .label("incumbent CPU (burner processes)")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 24, y)], incumbent.stroke_width(2))
        });
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2)),
            guest.stroke_width(2),
        ))?
        .label("guest CPU (SCHED_IDLE wasm guests)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], guest.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::Coordinate(24, 190))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// p50, p99 and max of a sample, in its unit.
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest rank, as the dispatch bench computes them. Sorts `v`.
    fn of(v: &mut [f64]) -> Self {
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Self {
            n: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// How much larger `with` is than `alone`, in percent.
fn rise_pct(alone: f64, with: f64) -> f64 {
    (with / alone - 1.0) * 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn say(what: &str) {
    eprintln!("scavenge: {what}");
}

fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        thread::sleep(left);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The calling thread's kernel ID.
fn current_tid() -> io::Result<u32> {
    let link = fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/thread-self -> {}", link.display())))
}

/// Nanoseconds a thread of this process has run (`/proc/self/task/TID/schedstat`).
fn thread_cpu_ns(tid: u32) -> io::Result<u64> {
    schedstat_ns(&format!("/proc/self/task/{tid}/schedstat"))
}

/// Nanoseconds a process's main thread has run (`/proc/PID/schedstat`).
fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    schedstat_ns(&format!("/proc/{pid}/schedstat"))
}

fn schedstat_ns(path: &str) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{path}: {text:?}")))
}

/// CPU time in clock ticks (USER_HZ): the machine's busy and total time from `/proc/stat`, and
/// the time of this process, its reaped children and some more processes of the bench from
/// `/proc/PID/stat`.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    busy: u64,
    total: u64,
    ours: u64,
}

impl Ticks {
    fn now(ours: &[u32]) -> io::Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let mut mine = process_ticks("self", true)?;
        for pid in ours {
            mine += process_ticks(&pid.to_string(), false)?;
        }
        Ok(Self {
            busy,
            total: busy + at(3) + at(4),
            ours: mine,
        })
    }

    /// The share of the machine busy with other programs since `before`.
    fn foreign_since(&self, before: &Ticks) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        let busy = self.busy.saturating_sub(before.busy);
        let ours = self.ours.saturating_sub(before.ours);
        busy.saturating_sub(ours) as f64 / total as f64
    }
}

/// `utime + stime` of a process (and with `children`, of its reaped children too), in ticks.
fn process_ticks(pid: &str, children: bool) -> io::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path)?;
    // The fields after the command name, which is in parentheses, start with field 3 (state).
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("{path}: no field {n}")))
    };
    let mut ticks = field(14)? + field(15)?;
    if children {
        ticks += field(16)? + field(17)?;
    }
    Ok(ticks)
}

/// A small xorshift generator for jitter; no need for more.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Self(seed | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
