//! `lull-agent`: the agent's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lull_agent::install;
use lull_agent::owner::OwnerRequest;
use lull_agent::{Agent, AgentConfig};
use lull_protocol::signature::TrustList;

/// Lull's agent: runs signed WebAssembly workloads while this machine is idle.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the coordinator and run work until interrupted.
    Run(RunArgs),
    /// Evict running guests and take no work until `resume` (the owner needs the machine).
    Pause(LocalArgs),
    /// `pause` for a while (e.g. `2h`, `30m`), then take work again by itself; `resume` ends
    /// it sooner.
    Snooze(SnoozeArgs),
    /// Take no new work, let the running tasks end, then stop the agent; `resume` cancels it.
    Finish(LocalArgs),
    /// Take work again after `pause`.
    Resume(LocalArgs),
    /// Evict running guests, then stop the agent.
    Stop(LocalArgs),
    /// Say what the agent is doing and why.
    Status(LocalArgs),
    /// Install the agent as a service: configuration, trust list, systemd unit (launchd on
    /// macOS), enabled and started.
    Install(InstallArgs),
    /// Stop and remove the service (and with --purge its configuration and data).
    Uninstall(UninstallArgs),
    /// Check this machine: the load sampler, a guest run in the sandbox, a pause and resume.
    SelfTest,
    /// Run as a Windows service (what `install` registers; Windows starts it).
    Service(RunArgs),
}

#[derive(clap::Args, Debug)]
struct SnoozeArgs {
    /// How long: `90s`, `30m`, `2h`, `1h30m`.
    duration: String,
    #[command(flatten)]
    local: LocalArgs,
}

