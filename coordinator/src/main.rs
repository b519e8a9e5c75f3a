//! `lull-coordinator`: the coordinator's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lull_coordinator::server::{self, HubConfig, QuicLimits, ServeConfig};

/// Lull's coordinator: keeps jobs, places tasks on agents, collects results.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve agents (QUIC) and people (HTTP) until interrupted.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Where the database, blobs and identity live [default: ~/.local/share/lull/coordinator]
    #[arg(long, env = "LULL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address agents connect to (QUIC).
    #[arg(long, default_value = "127.0.0.1:7443")]
    quic_listen: SocketAddr,
    /// TCP address people and the CLI connect to (HTTP).
    #[arg(long, default_value = "127.0.0.1:7080")]
    http_listen: SocketAddr,
    /// How long an assignment survives without a report from its agent, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: std::time::Duration,
    /// An OpenSSH allowed_signers file: submitted modules must be signed by a key on it.
    #[arg(long)]
    allowed_signers: Option<PathBuf>,
    /// Revoked keys, OpenSSH public keys one per line: their signatures are refused.
    #[arg(long, requires = "allowed_signers")]
    revoked_signers: Option<PathBuf>,
    /// Agents' QUIC connections open at once; more are refused.
    #[arg(long, default_value_t = QuicLimits::default().max_connections)]
    max_agent_connections: usize,
    /// QUIC handshakes under way at once; past it, new agents must first prove their address
    /// (a QUIC Retry).
    #[arg(long, default_value_t = QuicLimits::default().max_handshakes)]
    max_handshakes: usize,
    /// Streams one agent connection may have open at once.
    #[arg(long, default_value_t = QuicLimits::default().max_streams)]
    max_streams_per_agent: u32,
    /// How long a silent agent connection lives, e.g. 30s (agents send keep-alives every second).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    agent_idle_timeout: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    lull_protocol::units::parse_duration(s).map_err(|e| e.to_string())
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lull/coordinator")
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let trust = match &args.allowed_signers {
        Some(path) => Some(lull_protocol::signature::TrustList::read_files(
            path,
            args.revoked_signers.as_deref(),
        )?),
        None => None,
    };
    let config = ServeConfig {
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        quic_addr: args.quic_listen,
        http_addr: args.http_listen,
        hub: HubConfig {
            lease: args.lease,
            trust,
            ..HubConfig::default()
        },
        quic_limits: QuicLimits {
            max_connections: args.max_agent_connections,
            max_handshakes: args.max_handshakes,
            max_streams: args.max_streams_per_agent,
            idle_timeout: args.agent_idle_timeout,
        },
    };
    let running = server::start(config).await?;
    println!(
        "lull-coordinator: agents on quic://{} (key {}), people on http://{}",
        running.quic_addr, running.public_key_hash, running.http_addr
    );
    server::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
