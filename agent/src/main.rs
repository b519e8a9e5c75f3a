//! `lull-agent`: the agent's command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// The data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The trust list, an OpenSSH allowed_signers file (overrides the file).
    #[arg(long)]
    allowed_signers: Option<PathBuf>,
    /// Tasks run at once (overrides the file).
    #[arg(long)]
    slots: Option<u32>,
    /// A name for people (overrides the file).
    #[arg(long)]
    name: Option<String>,
    /// The most memory one task may have, e.g. 2GiB (overrides the file).
    #[arg(long)]
    max_task_memory: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LULL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
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
    if let Some(v) = args.allowed_signers {
        config.allowed_signers = Some(v);
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
    let trust = match &config.allowed_signers {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the trust list {}", path.display()))?;
            TrustList::parse(&text)
                .with_context(|| format!("reading the trust list {}", path.display()))?
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
        _ = lull_agent::daemon::shutdown_signal() => Ok(()),
    }
}