#[derive(clap::Args, Debug)]
struct InstallArgs {
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// The coordinator's key hash to pin, sha256:<64 hex>, as `lull-coordinator serve` prints.
    #[arg(long)]
    ca_hash: String,
    /// A join token (`lull-coordinator token create` prints the whole command): the agent's key
    /// is made and enrolled before anything is installed. Without one, the coordinator admits
    /// the agent only once it is enrolled another way (`lull-agent run --join-token`).
    #[arg(long, env = "LULL_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A name for people [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// The lull-agent binary the service runs [default: this one].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Install under this directory instead of / (for packages and tests); nothing is started.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print what would be done, without doing it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args, Debug)]
struct UninstallArgs {
    /// Also remove the configuration, the trust list and the data directory.
    #[arg(long)]
    purge: bool,
    /// Uninstall from under this directory instead of /.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print what would be done, without doing it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// The configuration file (agent.toml), to find the agent's data directory.
    #[arg(long, short, env = "LULL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The agent's data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The configuration file (agent.toml); without one, defaults apply.
    #[arg(long, short, env = "LULL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinator's QUIC address (overrides the file).
    #[arg(long)]
    coordinator: Option<String>,
    /// sha256 of the coordinator's public key to pin (overrides the file).
    #[arg(long)]
    coordinator_key: Option<String>,
    /// A join token to enroll this agent's key with (needs the coordinator's key pinned). Once
    /// enrolled, the key alone admits the agent.
    #[arg(long, env = "LULL_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// The data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The trust list, an OpenSSH allowed_signers file (overrides the file).
    #[arg(long)]
    allowed_signers: Option<PathBuf>,
    /// Revoked keys, OpenSSH public keys one per line (overrides the file).
    #[arg(long)]
    revoked_signers: Option<PathBuf>,
    /// Tasks run at once (overrides the file).
    #[arg(long)]
    slots: Option<u32>,
    /// A name for people (overrides the file).
    #[arg(long)]
    name: Option<String>,
    /// The most memory one task may have, e.g. 2GiB (overrides the file).
    #[arg(long)]
    max_task_memory: Option<String>,
    /// A machine lent whole: no scavenging policy, guests never paused (overrides the file).
    #[arg(long)]
    dedicated: bool,
    /// How long the machine must be idle before guests start, e.g. 60s (overrides the file's
    /// policy.start_after_idle).
    #[arg(long, value_parser = lull_protocol::units::parse_duration)]
    start_after_idle: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match main_result().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn main_result() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("LULL_LOG").unwrap_or_else(|_| "info".into())
    };
    match &cli.command {
        // A service has no terminal: its log goes to agent.log beside its configuration.
        Command::Service(args) => {
            let path = args
                .config
                .as_deref()
                .and_then(|c| c.parent())
                .unwrap_or(std::path::Path::new("."))
                .join("agent.log");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| anyhow::anyhow!("opening the log {}: {e}", path.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        _ => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
    if !matches!(cli.command, Command::Run(_)) {
        lull_agent::quiet_on_closed_pipe();
    }
    match cli.command {
        Command::Run(args) => run(args, lull_agent::daemon::shutdown_signal()).await,
        // The sandbox's guests run on threads of their own, outside the async runtime.
        Command::SelfTest => {
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                lull_agent::selftest::run(&mut std::io::stdout(), &runtime)
            })
            .await?
        }
        Command::Service(args) => service(args),
        Command::Pause(a) => local(a, OwnerRequest::Pause).await,
        Command::Snooze(a) => {
            let d = lull_protocol::units::parse_duration(&a.duration)
                .map_err(|e| anyhow::anyhow!("snooze {:?}: {e}", a.duration))?;
            if d.is_zero() {
                anyhow::bail!("snooze {:?}: must be longer than zero", a.duration);
            }
            local(a.local, OwnerRequest::Snooze(d)).await
        }
        Command::Finish(a) => local(a, OwnerRequest::Finish).await,
        Command::Resume(a) => local(a, OwnerRequest::Resume).await,
        Command::Stop(a) => local(a, OwnerRequest::Stop).await,
        Command::Status(a) => local(a, OwnerRequest::Status).await,
        Command::Install(a) => {
            let binary = match a.binary {
                Some(b) => b,
                // Windows' canonical paths are `\\?\C:\...`, which a service's command line
                // does not take: there the absolute path as it is.
                None => std::env::current_exe()
                    .and_then(|p| {
                        if cfg!(windows) {
                            std::path::absolute(p)
                        } else {
                            p.canonicalize()
                        }
                    })
                    .map_err(|e| {
                        anyhow::anyhow!("finding this binary's path (pass --binary): {e}")
                    })?,
            };
            let opts = install::InstallOptions {
                coordinator: a.coordinator,
                ca_hash: a.ca_hash,
                root: a.root,
                binary,
                name: a.name,
                dry_run: a.dry_run,
            };
            let mut out = std::io::stdout();
            if let Some(token) = &a.token {
                install::enroll(&opts, token, &mut out).await?;
            }
            install::install(&opts, install::ServiceManager::native(), &mut out)
        }
        Command::Uninstall(a) => install::uninstall(
            &a.root,
            a.purge,
            a.dry_run,
            install::ServiceManager::native(),
            &mut std::io::stdout(),
        ),
    }
}

/// What an agent in `state` does with its guests, in words, for `lull-agent status`;
/// `incumbent` is the share of the CPU the machine's own programs use now.
fn doing(state: &str, tasks: usize, incumbent: Option<f64>) -> String {
    match state {
        "waiting_for_idle" => format!(
            "taking no work until the machine has been idle long enough (or until \
             `lull-agent resume`){}",
            incumbent
                .map(|f| format!("; its own programs use {:.0} % of the CPU now", f * 100.0))
                .unwrap_or_default()
        ),
        "running" if tasks == 0 => "lending the machine; no task assigned right now".into(),
        "running" => format!(
            "lending the machine: {tasks} task(s) running at idle priority, within the CPU cap"
        ),
        "throttled" => format!(
            "lending part of the machine: {tasks} task(s) running a share of each core that \
             shrinks as the machine's own programs need more"
        ),
        "paused" => format!(
            "{tasks} task(s) stopped where they are; they go on when the machine's own \
             programs quiet down (or are evicted if the pause lasts too long)"
        ),
        "evicting" => format!(
            "stopping {tasks} task(s) so that they run again elsewhere (from their last \
             checkpoint, for guests that keep one); taking no work"
        ),
        other => format!("in state {other:?}, which this lull-agent does not know"),
    }
}

async fn local(args: LocalArgs, req: OwnerRequest) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    let data_dir = args.data_dir.unwrap_or(config.data_dir);
    let v = lull_agent::owner::send(&data_dir, req).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = &v["status"];
    let pct = |x: &serde_json::Value| {
        x.as_f64()
            .map(|f| format!("{:.0} %", f * 100.0))
            .unwrap_or_default()
    };
    println!(
        "{}: {}{}",
        s["state"].as_str().unwrap_or("?"),
        s["reason"].as_str().unwrap_or(""),
        if s["accepting"] == true {
            ""
        } else {
            " (not taking work)"
        }
    );
    let tasks: Vec<String> = v["running"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t.as_str().unwrap_or("?").to_owned())
        .collect();
    println!(
        "doing: {}",
        doing(
            s["state"].as_str().unwrap_or(""),
            tasks.len(),
            s["incumbent_cpu"].as_f64()
        )
    );
    println!(
        "machine: incumbent CPU {}, guests {}, idle estimate {}",
        pct(&s["incumbent_cpu"]),
        pct(&s["guest_cpu"]),
        pct(&s["idle_cpu"])
    );
    if tasks.is_empty() {
        println!("tasks: none");
    } else {
        println!("tasks: {}", tasks.join(", "));
    }
    let size = |x: &serde_json::Value| lull_protocol::units::format_size(x.as_u64().unwrap_or(0));
    if let Some(pools) = v["pools"].as_array()
        && let Some((variable, classes)) = pools.split_last()
    {
        let mut parts: Vec<String> = classes
            .iter()
            .map(|c| format!("{} {}/{} used", size(&c["size"]), c["used"], c["slots"]))
            .collect();
        parts.push(format!(
            "variable {} of {} used",
            size(&variable["used"]),
            size(&variable["size"])
        ));
        println!("memory slots: {}", parts.join(", "));
    }
    let cache = &v["cache"];
    if cache.is_object() {
        println!(
            "cache: {} of {} used, {} module(s) compiled",
            size(&cache["used"]),
            size(&cache["budget"]),
            cache["compiled"]
        );
    }
    if let Some(c) = v["coordinator"].as_str() {
        println!(
            "coordinator: {c} ({})",
            if v["connected"] == true {
                "connected"
            } else {
                "not connected"
            }
        );
    }
    Ok(())
}

