//! `lull status [JOB]`, and the live view behind `lull submit --watch`.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lull_protocol::api::{JobDetail, JobState, JobSummary, TaskQuery, TaskState};

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
    /// Show the job's tasks from this index on [default: 0].
    #[arg(long, requires = "job", conflicts_with = "watch")]
    offset: Option<u32>,
    /// Show at most this many of the job's tasks, up to 10000 [default: 1000].
    #[arg(long, requires = "job", conflicts_with_all = ["watch", "all"],
          value_parser = clap::value_parser!(u32).range(0..=i64::from(TaskQuery::MAX_LIMIT)))]
    limit: Option<u32>,
    /// Show only the job's tasks in this state: pending, running, succeeded, failed or
    /// cancelled.
    #[arg(long, requires = "job", conflicts_with = "watch")]
    state: Option<TaskState>,
    /// Show every one of the job's tasks (from --offset), however many: without it, a job's
    /// first 1,000 are shown.
    #[arg(long, requires = "job", conflicts_with = "watch")]
    all: bool,
}

/// How many failed tasks the end of a watch prints (and fetches).
const FAILED_SHOWN: u32 = 20;

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
                    ("OWNER", Align::Left),
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
                        if j.owner.is_empty() {
                            "-".to_owned()
                        } else {
                            j.owner
                        },
                        j.state.to_string(),
                        j.count.to_string(),
                        c.succeeded.to_string(),
                        c.running.to_string(),
                        c.failed.to_string(),
                    ]);
                }
                table.print();
                print_shares(client).await?;
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
            let mut query = TaskQuery {
                offset: args.offset.unwrap_or(0),
                limit: match args.limit {
                    _ if args.all => TaskQuery::MAX_LIMIT,
                    Some(limit) => limit,
                    None => TaskQuery::DEFAULT_LIMIT,
                },
                state: args.state,
            };
            let mut d: JobDetail = client.get(&job_path(job, &query)).await?;
            // Every page, one after the other, into one detail.
            while args.all
                && let Some(next) = d.next_offset
            {
                query.offset = next;
                let page: JobDetail = client.get(&job_path(job, &query)).await?;
                d.tasks.extend(page.tasks);
                d.next_offset = page.next_offset;
            }
            if args.json {
                super::print_json(&d)?;
            } else {
                print_job(&d, &query);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The path of a job's detail with the tasks `query` asks for.
pub fn job_path(job: u64, query: &TaskQuery) -> String {
    format!("/api/v1/jobs/{job}{}", query.to_query_string())
}

/// Prints a job and the page of its tasks `query` asked for, and how to see the next page.
fn print_job(d: &JobDetail, query: &TaskQuery) {
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
    if d.spec.verified() {
        println!(
            "results checked: each task succeeds when {} distinct agents send the same result (verify)",
            d.spec.verify
        );
    }
    if let Some(g) = &d.spec.group {
        println!("group: {g} (its quota counts this job's tasks with the group's other jobs)");
    }
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
    let shown = d.tasks.len();
    if shown > 0 {
        table.print();
    }
    let which = query.state.map_or(String::new(), |s| format!("{s} "));
    match (d.tasks.first(), d.tasks.last(), d.next_offset) {
        (Some(first), Some(last), Some(next)) => {
            let filter = query
                .state
                .map_or(String::new(), |s| format!(" --state {s}"));
            println!(
                "{shown} {which}task(s) shown, {} to {}; more from {next}: \
                 lull status {id}{filter} --offset {next} (or --all for every one)",
                first.task.id.index,
                last.task.id.index,
                id = d.job.id,
            );
        }
        (None, _, None) if query.offset > 0 => {
            println!("no {which}task from index {}", query.offset)
        }
        (None, _, None) => println!("no {which}task"),
        _ => {}
    }
}

/// 0 when the job succeeded, [`crate::EXIT_JOB_FAILED`] otherwise.
pub fn exit_code(d: &JobDetail) -> ExitCode {
    if d.job.state == JobState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_JOB_FAILED)
    }
}

/// Follows a job until it ends, drawing a progress bar when `show`; returns its final detail,
/// with its first [`FAILED_SHOWN`] failed tasks (and `next_offset` where more start). Each poll
/// asks for the job's counts alone, however many tasks it has; the failed tasks are fetched
/// once, at the end.
pub async fn watch(client: &Client, job: u64, show: bool) -> anyhow::Result<JobDetail> {
    let counts_only = job_path(
        job,
        &TaskQuery {
            limit: 0,
            ..TaskQuery::default()
        },
    );
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
        let mut d: JobDetail = match client.get(&counts_only).await {
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
        if state.is_final() || d.hold.is_some() {
            bar.finish_and_clear();
            d.next_offset = None;
            if c.failed > 0 {
                let failed = TaskQuery {
                    limit: FAILED_SHOWN,
                    state: Some(TaskState::Failed),
                    ..TaskQuery::default()
                };
                let page: JobDetail = client.get(&job_path(job, &failed)).await?;
                d.tasks = page.tasks;
                d.next_offset = page.next_offset;
            }
            if let Some(why) = d.hold.as_deref().filter(|_| show) {
                eprintln!("job {job} held for good: {why}");
            } else if show {
                eprintln!(
                    "job {job} {state}: {} succeeded, {} failed, {} cancelled",
                    c.succeeded, c.failed, c.cancelled
                );
                for t in &d.tasks {
                    let task = &t.task;
                    eprintln!(
                        "  task {} failed after {} attempt(s): {}",
                        task.id.index,
                        task.attempt,
                        task.cause.as_deref().unwrap_or("?")
                    );
                }
                let more = c.failed.saturating_sub(d.tasks.len() as u64);
                if more > 0 {
                    eprintln!(
                        "  and {more} more failed task(s): lull status {job} --state failed --all"
                    );
                }
            }
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The fair share of the clusters with more than one user, after the list of jobs: who is
/// served first when slots free up.
async fn print_shares(client: &Client) -> anyhow::Result<()> {
    let shares: Vec<lull_protocol::api::Share> = client.get("/api/v1/shares").await?;
    let mut users_of: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in &shares {
        *users_of.entry(s.cluster.as_str()).or_default() += 1;
    }
    let shown: Vec<&lull_protocol::api::Share> = shares
        .iter()
        .filter(|s| users_of[s.cluster.as_str()] > 1)
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    println!();
    println!("Fair share (the lower RECENT, the sooner a user's tasks are served):");
    let mut table = Table::new(&[
        ("CLUSTER", Align::Left),
        ("USER", Align::Left),
        ("RUNNING", Align::Right),
        ("RECENT", Align::Right),
        ("CORE-HOURS", Align::Right),
        ("WAITING", Align::Right),
    ]);
    for s in shown {
        table.row(vec![
            s.cluster.clone(),
            s.user.clone(),
            format!("{:.1}", s.running_cores),
            format!("{:.1}", s.recent_cores),
            format!("{:.2}", s.usage_core_seconds / 3600.0),
            s.waiting.to_string(),
        ]);
    }
    table.print();
    Ok(())
}
