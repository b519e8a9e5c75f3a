//! The `schedule` bench: the scheduler alone (no IO), placing 1,000,000 tasks on 10,000
//! simulated agents with each strategy.
//!
//! The agents vary as a lab's machines do: 2 to 32 cores (one slot per core), 8 to 64 GiB,
//! mostly Linux on x86_64, 20 sites. Each strategy places 100 jobs of 10,000 tasks, with a
//! mix of memory and CPU needs and of constraints (none, `os == linux`, `memory >= 16GiB`,
//! `label.site in ...`, `arch =~ ...`); a third of the `spread` jobs spread over
//! `label.site`. The cluster holds about a tenth of the tasks at once: when nothing more fits,
//! a random tenth of the running tasks end, as tasks would. Every call to `poll_placement` is
//! timed; a strategy's rate is its placements over the wall time of the whole run, task ends
//! and queueing included.

use std::time::Instant;

use lull_protocol::Digest;
use lull_protocol::job::Strategy;
use lull_protocol::message::{Capacity, TaskId};
use lull_scheduler::{JobPlacement, Scheduler};

use super::round3;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A small deterministic generator (the bench must repeat).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn agent(rng: &mut Rng) -> Capacity {
    let cores = [2u32, 4, 8, 8, 16, 32][rng.below(6) as usize];
    let memory = [8u64, 16, 16, 32, 64][rng.below(5) as usize] * GIB;
    let os = match rng.below(100) {
        0..80 => "linux",
        80..95 => "macos",
        _ => "windows",
    };
    let arch = if rng.below(5) == 0 {
        "aarch64"
    } else {
        "x86_64"
    };
    Capacity {
        cores,
        memory_total: memory,
        memory_available: memory,
        slots: cores,
        max_task_memory: (memory / 4).min(4 * GIB),
        os: os.into(),
        arch: arch.into(),
        labels: [("site".to_owned(), format!("site-{}", rng.below(20)))]
            .into_iter()
            .collect(),
        wasmtime: "48.0.8".into(),
    }
}

fn job(rng: &mut Rng, strategy: Strategy, n: u64) -> JobPlacement {
    let constraints: &[&str] = match n % 5 {
        0 => &[],
        1 => &["os == linux"],
        2 => &["memory >= 16GiB"],
        3 => &["label.site in site-1, site-2, site-3, site-4, site-5, site-6"],
        _ => &["arch =~ ^x86", "os != windows"],
    };
    JobPlacement {
        memory: [128 * MIB, 512 * MIB, GIB][rng.below(3) as usize],
        cpu_millis: [250, 500, 1000][rng.below(3) as usize],
        strategy,
        spread: (strategy == Strategy::Spread && n.is_multiple_of(3))
            .then(|| "label.site".parse().expect("an attribute")),
        constraints: constraints
            .iter()
            .map(|c| c.parse().expect("a constraint"))
            .collect(),
        module: Some(Digest::of(format!("module {n}").as_bytes())),
        owner: String::new(),
        priority: 0,
        group: None,
    }
}

struct Figures {
    placements: u64,
    seconds: f64,
    decisions_ns: Vec<u64>,
}

fn run_strategy(strategy: Strategy, agents: usize, jobs: u64, per_job: u32) -> Figures {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = Scheduler::new(42);
    for i in 0..agents {
        s.agent_up(&format!("agent-{i:05}"), &agent(&mut rng), true);
    }
    let total = jobs * u64::from(per_job);
    let mut running: Vec<TaskId> = Vec::new();
    let mut decisions_ns = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for j in 1..=jobs {
        s.add_job(j, job(&mut rng, strategy, j), 1);
        for index in 0..per_job {
            s.task_queued(TaskId { job: j, index });
        }
    }
    let mut placements = 0u64;
    while placements < total {
        let t = Instant::now();
        let placed = s.poll_placement();
        decisions_ns.push(t.elapsed().as_nanos() as u64);
        match placed {
            Some(p) => {
                placements += 1;
                running.push(p.task);
            }
            None => {
                if running.is_empty() {
                    // Nothing runs and nothing fits: the rest can never be placed.
                    break;
                }
                // Full: a tenth of the running tasks end.
                for _ in 0..running.len().div_ceil(10) {
                    let i = rng.below(running.len() as u64) as usize;
                    let t = running.swap_remove(i);
                    s.task_ended(t);
                }
            }
        }
    }
    Figures {
        placements,
        seconds: started.elapsed().as_secs_f64(),
        decisions_ns,
    }
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

/// Runs the bench; `--quick` places 100,000 tasks on 1,000 agents.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(a) = args.iter().find(|a| *a != "--quick") {
        anyhow::bail!("unknown argument {a:?}; usage: cargo xtask bench schedule [--quick]");
    }
    let (agents, jobs, per_job) = if quick {
        (1_000, 100, 1_000)
    } else {
        (10_000, 100, 10_000)
    };
    let mut figures = serde_json::Map::new();
    let mut all: Vec<u64> = Vec::new();
    for (name, strategy) in [
        ("binpack", Strategy::Binpack),
        ("spread", Strategy::Spread),
        ("random", Strategy::Random),
    ] {
        let f = run_strategy(strategy, agents, jobs, per_job);
        let rate = f.placements as f64 / f.seconds;
        let mut sorted = f.decisions_ns;
        sorted.sort_unstable();
        eprintln!(
            "{name}: {} placements in {:.2} s = {:.0}/s; decision p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs",
            f.placements,
            f.seconds,
            rate,
            percentile_us(&sorted, 0.5),
            percentile_us(&sorted, 0.99),
            percentile_us(&sorted, 1.0),
        );
        figures.insert(format!("placements_{name}"), f.placements.into());
        figures.insert(format!("placements_per_s_{name}"), rate.round().into());
        figures.insert(
            format!("decision_p99_us_{name}"),
            round3(percentile_us(&sorted, 0.99)).into(),
        );
        all.extend(sorted);
    }
    all.sort_unstable();
    figures.insert("agents".into(), (agents as u64).into());
    figures.insert(
        "tasks_per_strategy".into(),
        (jobs * u64::from(per_job)).into(),
    );
    figures.insert(
        "decision_p50_us".into(),
        round3(percentile_us(&all, 0.5)).into(),
    );
    figures.insert(
        "decision_p99_us".into(),
        round3(percentile_us(&all, 0.99)).into(),
    );
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}