/// `lull-agent service`: the agent run by Windows' service control manager until it asks the
/// service to stop.
#[cfg(windows)]
fn service(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let args = std::sync::Mutex::new(Some(args));
    tokio::task::block_in_place(|| {
        lull_agent::winservice::run(move |stop| {
            let args = args
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| anyhow::anyhow!("the service was started twice"))?;
            runtime.block_on(run(args, async {
                let _ = stop.await;
            }))
        })
    })
}

#[cfg(not(windows))]
fn service(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`lull-agent service` runs the agent as a Windows service; here, use `lull-agent run` \
         (`lull-agent install` sets up the system's own service manager)"
    )
}

/// Runs the agent until `stop` completes.
async fn run(args: RunArgs, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    if let Some(v) = args.coordinator {
        config.coordinator = v;
    }
    if let Some(v) = args.coordinator_key {
        config.coordinator_key = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    config.join_token = args.join_token;
    if let Some(v) = args.allowed_signers {
        config.allowed_signers = Some(v);
    }
    if let Some(v) = args.revoked_signers {
        config.revoked_signers = Some(v);
    }
    if let Some(v) = args.slots {
        config.slots = Some(v);
    }
    if let Some(v) = args.name {
        config.name = Some(v);
    }
    if let Some(v) = args.max_task_memory {
        config.max_task_memory = Some(v);
    }
    if args.dedicated {
        config.dedicated = true;
    }
    if let Some(v) = args.start_after_idle {
        config.policy.start_after_idle = v;
    }
    let trust = match &config.allowed_signers {
        Some(path) => TrustList::read_files(path, config.revoked_signers.as_deref())?,
        None if config.revoked_signers.is_some() => {
            anyhow::bail!(
                "revoked_signers is set without allowed_signers: nothing would be trusted"
            )
        }
        None => TrustList::new(),
    };
    let agent = Agent::new(&config, trust)?;
    println!(
        "lull-agent {} connecting to {}",
        agent.id(),
        config.coordinator
    );
    tokio::select! {
        r = agent.run() => r,
        _ = stop => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use lull_agent::policy::State;

    use super::doing;

    #[test]
    fn every_state_says_what_the_agent_does() {
        for state in [
            State::WaitingForIdle,
            State::Running,
            State::Throttled,
            State::Paused,
            State::Evicting,
        ] {
            let name = serde_json::to_value(state).unwrap();
            let name = name.as_str().unwrap();
            for tasks in [0, 2] {
                let words = doing(name, tasks, Some(0.5));
                assert!(!words.contains("does not know"), "{name}: {words}");
            }
        }
        assert!(doing("running", 2, None).contains("2 task(s)"));
        assert!(doing("running", 0, None).contains("no task"));
        assert!(doing("waiting_for_idle", 0, Some(0.87)).contains("use 87 % of the CPU now"));
        assert!(doing("sleeping", 0, None).contains("does not know"));
    }
}
