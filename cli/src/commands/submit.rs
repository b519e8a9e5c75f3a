//! `lull submit JOB.toml`: resolve the job file (hash every file, sign modules), upload only the
//! blobs the coordinator lacks, post the job, and optionally watch it to the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use lull_protocol::api::{Info, Missing, MissingRequest, Submitted};
use lull_protocol::job::{
    FileRef, ItemFiles, Items, JobFile, JobSpec, MAX_ITEM_BYTES, ModuleSpec, Resources, TaskItem,
};
use serde_json::json;

use crate::client::Client;

/// `lull submit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job file, or a workflow file (`[[job]]` tables naming job files).
    pub(super) job: PathBuf,
    /// Follow the job to its end with a progress bar (a workflow: each job until it ends or is held
    /// for good); exit 0 only if every task succeeded.
    #[arg(long)]
    pub(super) watch: bool,
    /// Print JSON: the job number and what was uploaded (with --watch, the job's final status).
    #[arg(long)]
    pub(super) json: bool,
    /// The signing key for modules without a FILE.sig beside them.
    #[arg(long, env = "LULL_KEY")]
    pub(super) key: Option<PathBuf>,
}

/// A file to upload.
pub(super) struct Local {
    digest: Digest,
    path: PathBuf,
    /// Whether it is a module (rather than stdin or an input).
    module: bool,
}

/// Bytes per upload chunk.
const CHUNK: u64 = 8 << 20;

/// Digests per question of which blobs the coordinator lacks.
const MISSING_CHUNK: usize = 10_000;

/// A job file resolved: the job definition and the files to upload.
pub(super) struct Resolved {
    pub(super) spec: JobSpec,
    pub(super) files: Vec<Local>,
    /// The tasks' own parts, written to a temporary file that is uploaded with the rest.
    pub(super) items: Option<tempfile::NamedTempFile>,
}

/// The job file's `items` table.
struct Table {
    columns: Vec<String>,
    rows: Vec<BTreeMap<String, String>>,
}

/// Reads a CSV table with a header row naming its columns.
fn read_table(path: &Path) -> anyhow::Result<Table> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let columns: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: the header row", path.display()))?
        .iter()
        .map(|c| c.trim().to_owned())
        .collect();
    lull_protocol::job::check_columns(&columns)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), i + 1))?;
        rows.push(
            columns
                .iter()
                .cloned()
                .zip(record.iter().map(str::to_owned))
                .collect(),
        );
    }
    if rows.is_empty() {
        bail!(
            "{}: no rows under the header; each row is one task",
            path.display()
        );
    }
    Ok(Table { columns, rows })
}

/// Whether `text` has a placeholder for a task's own value: `{index}` or a column's.
fn per_task(text: &str, columns: &[String]) -> bool {
    lull_protocol::job::placeholders(text).any(|n| n == "index" || columns.iter().any(|c| c == n))
}

/// Refuses a placeholder that names neither `{index}` nor a column: in a file pattern always,
/// elsewhere when the job has a table (without one, braces in arguments stay as written).
fn check_placeholders(
    field: &str,
    text: &str,
    table: Option<&Table>,
    pattern: bool,
) -> anyhow::Result<()> {
    let columns = table.map_or(&[][..], |t| &t.columns[..]);
    if table.is_none() && !pattern {
        return Ok(());
    }
    if let Some(name) = lull_protocol::job::placeholders(text)
        .find(|n| *n != "index" && !columns.iter().any(|c| c == n))
    {
        if columns.is_empty() {
            bail!("{field}: {{{name}}} is not {{index}}, and the job has no items table");
        }
        bail!(
            "{field}: {{{name}}} is neither {{index}} nor a column of items ({})",
            columns.join(", ")
        );
    }
    Ok(())
}

/// What the uploads of one submit did.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct UploadReport {
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

/// Submits a job, or a workflow; `configured_key` is the signing key named in the user's
/// settings file.
pub async fn run(
    client: &Client,
    args: Args,
    configured_key: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.job)
        .with_context(|| format!("reading {}", args.job.display()))?;
    if lull_protocol::workflow::is_workflow(&text) {
        return super::workflow::run(client, args, configured_key).await;
    }
    // The job file's own mistakes come first, before the coordinator is asked anything: its
    // syntax and fields, and modules that are not there.
    check_job_file(&args.job)?;
    let key_path = signing_key(client, args.key.clone(), configured_key).await?;
    let Resolved {
        spec,
        files,
        items: _items,
    } = resolve(&args.job, key_path.as_deref(), None)?;
    let (job, report) = upload_and_post(client, &spec, &files).await?;
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

/// Why a mount cannot read the outputs of the workflow's job `name`.
pub(super) fn not_after(name: &str) -> String {
    format!("{name:?} is not a job this one comes after in the workflow")
}

/// Reads a job file and checks that its modules are there; returns it.
pub(super) fn check_job_file(job: &Path) -> anyhow::Result<JobFile> {
    let file = read_job_file(job)?;
    let base = job.parent().unwrap_or(Path::new("."));
    for (i, m) in file.modules.iter().enumerate() {
        if let Some(rel) = &m.path {
            let path = base.join(rel);
            std::fs::metadata(&path).with_context(|| {
                format!(
                    "{}: module[{i}].path: cannot read {}",
                    job.display(),
                    path.display()
                )
            })?;
        }
    }
    Ok(file)
}

