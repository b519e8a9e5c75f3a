//! The `footprint` bench: what a release `lull-agent` costs the machine it runs on, idle and
//! while paused with guests parked.
//!
//! A coordinator (`lull dev --agents 0`, release build) and one `lull-agent run` process of the
//! release build, on loopback, with the scavenging policy (`start_after_idle = 0`) and the
//! sampler at 50 Hz (`sample_interval = "20ms"`). The agent is a process of its own, so its
//! memory and CPU are its own.
//!
//! 1. **Idle**: once the agent is connected and has settled, its resident memory (`VmRSS` of
//!    `/proc/PID/status`) is read every second over the window, and its CPU time (`utime +
//!    stime` of `/proc/PID/stat`) at both ends of it.
//! 2. **Paused**: a job of spinning guests (a WAT loop, one task per slot) runs on the agent;
//!    then `sh` busy loops (incumbents, enough to keep more than `pause_above` of the machine
//!    busy) make its policy pause the guests. Once the agent says it is paused (its owner socket,
//!    `lull-agent status --json`, and the coordinator's `GET /api/v1/agents`) with every guest
//!    still there, the same figures are taken over the same window.
//! 3. **After**: the incumbents stopped and the job cancelled, a few seconds of resident memory
//!    once the guests are gone: what a finished job leaves behind.
//!
//! Each window also breaks the memory down from `/proc/PID/smaps` (the agent's binary, other
//! files, the heaps, the anonymous mappings by size) and the CPU by thread (each thread's
//! `/proc/PID/task/TID/schedstat`, in nanoseconds), printed before the JSON line.
//!
//! Apart from the agent, the bench also times what a sampler tick costs this machine: a thread
//! waking from a 20 ms sleep (250 times, nothing else done) and one read of each source the
//! sampler reads or could read (`tick_*_us`, µs of CPU each).
//!
//! `--quick` makes the windows 10 s instead of 60 s; `--window SECONDS` sets them; `--agent
//! PATH` measures another `lull-agent` binary (another commit's, say) with the same coordinator.
//! Linux only (it reads `/proc`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::procfs::{machine_ticks, process_cpu_s, status_kb, tick_costs};
use super::{round3, tempfile_dir};
use crate::util::{self, Dev};

/// A guest that spins until stopped, in one page of memory.
const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $spin (br $spin))))"#;

/// The sampler's period set in the agent's configuration.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// The goal: resident memory at most this many MiB...
const GOAL_RSS_MB: f64 = 15.0;
/// ...and CPU at most this share of one core, in percent.
const GOAL_CPU_PERCENT: f64 = 0.5;

/// The agent's name as the coordinator lists it.
const AGENT_NAME: &str = "footprint";

/// How long to wait for anything the agent or coordinator should do in a moment.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long to wait for the machine to be quiet enough for the agent's policy to start guests.
const QUIET_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// Runs the bench.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let window = match args.iter().position(|a| a == "--window") {
        Some(i) => Duration::from_secs(
            args.get(i + 1)
                .and_then(|s| s.parse().ok())
                .context("--window needs a number of seconds")?,
        ),
        None if quick => Duration::from_secs(10),
        None => Duration::from_secs(60),
    };
    let settle = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "lull",
        "-p",
        "lull-agent",
        "--bins",
    ])?;
    let release = util::target_dir().join("release");
    // Another build of the agent to measure (say, of another commit), the rest unchanged.
    let agent = match args.iter().position(|a| a == "--agent") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--agent needs a path")?),
        None => release.join("lull-agent"),
    };
    let dir = tempfile_dir()?;
    let figures = bench(&release.join("lull"), &agent, &dir, window, settle);
    let _ = fs::remove_dir_all(&dir);
    println!("{}", figures?);
    Ok(())
}

