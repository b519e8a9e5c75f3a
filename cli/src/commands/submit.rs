//! `lull submit JOB.toml`: resolve the job file (hash every file, sign modules), upload only the
//! blobs the coordinator lacks, post the job, and optionally watch it to the end.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use lull_protocol::api::{Info, Missing, MissingRequest, Submitted};
use lull_protocol::job::{FileRef, JobFile, JobSpec, ModuleSpec, Resources};
use serde_json::json;

use crate::client::Client;

/// `lull submit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job file.
    job: PathBuf,
    /// Follow the job to its end with a progress bar; exit 0 only if every task succeeded.
    #[arg(long)]
    watch: bool,
    /// Print JSON: the job number and what was uploaded (with --watch, the job's final status).
    #[arg(long)]
    json: bool,
    /// The signing key for modules without a FILE.sig beside them.
    #[arg(long, env = "LULL_KEY")]
    key: Option<PathBuf>,
}

/// A file to upload.
struct Local {
    digest: Digest,
    path: PathBuf,
    /// Whether it is a module (rather than stdin or an input).
    module: bool,
}

/// Bytes per upload chunk.
const CHUNK: u64 = 8 << 20;

/// What the uploads of one submit did.
#[derive(Debug, Default, serde::Serialize)]
struct UploadReport {
    /// Files the job names (each distinct blob once).
    files: usize,
    /// Files the coordinator lacked, uploaded now.
    uploaded: usize,
    /// Bytes sent.
    bytes: u64,
    /// Bytes of modules sent.
    module_bytes: u64,
    /// Bytes an interrupted earlier upload had already delivered.
    resumed_bytes: u64,
}

