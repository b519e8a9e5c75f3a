//! Jobs: the job file a submitter writes, and the resolved definition a coordinator stores.
//!
//! A [`JobFile`] is what `job.toml` says, with paths relative to the file. The `lull` command
//! resolves it into a [`JobSpec`]: every file replaced by its digest and size, every default
//! filled in, everything checked. The coordinator stores `JobSpec`s and sends them to agents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::units::{self, UnitError};

/// The most tasks one array job may have.
pub const MAX_COUNT: u32 = 1_000_000;
/// The most memory a task may ask for: what a 32-bit WebAssembly memory can address.
pub const MAX_MEMORY: u64 = 4 << 30;
/// Memory a task gets when its job file does not say.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Wall time (not counting pauses) a task gets when its job file does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest wall-time limit a task may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);
/// Attempts a task gets when its job file does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// CPU a task reserves when its job file does not say, in thousandths of a core: a tenth, so
/// that an agent's slots, not its cores, bound how many such tasks it runs.
pub const DEFAULT_CPU_MILLIS: u32 = 100;
/// The most CPU a task may reserve: 1024 cores.
pub const MAX_CPU_MILLIS: u32 = 1024 * 1000;

/// The most modules one task may have.
pub const MAX_MODULES: usize = 16;
/// The longest module name, in bytes.
pub const MAX_MODULE_NAME: usize = 64;
/// The longest job name, in bytes.
pub const MAX_JOB_NAME: usize = 256;
/// The most arguments one module may have.
pub const MAX_ARGS: usize = 4096;
/// The most environment variables one module may have.
pub const MAX_ENV: usize = 1024;
/// The most input files one module may have.
pub const MAX_INPUTS: usize = 10_000;
/// The most placement constraints a job may have.
pub const MAX_CONSTRAINTS: usize = 64;
/// The longest path of an input or output file, in bytes.
pub const MAX_PATH: usize = 512;
/// The most bytes a job definition may take as JSON: a quarter of a frame, so that an
/// assignment carrying it always fits in one frame with room to spare.
pub const MAX_SPEC_BYTES: usize = crate::frame::DEFAULT_MAX_FRAME / 4;

/// Why a job file or job definition is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file is not valid TOML or does not fit the schema; the message names line and column.
    #[error("{0}")]
    Syntax(String),
    /// A field has a value outside what Lull accepts.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `count` or `module[0].path`.
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// A size or duration could not be read.
    #[error("{field}: {reason}")]
    Unit {
        /// The field, e.g. `resources.memory`.
        field: String,
        /// What was wrong with it.
        reason: UnitError,
    },
}

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> JobError {
    JobError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// A job file, as written (`job.toml`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// A name for people; need not be unique.
    pub name: String,
    /// The cluster whose agents run it [default: `default`].
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Number of tasks in an array job (task indexes `0..count`) [default: the rows of `items`,
    /// or 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// A CSV table with a header row: task `i` takes row `i`, whose values replace `{column}` in
    /// arguments, environment values, `stdin` and `inputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<PathBuf>,
    /// The modules started together for each task.
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleFile>,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourcesFile,
    /// Where tasks may run.
    #[serde(default)]
    pub placement: Placement,
    /// What happens when a task fails.
    #[serde(default)]
    pub retry: RetryFile,
    /// Among the submitter's own jobs, higher goes first [default: 0, from -1000 to 1000].
    /// Between users, fair share decides.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Run each task on this many distinct agents (of different owners where possible) and
    /// accept its result only when their results agree, bit for bit [default: 1, at most
    /// [`MAX_VERIFY`]]. Such tasks run deterministically; see [`JobSpec::verify`].
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub verify: u32,
    /// The group whose quota the job counts against (HTCondor's accounting group): one of the
    /// groups of the submitter's token [default: the token's first group, if it has any].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How long a task may wait for an agent, e.g. `1h`: one still pending that long (since
    /// the job was submitted, or since its last attempt ended) fails, saying why it waited
    /// [default: no limit].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// How long after submission the whole job must be done, e.g. `12h`: then its unfinished
    /// tasks fail, running ones stopped [default: no limit].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Take a task's result from an earlier succeeded task with the same modules, arguments,
    /// environment and input contents, instead of running it; and offer this job's results
    /// to later jobs that cache [default: false].
    #[serde(default, skip_serializing_if = "is_false")]
    pub cache: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The most agents a job may ask to agree on each task's result (`verify`).
pub const MAX_VERIFY: u32 = 8;

fn check_verify(verify: u32) -> Result<(), JobError> {
    if !(1..=MAX_VERIFY).contains(&verify) {
        return Err(invalid(
            "verify",
            format!("must be from 1 (run each task once) to {MAX_VERIFY}"),
        ));
    }
    Ok(())
}

/// A duration of a job file that may be left out: more than zero, at most [`MAX_TIMEOUT`].
fn optional_limit(field: &str, text: Option<&str>) -> Result<Option<Duration>, JobError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = units::parse_duration(text).map_err(|reason| JobError::Unit {
        field: field.into(),
        reason,
    })?;
    check_limit_ms(field, Some(d.as_millis().try_into().unwrap_or(u64::MAX)))?;
    Ok(Some(d))
}

fn check_limit_ms(field: &str, ms: Option<u64>) -> Result<(), JobError> {
    match ms {
        Some(0) => Err(invalid(field, "must be longer than zero")),
        Some(ms) if u128::from(ms) > MAX_TIMEOUT.as_millis() => Err(invalid(
            field,
            format!("must be at most {} days", MAX_TIMEOUT.as_secs() / 86_400),
        )),
        _ => Ok(()),
    }
}

fn check_group(group: Option<&str>) -> Result<(), JobError> {
    match group {
        Some(g) => crate::api::check_group_name(g).map_err(|e| invalid("group", e)),
        None => Ok(()),
    }
}

/// The highest job priority (and, negated, the lowest).
pub const MAX_PRIORITY: i32 = 1000;

fn check_priority(priority: i32) -> Result<(), JobError> {
    if priority.abs() > MAX_PRIORITY {
        return Err(invalid(
            "priority",
            format!("must be from -{MAX_PRIORITY} to {MAX_PRIORITY}"),
        ));
    }
    Ok(())
}

fn one() -> u32 {
    1
}

/// The cluster a job or agent belongs to when nothing says otherwise.
pub const DEFAULT_CLUSTER: &str = "default";

fn default_cluster() -> String {
    DEFAULT_CLUSTER.to_owned()
}

/// Checks a cluster's ID: 1 to 63 lower-case letters, digits and `-`, starting with a letter
/// or digit.
pub fn check_cluster_id(id: &str) -> Result<(), NameError> {
    let ok = (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::ClusterId(id.to_owned()))
    }
}

/// One `[[module]]` of a job file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModuleFile {
    /// The `.wasm` file, relative to the job file.
    pub path: Option<PathBuf>,
    /// Or a module the coordinator already holds, by digest.
    pub digest: Option<Digest>,
    /// Arguments; `{index}` is replaced by the task index, `{column}` by the task's value in
    /// the `items` table.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables; `{index}` and `{column}` in a value are replaced as in `args`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A file fed to the guest's standard input; with `{index}` or `{column}` in it, each task
    /// reads its own.
    pub stdin: Option<PathBuf>,
    /// Globs of files (relative to the job file) visible read-only under `/input`; a pattern
    /// with `{index}` or `{column}` in it gives each task its own files.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Exit codes that mean success [default: `[0]`]: a solver exiting 10 for "sat" and 20 for
    /// "unsat" lists `[0, 10, 20]`.
    #[serde(default = "success_codes", skip_serializing_if = "is_default_success")]
    pub success_exit_codes: Vec<i32>,
    /// Whether the guest also sees the `LULL_*` variables (its task's index, the job's size,
    /// ...) besides `env` [default: true]; `false` gives it exactly `env`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub env_extra: bool,
    /// Directory trees made visible read-only at paths of their own (`[[module.mount]]`);
    /// one at `/scratch` seeds the task's scratch space, which stays writable.
    #[serde(default, rename = "mount", skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountFile>,
}

