//! `lull logs JOB[/TASK]`: what a task's modules wrote to stdout and stderr, from its latest
//! attempt that sent a result (or the one asked for), printed to this terminal's stdout and
//! stderr.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lull_protocol::api::{JobDetail, TaskDetail, TaskQuery};
use lull_protocol::message::{Captured, TaskResult};
use tokio::io::AsyncWriteExt;

use crate::client::Client;

/// `lull logs`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  lull logs 12        the only task of job 12\n  lull logs 12/3      task 3 of job 12\n  lull logs 12/3 --attempt 1 --stream stderr\n\nA module's stdout goes to stdout and its stderr to stderr. With several modules, each\nstream is headed by `==> MODULE <==`."
)]
pub struct Args {
    /// The task: JOB/INDEX (or JOB.INDEX), or JOB for a job of one task.
    task: String,
    /// The attempt whose output to print [default: the latest that sent a result].
    #[arg(long)]
    attempt: Option<u32>,
    /// Only this stream.
    #[arg(long, value_parser = ["stdout", "stderr"])]
    stream: Option<String>,
}

/// Splits `JOB/INDEX`, `JOB.INDEX` or `JOB`.
fn parse_task(text: &str) -> anyhow::Result<(u64, Option<u32>)> {
    let bad = || {
        anyhow::anyhow!(
            "{text:?} is not a task: give JOB/INDEX (e.g. 12/3), or JOB for a job of one task"
        )
    };
    match text.split_once(['/', '.']) {
        Some((job, index)) => Ok((
            job.parse().map_err(|_| bad())?,
            Some(index.parse().map_err(|_| bad())?),
        )),
        None => Ok((text.parse().map_err(|_| bad())?, None)),
    }
}

/// Prints a task's output.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let (job, index) = parse_task(&args.task)?;
    let index = match index {
        Some(i) => i,
        None => {
            let path = super::status::job_path(job, &TaskQuery::default());
            let detail: JobDetail = client.get(&path).await?;
            if detail.job.count != 1 {
                bail!(
                    "job {job} has {} tasks: name one, e.g. lull logs {job}/0",
                    detail.job.count
                );
            }
            0
        }
    };
    let detail: TaskDetail = client
        .get(&format!("/api/v1/jobs/{job}/tasks/{index}"))
        .await?;
    let task = format!("task {job}/{index}");
    let attempt = match args.attempt {
        Some(n) => detail
            .attempts
            .iter()
            .find(|a| a.attempt == n)
            .with_context(|| format!("{task} has no attempt {n}"))?,
        None => match detail.attempts.iter().rev().find(|a| a.result.is_some()) {
            Some(a) => a,
            None => {
                let now = match detail.attempts.last() {
                    None => "has not run yet".to_owned(),
                    Some(a) if a.finished_ms.is_none() => format!(
                        "is running on agent {} (attempt {}); its output is kept when the attempt ends",
                        a.agent, a.attempt
                    ),
                    Some(a) => format!(
                        "sent no output: its attempts ended without a result (attempt {}: {})",
                        a.attempt,
                        a.outcome.as_deref().unwrap_or("ended")
                    ),
                };
                bail!("{task} {now}");
            }
        },
    };
    let Some(result) = &attempt.result else {
        bail!(
            "{task}: attempt {} sent no output ({})",
            attempt.attempt,
            attempt.outcome.as_deref().unwrap_or("it has not ended")
        );
    };
    print_streams(client, result, args.stream.as_deref()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Copies each module's captured streams to this process's stdout and stderr.
async fn print_streams(
    client: &Client,
    result: &TaskResult,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let several = result.modules.len() > 1;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    for m in &result.modules {
        let streams: [(&str, &Option<Captured>); 2] =
            [("stdout", &m.stdout), ("stderr", &m.stderr)];
        for (name, captured) in streams {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let to: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) = if name == "stdout" {
                &mut stdout
            } else {
                &mut stderr
            };
            if several {
                to.write_all(format!("==> {} <==\n", m.name).as_bytes())
                    .await?;
            }
            if let Some(c) = captured.as_ref().filter(|c| c.size > 0) {
                client
                    .copy_to(&format!("/api/v1/blobs/{}", c.digest), to, name)
                    .await?;
                if c.truncated {
                    to.write_all(
                        format!(
                            "\n[lull: {} of module {} was cut at {} bytes]\n",
                            name, m.name, c.size
                        )
                        .as_bytes(),
                    )
                    .await?;
                }
            }
            to.flush().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_job_slash_index_or_a_job() {
        assert_eq!(parse_task("12/3").unwrap(), (12, Some(3)));
        assert_eq!(parse_task("12.3").unwrap(), (12, Some(3)));
        assert_eq!(parse_task("12").unwrap(), (12, None));
        for bad in ["", "x", "12/", "12/x", "-1/2"] {
            let e = parse_task(bad).unwrap_err().to_string();
            assert!(e.contains("is not a task"), "{bad}: {e}");
        }
    }
}
