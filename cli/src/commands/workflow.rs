//! `lull submit WORKFLOW.toml`: the jobs of a workflow file, each submitted to start when the
//! jobs it comes after have succeeded (the coordinator holds it until then).
//!
//! A run is recorded beside the file (`NAME.run.json`: each job's number and a digest of its
//! definition). Submitting the workflow again keeps each job of the recorded run that
//! succeeded, or still waits or runs, when its definition is the same (and so, through the
//! digest, the jobs it comes after were kept too); the others are submitted anew, and a job of
//! the earlier run that they replace and that had not ended is cancelled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use lull_protocol::Digest;
use lull_protocol::api::{JobDetail, JobState};
use lull_protocol::job::JobSpec;
use lull_protocol::workflow::WorkflowFile;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::submit::{Args, Resolved};
use crate::client::Client;

/// What a run of a workflow left beside its file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunRecord {
    /// The workflow's name.
    workflow: String,
    /// The coordinator its jobs were submitted to: job numbers mean nothing elsewhere.
    coordinator: String,
    /// Each job of the workflow, by name.
    jobs: BTreeMap<String, RunJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunJob {
    /// Its number.
    job: u64,
    /// The digest of its definition as submitted.
    key: Digest,
    /// When the coordinator accepted it: a job of that number accepted at another time (a
    /// coordinator started afresh at the same address) is another job.
    created_ms: i64,
}

/// What became of one job of the workflow in this submission.
#[derive(Debug, Serialize)]
struct Step {
    name: String,
    job: u64,
    /// Whether the earlier run's job was kept.
    kept: bool,
    /// The earlier run's job it replaced and cancelled, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced: Option<u64>,
}

/// Where the run of the workflow file `file` is recorded.
fn record_path(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workflow".into());
    file.with_file_name(format!("{stem}.run.json"))
}

/// What a job's definition is, as one digest: the same job file with the same files, after
/// the same jobs, has the same key (signatures are left out: they may differ run to run).
fn definition_key(spec: &JobSpec) -> anyhow::Result<Digest> {
    let mut unsigned = spec.clone();
    for m in &mut unsigned.modules {
        m.signature = None;
    }
    Ok(Digest::of(&serde_json::to_vec(&unsigned)?))
}