/// One `[[module.mount]]` of a job file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MountFile {
    /// The directory, relative to the job file: its whole tree is uploaded (as content-addressed
    /// files) and kept as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Or, in a workflow, the job (by its name in the workflow) whose outputs are seen here,
    /// each task's under its index: `PATH/3/counts.txt`. The job comes after that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where the guest sees it, e.g. `/share`; `/scratch` seeds the scratch space.
    pub path: String,
}

/// A directory tree a module sees at a path of its own.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// Where the guest sees it: absolute, e.g. `/share`.
    pub path: String,
    /// Its files, by path relative to the mount (`/`-separated, subdirectories kept).
    pub files: Vec<FileRef>,
    /// For a tree of another job's outputs: that job, one of [`JobSpec::after`]. Its files are
    /// filled in by the coordinator when that job has succeeded (each task's outputs under its
    /// index); empty until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
}

/// The most files the mounts of one module may hold together.
pub const MAX_MOUNT_FILES: usize = 10_000;

/// Where a mount at `/scratch` goes: the task's scratch space, seeded with its files.
pub const SCRATCH_MOUNT: &str = "/scratch";

/// Checks where a mount is seen: an absolute path of plain parts, not `/`, and not `/input`,
/// `/output` or inside `/scratch` (only `/scratch` itself, which seeds it).
pub fn check_mount_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} must be absolute, e.g. \"/share\""));
    };
    if rest.is_empty() {
        return Err("\"/\" cannot be mounted over; name a directory, e.g. \"/share\"".into());
    }
    check_input_path(rest).map_err(|e| format!("{path:?} {e}"))?;
    let first = rest.split('/').next().unwrap_or_default();
    match (first, rest.contains('/')) {
        ("input" | "output", _) => Err(format!(
            "{path:?}: /input and /output are the task's own; mount elsewhere"
        )),
        ("scratch", true) => Err(format!(
            "{path:?}: inside /scratch; mount at /scratch itself to seed it"
        )),
        _ => Ok(()),
    }
}

fn check_mounts(field: &str, mounts: &[(&str, Option<&[FileRef]>)]) -> Result<(), JobError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut files = 0;
    for (i, (path, tree)) in mounts.iter().enumerate() {
        let at = format!("{field}.mount[{i}].path");
        check_mount_path(path).map_err(|e| invalid(&at, e))?;
        if let Some(other) = seen.iter().find(|p| {
            **p == *path || path.starts_with(&format!("{p}/")) || p.starts_with(&format!("{path}/"))
        }) {
            return Err(invalid(
                at,
                format!("{path:?} overlaps the mount at {other:?}"),
            ));
        }
        seen.push(path);
        for f in tree.unwrap_or_default() {
            check_input_path(&f.path)
                .map_err(|e| invalid(format!("{field}.mount[{i}] file {:?}", f.path), e))?;
        }
        files += tree.map_or(0, |t| t.len());
    }
    if files > MAX_MOUNT_FILES {
        return Err(invalid(
            format!("{field}.mount"),
            format!("holds {files} files; the most is {MAX_MOUNT_FILES}"),
        ));
    }
    Ok(())
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `[resources]` of a job file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    /// Hard cap on the guest's linear memory, e.g. `256MiB`.
    pub memory: Option<String>,
    /// Wall time while running, e.g. `30m`; pauses do not count.
    pub timeout: Option<String>,
    /// Cores the task keeps busy, e.g. `0.5` or `2`, which the scheduler reserves on its agent.
    pub cpu: Option<f64>,
}

/// `[retry]` of a job file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts per task, including the first.
    pub max_attempts: Option<u32>,
    /// The failures that are tried again while attempts are left [default: `["timeout",
    /// "disk", "agent"]`: those a different agent or time may not repeat].
    pub on: Option<Vec<Failure>>,
}

/// A kind of failed attempt, for `retry.on`: whether trying again may help.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// A module exited with a code not in its `success_exit_codes`.
    Exit,
    /// A module trapped (a panic, `unreachable`, an out-of-bounds access, the stack).
    Trap,
    /// A module reached the job's memory cap.
    Memory,
    /// A module ran past the job's timeout.
    Timeout,
    /// The task's files outgrew its agent's disk cap (agents' caps differ).
    Disk,
    /// The agent: it refused the task, could not report its result, or stopped reporting.
    Agent,
}

impl Failure {
    /// Every kind, in the order they are listed.
    pub const ALL: [Failure; 6] = [
        Failure::Exit,
        Failure::Trap,
        Failure::Memory,
        Failure::Timeout,
        Failure::Disk,
        Failure::Agent,
    ];

    /// Its name in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Exit => "exit",
            Failure::Trap => "trap",
            Failure::Memory => "memory",
            Failure::Timeout => "timeout",
            Failure::Disk => "disk",
            Failure::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failures tried again when a job does not say (`retry.on`): those another agent or
/// another moment may not repeat. A program's own exit code, trap or memory use are the same
/// on the same inputs, so they are not, unless the job lists them.
pub const DEFAULT_RETRY_ON: [Failure; 3] = [Failure::Timeout, Failure::Disk, Failure::Agent];

fn default_retry_on() -> Vec<Failure> {
    DEFAULT_RETRY_ON.to_vec()
}

fn is_default_retry_on(on: &Vec<Failure>) -> bool {
    *on == default_retry_on()
}

/// The exit codes that mean success when a module does not say.
pub const DEFAULT_SUCCESS_EXIT_CODES: [i32; 1] = [0];

/// The most exit codes one module may list as success.
pub const MAX_SUCCESS_EXIT_CODES: usize = 64;

fn success_codes() -> Vec<i32> {
    DEFAULT_SUCCESS_EXIT_CODES.to_vec()
}

fn is_default_success(codes: &Vec<i32>) -> bool {
    codes.as_slice() == DEFAULT_SUCCESS_EXIT_CODES
}

fn check_success_codes(field: &str, codes: &[i32]) -> Result<(), JobError> {
    if codes.is_empty() {
        return Err(invalid(
            field,
            "must list at least one exit code (the default is [0])",
        ));
    }
    check_len(field, codes.len(), MAX_SUCCESS_EXIT_CODES)
}

fn check_retry_on(on: &[Failure]) -> Result<(), JobError> {
    let mut seen = std::collections::BTreeSet::new();
    for f in on {
        if !seen.insert(*f) {
            return Err(invalid("retry.on", format!("{f} is listed twice")));
        }
    }
    Ok(())
}

/// How the scheduler chooses among agents that fit.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The fullest agent that still fits.
    Binpack,
    /// The emptiest agent.
    #[default]
    Spread,
    /// Any agent that fits, at random.
    Random,
}

/// `[placement]` of a job file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The strategy; `spread` by default.
    #[serde(default)]
    pub strategy: Strategy,
    /// Constraints over agent labels and attributes, e.g. `os == linux` (see
    /// [`crate::constraint`]).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// With the `spread` strategy: spread over the values of this attribute (e.g.
    /// `label.site`) instead of over agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
}

impl Placement {
    /// Checks the constraints and the spread attribute.
    pub fn check(&self) -> Result<(), JobError> {
        for (i, c) in self.constraints.iter().enumerate() {
            c.parse::<crate::constraint::Constraint>()
                .map_err(|e| invalid(format!("placement.constraints[{i}]"), e.to_string()))?;
        }
        if let Some(attr) = &self.spread {
            attr.parse::<crate::constraint::Attribute>()
                .map_err(|e| invalid("placement.spread", e))?;
            if self.strategy != Strategy::Spread {
                return Err(invalid(
                    "placement.spread",
                    "applies only to strategy = \"spread\"",
                ));
            }
        }
        Ok(())
    }
}