/// The key to sign modules with: the one given, else the settings file's, else a development
/// cluster's own (the coordinator only says that it is one; it never names a file to sign
/// with).
pub(super) async fn signing_key(
    client: &Client,
    given: Option<PathBuf>,
    configured: Option<PathBuf>,
) -> anyhow::Result<Option<PathBuf>> {
    if let Some(key) = given.or(configured) {
        return Ok(Some(key));
    }
    let info: Info = client.get("/api/v1/info").await?;
    let dev_key = super::dev::key_path();
    Ok((info.dev && dev_key.exists()).then_some(dev_key))
}

/// Uploads the blobs of a resolved job that the coordinator lacks, then posts the job;
/// returns its number and what was uploaded.
pub(super) async fn upload_and_post(
    client: &Client,
    spec: &JobSpec,
    files: &[Local],
) -> anyhow::Result<(u64, UploadReport)> {
    let digests: BTreeSet<Digest> = files.iter().map(|f| f.digest).collect();
    let mut missing = BTreeSet::new();
    let listed: Vec<Digest> = digests.iter().copied().collect();
    for chunk in listed.chunks(MISSING_CHUNK) {
        let answer: Missing = client
            .post(
                "/api/v1/blobs/missing",
                &MissingRequest {
                    digests: chunk.to_vec(),
                },
            )
            .await?;
        missing.extend(answer.missing);
    }
    let mut uploaded = BTreeSet::new();
    let mut report = UploadReport {
        files: digests.len(),
        ..UploadReport::default()
    };
    for f in files {
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
    let Submitted { job } = client.post("/api/v1/jobs", spec).await?;
    Ok((job, report))
}

/// Reads and checks a job file (not the files it names).
fn read_job_file(job_path: &Path) -> anyhow::Result<JobFile> {
    let text = std::fs::read_to_string(job_path)
        .with_context(|| format!("reading {}", job_path.display()))?;
    JobFile::parse(&text).with_context(|| format!("{}", job_path.display()))
}

/// Reads a job file and everything it names; returns the job definition and the files to upload.
/// In a workflow, `parents` holds the jobs it comes after, by name: its mounts may read their
/// outputs.
pub(super) fn resolve(
    job_path: &Path,
    key: Option<&Path>,
    parents: Option<&BTreeMap<String, u64>>,
) -> anyhow::Result<Resolved> {
    let file = read_job_file(job_path)?;
    let base = job_path.parent().unwrap_or(Path::new("."));
    let key = key.map(super::keys::load).transpose()?;
    let table = match &file.items {
        Some(rel) => Some(
            read_table(&base.join(rel))
                .with_context(|| format!("{}: items", job_path.display()))?,
        ),
        None => None,
    };
    let count = match (&table, file.count) {
        (Some(t), Some(c)) if c as usize != t.rows.len() => bail!(
            "{}: count is {c}, but items has {} row(s); leave count out to run one task per row",
            job_path.display(),
            t.rows.len()
        ),
        (Some(t), _) => u32::try_from(t.rows.len()).unwrap_or(u32::MAX),
        (None, c) => c.unwrap_or(1),
    };
    let columns = table.as_ref().map_or(&[][..], |t| &t.columns[..]);
    let mut files = Vec::new();
    let mut modules = Vec::new();
    let mut after: Vec<u64> = Vec::new();
    // Per module: the patterns of the files each task has of its own (stdin, inputs).
    let mut own: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for (i, m) in file.modules.iter().enumerate() {
        let field = format!("{}: module[{i}]", job_path.display());
        for (j, a) in m.args.iter().enumerate() {
            check_placeholders(&format!("{field}.args[{j}]"), a, table.as_ref(), false)?;
        }
        for (k, v) in &m.env {
            check_placeholders(&format!("{field}.env {k:?}"), v, table.as_ref(), false)?;
        }
        for p in &m.inputs {
            check_placeholders(&format!("{field}.inputs"), p, table.as_ref(), true)?;
        }
        let own_stdin = match &m.stdin {
            Some(p) => {
                let text = p.to_string_lossy();
                check_placeholders(&format!("{field}.stdin"), &text, table.as_ref(), true)?;
                per_task(&text, columns).then(|| text.into_owned())
            }
            None => None,
        };
        let own_inputs: Vec<String> = m
            .inputs
            .iter()
            .filter(|p| per_task(p, columns))
            .cloned()
            .collect();
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
            Some(_) if own_stdin.is_some() => None,
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
        for pattern in m.inputs.iter().filter(|p| !own_inputs.contains(p)) {
            let at = format!("{field}.inputs");
            let matched = glob_inputs(&base.join(pattern), pattern, &at, &mut names, &mut files)?;
            if matched.is_empty() {
                let shown = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base
                };
                bail!(
                    "{at}: {pattern:?} matches no file (relative to {})",
                    shown.display()
                );
            }
            inputs.extend(matched);
        }
        let mut mounts = Vec::new();
        for (j, mount) in m.mounts.iter().enumerate() {
            let Some(source) = &mount.source else {
                let name = mount.job.as_deref().unwrap_or_default();
                let Some(parents) = parents else {
                    bail!(
                        "{field}.mount[{j}].job: {name:?} names a job of a workflow; submit the workflow file that holds this job"
                    );
                };
                let Some(&id) = parents.get(name) else {
                    bail!("{field}.mount[{j}].job: {}", not_after(name));
                };
                if !after.contains(&id) {
                    after.push(id);
                }
                mounts.push(lull_protocol::job::Mount {
                    path: mount.path.clone(),
                    files: Vec::new(),
                    job: Some(id),
                });
                continue;
            };
            let dir = base.join(source);
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
                job: None,
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
        own.push((own_stdin, own_inputs));
    }
    let needs_items = table.is_some() || own.iter().any(|(s, i)| s.is_some() || !i.is_empty());
    let items = if needs_items {
        Some(write_items(
            job_path,
            count,
            table.as_ref(),
            &own,
            &modules,
            &mut files,
        )?)
    } else {
        None
    };
    let spec = JobSpec {
        name: file.name.clone(),
        cluster: file.cluster.clone(),
        count,
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
        items: items.as_ref().map(|(_, digest, size)| Items {
            digest: *digest,
            size: *size,
            columns: columns.to_vec(),
        }),
        after,
    };
    spec.check()?;
    Ok(Resolved {
        spec,
        files,
        items: items.map(|(temp, _, _)| temp),
    })
}

/// Writes each task's own part (its row of the table, its own stdin and input files) as one
/// line of JSON to a temporary file, which is added to `files`; returns it with its digest
/// and size. Errors name the module, the pattern and the task.
fn write_items(
    job_path: &Path,
    count: u32,
    table: Option<&Table>,
    own: &[(Option<String>, Vec<String>)],
    modules: &[ModuleSpec],
    files: &mut Vec<Local>,
) -> anyhow::Result<(tempfile::NamedTempFile, Digest, u64)> {
    use std::io::Write;
    let base = job_path.parent().unwrap_or(Path::new("."));
    let no_values = BTreeMap::new();
    let mut temp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
    let mut out = std::io::BufWriter::new(temp.as_file_mut());
    let with_files = own.iter().any(|(s, i)| s.is_some() || !i.is_empty());
    for index in 0..count {
        let values = table.map_or(&no_values, |t| &t.rows[index as usize]);
        let mut item = TaskItem {
            values: values.clone(),
            modules: Vec::new(),
        };
        for (i, ((stdin, inputs), m)) in own.iter().zip(modules).enumerate() {
            let field = format!("{}: module[{i}]", job_path.display());
            let mut mine = ItemFiles::default();
            if let Some(pattern) = stdin {
                let path = base.join(lull_protocol::job::expand(pattern, index, values));
                let (f, local) = file_ref(&path, "stdin")
                    .with_context(|| format!("{field}.stdin {pattern:?} for task {index}"))?;
                files.push(local);
                mine.stdin = Some(f);
            }
            let mut names: BTreeSet<String> = m.inputs.iter().map(|f| f.path.clone()).collect();
            for pattern in inputs {
                let expanded = lull_protocol::job::expand(pattern, index, values);
                let at = format!("{field}.inputs {pattern:?} for task {index}");
                let full = base.join(&expanded);
                let matched = glob_inputs(&full, &expanded, &at, &mut names, files)?;
                if matched.is_empty() {
                    bail!("{at}: {} matches no file", full.display());
                }
                mine.inputs.extend(matched);
            }
            if with_files {
                item.modules.push(mine);
            }
        }
        let bytes = lull_protocol::job::json_len(&item);
        if bytes > MAX_ITEM_BYTES {
            bail!(
                "{}: task {index} takes {bytes} bytes of values and file names; the most is {MAX_ITEM_BYTES}",
                job_path.display()
            );
        }
        serde_json::to_writer(&mut out, &item)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    let (f, local) = file_ref(temp.path(), "items")?;
    files.push(local);
    Ok((temp, f.digest, f.size))
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

/// The regular files the glob `full` matches, each seen under `/input` by its file name (which
/// must be new to `names`), hashed and added to `files` to upload. Errors start with `at` and
/// show the glob as `shown`.
fn glob_inputs(
    full: &Path,
    shown: &str,
    at: &str,
    names: &mut BTreeSet<String>,
    files: &mut Vec<Local>,
) -> anyhow::Result<Vec<FileRef>> {
    let mut refs = Vec::new();
    for entry in glob::glob(&full.to_string_lossy())
        .with_context(|| format!("{at}: {shown:?} is not a valid pattern"))?
    {
        let path = entry?;
        if !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !names.insert(name.clone()) {
            bail!("{at}: two input files are named {name:?}; /input holds files by name");
        }
        let (f, local) = file_ref(&path, &name).with_context(|| at.to_owned())?;
        files.push(local);
        refs.push(f);
    }
    Ok(refs)
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
