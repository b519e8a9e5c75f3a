//! `lull results JOB -o DIR`: every finished task's files, logs and status on local disk,
//! fetched a page of tasks at a time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use lull_protocol::api::{JobDetail, TaskQuery, TaskView};
use lull_protocol::message::TaskResult;

use crate::client::Client;

/// `lull results`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job number.
    job: u64,
    /// Where to write: DIR/TASK/output/..., DIR/TASK/stdout, stderr, status.json
    /// [default: results-JOB]
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Print JSON: the job, its state, the directory, and each task's status as written to its
    /// status.json.
    #[arg(long)]
    json: bool,
}

/// Downloads a job's results, a page of tasks at a time.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("results-{}", args.job)));
    let mut tasks = 0;
    let mut files = 0;
    let mut statuses = Vec::new();
    let mut query = TaskQuery::default();
    let state = loop {
        let d: JobDetail = client
            .get(&super::status::job_path(args.job, &query))
            .await?;
        // Each task's status is kept only to print it.
        let keep = args.json.then_some(&mut statuses);
        files += write_page(client, args.job, &d.tasks, &out, keep).await?;
        tasks += d.tasks.len();
        match d.next_offset {
            Some(next) => query.offset = next,
            None => break d.job.state,
        }
    };
    if args.json {
        super::print_json(&serde_json::json!({
            "job": args.job,
            "state": state,
            "dir": out,
            "output_files": files,
            "tasks": statuses,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {} ({state}): {tasks} task(s), {files} output file(s) written under {}",
        args.job,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Tasks whose files are fetched at once: enough to hide the round trips, few enough to be
/// gentle with the coordinator.
const TASKS_AT_ONCE: usize = 8;

/// Writes the files of a page of tasks under `out`, adding each task's status to `statuses`
/// when given; returns how many output files it wrote.
async fn write_page(
    client: &Client,
    job: u64,
    page: &[TaskView],
    out: &Path,
    statuses: Option<&mut Vec<serde_json::Value>>,
) -> anyhow::Result<usize> {
    use futures::{StreamExt, TryStreamExt};
    // Names from the coordinator become file names here: every one of the page is checked
    // before any of its files is opened, so none reaches out of its task's folder.
    for t in page {
        if let Some(r) = &t.result {
            check_names(r).with_context(|| {
                format!(
                    "task {}: the coordinator sent a result that is not safe to write",
                    t.task.id.index
                )
            })?;
        }
    }
    let written: Vec<(usize, serde_json::Value)> = futures::stream::iter(page)
        .map(|t| write_task(client, job, t, out))
        .buffered(TASKS_AT_ONCE)
        .try_collect()
        .await?;
    let files = written.iter().map(|(n, _)| n).sum();
    if let Some(statuses) = statuses {
        statuses.extend(written.into_iter().map(|(_, status)| status));
    }
    Ok(files)
}

/// Writes one task's files and status under `out/INDEX`; returns how many output files it
/// wrote and its status.
async fn write_task(
    client: &Client,
    job: u64,
    t: &TaskView,
    out: &Path,
) -> anyhow::Result<(usize, serde_json::Value)> {
    let task = &t.task;
    let index = task.id.index;
    let result = t.result.as_ref();
    let dir = out.join(index.to_string());
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut files = 0;
    if let Some(r) = result {
        for f in &r.outputs {
            fetch(client, &f.digest, &dir.join("output").join(&f.path)).await?;
            files += 1;
        }
        let single = r.modules.len() == 1;
        for m in &r.modules {
            for (stream, captured) in [("stdout", &m.stdout), ("stderr", &m.stderr)] {
                let name = if single {
                    stream.to_owned()
                } else {
                    format!("{stream}.{}", m.name)
                };
                let dest = dir.join(name);
                match captured {
                    Some(c) => fetch(client, &c.digest, &dest).await?,
                    None => write_empty(&dest).await?,
                }
            }
        }
    }
    let status = serde_json::json!({
        "job": job,
        "index": index,
        "state": task.state,
        "attempt": task.attempt,
        "agent": task.agent,
        "cause": task.cause,
        // The last result succeeded when the task did (by its modules' success exit codes and,
        // with verify, agreement); a task still running or retried after it did not.
        "succeeded": result.map(|_| task.state == lull_protocol::api::TaskState::Succeeded),
        "modules": result.map(|r| &r.modules),
        "outputs": result.map(|r| &r.outputs),
        "elapsed_ms": result.map(|r| r.elapsed_ms),
        "outputs_truncated": result.map(|r| r.outputs_truncated),
    });
    if result.is_some_and(|r| r.outputs_truncated) {
        eprintln!(
            "warning: task {index} wrote more to /output than its agent keeps; some files were dropped"
        );
    }
    let path = dir.join("status.json");
    tokio::fs::write(&path, serde_json::to_vec_pretty(&status)?)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((files, status))
}

/// Downloads the blob `digest` to `dest`; the empty one is written without asking (most
/// tasks' stderr, say).
async fn fetch(client: &Client, digest: &lull_protocol::Digest, dest: &Path) -> anyhow::Result<()> {
    if *digest == lull_protocol::Digest::of(b"") {
        return write_empty(dest).await;
    }
    client
        .download(&format!("/api/v1/blobs/{digest}"), dest)
        .await
}

async fn write_empty(dest: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    tokio::fs::write(dest, b"")
        .await
        .with_context(|| format!("writing {}", dest.display()))
}

/// Checks the names in a result that become file names: module names and output paths.
fn check_names(r: &TaskResult) -> anyhow::Result<()> {
    for m in &r.modules {
        lull_protocol::job::check_module_name(&m.name).map_err(anyhow::Error::msg)?;
    }
    for f in &r.outputs {
        lull_protocol::job::check_input_path(&f.path)
            .map_err(|e| anyhow::anyhow!("output file {:?} {e}", f.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::message::{ModuleResult, Outcome, OutputFile, TaskId};

    fn result(module: &str, output: &str) -> TaskResult {
        TaskResult {
            attempt: lull_protocol::message::AttemptId {
                task: TaskId { job: 1, index: 0 },
                attempt: 1,
            },
            modules: vec![ModuleResult {
                name: module.into(),
                outcome: Outcome::Exited { code: 0 },
                stdout: None,
                stderr: None,
            }],
            outputs: vec![OutputFile {
                path: output.into(),
                digest: lull_protocol::Digest::of(b""),
                size: 0,
            }],
            elapsed_ms: 1,
            outputs_truncated: false,
        }
    }

    #[test]
    fn names_that_would_reach_out_of_the_folder_are_refused_before_any_file_is_written() {
        assert!(check_names(&result("wc", "a/b.txt")).is_ok());
        for (module, output) in [
            ("x/../../victim", "a.txt"),
            ("..", "a.txt"),
            ("wc", "../../escape"),
            ("wc", "/etc/passwd"),
            ("wc", "a/\n/b"),
        ] {
            let err = check_names(&result(module, output))
                .unwrap_err()
                .to_string();
            let named = if module == "wc" { output } else { module };
            assert!(
                err.contains(&format!("{named:?}")),
                "{err:?} does not name {named:?}"
            );
        }
    }
}