impl JobFile {
    /// Parses and checks a job file's text. Errors name the line and column, or the field.
    pub fn parse(text: &str) -> Result<Self, JobError> {
        let file: JobFile = toml::from_str(text).map_err(|e| JobError::Syntax(e.to_string()))?;
        file.check()?;
        Ok(file)
    }

    /// Checks the values that do not depend on files: counts, sizes, durations, module sources.
    pub fn check(&self) -> Result<(), JobError> {
        check_job_name(&self.name)?;
        if let Some(count) = self.count {
            check_count(count)?;
        }
        check_priority(self.priority)?;
        check_verify(self.verify)?;
        check_group(self.group.as_deref())?;
        check_cluster_id(&self.cluster).map_err(|e| invalid("cluster", e))?;
        if self.modules.is_empty() {
            return Err(invalid(
                "module",
                "a job needs at least one [[module]] with a path or digest",
            ));
        }
        check_len("module", self.modules.len(), MAX_MODULES)?;
        check_len(
            "placement.constraints",
            self.placement.constraints.len(),
            MAX_CONSTRAINTS,
        )?;
        for (i, m) in self.modules.iter().enumerate() {
            check_invocation(&format!("module[{i}]"), &m.args, &m.env)?;
            check_success_codes(
                &format!("module[{i}].success_exit_codes"),
                &m.success_exit_codes,
            )?;
            let mounts: Vec<(&str, Option<&[FileRef]>)> =
                m.mounts.iter().map(|m| (m.path.as_str(), None)).collect();
            check_mounts(&format!("module[{i}]"), &mounts)?;
            for (j, mount) in m.mounts.iter().enumerate() {
                if mount.source.is_some() == mount.job.is_some() {
                    return Err(invalid(
                        format!("module[{i}].mount[{j}]"),
                        "give either source (a directory) or job (a job of the workflow), not both",
                    ));
                }
            }
            match (&m.path, &m.digest) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        format!("module[{i}]"),
                        "give either path or digest, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(format!("module[{i}]"), "needs a path or a digest"));
                }
                _ => {}
            }
        }
        self.memory()?;
        self.timeout()?;
        self.cpu_millis()?;
        self.max_attempts()?;
        self.queue_timeout()?;
        self.deadline()?;
        check_retry_on(&self.retry_on())?;
        self.placement.check()?;
        Ok(())
    }

    /// How long a task may wait for an agent, if the job limits it.
    pub fn queue_timeout(&self) -> Result<Option<Duration>, JobError> {
        optional_limit("queue_timeout", self.queue_timeout.as_deref())
    }

    /// How long after submission the job must be done, if it says.
    pub fn deadline(&self) -> Result<Option<Duration>, JobError> {
        optional_limit("deadline", self.deadline.as_deref())
    }

    /// The failures tried again ([`DEFAULT_RETRY_ON`] unless `retry.on` says).
    pub fn retry_on(&self) -> Vec<Failure> {
        self.retry.on.clone().unwrap_or_else(default_retry_on)
    }

    /// The CPU reserved per task, in thousandths of a core.
    pub fn cpu_millis(&self) -> Result<u32, JobError> {
        let Some(cores) = self.resources.cpu else {
            return Ok(DEFAULT_CPU_MILLIS);
        };
        let millis = (cores * 1000.0).round();
        if !cores.is_finite() || millis < 1.0 || millis > f64::from(MAX_CPU_MILLIS) {
            return Err(invalid(
                "resources.cpu",
                format!("{cores} cores: must be between 0.001 and 1024"),
            ));
        }
        Ok(millis as u32)
    }

    /// The memory cap in bytes.
    pub fn memory(&self) -> Result<u64, JobError> {
        let Some(text) = &self.resources.memory else {
            return Ok(DEFAULT_MEMORY);
        };
        let bytes = units::parse_size(text).map_err(|reason| JobError::Unit {
            field: "resources.memory".into(),
            reason,
        })?;
        check_memory(bytes)?;
        Ok(bytes)
    }

    /// The wall-time limit.
    pub fn timeout(&self) -> Result<Duration, JobError> {
        let Some(text) = &self.resources.timeout else {
            return Ok(DEFAULT_TIMEOUT);
        };
        let d = units::parse_duration(text).map_err(|reason| JobError::Unit {
            field: "resources.timeout".into(),
            reason,
        })?;
        if d < Duration::from_millis(1) {
            return Err(invalid("resources.timeout", "must be at least 1ms"));
        }
        if d > MAX_TIMEOUT {
            return Err(invalid(
                "resources.timeout",
                format!("must be at most {} days", MAX_TIMEOUT.as_secs() / 86_400),
            ));
        }
        Ok(d)
    }

    /// Attempts per task.
    pub fn max_attempts(&self) -> Result<u32, JobError> {
        let n = self.retry.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=100).contains(&n) {
            return Err(invalid("retry.max_attempts", "must be between 1 and 100"));
        }
        Ok(n)
    }
}

/// Checks a job's name: not blank, at most [`MAX_JOB_NAME`] bytes, no control characters (it is
/// printed in people's terminals).
fn check_job_name(name: &str) -> Result<(), JobError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_JOB_NAME {
        return Err(invalid(
            "name",
            format!("is {} bytes; the most is {MAX_JOB_NAME}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(())
}

/// Checks that a list has at most `max` entries.
fn check_len(field: &str, len: usize, max: usize) -> Result<(), JobError> {
    if len > max {
        return Err(invalid(
            field,
            format!("has {len} entries; the most is {max}"),
        ));
    }
    Ok(())
}

/// Checks a module's arguments and environment: bounded counts, no NUL, variable names without
/// `=`.
fn check_invocation(
    field: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), JobError> {
    check_len(&format!("{field}.args"), args.len(), MAX_ARGS)?;
    check_len(&format!("{field}.env"), env.len(), MAX_ENV)?;
    for (j, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(invalid(
                format!("{field}.args[{j}]"),
                "must not contain a NUL character",
            ));
        }
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(invalid(
                format!("{field}.env {k:?}"),
                "a variable name must not be empty or contain = or NUL",
            ));
        }
        if v.contains('\0') {
            return Err(invalid(
                format!("{field}.env {k:?}"),
                "the value must not contain a NUL character",
            ));
        }
    }
    Ok(())
}

/// Checks a module's name, which names its log files on the submitter's disk: 1 to
/// [`MAX_MODULE_NAME`] ASCII letters, digits, `.`, `_` and `-`, not starting with `.` (so never
/// `.` or `..`, and never a path).
pub fn check_module_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=MAX_MODULE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(NameError::ModuleName(name.to_owned()))
    }
}

/// A module name made from a file's stem: the characters a name may not hold become `-`, a
/// leading `.` is dropped, and it is cut to [`MAX_MODULE_NAME`]; `fallback` when nothing is
/// left.
pub fn module_name_from(stem: &str, fallback: &str) -> String {
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned: String = cleaned
        .trim_start_matches('.')
        .chars()
        .take(MAX_MODULE_NAME)
        .collect();
    if cleaned.is_empty() {
        fallback.to_owned()
    } else {
        cleaned
    }
}

fn check_count(count: u32) -> Result<(), JobError> {
    if count == 0 {
        return Err(invalid(
            "count",
            "must be at least 1 (it is the number of tasks)",
        ));
    }
    if count > MAX_COUNT {
        return Err(invalid("count", format!("must be at most {MAX_COUNT}")));
    }
    Ok(())
}

fn check_memory(bytes: u64) -> Result<(), JobError> {
    if bytes < 64 * 1024 {
        return Err(invalid(
            "resources.memory",
            "must be at least 64KiB, one WebAssembly page",
        ));
    }
    if bytes > MAX_MEMORY {
        return Err(invalid(
            "resources.memory",
            format!(
                "{} is more than the {} a 32-bit WebAssembly memory can address",
                units::format_size(bytes),
                units::format_size(MAX_MEMORY)
            ),
        ));
    }
    Ok(())
}

