//! `lull delete JOB`.

use std::process::ExitCode;

use lull_protocol::api::Deleted;

use crate::client::Client;

/// `lull delete`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job number; the job must have ended (succeeded, failed or cancelled).
    job: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Deletes a finished job with its results.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let deleted: Deleted = client.delete(&format!("/api/v1/jobs/{}", args.job)).await?;
    if args.json {
        super::print_json(&deleted)?;
    } else {
        println!(
            "job {} deleted with its results; the coordinator frees its files once no other job uses them",
            args.job
        );
    }
    Ok(ExitCode::SUCCESS)
}
