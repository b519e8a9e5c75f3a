//! `lull cancel JOB`.

use std::process::ExitCode;

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
    let v: serde_json::Value = client
        .post(
            &format!("/api/v1/jobs/{}/cancel", args.job),
            &serde_json::json!({}),
        )
        .await?;
    if args.json {
        super::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {} cancelled; {} running task(s) are being stopped",
        args.job, v["stopping"]
    );
    Ok(ExitCode::SUCCESS)
}