/// Where a job's per-task part is: a blob of JSON lines, one [`TaskItem`] per task in index
/// order, which the coordinator reads and keeps when the job is submitted. Each task's agent is
/// sent that task's item alone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Items {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The columns of the job file's `items` table, in its order (none without a table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// One task's own part of a job: its row of the `items` table, and its own standard input and
/// input files.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaskItem {
    /// The row's values by column: they replace `{column}` in arguments and environment values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// Per module, in the job's order (or none): the task's own files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ItemFiles>,
}

/// One module's files in a [`TaskItem`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ItemFiles {
    /// Its standard input (for a module whose job names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<FileRef>,
    /// Its input files, beside the module's shared ones under `/input`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<FileRef>,
}

/// The most jobs one job may come after.
pub const MAX_AFTER: usize = 64;

/// The most columns an `items` table may have.
pub const MAX_COLUMNS: usize = 64;
/// The most bytes one task's [`TaskItem`] may take as JSON.
pub const MAX_ITEM_BYTES: usize = 64 << 10;

/// Checks the columns of an `items` table: 1 to [`MAX_COLUMNS`] distinct names of ASCII
/// letters, digits and `_` (not starting with a digit), none of them `index`.
pub fn check_columns(columns: &[String]) -> Result<(), String> {
    if columns.len() > MAX_COLUMNS {
        return Err(format!(
            "has {} columns; the most is {MAX_COLUMNS}",
            columns.len()
        ));
    }
    for (i, c) in columns.iter().enumerate() {
        if !is_placeholder_name(c) {
            return Err(format!(
                "column {:?}: a column is named by 1 to 64 ASCII letters, digits and _, not starting with a digit",
                c
            ));
        }
        if c == "index" {
            return Err("column \"index\": {index} is the task's index already".into());
        }
        if columns[..i].contains(c) {
            return Err(format!("column {c:?} appears twice"));
        }
    }
    Ok(())
}

fn is_placeholder_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// The names of the placeholders (`{name}`, a name as [`check_columns`] allows) in `text`.
pub fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name))
        .filter(|name| is_placeholder_name(name))
}

/// Replaces `{index}` in `text` with the task index and `{column}` with the task's value for
/// that column; other braces stay as they are. One pass: a value's own braces are kept.
pub fn expand(text: &str, index: u32, values: &BTreeMap<String, String>) -> String {
    if !text.contains('{') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.split_once('}').map(|(name, _)| name);
        match name {
            Some("index") => out.push_str(&index.to_string()),
            Some(name) if values.contains_key(name) => out.push_str(&values[name]),
            _ => {
                out.push('{');
                rest = after;
                continue;
            }
        }
        rest = &after[name.map_or(0, str::len) + 1..];
    }
    out.push_str(rest);
    out
}

