//! `lull drain AGENT [--deadline D]`, and `lull drain AGENT --off`.

use std::process::ExitCode;
use std::time::Duration;

use lull_protocol::api::{Drain, DrainRequest};

use crate::client::Client;

/// `lull drain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's ID, as `lull agents` lists it.
    agent: String,
    /// How long its running tasks may still run before they are evicted and run elsewhere,
    /// e.g. 10m.
    #[arg(long, default_value = "1h", value_parser = lull_protocol::units::parse_duration, conflicts_with = "off")]
    deadline: Duration,
    /// Stop draining: the agent takes work again.
    #[arg(long)]
    off: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Drains an agent, or stops draining it.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/agents/{}/drain", args.agent);
    let drain: Drain = if args.off {
        client.delete(&path).await?
    } else {
        client
            .post(
                &path,
                &DrainRequest {
                    deadline_ms: Some(args.deadline.as_millis() as u64),
                },
            )
            .await?
    };
    if args.json {
        super::print_json(&drain)?;
    } else if args.off {
        println!("agent {} takes work again", args.agent);
    } else {
        println!(
            "agent {} is draining: no new work; its {} running task(s) have until {} from now, then move to other agents",
            args.agent,
            drain.running.unwrap_or(0),
            humantime::format_duration(args.deadline)
        );
    }
    Ok(ExitCode::SUCCESS)
}
