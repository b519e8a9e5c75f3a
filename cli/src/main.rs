//! `lull`: submit and watch jobs, fetch their results, and run a development cluster.
//!
//! One file per command under `commands/`; the HTTP client in `client`.

mod client;
mod commands;
mod config;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lull harvests idle machines for batch work: submit WebAssembly jobs, watch them, fetch
/// their results.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The coordinator's address, https://HOST:PORT [default: $LULL_COORDINATOR, else
    /// http://127.0.0.1:7080, where `lull dev` listens]
    #[arg(long, global = true, env = "LULL_COORDINATOR")]
    coordinator: Option<String>,
    /// The sha256 of the coordinator's HTTPS key, sha256:HEX, as `lull-coordinator serve` and
    /// `token create --user` print it: only that coordinator is trusted. Without it, an
    /// https:// coordinator needs a certificate from a public authority.
    #[arg(
        long,
        global = true,
        env = "LULL_COORDINATOR_KEY",
        value_name = "SHA256"
    )]
    coordinator_key: Option<String>,
    /// Your token for the coordinator (from `lull-coordinator token create --user NAME`); not
    /// needed with `lull dev`.
    #[arg(long, global = true, env = "LULL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Your settings file: coordinator, token, key [default: $LULL_CONFIG, else
    /// $XDG_CONFIG_HOME/lull/config.toml or ~/.config/lull/config.toml, when it exists]
    #[arg(long, global = true, env = "LULL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator and agents in this process, for trying Lull out.
    Dev(commands::dev::Args),
    /// Submit a job file.
    Submit(commands::submit::Args),
    /// Show jobs, or one job's tasks.
    Status(commands::status::Args),
    /// Download a job's results.
    Results(commands::results::Args),
    /// Print what a task's modules wrote to stdout and stderr.
    Logs(commands::logs::Args),
    /// List or make clusters (sets of agents that jobs name).
    Clusters {
        #[command(subcommand)]
        command: commands::clusters::Command,
    },
    /// List, make or delete the coordinator's tokens (needs an operate token for every
    /// cluster).
    Tokens {
        #[command(subcommand)]
        command: commands::tokens::Command,
    },
    /// Show the connected agents, or revoke one.
    Agents(commands::agents::Args),
    /// Cancel a job.
    Cancel(commands::cancel::Args),
    /// Delete a job that has ended, with its results.
    Delete(commands::delete::Args),
    /// Drain an agent: no new work; its running tasks get until a deadline, then move.
    Drain(commands::drain::Args),
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: commands::keys::KeysCommand,
    },
    /// Sign a module, writing FILE.sig.
    Sign(commands::keys::SignArgs),
    /// Check a module's signature (FILE.sig) against a trust list.
    Verify(commands::keys::VerifyArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish or powershell).
    #[command(
        after_help = "Install, for example:\n  bash: lull completions bash > ~/.local/share/bash-completion/completions/lull\n  zsh:  lull completions zsh > ~/.zfunc/_lull   (with fpath+=~/.zfunc in ~/.zshrc)\n  fish: lull completions fish > ~/.config/fish/completions/lull.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit code when a watched job ended with a task that did not succeed.
pub const EXIT_JOB_FAILED: u8 = 3;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LULL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Dev(_)) {
        lull_agent::quiet_on_closed_pipe();
    }
    // Needs no coordinator, settings or runtime.
    if let Command::Completions { shell } = &cli.command {
        use clap::CommandFactory;
        clap_complete::generate(*shell, &mut Cli::command(), "lull", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let coordinator = cli.coordinator.or(settings.coordinator);
    let token = cli.token.or(settings.token);
    let pin = cli.coordinator_key.or(settings.coordinator_key);
    let client = match client::Client::new(
        coordinator.as_deref().unwrap_or(client::DEFAULT_URL),
        token.as_deref(),
        pin.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(a) => commands::dev::run(a).await,
            Command::Submit(a) => commands::submit::run(&client, a, settings.key).await,
            Command::Status(a) => commands::status::run(&client, a).await,
            Command::Results(a) => commands::results::run(&client, a).await,
            Command::Logs(a) => commands::logs::run(&client, a).await,
            Command::Agents(a) => commands::agents::run(&client, a).await,
            Command::Clusters { command } => commands::clusters::run(&client, command).await,
            Command::Tokens { command } => commands::tokens::run(&client, command).await,
            Command::Cancel(a) => commands::cancel::run(&client, a).await,
            Command::Delete(a) => commands::delete::run(&client, a).await,
            Command::Drain(a) => commands::drain::run(&client, a).await,
            Command::Keys { command } => commands::keys::run(command),
            Command::Sign(a) => commands::keys::sign(a),
            Command::Verify(a) => commands::keys::verify(a),
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The default place for a user's files.
pub fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lull")
}
