//! `lull-coordinator`: the coordinator's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lull_coordinator::server::{self, HttpTls, HubConfig, QuicLimits, ServeConfig};
use lull_coordinator::store::{Store, TokenKind};

/// Lull's coordinator: keeps jobs, places tasks on agents, collects results.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve agents (QUIC) and people (HTTPS) until interrupted.
    Serve(ServeArgs),
    /// Copy the data directory (database, blobs, key) into DIR, consistently, while the
    /// coordinator runs; again into the same DIR, it copies only what is new.
    Backup {
        /// Where the backup goes (made if missing).
        dir: PathBuf,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Make, list and delete tokens (run on the coordinator's machine, on its data directory).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token and print it (it is shown this once; only its hash is kept).
    Create(TokenCreateArgs),
    /// List tokens (their ids, never the tokens themselves).
    List {
        #[command(flatten)]
        data: DataDirArg,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the tokens whose id starts with ID (at least 6 hex digits).
    Delete {
        /// The token's id, as `token list` shows it.
        id: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(clap::Args, Debug)]
struct DataDirArg {
    /// The coordinator's data directory [default: ~/.local/share/lull/coordinator]
    #[arg(long, env = "LULL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The coordinator's PostgreSQL database, when it uses one (as `serve --database`).
    #[arg(long, env = "LULL_DATABASE", hide_env_values = true)]
    database: Option<String>,
}

#[derive(clap::Args, Debug)]
struct TokenCreateArgs {
    #[command(flatten)]
    token: lull_coordinator::token_args::NewTokenArgs,
    /// A person's token (needs --user).
    #[arg(long)]
    submitter: bool,
    /// The address agents reach this coordinator's QUIC port at, for the join command printed
    /// with an agent's token [default: this machine's host name, port 7443].
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    #[command(flatten)]
    data: DataDirArg,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Where the database, blobs and identity live [default: ~/.local/share/lull/coordinator]
    #[arg(long, env = "LULL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The database: a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE), or
    /// the SQLite file lull.db in the data directory when not given.
    #[arg(long, env = "LULL_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// UDP address agents connect to (QUIC).
    #[arg(long, default_value = "127.0.0.1:7443")]
    quic_listen: SocketAddr,
    /// TCP address people and the CLI connect to (HTTPS; HTTP with --plain-http).
    #[arg(long, default_value = "127.0.0.1:7080")]
    http_listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, leaf first) instead of the coordinator's
    /// own self-signed certificate; read at start (restart to renew).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve the people's API as plain HTTP, without TLS: only behind a proxy that terminates
    /// TLS, or where no one else can listen (tokens travel in the clear).
    #[arg(long, conflicts_with = "tls_cert")]
    plain_http: bool,
    /// How long an assignment survives without a report from its agent, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = lull_protocol::units::parse_duration)]
    lease: std::time::Duration,
    /// How long a failed task waits before its next attempt, e.g. 1s; it doubles with each
    /// failure, up to a minute.
    #[arg(long, default_value = "1s", value_parser = lull_protocol::units::parse_duration)]
    retry_backoff: std::time::Duration,
    /// The half-life of users' recent usage, which fair share goes by, e.g. 1d: a user who ran
    /// much longer ago than this counts as new.
    #[arg(long, default_value = "1d", value_parser = lull_protocol::units::parse_duration)]
    fair_share_half_life: std::time::Duration,
    /// In clusters that allow preemption (`lull clusters set ID --preempt on`): how long a task
    /// runs before waiting work may evict it, e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = lull_protocol::units::parse_duration)]
    preempt_after: std::time::Duration,
    /// The time a task evicted for waiting work has to checkpoint and stop, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = lull_protocol::units::parse_duration)]
    preempt_grace: std::time::Duration,
    /// How long a blob that no job refers to is kept after its last use, e.g. 1h; then it is
    /// collected. Also how long an unfinished upload waits to be resumed.
    #[arg(long, default_value = "1h", value_parser = lull_protocol::units::parse_duration)]
    blob_grace: std::time::Duration,
    /// How often unreferenced blobs are collected, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = lull_protocol::units::parse_duration)]
    gc_interval: std::time::Duration,
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
    #[arg(long, default_value = "30s", value_parser = lull_protocol::units::parse_duration)]
    agent_idle_timeout: std::time::Duration,
    /// Agents' QUIC connections from one IP address at once; raise it when more agents than
    /// this share one address (a site behind NAT).
    #[arg(long, default_value_t = QuicLimits::default().max_per_address)]
    max_agent_connections_per_address: usize,
    /// How long a new agent connection has to say hello (after enrolling, if it does), e.g.
    /// 10s; one that says nothing in time is closed.
    #[arg(long, default_value = "10s", value_parser = lull_protocol::units::parse_duration)]
    agent_hello_timeout: std::time::Duration,
    /// The QUIC socket's receive and send buffers, e.g. 8MiB: for thousands of agents. The
    /// kernel grants at most `net.core.rmem_max` (Linux); a smaller grant is logged at start.
    #[arg(long, default_value = "8MiB", value_parser = parse_buffer)]
    udp_buffer: usize,
}

/// A socket buffer size: 64 KiB to 1 GiB.
fn parse_buffer(s: &str) -> Result<usize, String> {
    let n = lull_protocol::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(64 << 10..=1 << 30).contains(&n) {
        return Err(format!("{s} is not between 64KiB and 1GiB"));
    }
    Ok(n as usize)
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lull/coordinator")
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
    tracing_subscriber::fmt()
        .with_env_filter(
            // sqlx logs PostgreSQL's notices ("relation ... already exists, skipping") at info.
            tracing_subscriber::EnvFilter::try_from_env("LULL_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_closed_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Token { command } => token(command).await,
        Command::Backup { dir, data } => {
            let data_dir = data.data_dir.clone().unwrap_or_else(default_data_dir);
            if data.database.is_none() && !data_dir.join("lull.db").is_file() {
                anyhow::bail!(
                    "{} holds no coordinator database (lull.db); give the data directory with --data-dir",
                    data_dir.display()
                );
            }
            let (data_dir, store) = open_store(&data).await?;
            let started = std::time::Instant::now();
            let done = lull_coordinator::backup::backup(&store, &data_dir, &dir).await?;
            println!(
                "backed up {} into {} in {:.1}s: the database ({} job(s)), the coordinator's key, {} blob(s) ({} new, {})",
                data_dir.display(),
                dir.display(),
                started.elapsed().as_secs_f64(),
                done.jobs,
                done.blobs,
                done.new_blobs,
                lull_protocol::units::format_size(done.new_bytes)
            );
            Ok(())
        }
    }
}

async fn open_store(data: &DataDirArg) -> anyhow::Result<(PathBuf, Store)> {
    let dir = data.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let store = match &data.database {
        Some(url) => Store::connect(url)
            .await
            .with_context(|| format!("opening the database {}", server::redact(url)))?,
        None => Store::open(&dir.join("lull.db"))
            .await
            .with_context(|| format!("opening the database in {}", dir.display()))?,
    };
    Ok((dir, store))
}

/// A time in ms since the Unix epoch, for people.
fn when(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            if args.submitter && args.token.user.is_none() {
                anyhow::bail!(
                    "a person's token belongs to a user: add --user NAME (and --role read or \
                     --role operate for more than submitting and watching NAME's own jobs)"
                );
            }
            let (dir, store) = open_store(&args.data).await?;
            let (token, info) = store
                .issue_token(&args.token.request(), store.now_ms())
                .await?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let kind = if info.is_persons() {
                TokenKind::Submitter
            } else {
                TokenKind::Agent
            };
            let identity = lull_coordinator::tls::load_or_create(&dir.join("tls"))?;
            println!("{}", token.as_str());
            eprintln!(
                "{}, {}, {}",
                info.describe(),
                info.expires_ms
                    .map_or("never expires".to_owned(), |ms| format!(
                        "expires {}",
                        when(ms)
                    )),
                match (info.uses_left, kind) {
                    (None, _) => "any number of uses".to_owned(),
                    (Some(n), TokenKind::Agent) => format!("{n} use(s)"),
                    (Some(n), TokenKind::Submitter) => format!("{n} submission(s)"),
                },
            );
            match kind {
                TokenKind::Submitter => {
                    let host = sysinfo::System::host_name().unwrap_or_else(|| "HOST".into());
                    eprintln!(
                        "submitters use it with:\n  \
                         lull --coordinator https://{host}:{} --coordinator-key {} --token TOKEN ...\n\
                         or put coordinator, coordinator_key and token in ~/.config/lull/config.toml \
                         (the key is the coordinator's own; with `serve --tls-cert`, give the \
                         certificate's key hash, or none for a certificate from a public authority)",
                        lull_protocol::DEFAULT_HTTP_PORT,
                        identity.public_key_hash,
                    )
                }
                TokenKind::Agent => {
                    let address = args.address.unwrap_or_else(|| {
                        let host = sysinfo::System::host_name().unwrap_or_else(|| "HOST".into());
                        format!("{host}:{}", lull_protocol::DEFAULT_QUIC_PORT)
                    });
                    eprintln!(
                        "to enroll a machine, run as root on it:\n  \
                         lull-agent install --coordinator {address} --ca-hash {} --token {}",
                        identity.public_key_hash,
                        token.as_str()
                    );
                }
            }
            Ok(())
        }
        TokenCommand::List { data, json } => {
            let (_, store) = open_store(&data).await?;
            let tokens = store.tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            if tokens.is_empty() {
                println!("no tokens; make one with `lull-coordinator token create`");
                return Ok(());
            }
            println!(
                "{:<12}  {:<9}  {:<12}  {:<8}  {:<12}  {:<12}  {:<20}  {:<20}  {:<9}  description",
                "id",
                "kind",
                "user",
                "role",
                "cluster(s)",
                "groups",
                "created",
                "expires",
                "uses left"
            );
            for t in tokens {
                println!(
                    "{:<12}  {:<9}  {:<12}  {:<8}  {:<12}  {:<12}  {:<20}  {:<20}  {:<9}  {}",
                    t.id,
                    t.kind,
                    if t.user.is_empty() {
                        "-"
                    } else {
                        t.user.as_str()
                    },
                    if t.is_persons() { t.role.as_str() } else { "-" },
                    t.reach(),
                    t.groups_shown(),
                    when(t.created_ms),
                    t.expires_ms.map_or("never".to_owned(), when),
                    t.uses_left
                        .map_or("unlimited".to_owned(), |n| n.to_string()),
                    t.description
                );
            }
            Ok(())
        }
        TokenCommand::Delete { id, data } => {
            let (_, store) = open_store(&data).await?;
            let deleted = store.delete_tokens(&id).await?;
            if deleted == 0 {
                anyhow::bail!(
                    "no token has an id starting with {id:?} (give at least 6 hex digits of an id from `token list`)"
                );
            }
            println!("deleted {deleted} token(s)");
            Ok(())
        }
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
        database: args.database,
        quic_addr: args.quic_listen,
        http_addr: args.http_listen,
        http_tls: match (args.tls_cert, args.tls_key) {
            _ if args.plain_http => HttpTls::Plain,
            (Some(cert), Some(key)) => HttpTls::Provided { cert, key },
            _ => HttpTls::OwnKey,
        },
        hub: HubConfig {
            lease: args.lease,
            retry_backoff: args.retry_backoff,
            fair_share_half_life: args.fair_share_half_life,
            preempt_min_runtime: args.preempt_after,
            preempt_grace: args.preempt_grace,
            blob_grace: args.blob_grace,
            gc_interval: args.gc_interval,
            trust,
            ..HubConfig::default()
        },
        quic_limits: QuicLimits {
            max_connections: args.max_agent_connections,
            max_handshakes: args.max_handshakes,
            max_streams: args.max_streams_per_agent,
            idle_timeout: args.agent_idle_timeout,
            hello_timeout: args.agent_hello_timeout,
            max_per_address: args.max_agent_connections_per_address,
            udp_buffer: args.udp_buffer,
        },
    };
    let running = server::start(config).await?;
    let people = match running.http_key_hash {
        Some(key) => format!("{} (key {key})", running.http_url()),
        None => running.http_url(),
    };
    println!(
        "lull-coordinator: agents on quic://{} (key {}), people on {people}",
        running.quic_addr, running.public_key_hash
    );
    server::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// Lets a closed pipe end a short command quietly, as other Unix tools do (`lull-coordinator token list | head`),
/// where Rust would otherwise panic in `println!`. Not for the long-running commands: they keep
/// Rust's default (a write to a closed pipe is an error to handle).
fn quiet_on_closed_pipe() {
    // SAFETY: sets SIGPIPE back to its default disposition for the whole process; no handler
    // runs, and nothing in the program relies on SIGPIPE being ignored for pipes.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