impl TaskItem {
    /// Every blob the task's own files need.
    pub fn blobs(&self) -> impl Iterator<Item = &FileRef> + '_ {
        self.modules
            .iter()
            .flat_map(|m| m.stdin.iter().chain(m.inputs.iter()))
    }

    /// Checks a task's item against its job: bounded, values only for the table's columns,
    /// files for the job's modules with names that stay inside `/input` and differ from the
    /// module's shared inputs, standard input only for a module that has none.
    pub fn check(&self, job: &JobSpec) -> Result<(), String> {
        let bytes = json_len(self);
        if bytes > MAX_ITEM_BYTES {
            return Err(format!(
                "takes {} as JSON; the most is {}",
                units::format_size(bytes as u64),
                units::format_size(MAX_ITEM_BYTES as u64)
            ));
        }
        let columns = job.items.as_ref().map_or(&[][..], |i| &i.columns[..]);
        for (name, value) in &self.values {
            if !columns.contains(name) {
                return Err(format!("a value for {name:?}, which is not a column"));
            }
            if value.contains('\0') {
                return Err(format!("the value of {name:?} contains a NUL character"));
            }
        }
        if !self.modules.is_empty() && self.modules.len() != job.modules.len() {
            return Err(format!(
                "files for {} module(s); the job has {}",
                self.modules.len(),
                job.modules.len()
            ));
        }
        for (files, m) in self.modules.iter().zip(&job.modules) {
            if files.stdin.is_some() && m.stdin.is_some() {
                return Err(format!(
                    "a standard input for module {}, which has one for every task",
                    m.name
                ));
            }
            let mut names: BTreeSet<&str> = m.inputs.iter().map(|f| f.path.as_str()).collect();
            for f in &files.inputs {
                check_input_path(&f.path)
                    .map_err(|e| format!("module {} input {:?} {e}", m.name, f.path))?;
                if !names.insert(&f.path) {
                    return Err(format!(
                        "module {} has two input files named {:?}; /input holds files by name",
                        m.name, f.path
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A file a task reads, by content.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct FileRef {
    /// Path under `/input` (for inputs) or a label (for stdin); relative, `/`-separated.
    pub path: String,
    /// Its content digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// One module of a resolved job.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ModuleSpec {
    /// A short name for people and for log file names (the file stem).
    pub name: String,
    /// The module's digest.
    pub digest: Digest,
    /// The module's size in bytes.
    pub size: u64,
    /// The SSHSIG signature over the module's bytes, armored, when signed.
    #[serde(default)]
    pub signature: Option<String>,
    /// Arguments, with `{index}` still in place.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Standard input.
    #[serde(default)]
    pub stdin: Option<FileRef>,
    /// Files under `/input`.
    #[serde(default)]
    pub inputs: Vec<FileRef>,
    /// Exit codes that mean success.
    #[serde(default = "success_codes", skip_serializing_if = "is_default_success")]
    pub success_exit_codes: Vec<i32>,
    /// Whether the guest also sees the `LULL_*` variables; `false`: exactly `env`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub env_extra: bool,
    /// Directory trees seen read-only at their paths (one at `/scratch` seeds it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// Resource limits of a resolved job.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub struct Resources {
    /// Hard cap on each module's linear memory, in bytes.
    pub memory: u64,
    /// Wall-time limit while running, in milliseconds.
    pub timeout_ms: u64,
    /// CPU reserved on the agent, in thousandths of a core.
    #[serde(default = "default_cpu_millis")]
    pub cpu_millis: u32,
}

fn default_cpu_millis() -> u32 {
    DEFAULT_CPU_MILLIS
}

/// A resolved, checked job: what the coordinator stores and agents run.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct JobSpec {
    /// A name for people.
    pub name: String,
    /// The cluster whose agents run it.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Number of tasks.
    pub count: u32,
    /// The modules of each task.
    pub modules: Vec<ModuleSpec>,
    /// Limits.
    pub resources: Resources,
    /// Placement.
    #[serde(default)]
    pub placement: Placement,
    /// Attempts per task, including the first.
    pub max_attempts: u32,
    /// The failures tried again while attempts are left (an eviction always is, at no cost;
    /// a guest that leaves after a checkpoint always is, at the cost of an attempt).
    #[serde(
        default = "default_retry_on",
        skip_serializing_if = "is_default_retry_on"
    )]
    pub retry_on: Vec<Failure>,
    /// Among its owner's jobs, higher goes first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The user who submitted it: set by the coordinator from the submitter's token (whatever
    /// a client sends is replaced); empty until then.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// How many distinct agents must agree on each task's result (1: any one result counts).
    /// With more than one, each task runs on that many agents, one after another, of different
    /// owners where possible; each run is deterministic (NaN bit patterns made canonical, fixed
    /// clocks, randomness from a seed the coordinator gives, no checkpoint from another agent
    /// restored), so honest agents agree bit for bit; an agent whose result differs from the
    /// agreeing ones is recorded.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub verify: u32,
    /// The group whose quota it counts against: what the job file asks for, checked by the
    /// coordinator against the submitter's token (which sets its first group when the file
    /// names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How long a task may wait pending, in milliseconds (since the job was accepted, or since
    /// its last attempt ended); then it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// How long after it was accepted the job must be done, in milliseconds; then its
    /// unfinished tasks fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Whether its tasks take the results of earlier succeeded tasks with the same
    /// [`JobSpec::task_key`], and offer theirs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cache: bool,
    /// Each task's own values and files, when its tasks differ by more than their index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
    /// The jobs that must succeed before any task of this one starts (a workflow's earlier
    /// steps); until then it is held. A job among them that ends otherwise holds it for good,
    /// saying which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<u64>,
}

impl JobSpec {
    /// What a task's result depends on, as one digest: each module's digest, arguments (with
    /// `{index}` and the item's `{column}` values replaced), environment, standard input, input
    /// files by path and content (shared and the task's own), success exit codes and mounts,
    /// and the job's memory cap and `verify`. Two tasks with the same key run the same programs
    /// on the same inputs. Left out: the job and attempt numbers (and the `LULL_*` variables
    /// that carry them), times, and where it runs.
    pub fn task_key(&self, index: u32, item: Option<&TaskItem>) -> Digest {
        #[derive(Serialize)]
        struct Module<'a> {
            digest: &'a Digest,
            args: Vec<String>,
            env: BTreeMap<String, String>,
            env_extra: bool,
            stdin: Option<&'a Digest>,
            inputs: Vec<(&'a str, &'a Digest)>,
            success_exit_codes: &'a [i32],
            mounts: &'a [Mount],
        }
        #[derive(Serialize)]
        struct Key<'a> {
            modules: Vec<Module<'a>>,
            memory: u64,
            verify: u32,
        }
        let key = Key {
            modules: self
                .modules
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let own = item.and_then(|item| item.modules.get(i));
                    let mut inputs: Vec<(&str, &Digest)> = m
                        .inputs
                        .iter()
                        .chain(own.iter().flat_map(|o| o.inputs.iter()))
                        .map(|f| (f.path.as_str(), &f.digest))
                        .collect();
                    inputs.sort();
                    let values = item.map_or(&NO_VALUES, |item| &item.values);
                    Module {
                        digest: &m.digest,
                        args: expand_args(&m.args, index, values),
                        env: expand_env(&m.env, index, values),
                        env_extra: m.env_extra,
                        stdin: m
                            .stdin
                            .as_ref()
                            .or(own.and_then(|o| o.stdin.as_ref()))
                            .map(|f| &f.digest),
                        inputs,
                        success_exit_codes: &m.success_exit_codes,
                        mounts: &m.mounts,
                    }
                })
                .collect(),
            memory: self.resources.memory,
            verify: self.verify,
        };
        let json = serde_json::to_vec(&key).expect("a key serializes");
        let mut hasher = crate::digest::Hasher::new();
        hasher.update(b"lull task key v1\n");
        hasher.update(&json);
        hasher.finish()
    }

    /// The most attempts a task may make: [`JobSpec::max_attempts`] for failures, plus one
    /// for each further agent that must agree ([`JobSpec::verify`]).
    pub fn attempt_limit(&self) -> u32 {
        self.max_attempts
            .saturating_add(self.verify.saturating_sub(1))
    }

    /// Whether a failure of this kind is tried again (while attempts are left).
    pub fn retries(&self, failure: Failure) -> bool {
        self.retry_on.contains(&failure)
    }

    /// Whether its tasks run deterministically, on several agents that must agree.
    pub fn verified(&self) -> bool {
        self.verify > 1
    }

    /// Checks a definition received over the network (the CLI checks files; the coordinator
    /// checks again, since it cannot trust the sender).
    pub fn check(&self) -> Result<(), JobError> {
        check_job_name(&self.name)?;
        check_count(self.count)?;
        check_priority(self.priority)?;
        check_verify(self.verify)?;
        check_group(self.group.as_deref())?;
        check_cluster_id(&self.cluster).map_err(|e| invalid("cluster", e))?;
        if self.modules.is_empty() {
            return Err(invalid("modules", "a job needs at least one module"));
        }
        check_len("modules", self.modules.len(), MAX_MODULES)?;
        check_memory(self.resources.memory)?;
        if self.resources.timeout_ms == 0 {
            return Err(invalid("resources.timeout", "must be longer than zero"));
        }
        if u128::from(self.resources.timeout_ms) > MAX_TIMEOUT.as_millis() {
            return Err(invalid(
                "resources.timeout",
                format!("must be at most {} days", MAX_TIMEOUT.as_secs() / 86_400),
            ));
        }
        if !(1..=MAX_CPU_MILLIS).contains(&self.resources.cpu_millis) {
            return Err(invalid(
                "resources.cpu",
                "must be between 0.001 and 1024 cores",
            ));
        }
        check_len(
            "placement.constraints",
            self.placement.constraints.len(),
            MAX_CONSTRAINTS,
        )?;
        self.placement.check()?;
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid("retry.max_attempts", "must be between 1 and 100"));
        }
        check_retry_on(&self.retry_on)?;
        check_limit_ms("queue_timeout", self.queue_timeout_ms)?;
        check_limit_ms("deadline", self.deadline_ms)?;
        if let Some(items) = &self.items {
            check_columns(&items.columns).map_err(|e| invalid("items", e))?;
        }
        self.check_names()?;
        for (i, m) in self.modules.iter().enumerate() {
            let field = format!("modules[{i}]");
            check_invocation(&field, &m.args, &m.env)?;
            check_success_codes(
                &format!("{field}.success_exit_codes"),
                &m.success_exit_codes,
            )?;
            check_len(&format!("{field}.inputs"), m.inputs.len(), MAX_INPUTS)?;
            let mounts: Vec<(&str, Option<&[FileRef]>)> = m
                .mounts
                .iter()
                .map(|m| (m.path.as_str(), Some(m.files.as_slice())))
                .collect();
            check_mounts(&field, &mounts)?;
            for (j, mount) in m.mounts.iter().enumerate() {
                if let Some(job) = mount.job
                    && !self.after.contains(&job)
                {
                    return Err(invalid(
                        format!("{field}.mount[{j}].job"),
                        format!("job {job} is not one this job comes after"),
                    ));
                }
            }
        }
        check_len("after", self.after.len(), MAX_AFTER)?;
        for (i, job) in self.after.iter().enumerate() {
            if self.after[..i].contains(job) {
                return Err(invalid("after", format!("job {job} is named twice")));
            }
        }
        let bytes = json_len(self);
        if bytes > MAX_SPEC_BYTES {
            return Err(invalid(
                "job",
                format!(
                    "the definition takes {} as JSON; the most is {} (fewer inputs, shorter arguments or environment)",
                    units::format_size(bytes as u64),
                    units::format_size(MAX_SPEC_BYTES as u64)
                ),
            ));
        }
        Ok(())
    }

    /// Checks what becomes a file or thread name where the job runs: module names (valid and
    /// distinct) and input paths. Cheap: the agent checks it for every task it runs.
    pub fn check_names(&self) -> Result<(), JobError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.modules.iter().enumerate() {
            let field = format!("modules[{i}]");
            check_module_name(&m.name).map_err(|e| invalid(format!("{field}.name"), e))?;
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} names two modules; names must differ", m.name),
                ));
            }
            for f in &m.inputs {
                check_input_path(&f.path)
                    .map_err(|reason| invalid(format!("{field}.inputs {:?}", f.path), reason))?;
            }
        }
        Ok(())
    }

    /// The job's bundle manifest: every blob its tasks need, as layers.
    pub fn manifest(&self) -> Manifest {
        let mut layers = Vec::new();
        for m in &self.modules {
            layers.push(Layer {
                media_type: MEDIA_MODULE.into(),
                digest: m.digest,
                size: m.size,
                name: m.name.clone(),
            });
            if let Some(f) = &m.stdin {
                layers.push(Layer {
                    media_type: MEDIA_STDIN.into(),
                    digest: f.digest,
                    size: f.size,
                    name: format!("{}:stdin", m.name),
                });
            }
            for f in &m.inputs {
                layers.push(Layer {
                    media_type: MEDIA_INPUT.into(),
                    digest: f.digest,
                    size: f.size,
                    name: format!("{}:/input/{}", m.name, f.path),
                });
            }
            for mount in &m.mounts {
                for f in &mount.files {
                    layers.push(Layer {
                        media_type: MEDIA_MOUNT.into(),
                        digest: f.digest,
                        size: f.size,
                        name: format!("{}:{}/{}", m.name, mount.path, f.path),
                    });
                }
            }
        }
        Manifest {
            schema_version: 1,
            layers,
        }
    }

    /// Every blob a task of this job needs, modules first.
    pub fn blobs(&self) -> impl Iterator<Item = (Digest, u64)> + '_ {
        self.modules.iter().flat_map(|m| {
            std::iter::once((m.digest, m.size))
                .chain(m.stdin.iter().map(|f| (f.digest, f.size)))
                .chain(m.inputs.iter().map(|f| (f.digest, f.size)))
                .chain(
                    m.mounts
                        .iter()
                        .flat_map(|mount| mount.files.iter().map(|f| (f.digest, f.size))),
                )
        })
    }
}