fn bench(
    lull: &Path,
    agent_bin: &Path,
    dir: &Path,
    window: Duration,
    settle: Duration,
) -> anyhow::Result<serde_json::Value> {
    // The coordinator alone, on a QUIC port chosen here so that the agent can be told it.
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let dev = Dev::start_with(
        lull.to_owned(),
        &[
            "--agents",
            "0",
            "--http-listen",
            "127.0.0.1:0",
            "--quic-listen",
            &quic.to_string(),
        ],
        0,
    )?;
    // `lull dev` made its signing key before it said it was ready; the agent trusts it.
    let key = dev_public_key()?;
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("lull-dev {}\n", key.trim()))?;
    let data = dir.join("agent");
    let config = dir.join("agent.toml");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    fs::write(
        &config,
        format!(
            "coordinator = \"{quic}\"\ndata_dir = \"{}\"\nname = \"{AGENT_NAME}\"\nslots = {cores}\n\
             allowed_signers = \"{}\"\nsample_interval = \"{}ms\"\n[policy]\nstart_after_idle = \"0s\"\n",
            data.display(),
            signers.display(),
            SAMPLE_INTERVAL.as_millis(),
        ),
    )?;
    let agent = AgentProcess::start(agent_bin, &config, dir)?;
    wait_for(PATIENCE, "the agent to connect", || {
        Ok(listed_agent(&dev)?.is_some())
    })?;
    say(&format!(
        "agent {} connected; settling for {settle:?}",
        agent.pid
    ));
    std::thread::sleep(settle);

    // 1. Idle.
    say(&format!("idle: measuring for {window:?}"));
    let idle = Window::measure(agent.pid, window)?;
    idle.describe("idle");

    // 2. Paused with guests parked.
    fs::write(dir.join("spin.wasm"), wat::parse_str(SPIN)?)?;
    let job_file = dir.join("job.toml");
    fs::write(
        &job_file,
        format!(
            "name = \"footprint-bench\"\ncount = {cores}\n[[module]]\npath = \"spin.wasm\"\n\
             [resources]\nmemory = \"1MiB\"\ntimeout = \"1h\"\n"
        ),
    )?;
    let submitted: serde_json::Value =
        serde_json::from_str(&dev.output(&["submit", &job_file.to_string_lossy(), "--json"])?)?;
    let job = submitted["job"]
        .as_u64()
        .context("lull submit printed no job number")?;
    // The policy starts guests only while the machine is quiet; on a shared machine that can
    // take a while.
    let mut told = Instant::now();
    wait_for(QUIET_PATIENCE, "the guests to run", || {
        let status = agent.status()?;
        if told.elapsed() > Duration::from_secs(30) {
            told = Instant::now();
            say(&format!(
                "waiting for the machine to be quiet enough for guests to start: the agent sees its own programs using {:.0} % of it ({})",
                status["status"]["incumbent_cpu"].as_f64().unwrap_or(0.0) * 100.0,
                status["status"]["reason"].as_str().unwrap_or("?"),
            ));
        }
        // Each guest has run some of its loop: it is instantiated, not waiting to start.
        let spinning = thread_times(agent.pid)?
            .values()
            .filter(|(name, ns)| name.starts_with("guest ") && *ns >= 10_000_000)
            .count();
        Ok(spinning == cores)
    })?;
    say(&format!("{cores} guests running"));
    let burners = Burners::start(cores.div_ceil(2))?;
    wait_for(PATIENCE, "the agent to pause its guests", || {
        let status = agent.status()?;
        let listed = listed_agent(&dev)?.unwrap_or_default();
        Ok(status["status"]["state"] == "paused"
            && listed["status"]["state"] == "paused"
            && listed["running"].as_u64() == Some(cores as u64))
    })?;
    say(&format!(
        "paused with {} incumbent busy loop(s); settling for {settle:?}",
        burners.0.len()
    ));
    std::thread::sleep(settle);
    say(&format!("paused: measuring for {window:?}"));
    let window_began = unix_ms();
    let paused = Window::measure(agent.pid, window)?;
    let state_changes = state_changes(&dev, window_began, unix_ms())?;
    paused.describe("paused");
    // The guests must have stayed parked throughout, their tasks on the agent.
    let status = agent.status()?;
    let parked = status["running"].as_array().map_or(0, Vec::len);
    if status["status"]["state"] != "paused" || parked != cores {
        bail!("the agent did not stay paused with its {cores} guests through the window: {status}");
    }

    // 3. After: the guests gone.
    drop(burners);
    dev.output(&["cancel", &job.to_string()])?;
    wait_for(PATIENCE, "the guests to leave", || {
        Ok(agent.status()?["running"]
            .as_array()
            .is_some_and(Vec::is_empty))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let after = Window::measure(agent.pid, settle)?;
    after.describe("after the job");
    drop(agent);
    drop(dev);

    // What a tick of the sampler costs this machine, apart from the agent: the wake-up alone
    // and each source it could read.
    let ticks = tick_costs(
        SAMPLE_INTERVAL,
        250,
        &[
            "/proc/stat",
            "/proc/self/stat",
            "/proc/uptime",
            "/proc/schedstat",
        ],
    )?;
    for (what, us) in &ticks {
        eprintln!("xtask: tick cost here: {what}: {us:.1} µs of CPU");
    }
    let met = |w: &Window| w.rss_max_mb() <= GOAL_RSS_MB && w.cpu_percent() <= GOAL_CPU_PERCENT;
    let mut figures = serde_json::json!({
        "sample_hz": round3(1.0 / SAMPLE_INTERVAL.as_secs_f64()),
        "window_s": window.as_secs_f64(),
        "cores": cores,
        "guests_parked": parked,
        "paused_window_state_changes": state_changes,
        "guests_rss_mb": round3(paused.rss_median_mb() - idle.rss_median_mb()),
        "after_rss_median_mb": round3(after.rss_median_mb()),
        "goal_rss_mb": GOAL_RSS_MB,
        "goal_cpu_percent": GOAL_CPU_PERCENT,
        "idle_goal_met": met(&idle),
        "paused_goal_met": met(&paused),
    });
    for (name, w) in [("idle", &idle), ("paused", &paused)] {
        if let Some(all) = figures.as_object_mut() {
            all.extend(w.figures(name));
        }
    }
    if let Some(all) = figures.as_object_mut() {
        for (what, us) in ticks {
            let name = what.trim_start_matches("/proc/").replace('/', "_");
            all.insert(format!("tick_{name}_us"), round3(us).into());
        }
    }
    Ok(figures)
}

/// The public half of `lull dev`'s signing key.
fn dev_public_key() -> anyhow::Result<String> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    let path = config.join("lull/dev-key.pub");
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The bench's agent as `GET /api/v1/agents` lists it, once it is there.
fn listed_agent(dev: &Dev) -> anyhow::Result<Option<serde_json::Value>> {
    let agents = dev.get_json("/api/v1/agents")?;
    Ok(agents
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == AGENT_NAME)
        .cloned())
}

