//! `lull logs JOB[/TASK]`: what a task's modules wrote to stdout and stderr, from its latest
//! attempt that sent a result (or the one asked for), printed to this terminal's stdout and
//! stderr. With `-f`, what a running task writes, as it writes it (asked of its agent through
//! the coordinator), then the rest once it ends.

use std::process::ExitCode;

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::time::Duration;

use lull_protocol::api::{JobDetail, LiveLog, TaskDetail, TaskQuery, TaskState};
use lull_protocol::message::{Captured, Stream, TaskResult};
use tokio::io::AsyncWriteExt;

use crate::client::Client;

/// `lull logs`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  lull logs 12        the only task of job 12\n  lull logs 12/3      task 3 of job 12\n  lull logs 12/3 --attempt 1 --stream stderr\n  lull logs 12/3 -f   what task 3 writes while it runs, until it ends\n\nA module's stdout goes to stdout and its stderr to stderr. With several modules, each\nstream is headed by `==> MODULE <==`."
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
    /// Follow the task: print what its modules write while it runs (waiting for it to start),
    /// and the rest when it ends.
    #[arg(short = 'f', long, conflicts_with = "attempt")]
    follow: bool,
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
    if args.follow {
        let only = args
            .stream
            .as_deref()
            .map(str::parse::<Stream>)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?;
        return follow(client, job, index, only).await;
    }
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

/// How often a followed task is asked about.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// Where followed output stands: bytes printed of each module's streams, and the module whose
/// bytes each destination printed last (for the `==> MODULE <==` headers).
#[derive(Default)]
struct Followed {
    printed: HashMap<(String, Stream), u64>,
    last: HashMap<Stream, String>,
}

impl Followed {
    /// Prints `bytes` of `module`'s `stream` to this process's stream of the same name.
    async fn print(
        &mut self,
        several: bool,
        module: &str,
        stream: Stream,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut to: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match stream {
            Stream::Stdout => Box::new(tokio::io::stdout()),
            Stream::Stderr => Box::new(tokio::io::stderr()),
        };
        if several && self.last.get(&stream).map(String::as_str) != Some(module) {
            to.write_all(format!("==> {module} <==\n").as_bytes())
                .await?;
            self.last.insert(stream, module.to_owned());
        }
        to.write_all(bytes).await?;
        to.flush().await?;
        *self.printed.entry((module.to_owned(), stream)).or_default() += bytes.len() as u64;
        Ok(())
    }

    fn offset(&self, module: &str, stream: Stream) -> u64 {
        self.printed
            .get(&(module.to_owned(), stream))
            .copied()
            .unwrap_or(0)
    }
}

/// Follows a task: its modules' streams as they are written, asked of the coordinator every
/// [`FOLLOW_EVERY`], then what is left of them in its result once it ends. A new attempt
/// (after a retry or an eviction) starts from its beginning, said on stderr.
async fn follow(
    client: &Client,
    job: u64,
    index: u32,
    only: Option<Stream>,
) -> anyhow::Result<ExitCode> {
    let path = super::status::job_path(
        job,
        &TaskQuery {
            limit: 0,
            ..TaskQuery::default()
        },
    );
    let detail: JobDetail = client.get(&path).await?;
    if index >= detail.job.count {
        bail!(
            "job {job} has no task {index} (its tasks are 0 to {})",
            detail.job.count.saturating_sub(1)
        );
    }
    let modules: Vec<String> = detail.spec.modules.iter().map(|m| m.name.clone()).collect();
    let streams: Vec<Stream> = only.map_or(vec![Stream::Stdout, Stream::Stderr], |s| vec![s]);
    let several = modules.len() > 1;
    let mut followed = Followed::default();
    let mut attempt = None;
    let mut said_waiting = false;
    'poll: loop {
        let mut live_now = false;
        for module in &modules {
            for &stream in &streams {
                let offset = followed.offset(module, stream);
                let live: LiveLog = client
                    .get(&format!(
                        "/api/v1/jobs/{job}/tasks/{index}/live?module={module}&stream={}&offset={offset}",
                        stream.as_str()
                    ))
                    .await?;
                if attempt != Some(live.attempt) {
                    if attempt.is_some_and(|a| a > 0) {
                        eprintln!(
                            "[lull: attempt {} of task {job}/{index} starts; its output follows]",
                            live.attempt
                        );
                    }
                    let restart = attempt.is_some();
                    attempt = Some(live.attempt);
                    if restart {
                        // Offsets counted the earlier attempt's bytes: ask again from the start.
                        followed.printed.clear();
                        continue 'poll;
                    }
                }
                if let Some(out) = live.output {
                    live_now = true;
                    followed.print(several, module, stream, &out.bytes).await?;
                }
            }
        }
        if !live_now {
            let detail: TaskDetail = client
                .get(&format!("/api/v1/jobs/{job}/tasks/{index}"))
                .await?;
            match detail.task.state {
                TaskState::Pending if !said_waiting => {
                    eprintln!("[lull: task {job}/{index} waits for an agent]");
                    said_waiting = true;
                }
                TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                    // The rest, from the result of the attempt followed (or all of the last
                    // one that sent a result).
                    if let Some(a) = detail.attempts.iter().rev().find(|a| a.result.is_some()) {
                        if attempt != Some(a.attempt) {
                            followed.printed.clear();
                        }
                        let result = a.result.as_ref().expect("found with a result");
                        for m in &result.modules {
                            for &stream in &streams {
                                let captured = match stream {
                                    Stream::Stdout => &m.stdout,
                                    Stream::Stderr => &m.stderr,
                                };
                                let Some(c) = captured.as_ref().filter(|c| c.size > 0) else {
                                    continue;
                                };
                                let from = followed.offset(&m.name, stream);
                                if from >= c.size {
                                    continue;
                                }
                                let mut bytes = Vec::new();
                                client
                                    .copy_to(
                                        &format!("/api/v1/blobs/{}", c.digest),
                                        &mut bytes,
                                        stream.as_str(),
                                    )
                                    .await?;
                                let from =
                                    usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
                                followed
                                    .print(several, &m.name, stream, &bytes[from..])
                                    .await?;
                            }
                        }
                    }
                    eprintln!("[lull: task {job}/{index} {}]", detail.task.state);
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
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