/// Submits a workflow file.
pub async fn run(
    client: &Client,
    args: Args,
    configured_key: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let path = args.job.clone();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let workflow = WorkflowFile::parse(&text).with_context(|| format!("{}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    // Each job file's own mistakes first, before anything is submitted.
    for (i, step) in workflow.jobs.iter().enumerate() {
        let at = || format!("{}: job[{i}] ({})", path.display(), step.name);
        let file = super::submit::check_job_file(&base.join(&step.file)).with_context(at)?;
        for (m, module) in file.modules.iter().enumerate() {
            for (j, mount) in module.mounts.iter().enumerate() {
                if let Some(name) = mount.job.as_deref()
                    && !step.after.iter().any(|a| a == name)
                {
                    anyhow::bail!(
                        "{}: {}: module[{m}].mount[{j}].job: {}",
                        at(),
                        step.file.display(),
                        super::submit::not_after(name)
                    );
                }
            }
        }
    }
    let key = super::submit::signing_key(client, args.key.clone(), configured_key).await?;
    let record_at = record_path(&path);
    let earlier = read_record(&record_at, &workflow.name, client.base());
    let mut record = RunRecord {
        workflow: workflow.name.clone(),
        coordinator: client.base().to_owned(),
        jobs: BTreeMap::new(),
    };
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut steps = Vec::new();
    for i in workflow.order()? {
        let step = &workflow.jobs[i];
        let file = base.join(&step.file);
        let at = || {
            format!(
                "{}: job {:?} ({})",
                path.display(),
                step.name,
                file.display()
            )
        };
        // Its mounts may read the outputs of the jobs it comes after, and only those.
        let parents: BTreeMap<String, u64> =
            step.after.iter().map(|n| (n.clone(), ids[n])).collect();
        let Resolved {
            mut spec,
            files,
            items: _items,
        } = super::submit::resolve(&file, key.as_deref(), Some(&parents)).with_context(at)?;
        for id in parents.values() {
            if !spec.after.contains(id) {
                spec.after.push(*id);
            }
        }
        spec.check().with_context(at)?;
        let digest = definition_key(&spec)?;
        let before = earlier
            .as_ref()
            .and_then(|r| r.jobs.get(&step.name))
            .cloned();
        let previous = match &before {
            Some(b) => job_state(client, b).await?,
            None => None,
        };
        let keep = match (&before, previous) {
            (Some(b), Some(state)) => b.key == digest && state_kept(state),
            _ => false,
        };
        let (job, created_ms, kept, replaced) = if keep {
            let b = before.expect("kept");
            (b.job, b.created_ms, true, None)
        } else {
            // An earlier job this one replaces does not go on waiting or running.
            let replaced = match (&before, previous) {
                (Some(b), Some((state, _))) if !state.is_final() => {
                    let _: serde_json::Value = client
                        .post_empty(&format!("/api/v1/jobs/{}/cancel", b.job))
                        .await
                        .with_context(|| {
                            format!("cancelling job {}, which {} replaces", b.job, step.name)
                        })?;
                    Some(b.job)
                }
                _ => None,
            };
            let (job, _) = super::submit::upload_and_post(client, &spec, &files)
                .await
                .with_context(at)?;
            let detail: JobDetail = client.get(&format!("/api/v1/jobs/{job}?limit=0")).await?;
            (job, detail.job.created_ms, false, replaced)
        };
        ids.insert(step.name.clone(), job);
        record.jobs.insert(
            step.name.clone(),
            RunJob {
                job,
                key: digest,
                created_ms,
            },
        );
        // Written after each job, so that a submission cut short keeps what it did.
        write_record(&record_at, &record)?;
        if !args.json {
            let parents: Vec<String> = step
                .after
                .iter()
                .map(|n| format!("{n} (job {})", ids[n]))
                .collect();
            let what = if kept {
                format!("job {job}, kept from the earlier run")
            } else {
                format!(
                    "submitted job {job} ({} task{})",
                    spec.count,
                    if spec.count == 1 { "" } else { "s" }
                )
            };
            let after = if parents.is_empty() {
                String::new()
            } else {
                format!(", after {}", parents.join(", "))
            };
            let replaced = replaced
                .map(|r| format!("; cancelled job {r} of the earlier run"))
                .unwrap_or_default();
            println!("{}: {what}{after}{replaced}", step.name);
        }
        steps.push(Step {
            name: step.name.clone(),
            job,
            kept,
            replaced,
        });
    }
    if !args.json {
        println!(
            "recorded in {} (submitting {} again keeps what succeeded)",
            record_at.display(),
            path.display()
        );
    }
    if !args.watch {
        if args.json {
            super::print_json(&json!({ "workflow": workflow.name, "jobs": steps }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let states = watch_all(client, &steps, !args.json).await?;
    if args.json {
        let jobs: Vec<_> = steps
            .iter()
            .zip(&states)
            .map(|(s, (state, hold))| json!({ "name": s.name, "job": s.job, "kept": s.kept, "state": state, "hold": hold }))
            .collect();
        super::print_json(&json!({ "workflow": workflow.name, "jobs": jobs }))?;
    }
    Ok(if states.iter().all(|(s, _)| *s == JobState::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_JOB_FAILED)
    })
}

/// Whether a job of an earlier run is kept: it succeeded, or has not ended (a held one
/// included, unless it is held for good).
fn state_kept((state, held_for_good): (JobState, bool)) -> bool {
    !held_for_good
        && matches!(
            state,
            JobState::Succeeded | JobState::Pending | JobState::Running | JobState::Held
        )
}

/// The state of an earlier run's job, and whether it is held for good; `None` when it is
/// gone (deleted, or another job has its number).
async fn job_state(client: &Client, earlier: &RunJob) -> anyhow::Result<Option<(JobState, bool)>> {
    let detail: Option<JobDetail> = client
        .get_optional(&format!("/api/v1/jobs/{}?limit=0", earlier.job))
        .await?;
    Ok(detail
        .filter(|d| d.job.created_ms == earlier.created_ms)
        .map(|d| (d.job.state, d.hold.is_some())))
}

/// The earlier run, if it is of this workflow on this coordinator.
fn read_record(path: &Path, workflow: &str, coordinator: &str) -> Option<RunRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<RunRecord>(&text) {
        Ok(r) if r.workflow == workflow && r.coordinator == coordinator => Some(r),
        Ok(_) => None,
        Err(e) => {
            eprintln!(
                "note: {} cannot be read ({e}); every job is submitted anew",
                path.display()
            );
            None
        }
    }
}

fn write_record(path: &Path, record: &RunRecord) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Follows the workflow's jobs until each has ended or is held for good, printing each
/// change of state when `show`; returns their final states (with why each held one is).
async fn watch_all(
    client: &Client,
    steps: &[Step],
    show: bool,
) -> anyhow::Result<Vec<(JobState, Option<String>)>> {
    let mut shown: Vec<Option<(JobState, u64)>> = vec![None; steps.len()];
    loop {
        let mut states = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let d: JobDetail = client
                .get(&format!("/api/v1/jobs/{}?limit=0", step.job))
                .await?;
            let c = d.job.counts;
            let done = c.succeeded + c.failed + c.cancelled;
            if show && shown[i] != Some((d.job.state, done)) {
                let why = match (&d.hold, d.job.state) {
                    (Some(why), _) => format!(" for good: {why}"),
                    (None, JobState::Held) => " until the jobs it comes after succeed".into(),
                    _ => String::new(),
                };
                eprintln!(
                    "{} (job {}): {}{why}, {done}/{} task(s) ended",
                    step.name, step.job, d.job.state, d.job.count
                );
                shown[i] = Some((d.job.state, done));
            }
            states.push((d.job.state, d.hold));
        }
        if states
            .iter()
            .all(|(s, hold)| s.is_final() || hold.is_some())
        {
            return Ok(states);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