/// The media type of a module layer.
pub const MEDIA_MODULE: &str = "application/wasm";
/// The media type of a module's standard input.
pub const MEDIA_STDIN: &str = "application/vnd.lull.stdin";
/// The media type of an input file.
pub const MEDIA_INPUT: &str = "application/vnd.lull.input";
/// The media type of a file of a mounted directory tree.
pub const MEDIA_MOUNT: &str = "application/vnd.lull.mount";

/// A job's bundle manifest: the content-addressed blobs its tasks need, listed the way an OCI
/// image manifest lists its layers. A submitter asks which of its digests the coordinator
/// lacks and uploads only those; the coordinator keeps every blob a stored job's manifest lists.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 1.
    pub schema_version: u32,
    /// The blobs, modules first, each followed by its stdin and inputs.
    pub layers: Vec<Layer>,
}

/// One blob of a [`Manifest`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// What it is: [`MEDIA_MODULE`], [`MEDIA_STDIN`] or [`MEDIA_INPUT`].
    pub media_type: String,
    /// Its sha256.
    pub digest: Digest,
    /// Its size in bytes (0 for a module named by digest alone).
    pub size: u64,
    /// Where the task sees it: the module's name, `NAME:stdin` or `NAME:/input/PATH`.
    pub name: String,
}

/// How many bytes `value` takes as JSON, counted without keeping them.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and these types serialize without error.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Checks that a file path stays inside its folder (`/input`, `/output`): relative, at most
/// [`MAX_PATH`] bytes, no `..`, no empty parts, no NUL or control characters.
pub fn check_input_path(path: &str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(NameError::EmptyPath);
    }
    if path.len() > MAX_PATH {
        return Err(NameError::PathTooLong(path.len()));
    }
    if path.starts_with('/') || path.contains('\\') {
        return Err(NameError::NotRelative);
    }
    if path.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(NameError::ClimbingPart);
    }
    Ok(())
}

/// Why a name or a path from outside (a job file, a result, an agent) is refused. A path's
/// reasons read after the path: `"../etc" must not contain empty, '.' or '..' parts`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a cluster ID.
    #[error(
        "{0:?} is not a cluster ID: 1 to 63 lower-case letters, digits and -, not starting with -"
    )]
    ClusterId(String),
    /// Not a module name.
    #[error(
        "{0:?} is not a module name: 1 to {MAX_MODULE_NAME} ASCII letters, digits, ., _ and -, not starting with ."
    )]
    ModuleName(String),
    /// An empty path.
    #[error("is empty")]
    EmptyPath,
    /// A path longer than [`MAX_PATH`] bytes.
    #[error("is {0} bytes; the most is {MAX_PATH}")]
    PathTooLong(usize),
    /// An absolute path, or one with `\` separators.
    #[error("must be a relative path with / separators")]
    NotRelative,
    /// A path with NUL or control characters.
    #[error("must not contain NUL or control characters")]
    ControlCharacter,
    /// A path with empty, `.` or `..` parts, which could climb out of its folder.
    #[error("must not contain empty, '.' or '..' parts")]
    ClimbingPart,
}

/// No values: a task without an item.
pub static NO_VALUES: BTreeMap<String, String> = BTreeMap::new();

/// Replaces `{index}` and `{column}` in each argument ([`expand`]).
pub fn expand_args(args: &[String], index: u32, values: &BTreeMap<String, String>) -> Vec<String> {
    args.iter().map(|a| expand(a, index, values)).collect()
}

/// Replaces `{index}` and `{column}` in each environment value ([`expand`]).
pub fn expand_env(
    env: &BTreeMap<String, String>,
    index: u32,
    values: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), expand(v, index, values)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "render"