/// Submits a job; `configured_key` is the signing key named in the user's settings file.
pub async fn run(
    client: &Client,
    args: Args,
    configured_key: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    // The job file's own mistakes come first, before the coordinator is asked anything: its
    // syntax and fields, and modules that are not there.
    let file = read_job_file(&args.job)?;
    let base = args.job.parent().unwrap_or(Path::new("."));
    for (i, m) in file.modules.iter().enumerate() {
        if let Some(rel) = &m.path {
            let path = base.join(rel);
            std::fs::metadata(&path).with_context(|| {
                format!(
                    "{}: module[{i}].path: cannot read {}",
                    args.job.display(),
                    path.display()
                )
            })?;
        }
    }
    let info: Info = client.get("/api/v1/info").await?;
    // A development cluster's key lives at a fixed local path written by `lull dev`; the
    // coordinator only says that it is one, it never names a file to sign with.
    let key_path = args.key.clone().or(configured_key).or_else(|| {
        let dev_key = super::dev::key_path();
        (info.dev && dev_key.exists()).then_some(dev_key)
    });
    let (spec, files) = resolve(&args.job, key_path.as_deref())?;

    let digests: BTreeSet<Digest> = files.iter().map(|f| f.digest).collect();
    let answer: Missing = client
        .post(
            "/api/v1/blobs/missing",
            &MissingRequest {
                digests: digests.iter().copied().collect(),
            },
        )
        .await?;
    let missing: BTreeSet<Digest> = answer.missing.into_iter().collect();
    let mut uploaded = BTreeSet::new();
    let mut report = UploadReport {
        files: digests.len(),
        ..UploadReport::default()
    };
    for f in &files {
        if missing.contains(&f.digest) && uploaded.insert(f.digest) {
            let done = client
                .upload(f.digest, &f.path, CHUNK)
                .await
                .with_context(|| format!("uploading {}", f.path.display()))?;
            report.uploaded += 1;
            report.bytes += done.sent;
            report.resumed_bytes += done.resumed_from;
            if f.module {
                report.module_bytes += done.sent;
            }
        }
    }
    let Submitted { job } = client.post("/api/v1/jobs", &spec).await?;
    if !args.watch {
        if args.json {
            super::print_json(&json!({ "job": job, "upload": report }))?;
        } else {
            let resumed = if report.resumed_bytes > 0 {
                format!(
                    ", resuming after {} sent earlier",
                    lull_protocol::units::format_size(report.resumed_bytes)
                )
            } else {
                String::new()
            };
            println!(
                "submitted job {job} ({} task{}; {} of {} file(s) uploaded, {}{resumed})\n  watch it: lull status {job} --watch\n  results:  lull results {job} -o results-{job}",
                spec.count,
                if spec.count == 1 { "" } else { "s" },
                report.uploaded,
                report.files,
                lull_protocol::units::format_size(report.bytes),
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!(
            "submitted job {job}: {} ({} task{})",
            spec.name,
            spec.count,
            if spec.count == 1 { "" } else { "s" }
        );
    }
    let detail = super::status::watch(client, job, !args.json).await?;
    if args.json {
        super::print_json(&detail)?;
    }
    Ok(super::status::exit_code(&detail))
}

/// Reads and checks a job file (not the files it names).
fn read_job_file(job_path: &Path) -> anyhow::Result<JobFile> {
    let text = std::fs::read_to_string(job_path)
        .with_context(|| format!("reading {}", job_path.display()))?;
    JobFile::parse(&text).with_context(|| format!("{}", job_path.display()))
}

/// Reads a job file and everything it names; returns the job definition and the files to upload.
fn resolve(job_path: &Path, key: Option<&Path>) -> anyhow::Result<(JobSpec, Vec<Local>)> {
    let file = read_job_file(job_path)?;
    let base = job_path.parent().unwrap_or(Path::new("."));
    let key = key.map(super::keys::load).transpose()?;
    let mut files = Vec::new();
    let mut modules = Vec::new();
    for (i, m) in file.modules.iter().enumerate() {
        let field = format!("{}: module[{i}]", job_path.display());
        let (name, digest, size, signature) = match (&m.path, &m.digest) {
            (Some(rel), _) => {
                let path = base.join(rel);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("{field}.path: cannot read {}", path.display()))?;
                lull_protocol::module_check::check(&bytes)
                    .with_context(|| format!("{field}.path: {}", path.display()))?;
                let digest = Digest::of(&bytes);
                let sig_path = PathBuf::from(format!("{}.sig", path.display()));
                let signature = if sig_path.exists() {
                    Some(
                        std::fs::read_to_string(&sig_path)
                            .with_context(|| format!("reading {}", sig_path.display()))?,
                    )
                } else if let Some(key) = &key {
                    Some(lull_protocol::signature::sign(key, &bytes)?)
                } else {
                    bail!(
                        "{field}: {} is not signed: sign it with `lull sign {} --key KEY`, or pass --key KEY (or set key in your config.toml) to sign at submit",
                        path.display(),
                        path.display()
                    );
                };
                let stem = lull_protocol::job::module_name_from(
                    &path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    &format!("module{i}"),
                );
                // Names label each module's logs, so they must differ.
                let name = if modules.iter().any(|m: &ModuleSpec| m.name == stem) {
                    format!("{stem}-{i}")
                } else {
                    stem
                };
                files.push(Local {
                    digest,
                    path,
                    module: true,
                });
                (name, digest, bytes.len() as u64, signature)
            }
            (None, Some(d)) => (format!("module{i}"), *d, 0, None),
            (None, None) => unreachable!("checked by JobFile::parse"),
        };
        let stdin = match &m.stdin {
            Some(rel) => {
                let path = base.join(rel);
                let (f, local) =
                    file_ref(&path, "stdin").with_context(|| format!("{field}.stdin"))?;
                files.push(local);
                Some(f)
            }
            None => None,
        };
        let mut inputs = Vec::new();
        let mut names = BTreeSet::new();
        for pattern in &m.inputs {
            let full = base.join(pattern);
            let full = full.to_string_lossy();
            let mut matched = 0;
            for entry in glob::glob(&full)
                .with_context(|| format!("{field}.inputs: {pattern:?} is not a valid pattern"))?
            {
                let path = entry?;
                if !path.is_file() {
                    continue;
                }
                matched += 1;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !names.insert(name.clone()) {
                    bail!(
                        "{field}.inputs: two input files are named {name:?}; /input holds files by name"
                    );
                }
                let (f, local) =
                    file_ref(&path, &name).with_context(|| format!("{field}.inputs"))?;
                files.push(local);
                inputs.push(f);
            }
            if matched == 0 {
                let shown = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base
                };
                bail!(
                    "{field}.inputs: {pattern:?} matches no file (relative to {})",
                    shown.display()
                );
            }
        }
        let mut mounts = Vec::new();
        for (j, mount) in m.mounts.iter().enumerate() {
            let dir = base.join(&mount.source);
            let at = format!("{field}.mount[{j}].source");
            if !dir.is_dir() {
                bail!("{at}: {} is not a directory", dir.display());
            }
            let mut tree = Vec::new();
            walk_tree(&dir, "", &mut tree).with_context(|| at.clone())?;
            let mut refs = Vec::with_capacity(tree.len());
            for (rel, path) in tree {
                let (f, local) = file_ref(&path, &rel).with_context(|| at.clone())?;
                files.push(local);
                refs.push(f);
            }
            mounts.push(lull_protocol::job::Mount {
                path: mount.path.clone(),
                files: refs,
            });
        }
        modules.push(ModuleSpec {
            name,
            digest,
            size,
            signature,
            args: m.args.clone(),
            env: m.env.clone(),
            stdin,
            inputs,
            success_exit_codes: m.success_exit_codes.clone(),
            env_extra: m.env_extra,
            mounts,
        });
    }
    let spec = JobSpec {
        name: file.name.clone(),
        cluster: file.cluster.clone(),
        count: file.count,
        modules,
        resources: Resources {
            memory: file.memory()?,
            timeout_ms: file.timeout()?.as_millis() as u64,
            cpu_millis: file.cpu_millis()?,
        },
        placement: file.placement.clone(),
        max_attempts: file.max_attempts()?,
        retry_on: file.retry_on(),
        priority: file.priority,
        owner: String::new(),
        verify: file.verify,
        group: file.group.clone(),
        queue_timeout_ms: file.queue_timeout()?.map(|d| d.as_millis() as u64),
        deadline_ms: file.deadline()?.map(|d| d.as_millis() as u64),
        cache: file.cache,
    };
    spec.check()?;
    Ok((spec, files))
}

/// The regular files under `dir`, with their paths relative to the top (`/`-separated),
/// sorted; a symbolic link, or a name that is not UTF-8, is an error naming it.
fn walk_tree(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            bail!("{}: the name is not UTF-8", path.display());
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if kind.is_symlink() {
            bail!(
                "{} is a symbolic link; a mounted tree holds regular files and directories",
                path.display()
            );
        } else if kind.is_dir() {
            walk_tree(&path, &rel, out)?;
        } else if kind.is_file() {
            out.push((rel, path));
        }
    }
    Ok(())
}

fn file_ref(path: &Path, name: &str) -> anyhow::Result<(FileRef, Local)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let digest = Digest::of(&bytes);
    Ok((
        FileRef {
            path: name.to_owned(),
            digest,
            size: bytes.len() as u64,
        },
        Local {
            digest,
            path: path.to_owned(),
            module: false,
        },
    ))
}
