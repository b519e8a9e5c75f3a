//! `lull status [JOB]`, and the live view behind `lull submit --watch`.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lull_protocol::api::{JobDetail, JobState, JobSummary, TaskState};

use crate::client::Client;
use crate::table::{Align, Table};

/// `lull status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A job number; without one, every job is listed.
    job: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Follow the job to its end with a progress bar (needs JOB); exit 0 only if every task
    /// succeeded.
    #[arg(long, requires = "job")]
    watch: bool,
}

/// Shows jobs or one job.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    match args.job {
        None => {
            let jobs: Vec<JobSummary> = client.get("/api/v1/jobs").await?;
            if args.json {
                super::print_json(&jobs)?;
            } else if jobs.is_empty() {
                println!("no jobs yet: submit one with `lull submit JOB.toml`");
            } else {
                let mut table = Table::new(&[
                    ("JOB", Align::Right),
                    ("NAME", Align::Left),
                    ("STATE", Align::Left),
                    ("TASKS", Align::Right),
                    ("DONE", Align::Right),
                    ("RUNNING", Align::Right),
                    ("FAILED", Align::Right),
                ]);
                for j in jobs {
                    let c = &j.counts;
                    table.row(vec![
                        j.id.to_string(),
                        j.name,
                        j.state.to_string(),
                        j.count.to_string(),
                        c.succeeded.to_string(),
                        c.running.to_string(),
                        c.failed.to_string(),
                    ]);
                }
                table.print();
            }
        }
        Some(job) if args.watch => {
            let d = watch(client, job, !args.json).await?;
            if args.json {
                super::print_json(&d)?;
            }
            return Ok(exit_code(&d));
        }
        Some(job) => {
            let d: JobDetail = client.get(&format!("/api/v1/jobs/{job}")).await?;
            if args.json {
                super::print_json(&d)?;
            } else {
                print_job(&d);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_job(d: &JobDetail) {
    let c = &d.job.counts;
    println!(
        "job {}: {} — {} ({} task{}: {} succeeded, {} running, {} pending, {} failed, {} cancelled)",
        d.job.id,
        d.job.name,
        d.job.state,
        d.job.count,
        if d.job.count == 1 { "" } else { "s" },
        c.succeeded,
        c.running,
        c.pending,
        c.failed,
        c.cancelled
    );
    if let Some(w) = &d.waiting_reason {
        println!("pending tasks: {w}");
    }
    let mut table = Table::new(&[
        ("TASK", Align::Right),
        ("STATE", Align::Left),
        ("ATTEMPT", Align::Right),
        ("AGENT", Align::Left),
        ("CAUSE", Align::Left),
    ]);
    for t in &d.tasks {
        let task = &t.task;
        // An assigned task that waits on its agent (for a memory or task slot) says so.
        let (state, cause) = match &t.waiting {
            Some(why) => ("waiting".to_string(), why.as_str()),
            None => {
                let state = task.state;
                // A guest that reports progress (or kept a checkpoint) shows how far it got.
                let state = match t.progress {
                    Some(p) if state != TaskState::Succeeded => {
                        format!("{state} {:.0}%", p * 100.0)
                    }
                    _ => state.to_string(),
                };
                (state, task.cause.as_deref().unwrap_or(""))
            }
        };
        table.row(vec![
            task.id.index.to_string(),
            state,
            task.attempt.to_string(),
            task.agent.as_deref().unwrap_or("-").to_owned(),
            cause.to_owned(),
        ]);
    }
    table.print();
}

/// 0 when the job succeeded, [`crate::EXIT_JOB_FAILED`] otherwise.
pub fn exit_code(d: &JobDetail) -> ExitCode {
    if d.job.state == JobState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_JOB_FAILED)
    }
}

/// Follows a job until it ends, drawing a progress bar when `show`; returns its final detail.
pub async fn watch(client: &Client, job: u64, show: bool) -> anyhow::Result<JobDetail> {
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg} (ETA {eta})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let d: JobDetail = match client.get(&format!("/api/v1/jobs/{job}")).await {
            Ok(d) => {
                unreachable_since = None;
                d
            }
            // Ride out a coordinator restart; give up after two minutes without an answer.
            Err(e) if e.downcast_ref::<crate::client::Unreachable>().is_some() => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(120) {
                    return Err(e);
                }
                bar.set_message(format!("coordinator unreachable, retrying: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let c = d.job.counts;
        bar.set_length(u64::from(d.job.count));
        bar.set_position(c.succeeded + c.failed + c.cancelled);
        let mut msg = format!(
            "done {} · running {} · failed {}",
            c.succeeded, c.running, c.failed
        );
        if let Some(w) = &d.waiting_reason
            && c.running == 0
        {
            msg.push_str(&format!(" · waiting: {w}"));
        }
        bar.set_message(msg);
        let state = d.job.state;
        if state.is_final() {
            bar.finish_and_clear();
            if show {
                eprintln!(
                    "job {job} {state}: {} succeeded, {} failed, {} cancelled",
                    c.succeeded, c.failed, c.cancelled
                );
                for t in &d.tasks {
                    let task = &t.task;
                    if task.state == TaskState::Failed {
                        eprintln!(
                            "  task {} failed after {} attempt(s): {}",
                            task.id.index,
                            task.attempt,
                            task.cause.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