count = 100
[[module]]
path = "render.wasm"
args = ["--tile", "{index}"]
env = { QUALITY = "high" }
stdin = "scene.txt"
inputs = ["assets/*.png"]
[resources]
memory = "256MiB"
timeout = "30m"
[placement]
strategy = "spread"
constraints = ["os == linux"]
[retry]
max_attempts = 3
"#;

    #[test]
    fn the_design_example_parses() {
        let job = JobFile::parse(GOOD).unwrap();
        assert_eq!(job.count, Some(100));
        assert_eq!(job.modules.len(), 1);
        assert_eq!(job.modules[0].env["QUALITY"], "high");
        assert_eq!(job.memory().unwrap(), 256 << 20);
        assert_eq!(job.timeout().unwrap(), Duration::from_secs(1800));
        assert_eq!(job.placement.strategy, Strategy::Spread);
        assert_eq!(job.max_attempts().unwrap(), 3);
    }

    #[test]
    fn defaults_fill_in() {
        let job = JobFile::parse("name = \"x\"\n[[module]]\npath = \"a.wasm\"\n").unwrap();
        assert_eq!(job.count, None);
        assert_eq!(job.memory().unwrap(), DEFAULT_MEMORY);
        assert_eq!(job.timeout().unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(job.max_attempts().unwrap(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(job.cpu_millis().unwrap(), DEFAULT_CPU_MILLIS);
        assert_eq!(job.cluster, DEFAULT_CLUSTER);
    }

    #[test]
    fn cluster_ids_are_checked() {
        for good in ["default", "gpu", "lab-3", "0x"] {
            assert!(check_cluster_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Lab", "a b", "ä", &"x".repeat(64)] {
            assert!(check_cluster_id(bad).is_err(), "{bad:?}");
        }
        let err =
            JobFile::parse("name = \"x\"\ncluster = \"Big Lab\"\n[[module]]\npath = \"a.wasm\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("cluster: \"Big Lab\" is not a cluster ID"),
            "{err}"
        );
    }

    #[test]
    fn cpu_constraints_and_spread_are_checked() {
        let job = |extra: &str| {
            JobFile::parse(&format!(
                "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n{extra}"
            ))
        };
        let ok = job("[resources]\ncpu = 0.25\n[placement]\nconstraints = [\"memory >= 2GiB\", \"label.site in lab-3, lab-4\"]\nspread = \"label.site\"\n").unwrap();
        assert_eq!(ok.cpu_millis().unwrap(), 250);
        assert_eq!(ok.placement.spread.as_deref(), Some("label.site"));
        for (extra, says) in [
            ("[resources]\ncpu = 0\n", "resources.cpu: 0 cores"),
            ("[resources]\ncpu = 2000\n", "resources.cpu: 2000 cores"),
            (
                "[placement]\nconstraints = [\"os = linux\"]\n",
                "placement.constraints[0]: constraint \"os = linux\"",
            ),
            (
                "[placement]\nspread = \"colour\"\n",
                "placement.spread: unknown attribute",
            ),
            (
                "[placement]\nstrategy = \"binpack\"\nspread = \"label.site\"\n",
                "placement.spread: applies only to strategy = \"spread\"",
            ),
        ] {
            let err = job(extra).expect_err(extra).to_string();
            assert!(err.starts_with(says), "{extra}: {err}");
        }
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = JobFile::parse("name = \"x\"\ncount = = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, JobError::Syntax(_)));
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("column"), "{msg}");
    }

    #[test]
    fn count_zero_is_refused() {
        let err =
            JobFile::parse("name = \"x\"\ncount = 0\n[[module]]\npath = \"a.wasm\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "count: must be at least 1 (it is the number of tasks)"
        );
    }

    #[test]
    fn memory_beyond_wasm32_is_refused() {
        let err = JobFile::parse(
            "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n[resources]\nmemory = \"64GiB\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("resources.memory: 64 GiB is more than"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_units_are_named() {
        let err = JobFile::parse("name = \"x\"\ncuont = 3\n").unwrap_err();
        assert!(err.to_string().contains("cuont"), "{err}");
        let err = JobFile::parse(
            "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n[resources]\ntimeout = \"soon\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("resources.timeout:"), "{err}");
    }

    #[test]
    fn module_needs_exactly_one_source() {
        let err = JobFile::parse("name = \"x\"\n[[module]]\nargs = []\n").unwrap_err();
        assert_eq!(err.to_string(), "module[0]: needs a path or a digest");
        let err = JobFile::parse("name = \"x\"\n").unwrap_err();
        assert!(err.to_string().starts_with("module:"), "{err}");
    }

    #[test]
    fn args_expand_index() {
        let args = vec![
            "--tile".to_string(),
            "{index}".to_string(),
            "t{index}.png".into(),
        ];
        assert_eq!(
            expand_args(&args, 7, &NO_VALUES),
            vec!["--tile", "7", "t7.png"]
        );
    }

    #[test]
    fn input_paths_stay_inside() {
        assert!(check_input_path("a/b.txt").is_ok());
        assert!(check_input_path("../etc/passwd").is_err());
        assert!(check_input_path("/etc/passwd").is_err());
        assert!(check_input_path("a//b").is_err());
    }

    #[test]
    fn module_names_are_file_names_that_stay_put() {
        for good in ["render", "a.b_c-1", "X"] {
            assert!(check_module_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "x/../../victim/keep.txt",
            "a\\b",
            "a\0b",
            "tab\tname",
            "ü",
            &"x".repeat(MAX_MODULE_NAME + 1),
        ] {
            assert!(check_module_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            module_name_from("my render (v2)", "module0"),
            "my-render--v2-"
        );
        assert_eq!(module_name_from("..", "module3"), "module3");
        assert_eq!(module_name_from(".tool", "m"), "tool");
        assert_eq!(
            module_name_from(&"é".repeat(100), "m").len(),
            MAX_MODULE_NAME
        );
        for stem in ["a/b", "..x", "\0", "ok"] {
            assert!(
                check_module_name(&module_name_from(stem, "m")).is_ok(),
                "{stem:?}"
            );
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            name: "x".into(),
            cluster: DEFAULT_CLUSTER.into(),
            count: 1,
            modules: vec![ModuleSpec {
                name: "m".into(),
                digest: Digest::of(b"m"),
                size: 1,
                signature: None,
                args: vec![],
                env: BTreeMap::new(),
                stdin: None,
                inputs: vec![],
                success_exit_codes: vec![0],
                env_extra: true,
                mounts: vec![],
            }],
            resources: Resources {
                memory: 1 << 20,
                timeout_ms: 1000,
                cpu_millis: 100,
            },
            placement: Placement::default(),
            max_attempts: 1,
            retry_on: default_retry_on(),
            priority: 0,
            owner: String::new(),
            verify: 1,
            group: None,
            queue_timeout_ms: None,
            deadline_ms: None,
            cache: false,
            items: None,
            after: vec![],
        }
    }

    #[test]
    fn mounts_go_to_absolute_paths_of_their_own() {
        for good in ["/share", "/data/share", "/scratch", "/opt/tool-1.2"] {
            assert_eq!(check_mount_path(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("share", "must be absolute"),
            ("/", "cannot be mounted over"),
            ("/input", "the task's own"),
            ("/output/x", "the task's own"),
            ("/scratch/x", "inside /scratch"),
            ("/a/../b", "'..'"),
            ("/a//b", "empty"),
        ] {
            let e = check_mount_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let file = |p: &str| FileRef {
            path: p.into(),
            digest: Digest::of(p.as_bytes()),
            size: 1,
        };
        let mut job = spec();
        job.modules[0].mounts = vec![
            Mount {
                path: "/data".into(),
                files: vec![file("a/b.txt")],
                job: None,
            },
            Mount {
                path: "/data/inner".into(),
                files: vec![],
                job: None,
            },
        ];
        let e = job.check().unwrap_err().to_string();
        assert!(e.contains("overlaps the mount at \"/data\""), "{e}");
        job.modules[0].mounts.pop();
        assert!(job.check().is_ok());
        assert_eq!(job.blobs().count(), 2, "the module and the mounted file");
        assert_eq!(job.manifest().layers.len(), 2);
        job.modules[0].mounts[0].files.push(file("../escape"));
        let e = job.check().unwrap_err().to_string();
        assert!(e.contains("mount[0] file \"../escape\""), "{e}");
    }

    #[test]
    fn a_tasks_key_follows_what_it_runs_on_and_nothing_else() {
        let mut a = spec();
        a.modules[0].args = vec!["--tile".into(), "{index}".into()];
        let key = a.task_key(3, None);
        assert_ne!(key, a.task_key(4, None), "the index is in an argument");
        let mut b = a.clone();
        b.name = "another".into();
        b.owner = "bob".into();
        b.count = 10;
        b.max_attempts = 3;
        b.cache = true;
        assert_eq!(
            b.task_key(3, None),
            key,
            "names, owners, sizes and retries do not count"
        );
        b.modules[0].env.insert("MODE".into(), "fast".into());
        assert_ne!(b.task_key(3, None), key);
        let mut g = spec();
        g.modules[0]
            .env
            .insert("SHARD".into(), "part-{index}".into());
        assert_ne!(
            g.task_key(1, None),
            g.task_key(2, None),
            "the index is in a variable"
        );
        let mut c = a.clone();
        c.modules[0].inputs.push(FileRef {
            path: "x.txt".into(),
            digest: Digest::of(b"x"),
            size: 1,
        });
        assert_ne!(c.task_key(3, None), key);
        let mut d = c.clone();
        d.modules[0].inputs[0].digest = Digest::of(b"y");
        assert_ne!(
            d.task_key(3, None),
            c.task_key(3, None),
            "an input's content counts"
        );
        let mut e = a.clone();
        e.modules[0].args = vec!["--tile".into(), "3".into()];
        assert_eq!(
            e.task_key(3, None),
            key,
            "arguments count as the task sees them"
        );
        assert_ne!(e.task_key(3, None), {
            let mut f = e.clone();
            f.verify = 2;
            f.task_key(3, None)
        });
    }

    #[test]
    fn a_definition_is_bounded_so_that_its_assignment_fits_a_frame() {
        assert!(spec().check().is_ok());
        let refused = |change: &dyn Fn(&mut JobSpec)| {
            let mut s = spec();
            change(&mut s);
            s.check().unwrap_err().to_string()
        };
        let err = refused(&|s| s.name = "\u{1b}[2Jgone".into());
        assert_eq!(err, "name: must not contain control characters");
        let err = refused(&|s| {
            s.modules[0]
                .env
                .insert("A=B".into(), "c".into())
                .map(drop)
                .unwrap_or(())
        });
        assert!(
            err.contains("must not be empty or contain = or NUL"),
            "{err}"
        );
        let err = refused(&|s| {
            s.modules[0].inputs.push(FileRef {
                path: "a/../../b".into(),
                digest: Digest::of(b""),
                size: 0,
            })
        });
        assert!(err.starts_with("modules[0].inputs \"a/../../b\""), "{err}");
        let err = refused(&|s| s.modules[0].args = vec!["x".into(); MAX_ARGS + 1]);
        assert_eq!(err, "modules[0].args: has 4097 entries; the most is 4096");
        // Many entries each within bounds, together over the definition's cap.
        let err = refused(&|s| s.modules[0].args = vec!["y".repeat(4096); 300]);
        assert!(
            err.starts_with("job: the definition takes 1.2 MiB as JSON"),
            "{err}"
        );
        // What passes the check fits in one frame as an assignment.
        let mut big = spec();
        big.modules[0].args = vec!["z".repeat(4000); 250];
        big.check().unwrap();
        let assign =
            crate::message::CoordinatorMessage::Assign(Box::new(crate::message::Assignment {
                attempt: crate::message::AttemptId {
                    task: crate::message::TaskId { job: 1, index: 0 },
                    attempt: 1,
                },
                job: big,
                checkpoint: None,
                seed: Some(u64::MAX),
                // With the largest part of its own a task may have.
                item: Some(TaskItem {
                    values: [("n".to_owned(), "w".repeat(MAX_ITEM_BYTES - 20))].into(),
                    modules: vec![],
                }),
            }));
        assert!(crate::frame::to_bytes(&assign, crate::frame::DEFAULT_MAX_FRAME).is_ok());
    }

    #[test]
    fn timeouts_are_whole_milliseconds_within_a_year() {
        let job = |t: &str| {
            JobFile::parse(&format!(
                "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n[resources]\ntimeout = \"{t}\"\n"
            ))
        };
        assert_eq!(
            job("0.5ms").unwrap_err().to_string(),
            "resources.timeout: must be at least 1ms"
        );
        assert_eq!(
            job("1000000000000000000s").unwrap_err().to_string(),
            "resources.timeout: must be at most 365 days"
        );
        // A sum that overflows is an unreadable duration, not a panic.
        let err = job("10000000000000000000s10000000000000000000s").unwrap_err();
        assert!(matches!(err, JobError::Unit { .. }), "{err}");
        assert_eq!(
            job("1ms").unwrap().timeout().unwrap(),
            Duration::from_millis(1)
        );
    }

    fn file(path: &str) -> FileRef {
        FileRef {
            path: path.into(),
            digest: Digest::of(path.as_bytes()),
            size: path.len() as u64,
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_take_the_index_and_the_rows_values_and_leave_other_braces() {
        let row = values(&[("size", "10"), ("name", "{index}")]);
        assert_eq!(expand("n{index}-{size}", 7, &row), "n7-10");
        assert_eq!(
            expand("{name}", 7, &row),
            "{index}",
            "a value is not expanded again"
        );
        assert_eq!(
            expand("{\"a\": 1} {other} {{index}} {", 3, &row),
            "{\"a\": 1} {other} {3} {"
        );
        assert_eq!(expand("plain", 3, &row), "plain");
        assert_eq!(
            placeholders("x/{index}/{size}.{a b}{\"q\"}{_y1}").collect::<Vec<_>>(),
            vec!["index", "size", "_y1"]
        );
    }

    #[test]
    fn columns_are_names_that_differ() {
        assert!(check_columns(&["n".into(), "_x2".into()]).is_ok());
        for bad in [
            vec!["2x"],
            vec!["a-b"],
            vec![""],
            vec!["index"],
            vec!["a", "a"],
        ] {
            let cols: Vec<String> = bad.iter().map(|c| (*c).to_owned()).collect();
            assert!(check_columns(&cols).is_err(), "{bad:?}");
        }
        let mut job = spec();
        job.items = Some(Items {
            digest: Digest::of(b"rows"),
            size: 4,
            columns: vec!["a b".into()],
        });
        let e = job.check().unwrap_err().to_string();
        assert!(e.starts_with("items: column \"a b\""), "{e}");
    }

    #[test]
    fn a_tasks_item_is_checked_against_its_job() {
        let mut job = spec();
        job.items = Some(Items {
            digest: Digest::of(b"rows"),
            size: 4,
            columns: vec!["n".into()],
        });
        job.modules[0].inputs.push(file("shared.txt"));
        let own = |path: &str| TaskItem {
            values: values(&[("n", "1")]),
            modules: vec![ItemFiles {
                stdin: Some(file("in")),
                inputs: vec![file(path)],
            }],
        };
        assert_eq!(own("part-1.txt").check(&job), Ok(()));
        assert_eq!(
            own("part-1.txt").blobs().count(),
            2,
            "its stdin and its input"
        );
        let e = own("shared.txt").check(&job).unwrap_err();
        assert!(e.contains("two input files named \"shared.txt\""), "{e}");
        let e = own("../x").check(&job).unwrap_err();
        assert!(e.contains("input \"../x\""), "{e}");
        let mut extra = own("a");
        extra.values.insert("m".into(), "2".into());
        assert!(extra.check(&job).unwrap_err().contains("not a column"));
        let mut two = own("a");
        two.modules.push(ItemFiles::default());
        assert!(two.check(&job).unwrap_err().contains("the job has 1"));
        job.modules[0].stdin = Some(file("all"));
        assert!(own("a").check(&job).unwrap_err().contains("standard input"));
        let big = TaskItem {
            values: values(&[("n", &"x".repeat(MAX_ITEM_BYTES))]),
            modules: vec![],
        };
        assert!(big.check(&job).unwrap_err().contains("the most is 64 KiB"));
    }

    #[test]
    fn a_job_reads_the_outputs_only_of_jobs_it_comes_after() {
        let mut job = spec();
        job.modules[0].mounts = vec![Mount {
            path: "/map".into(),
            files: vec![],
            job: Some(7),
        }];
        let e = job.check().unwrap_err().to_string();
        assert_eq!(
            e,
            "modules[0].mount[0].job: job 7 is not one this job comes after"
        );
        job.after = vec![7];
        job.check().unwrap();
        job.after = vec![7, 7];
        assert_eq!(
            job.check().unwrap_err().to_string(),
            "after: job 7 is named twice"
        );
        let file = |mount: &str| {
            JobFile::parse(&format!(
                "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n[[module.mount]]\n{mount}\npath = \"/in\"\n"
            ))
            .map_err(|e| e.to_string())
        };
        assert!(file("source = \"d\"").is_ok());
        assert!(file("job = \"map\"").is_ok());
        for both in ["source = \"d\"\njob = \"map\"", ""] {
            let e = file(both).unwrap_err();
            assert!(
                e.starts_with("module[0].mount[0]: give either source"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_tasks_key_follows_its_item() {
        let mut job = spec();
        job.modules[0].args = vec!["--n".into(), "{n}".into()];
        let item = |n: &str, digest: &[u8]| TaskItem {
            values: values(&[("n", n)]),
            modules: vec![ItemFiles {
                stdin: None,
                inputs: vec![FileRef {
                    path: "part.txt".into(),
                    digest: Digest::of(digest),
                    size: 1,
                }],
            }],
        };
        let key = job.task_key(0, Some(&item("1", b"a")));
        assert_ne!(key, job.task_key(0, Some(&item("2", b"a"))), "a value");
        assert_ne!(key, job.task_key(0, Some(&item("1", b"b"))), "an own input");
        assert_ne!(key, job.task_key(0, None));
        assert_eq!(key, job.task_key(0, Some(&item("1", b"a"))));
    }
}
