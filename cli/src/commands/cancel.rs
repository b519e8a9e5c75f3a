//! `lull cancel JOB`.

use std::process::ExitCode;

use crate::client::Client;

/// `lull cancel`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job number.
    job: u64,
}

/// Cancels a job.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = client
        .post(
            &format!("/api/v1/jobs/{}/cancel", args.job),
            &serde_json::json!({}),
        )
        .await?;
    println!(
        "job {} cancelled; {} running task(s) are being stopped",
        args.job, v["stopping"]
    );
    Ok(ExitCode::SUCCESS)
}