/// The agent's state changes the coordinator heard of between two instants (ms since the Unix
/// epoch): 0 while it stays paused.
fn state_changes(dev: &Dev, from_ms: i64, to_ms: i64) -> anyhow::Result<usize> {
    let agent = listed_agent(dev)?.context("the agent is no longer listed")?;
    let id = agent["id"].as_str().context("the agent has no id")?;
    let events = dev.get_json(&format!("/api/v1/agents/{id}/events"))?;
    Ok(events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["at_ms"].as_i64())
        .filter(|at| (from_ms..=to_ms).contains(at))
        .count())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Calls `done` every 100 ms until it says yes; fails after `patience`.
fn wait_for(
    patience: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn say(what: &str) {
    eprintln!("footprint: {what}");
}

/// The `lull-agent run` process, killed and reaped when dropped.
struct AgentProcess {
    child: Child,
    pid: u32,
    bin: PathBuf,
    config: PathBuf,
}

impl AgentProcess {
    fn start(bin: &Path, config: &Path, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join("agent.log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::create(dir.join("agent.err"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            bin: bin.to_owned(),
            config: config.to_owned(),
        })
    }

    /// What the agent tells its owner: `lull-agent status --json` over its control socket.
    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = util::stdout_of(
            Command::new(&self.bin)
                .args(["status", "--json", "--config"])
                .arg(&self.config),
            "lull-agent status",
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Busy loops of `sh`: the machine's own programs, as far as the agent can tell.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> anyhow::Result<Self> {
        let mut burners = Burners(Vec::new());
        for _ in 0..n {
            burners.0.push(
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting sh")?,
            );
        }
        Ok(burners)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one window measured of the agent process.
#[derive(Debug)]
struct Window {
    /// `VmRSS` read every second, in KiB.
    rss_kb: Vec<u64>,
    /// `VmHWM` at the end, in KiB.
    hwm_kb: u64,
    /// `RssAnon` and `RssFile` at the end, in KiB.
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
    /// `utime + stime` over the window, in seconds.
    cpu_s: f64,
    wall_s: f64,
    /// CPU time of each thread (by name; threads of one name summed) over the window, in ns,
    /// for the threads alive at both ends.
    by_thread: BTreeMap<String, u64>,
    /// Resident memory by kind of mapping at the end, in KiB.
    by_mapping: Vec<(String, u64)>,
    /// Proportional set size at the end (shared pages divided among the processes mapping
    /// them), in KiB.
    pss_kb: u64,
    /// Memory the process touched during the window (`Referenced` of smaps, cleared at its
    /// start), in KiB: its working set. Pages of shared libraries count when any process
    /// touched them, so it is an upper bound.
    referenced_kb: u64,
    /// How busy the whole machine was (every process, the agent included), in percent.
    machine_busy_percent: f64,
}

impl Window {
    fn measure(pid: u32, length: Duration) -> anyhow::Result<Self> {
        // Clears the pages' referenced bits, so that the end shows what the window touched.
        fs::write(format!("/proc/{pid}/clear_refs"), "1")
            .with_context(|| format!("writing /proc/{pid}/clear_refs"))?;
        let machine_before = machine_ticks()?;
        let threads_before = thread_times(pid)?;
        let cpu_before = process_cpu_s(pid)?;
        let started = Instant::now();
        let mut rss_kb = Vec::new();
        let mut next = started;
        while next < started + length {
            rss_kb.push(status_kb(pid, "VmRSS")?);
            next += Duration::from_secs(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let cpu_s = process_cpu_s(pid)? - cpu_before;
        let wall_s = started.elapsed().as_secs_f64();
        let machine_after = machine_ticks()?;
        let machine_busy_percent = (machine_after.0 - machine_before.0) as f64
            / ((machine_after.1 - machine_before.1) as f64).max(1.0)
            * 100.0;
        let threads_after = thread_times(pid)?;
        let mappings = Mappings::of(pid)?;
        let mut by_thread = BTreeMap::new();
        for (tid, (name, ns)) in &threads_after {
            if let Some((_, before)) = threads_before.get(tid) {
                *by_thread.entry(name.clone()).or_insert(0) += ns.saturating_sub(*before);
            }
        }
        Ok(Self {
            rss_kb,
            hwm_kb: status_kb(pid, "VmHWM")?,
            anon_kb: status_kb(pid, "RssAnon")?,
            file_kb: status_kb(pid, "RssFile")?,
            threads: status_kb(pid, "Threads")?,
            cpu_s,
            wall_s,
            by_thread,
            by_mapping: mappings.by_kind,
            pss_kb: mappings.pss_kb,
            referenced_kb: mappings.referenced_kb,
            machine_busy_percent,
        })
    }

    fn rss_median_mb(&self) -> f64 {
        let mut v = self.rss_kb.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
    }

    fn rss_max_mb(&self) -> f64 {
        self.rss_kb.iter().copied().max().unwrap_or(0) as f64 / 1024.0
    }

    fn cpu_percent(&self) -> f64 {
        self.cpu_s / self.wall_s * 100.0
    }

    fn figures(&self, phase: &str) -> serde_json::Map<String, serde_json::Value> {
        let samples = self.wall_s / SAMPLE_INTERVAL.as_secs_f64();
        let mb = |kb: u64| round3(kb as f64 / 1024.0);
        [
            ("rss_median_mb", round3(self.rss_median_mb()).into()),
            ("rss_max_mb", round3(self.rss_max_mb()).into()),
            ("hwm_mb", mb(self.hwm_kb).into()),
            ("rss_anon_mb", mb(self.anon_kb).into()),
            ("rss_file_mb", mb(self.file_kb).into()),
            ("pss_mb", mb(self.pss_kb).into()),
            ("referenced_mb", mb(self.referenced_kb).into()),
            (
                "machine_busy_percent",
                round3(self.machine_busy_percent).into(),
            ),
            ("threads", self.threads.into()),
            ("cpu_percent", round3(self.cpu_percent()).into()),
            (
                "cpu_us_per_sample",
                round3(self.cpu_s * 1e6 / samples).into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{phase}_{k}"), v))
        .collect()
    }

    /// Prints the window's breakdown.
    fn describe(&self, phase: &str) {
        say(&format!(
            "{phase}: RSS median {:.2} MiB, max {:.2} MiB (high-water mark {:.2} MiB; anonymous {:.2}, files {:.2}; PSS {:.2}; touched in the window {:.2}), {} threads, CPU {:.3} % of a core ({:.3} s over {:.1} s; the machine {:.1} % busy)",
            self.rss_median_mb(),
            self.rss_max_mb(),
            self.hwm_kb as f64 / 1024.0,
            self.anon_kb as f64 / 1024.0,
            self.file_kb as f64 / 1024.0,
            self.pss_kb as f64 / 1024.0,
            self.referenced_kb as f64 / 1024.0,
            self.threads,
            self.cpu_percent(),
            self.cpu_s,
            self.wall_s,
            self.machine_busy_percent,
        ));
        let mut threads: Vec<_> = self.by_thread.iter().collect();
        threads.sort_by(|a, b| b.1.cmp(a.1));
        let threads: Vec<String> = threads
            .iter()
            .filter(|(_, ns)| **ns > 0)
            .map(|(name, ns)| format!("{name} {:.3} %", **ns as f64 / 1e9 / self.wall_s * 100.0))
            .collect();
        say(&format!("{phase}: CPU by thread: {}", threads.join(", ")));
        let mappings: Vec<String> = self
            .by_mapping
            .iter()
            .map(|(kind, kb)| format!("{kind} {:.2} MiB", *kb as f64 / 1024.0))
            .collect();
        say(&format!("{phase}: RSS by mapping: {}", mappings.join(", ")));
    }
}

/// Each thread's name and CPU time (ns, from its schedstat), by thread ID.
fn thread_times(pid: u32) -> anyhow::Result<BTreeMap<u32, (String, u64)>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        // A thread may end between the listing and the reads.
        let (Ok(name), Ok(stat)) = (
            fs::read_to_string(dir.join("comm")),
            fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (name.trim().to_owned(), ns));
    }
    Ok(out)
}

/// What `/proc/PID/smaps` says of a process's memory.
struct Mappings {
    /// Resident KiB by kind of mapping, largest first. Anonymous mappings are told apart by
    /// size only: thread stacks are a few MiB, glibc's extra malloc arenas 64 MiB (reserved,
    /// mostly not resident), and wasmtime's pools many GiB.
    by_kind: Vec<(String, u64)>,
    pss_kb: u64,
    referenced_kb: u64,
}

impl Mappings {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/smaps");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let (mut pss_kb, mut referenced_kb) = (0, 0);
        let mut kind = String::new();
        let kb = |rest: &str| -> u64 {
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Rss:") {
                *kinds.entry(kind.clone()).or_insert(0) += kb(rest);
                continue;
            }
            if let Some(rest) = line.strip_prefix("Pss:") {
                pss_kb += kb(rest);
                continue;
            }
            if let Some(rest) = line.strip_prefix("Referenced:") {
                referenced_kb += kb(rest);
                continue;
            }
            // A mapping's header: `start-end perms offset dev inode [path]`.
            let mut words = line.split_whitespace();
            let Some((start, end)) = words.next().and_then(|w| w.split_once('-')) else {
                continue;
            };
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            let name = words.nth(4).unwrap_or("");
            let size = end - start;
            kind = if !exe.is_empty() && name == exe {
                "the agent's executable".into()
            } else if name.starts_with('/') {
                "other files".into()
            } else if !name.is_empty() {
                name.into()
            } else if size >= 1 << 30 {
                "anonymous >= 1 GiB".into()
            } else if size >= 32 << 20 {
                "anonymous 32 MiB-1 GiB".into()
            } else if size >= 1 << 20 {
                "anonymous 1-32 MiB".into()
            } else {
                "anonymous < 1 MiB".into()
            };
        }
        let mut by_kind: Vec<(String, u64)> = kinds.into_iter().filter(|(_, kb)| *kb > 0).collect();
        by_kind.sort_by_key(|b| std::cmp::Reverse(b.1));
        Ok(Self {
            by_kind,
            pss_kb,
            referenced_kb,
        })
    }
}
