//! `lull dev`: a coordinator and agents in one process, on the default ports, with a
//! development signing key that this cluster (and nothing else) trusts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lull_agent::{Agent, AgentConfig};
use lull_coordinator::server::{self, HubConfig, ServeConfig};
use lull_protocol::signature::TrustList;

/// `lull dev`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agents to run.
    #[arg(long, default_value_t = 2)]
    agents: u32,
    /// Tasks each agent runs at once [default: cores / agents, at least 1].
    #[arg(long)]
    slots: Option<u32>,
    /// HTTP address for people and the CLI.
    #[arg(long, default_value = "127.0.0.1:7080")]
    http_listen: SocketAddr,
    /// QUIC address for agents.
    #[arg(long, default_value = "127.0.0.1:7443")]
    quic_listen: SocketAddr,
    /// Keep data here instead of a temporary directory removed at exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the agents' scavenging policy (pause when this machine's own programs need the CPU)
    /// instead of lending the machine whole. Guests start at once either way.
    #[arg(long)]
    scavenge: bool,
    /// Keep the coordinator's state in this PostgreSQL database (a `postgres://` URL) instead
    /// of a SQLite file in the data directory.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

/// Where `lull dev` keeps its signing key, which `lull submit` uses against a development
/// cluster. Only development clusters trust it.
pub fn key_path() -> PathBuf {
    crate::config_dir().join("dev-key")
}

/// Runs the development cluster until interrupted.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tmp;
    let data = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("lull-dev-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let key_path = key_path();
    let key = if key_path.exists() {
        super::keys::load(&key_path)?
    } else {
        super::keys::generate(&key_path, "lull-dev")?
    };
    let mut trust = TrustList::new();
    trust.add("lull-dev", key.public_key().clone());

    let running = server::start(ServeConfig {
        data_dir: data.join("coordinator"),
        database: args.database.clone(),
        quic_addr: args.quic_listen,
        http_addr: args.http_listen,
        // Loopback by default, and no tokens: nothing for TLS to protect.
        http_tls: server::HttpTls::Plain,
        hub: HubConfig {
            trust: Some(trust.clone()),
            dev: true,
            ..HubConfig::default()
        },
        quic_limits: server::QuicLimits::default(),
    })
    .await?;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let slots = args.slots.unwrap_or((cores / args.agents.max(1)).max(1));
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let config = AgentConfig {
            coordinator: running.quic_addr.to_string(),
            coordinator_key: Some(running.public_key_hash.to_string()),
            data_dir: data.join(format!("agent-{i}")),
            name: Some(format!("dev-{i}")),
            slots: Some(slots),
            dedicated: !args.scavenge,
            ..AgentConfig::default()
        };
        let mut config = config;
        config.policy.start_after_idle = std::time::Duration::ZERO;
        let agent =
            Agent::new(&config, trust.clone()).with_context(|| format!("starting agent {i}"))?;
        agents.push(tokio::spawn(agent.run()));
    }
    println!(
        "lull dev: coordinator on http://{} (agents on quic://{}), {} agent(s) with {} slot(s) each",
        running.http_addr, running.quic_addr, args.agents, slots
    );
    println!("  dashboard:   http://{}/", running.http_addr);
    println!("  data:        {}", data.display());
    println!(
        "  signing key: {} (trusted by this cluster only)",
        key_path.display()
    );
    let default_http: SocketAddr = ([127, 0, 0, 1], lull_protocol::DEFAULT_HTTP_PORT).into();
    let flag = if running.http_addr == default_http {
        String::new()
    } else {
        format!("--coordinator http://{} ", running.http_addr)
    };
    println!("  try:         lull {flag}submit examples/montecarlo/job.toml --watch");
    println!("  stop:        ctrl-c (or SIGTERM)");
    server::shutdown_signal().await;
    println!("lull dev: stopping");
    for a in agents {
        a.abort();
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
