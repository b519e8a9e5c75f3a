//! The `fleet` bench: many simulated agents over real QUIC on loopback against one real
//! coordinator (`lull-coordinator serve`, release build, its own process).
//!
//! The agents live in this process ([`sim`]): each has its own key, UDP socket and connection,
//! enrolls with a join token, says hello and reports at the interval the welcome gives, and
//! answers assignments at once. The fleet grows in steps; at each step it holds for a while and
//! the bench checks, from the coordinator's side (its dashboard feed, which carries every
//! report it recorded, stamped when recorded), that every agent is connected and its reports
//! arrived on time, and measures the coordinator's CPU and memory. At the step of
//! `--dispatch-agents` agents it also runs a job of `--tasks` trivial tasks through them.

mod coordinator;
mod sim;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use self::coordinator::{Coordinator, release_bin};
use self::sim::{Fleet, Target, is_fleet_id};
use super::procfs::{machine_cpu_s, process_cpu_s};
use super::{round3, tempfile_dir};
use crate::util;

/// A guest that does nothing and exits 0.
const TRIVIAL: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 0))))"#;

/// A report is late when it comes more than this many report intervals after the one before
/// (or after the window's start; or when none came by the window's end). Each such gap counts
/// once, however many reports it lacks.
const LATE_AFTER_INTERVALS: f64 = 1.5;

/// A step holds when at most this share of the reports expected in its window is late (and
/// every agent is connected and reporting).
const LATE_SHARE_HELD: f64 = 0.01;

#[derive(Debug, Clone)]
struct Options {
    steps: Vec<usize>,
    max: usize,
    hold: Duration,
    tasks: u32,
    dispatch_agents: usize,
    rate: f64,
    concurrent: usize,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let value = |name: &str| -> anyhow::Result<Option<&str>> {
            match args.iter().position(|a| a == name) {
                Some(i) => Ok(Some(
                    args.get(i + 1)
                        .with_context(|| format!("{name} needs a value"))?
                        .as_str(),
                )),
                None => Ok(None),
            }
        };
        let number = |name: &str, default: f64| -> anyhow::Result<f64> {
            value(name)?.map_or(Ok(default), |v| {
                v.parse::<f64>()
                    .with_context(|| format!("{name} needs a number"))
            })
        };
        let quick = args.iter().any(|a| a == "--quick");
        let max = number("--max", if quick { 1000.0 } else { 20_000.0 })? as usize;
        let mut steps: Vec<usize> = match value("--steps")? {
            Some(list) => list
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .context("--steps needs numbers, e.g. 1000,5000")
                })
                .collect::<anyhow::Result<_>>()?,
            None if quick => vec![500, 1000],
            None => {
                let mut s = vec![1000, 2000, 5000, 10_000];
                while *s.last().expect("not empty") < max {
                    s.push(s.last().expect("not empty") + 5000);
                }
                s
            }
        };
        let dispatch_agents = number("--dispatch-agents", 1000.0)? as usize;
        if dispatch_agents > 0 {
            steps.push(dispatch_agents);
        }
        steps.retain(|&n| n > 0 && n <= max);
        if steps.last().is_some_and(|&last| last < max) && value("--steps")?.is_none() {
            steps.push(max);
        }
        steps.sort_unstable();
        steps.dedup();
        if steps.is_empty() {
            bail!("no step of at most --max {max} agents");
        }
        Ok(Self {
            steps,
            max,
            hold: Duration::from_secs_f64(number("--hold", if quick { 4.0 } else { 10.0 })?),
            tasks: number("--tasks", if quick { 4000.0 } else { 20_000.0 })? as u32,
            dispatch_agents,
            rate: number("--rate", 400.0)?,
            concurrent: number("--concurrent", 48.0)? as usize,
        })
    }
}

