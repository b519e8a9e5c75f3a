//! `lull cancel JOB`.

use std::process::ExitCode;

use lull_protocol::api::Cancelled;

use crate::client::Client;

/// `lull cancel`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job number.
    job: u64,
    /// Print JSON: `{"job": N, "stopping": running tasks being stopped}`.
    #[arg(long)]
    json: bool,
}

/// Cancels a job.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let cancelled: Cancelled = client
        .post_empty(&format!("/api/v1/jobs/{}/cancel", args.job))
        .await?;
    if args.json {
        super::print_json(&cancelled)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {} cancelled; {} running task(s) are being stopped",
        args.job, cancelled.stopping
    );
    Ok(ExitCode::SUCCESS)
}