/// Runs the bench: `--max N` agents at most (20,000), `--steps A,B,...` (1,000, 2,000, 5,000,
/// 10,000, then every 5,000 up to the max), `--hold SECONDS` at each step (10), `--tasks N`
/// (20,000) run through `--dispatch-agents N` (1,000; 0 for none), `--rate R` new connections a
/// second (400) with `--concurrent N` under way at once (48, below the coordinator's 64
/// handshakes); `--quick`: 500 and 1,000 agents, 4 s each, 4,000 tasks.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut options = Options::parse(args)?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "lull",
        "-p",
        "lull-coordinator",
        "--bins",
    ])?;
    // One socket and one local UDP port per agent, and a few files of the runtime's own.
    let files = raise_open_files(options.max as u64 + 1024)? as usize;
    let room = files
        .saturating_sub(1024)
        .min(local_ports().saturating_sub(512));
    if options.max > room {
        eprintln!(
            "fleet: room for {room} agents here (open files {files}, ip_local_port_range): --max {} lowered",
            options.max
        );
        options.max = room;
        options.steps.retain(|&n| n <= room);
        if options.steps.last().is_some_and(|&n| n < room) {
            options.steps.push(room);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile_dir()?;
    let figures = runtime.block_on(bench(&options, &dir));
    drop(runtime);
    let figures = figures?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("{figures}");
    Ok(())
}

/// One step's figures.
#[derive(Debug, Default, Clone)]
struct Step {
    agents: usize,
    held: bool,
    why_not: Vec<String>,
    connect_s: f64,
    cpu_percent: f64,
    rss_kb: u64,
    rss_growth_kb: u64,
    pool_cpu_ms: f64,
    reports: u64,
    reports_expected: u64,
    reports_late: u64,
    max_gap_ms: i64,
    missing: usize,
    closed: usize,
    failed: usize,
    sent_late: u64,
    sent_max_late_ms: f64,
    machine_busy_percent: f64,
    bench_cpu_percent: f64,
    udp_drops: u64,
}

async fn bench(options: &Options, dir: &std::path::Path) -> anyhow::Result<Value> {
    let bin = release_bin("lull-coordinator");
    let data = dir.join("coordinator");
    let log = dir.join("coordinator.log");
    let mut coordinator = Coordinator::start(&bin, &data, &log, options.max + 100)
        .with_context(|| format!("starting the coordinator (its log: {})", log.display()))?;
    let pid = coordinator.pid();
    let me = std::process::id();
    eprintln!(
        "fleet: steps {:?}, {} s each; {} tasks on {} agents",
        options.steps,
        options.hold.as_secs_f64(),
        options.tasks,
        options.dispatch_agents
    );
    // Idle: the coordinator with no agent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = {
        let c0 = process_cpu_s(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        100.0 * (process_cpu_s(pid)? - c0) / t0.elapsed().as_secs_f64()
    };
    let idle_rss = rss_kb(pid)?;
    eprintln!(
        "fleet: idle coordinator: {idle_cpu:.1} % of a core, {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
    let mut fleet = Fleet::new(Target {
        quic: coordinator.quic.clone(),
        key: coordinator.key,
        join_token: coordinator.join_token.clone(),
    });
    let mut steps: Vec<Step> = Vec::new();
    let mut dispatch: Option<Value> = None;
    let ramp_started = Instant::now();
    let mut connect_total_s = 0.0;
    for &n in &options.steps {
        let connecting = Instant::now();
        let before = fleet.len();
        eprintln!("fleet: connecting agents {before}..{n}");
        fleet.grow_to(n, options.rate, options.concurrent).await;
        let connect_s = connecting.elapsed().as_secs_f64();
        connect_total_s += connect_s;
        let c = &fleet.counters;
        eprintln!(
            "fleet: {} connected in {connect_s:.1} s ({:.0}/s); {} failed, {} closed",
            c.connected.load(Ordering::Relaxed),
            (n - before) as f64 / connect_s,
            c.failed.load(Ordering::Relaxed),
            c.closed.load(Ordering::Relaxed),
        );
        if let Some(e) = c.first_error.lock().ok().and_then(|e| e.clone()) {
            eprintln!("fleet: first failure: {e}");
        }
        if !coordinator.running() {
            bail!("the coordinator exited; see {}", log.display());
        }
        let mut step = measure(&coordinator, &fleet, n, options.hold, pid, me).await?;
        step.connect_s = round3(connect_s);
        eprintln!(
            "fleet: {n} agents: {} — coordinator {:.1} % of a core, {:.1} MiB ({:.1} KiB/agent over idle); reports {}/{} expected, {} late, longest gap {} ms; machine {:.0} % busy (this bench {:.0} % of a core); sent late {}",
            if step.held {
                "held".to_owned()
            } else {
                format!("NOT held ({})", step.why_not.join("; "))
            },
            step.cpu_percent,
            step.rss_kb as f64 / 1024.0,
            per_agent_kb(step.rss_kb, idle_rss, n),
            step.reports,
            step.reports_expected,
            step.reports_late,
            step.max_gap_ms,
            step.machine_busy_percent,
            step.bench_cpu_percent,
            step.sent_late,
        );
        eprintln!(
            "fleet: memory grew {:.1} MiB in the window; the dashboard feed's first event cost {:.0} ms of CPU",
            step.rss_growth_kb as f64 / 1024.0,
            step.pool_cpu_ms
        );
        let held = step.held;
        steps.push(step);
        if held && n == options.dispatch_agents && options.tasks > 0 {
            dispatch = Some(run_job(&coordinator, &fleet, options.tasks, dir, pid).await?);
        }
        if !held {
            break;
        }
    }
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    let agents_started = fleet.len();
    let interval_ms = fleet.counters.report_interval_ms.load(Ordering::Relaxed);
    fleet.close().await;
    let warnings = std::fs::read_to_string(&log)
        .map(|l| l.lines().filter(|l| l.contains(" WARN ")).count())
        .unwrap_or(0);
    drop(coordinator);

    let max_held = steps.iter().filter(|s| s.held).map(|s| s.agents).max();
    let at_max = steps.iter().rfind(|s| s.held);
    let first_not_held = steps.iter().find(|s| !s.held);
    let hold_s = options.hold.as_secs_f64();
    let step_json = |s: &Step| {
        json!({
            "agents": s.agents,
            "held": s.held,
            "cpu_percent": round3(s.cpu_percent),
            "rss_mb": round3(s.rss_kb as f64 / 1024.0),
            "rss_kb_per_agent": round3(per_agent_kb(s.rss_kb, idle_rss, s.agents)),
            "reports": s.reports,
            "reports_late": s.reports_late,
            "max_gap_ms": s.max_gap_ms,
            "missing": s.missing + s.closed + s.failed,
            "sent_late": s.sent_late,
            "sent_max_late_ms": round3(s.sent_max_late_ms),
            "machine_busy_percent": round3(s.machine_busy_percent),
            "bench_cpu_percent": round3(s.bench_cpu_percent),
            "udp_drops": s.udp_drops,
            "rss_growth_kb_per_agent_per_min": round3(s.rss_growth_kb as f64 / s.agents.max(1) as f64 * 60.0 / hold_s),
            "dashboard_feed_cpu_ms": round3(s.pool_cpu_ms),
            "connect_s": s.connect_s,
        })
    };
    let mut figures = json!({
        "max_agents_held": max_held.unwrap_or(0),
        "first_agents_not_held": first_not_held.map(|s| s.agents),
        "not_held_because": first_not_held.map(|s| s.why_not.join("; ")),
        "max_agents_tried": options.max,
        "hold_s": options.hold.as_secs_f64(),
        "report_interval_ms": interval_ms,
        "coordinator_idle_cpu_percent": round3(idle_cpu),
        "coordinator_idle_rss_mb": round3(idle_rss as f64 / 1024.0),
        "coordinator_cpu_percent_at_max": at_max.map(|s| round3(s.cpu_percent)),
        "coordinator_rss_mb_at_max": at_max.map(|s| round3(s.rss_kb as f64 / 1024.0)),
        "rss_kb_per_agent": at_max.map(|s| round3(per_agent_kb(s.rss_kb, idle_rss, s.agents))),
        "cpu_percent_per_1000_agents": at_max.map(|s| round3((s.cpu_percent - idle_cpu) * 1000.0 / s.agents as f64)),
        "reports_late": at_max.map(|s| s.reports_late),
        "reports_at_max": at_max.map(|s| s.reports),
        "connects_per_s": round3(agents_started as f64 / connect_total_s.max(1e-9)),
        "bench_s": round3(ramp_s),
        "coordinator_warnings": warnings,
        "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
    });
    if let (Some(d), Some(obj)) = (dispatch, figures.as_object_mut()) {
        for (k, v) in d.as_object().into_iter().flatten() {
            obj.insert(k.clone(), v.clone());
        }
    }
    Ok(figures)
}

/// Resident memory per agent over the idle coordinator's, in KiB.
fn per_agent_kb(rss_kb: u64, idle_kb: u64, agents: usize) -> f64 {
    rss_kb.saturating_sub(idle_kb) as f64 / agents.max(1) as f64
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Holds `n` agents for `hold` and measures: the coordinator's CPU and memory, and whether
/// each agent is connected and had its reports recorded on time.
async fn measure(
    coordinator: &Coordinator,
    fleet: &Fleet,
    n: usize,
    hold: Duration,
    pid: u32,
    me: u32,
) -> anyhow::Result<Step> {
    let c = &fleet.counters;
    let interval_ms = c.report_interval_ms.load(Ordering::Relaxed).max(1);
    // Two intervals for the new agents' first reports to settle (and the dashboard feed of an
    // earlier look to stop).
    tokio::time::sleep(Duration::from_millis(2 * interval_ms) + Duration::from_secs(1)).await;
    c.reset_window();
    let (t0_ms, t0) = (now_ms(), Instant::now());
    let (cpu0, mine0, machine0) = (process_cpu_s(pid)?, process_cpu_s(me)?, machine_cpu_s()?);
    let drops0 = coordinator::udp_receive_drops().unwrap_or(0);
    let rss0 = rss_kb(pid)?;
    tokio::time::sleep(hold).await;
    let (cpu1, mine1, machine1) = (process_cpu_s(pid)?, process_cpu_s(me)?, machine_cpu_s()?);
    let drops1 = coordinator::udp_receive_drops().unwrap_or(0);
    let (t1_ms, wall) = (now_ms(), t0.elapsed().as_secs_f64());
    let rss = rss_kb(pid)?;
    let mut step = Step {
        agents: n,
        cpu_percent: 100.0 * (cpu1 - cpu0) / wall,
        rss_kb: rss,
        rss_growth_kb: rss.saturating_sub(rss0),
        closed: c.closed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        sent_late: c.window_late_ticks.load(Ordering::Relaxed),
        sent_max_late_ms: c.window_max_tick_late_us.load(Ordering::Relaxed) as f64 / 1000.0,
        machine_busy_percent: 100.0 * (machine1.0 - machine0.0) / (machine1.1 - machine0.1),
        bench_cpu_percent: 100.0 * (mine1 - mine0) / wall,
        udp_drops: drops1.saturating_sub(drops0),
        ..Step::default()
    };
    // The coordinator's side, read after the window so that making the document is not in it.
    // What the dashboard's feed costs: the coordinator's CPU while it makes the first event
    // (the shared tick's document and this client's own), less what the reports take.
    let (asked, cpu_asked) = (Instant::now(), process_cpu_s(pid)?);
    let pool = coordinator.pool_since(t0_ms).await?;
    let took = asked.elapsed().as_secs_f64();
    step.pool_cpu_ms =
        1000.0 * ((process_cpu_s(pid)? - cpu_asked) - step.cpu_percent / 100.0 * took);
    let mut seen: HashMap<&str, Vec<i64>> = HashMap::new();
    for a in pool["agents"].as_array().into_iter().flatten() {
        let Some(id) = a["id"].as_str().filter(|id| is_fleet_id(id)) else {
            continue;
        };
        let times = a["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["at_ms"].as_i64())
            .filter(|&t| t > t0_ms && t <= t1_ms)
            .collect();
        seen.insert(id, times);
    }
    step.missing = n.saturating_sub(seen.len());
    let late_after = (LATE_AFTER_INTERVALS * interval_ms as f64) as i64;
    for times in seen.values_mut() {
        times.sort_unstable();
        let mut last = t0_ms;
        for &t in times.iter().chain(std::iter::once(&t1_ms)) {
            let gap = t - last;
            step.max_gap_ms = step.max_gap_ms.max(gap);
            if gap > late_after {
                step.reports_late += 1;
            }
            last = t;
        }
        step.reports += times.len() as u64;
    }
    step.reports_expected = (n as f64 * (t1_ms - t0_ms) as f64 / interval_ms as f64) as u64;
    if step.missing > 0 {
        step.why_not
            .push(format!("{} agents not connected", step.missing));
    }
    if step.failed > 0 || step.closed > 0 {
        step.why_not.push(format!(
            "{} agents failed to connect, {} lost their connection",
            step.failed, step.closed
        ));
    }
    let late_share = step.reports_late as f64 / step.reports_expected.max(1) as f64;
    if late_share > LATE_SHARE_HELD {
        step.why_not.push(format!(
            "{:.1} % of reports late (more than {LATE_AFTER_INTERVALS} intervals apart)",
            100.0 * late_share
        ));
    }
    step.held = step.why_not.is_empty();
    Ok(step)
}

/// Runs a job of `tasks` trivial tasks through the fleet: submitted with `lull submit`, placed
/// by the coordinator, answered at once by the simulated agents. Tasks per second from the
/// submit to the last result acknowledged.
async fn run_job(
    coordinator: &Coordinator,
    fleet: &Fleet,
    tasks: u32,
    dir: &std::path::Path,
    pid: u32,
) -> anyhow::Result<Value> {
    let lull = release_bin("lull");
    std::fs::write(dir.join("trivial.wasm"), wat::parse_str(TRIVIAL)?)?;
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"fleet-bench\"\ncount = {tasks}\n[[module]]\npath = \"trivial.wasm\"\n[resources]\nmemory = \"1MiB\"\n"
        ),
    )?;
    let key = dir.join("key");
    let lull_run = |args: Vec<String>| {
        let (lull, url, token) = (
            lull.clone(),
            format!("http://{}", coordinator.http),
            coordinator.token.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            util::stdout_of(
                std::process::Command::new(&lull)
                    .args(["--coordinator", &url, "--token", &token])
                    .args(&args),
                &format!("lull {}", args.join(" ")),
            )
        })
    };
    lull_run(vec![
        "keys".into(),
        "generate".into(),
        "--out".into(),
        key.to_string_lossy().into_owned(),
    ])
    .await??;
    let c = &fleet.counters;
    c.reset_dispatch();
    let agents = c.connected.load(Ordering::Relaxed);
    eprintln!("fleet: submitting {tasks} tasks to {agents} agents");
    let cpu0 = process_cpu_s(pid)?;
    let submitted_at = Instant::now();
    let submitted_us = c.epoch.elapsed().as_micros() as u64;
    let out = lull_run(vec![
        "submit".into(),
        job.to_string_lossy().into_owned(),
        "--key".into(),
        key.to_string_lossy().into_owned(),
        "--json".into(),
    ])
    .await??;
    let answer: Value = serde_json::from_str(&out)?;
    let job_id = answer["job"]
        .as_u64()
        .context("no job id from lull submit")?;
    let submit_s = submitted_at.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60 + u64::from(tasks) / 20);
    let mut last_print = Instant::now();
    while c.acked.load(Ordering::Relaxed) < u64::from(tasks) {
        if Instant::now() > deadline {
            bail!(
                "only {} of {tasks} results acknowledged in time",
                c.acked.load(Ordering::Relaxed)
            );
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "fleet: {} assigned, {} acknowledged",
                c.assigned.load(Ordering::Relaxed),
                c.acked.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = process_cpu_s(pid)?;
    let last_ack_us = c.last_ack_us.load(Ordering::Relaxed);
    let first_assign_us = c.first_assign_us.load(Ordering::Relaxed);
    let total_s = (last_ack_us.saturating_sub(submitted_us)) as f64 / 1e6;
    let placing_s = (last_ack_us.saturating_sub(first_assign_us)) as f64 / 1e6;
    let cpu_s = submitted_at.elapsed().as_secs_f64();
    let rss = rss_kb(pid)?;
    // The job's own record must say it succeeded.
    let mut state = Value::Null;
    for _ in 0..50 {
        state = coordinator
            .get_json(&format!("/api/v1/jobs/{job_id}"))
            .await?["state"]
            .clone();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if state != "succeeded" {
        bail!("the bench's job ended {state}, not succeeded");
    }
    let figures = json!({
        "dispatch_agents": agents,
        "dispatch_tasks": tasks,
        "tasks_per_s_1000_agents": round3(f64::from(tasks) / total_s),
        "tasks_per_s_after_first_assignment": round3(f64::from(tasks) / placing_s),
        "dispatch_submit_s": round3(submit_s),
        "dispatch_cpu_percent": round3(100.0 * (cpu1 - cpu0) / cpu_s),
        "dispatch_rss_mb": round3(rss as f64 / 1024.0),
    });
    eprintln!("fleet: job {job_id}: {figures}");
    Ok(figures)
}

/// Raises this process's limit of open files to `want` (the hard limit too, where allowed),
/// or as far as the hard limit; returns the limit in force.
fn raise_open_files(want: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return Ok(limit.rlim_max);
    }
    Ok(limit.rlim_cur)
}

/// How many local UDP ports the kernel hands out (`ip_local_port_range`).
fn local_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<usize>().ok());
            Some(it.next()??..=it.next()??)
        })
        .map_or(28_000, |r| r.count())
}

/// A process's resident memory in KiB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    super::procfs::status_kb(pid, "VmRSS")
}
