//! Running one assignment: the checks before a guest may start (memory cap, digests,
//! signatures against the owner's trust list, compilation), the task's directories, one thread
//! per module, and the result with its outputs and logs stored as blobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lull_protocol::job::{ModuleSpec, check_input_path, expand_args};
use lull_protocol::message::{
    Assignment, Captured, MAX_OUTPUT_FILES, ModuleResult, Outcome, OutputFile, TaskResult,
};
use lull_protocol::signature::TrustList;
use lull_protocol::units::format_size;

use crate::cache::BlobCache;
use crate::cache::compiled::{CompiledCache, Miss};
use crate::sandbox::{Program, RunOutput, RunSpec, Sandbox, SandboxError, TaskControl};
use lull_protocol::sync::lock;

/// Stack of a guest's thread: wasm's own stack (`max_wasm_stack`) plus room for the host.
const GUEST_THREAD_STACK: usize = 8 << 20;

/// Runs assignments whose blobs are in the cache.
#[derive(Debug)]
pub struct Runner {
    /// The wasmtime sandbox.
    pub sandbox: Arc<Sandbox>,
    /// Where blobs live.
    pub cache: BlobCache,
    /// The owner's trust list.
    pub trust: Arc<TrustList>,
    /// Where task directories are made (and kept for the next task).
    pub work: crate::workdir::WorkDirs,
    /// The most memory one module may have.
    pub max_task_memory: u64,
    /// The most bytes of `/output` kept per task.
    pub outputs_cap: u64,
    /// The most disk one task's `/output` and `/scratch` may take while it runs.
    pub task_disk: crate::disk::DiskCap,
    /// Compiled modules on disk.
    pub compiled: CompiledCache,
    /// Modules verified and loaded, in memory.
    pub loaded: Loaded,
    /// Where guests' checkpoints go; `None` refuses them.
    pub checkpoints: Option<crate::checkpoint::Sink>,
    /// Guest threads of this runner running now.
    pub guests: GuestCount,
}

/// Guest threads in the whole process: more than one agent's when agents share a process
/// (`lull dev`).
static PROCESS_GUESTS: AtomicUsize = AtomicUsize::new(0);

/// A runner's count of its guest threads running now.
#[derive(Debug, Default)]
pub struct GuestCount(AtomicUsize);

impl GuestCount {
    /// This runner's share of the guest threads running in the process (1.0 when none run):
    /// the part of the process's CPU that is its own when agents share a process.
    pub fn share(&self) -> f64 {
        let mine = self.0.load(Ordering::Relaxed);
        let all = PROCESS_GUESTS.load(Ordering::Relaxed);
        if all == 0 || mine >= all {
            1.0
        } else {
            mine as f64 / all as f64
        }
    }

    /// Counts a guest thread while the returned guard lives.
    fn enter(&self) -> GuestGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        PROCESS_GUESTS.fetch_add(1, Ordering::Relaxed);
        GuestGuard(self)
    }
}

struct GuestGuard<'a>(&'a GuestCount);

impl Drop for GuestGuard<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
        PROCESS_GUESTS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many loaded modules are kept in memory.
const LOADED_KEPT: usize = 32;

/// Modules verified, compiled and linked, by digest and signature, the least recently used
/// dropped past 32.
#[derive(Debug, Default)]
pub struct Loaded {
    state: std::sync::Mutex<LoadedState>,
    /// Modules being prepared: tasks needing the same module wait for one compilation.
    preparing: std::sync::Mutex<std::collections::HashMap<ModuleKey, Arc<std::sync::Mutex<()>>>>,
}

/// A module by digest and signature, and whether it is loaded for deterministic runs.
type ModuleKey = (lull_protocol::Digest, Option<String>, bool);

#[derive(Debug, Default)]
struct LoadedState {
    programs: std::collections::HashMap<ModuleKey, (u64, Program)>,
    clock: u64,
}

impl Loaded {
    fn get(&self, key: &ModuleKey) -> Option<Program> {
        let mut s = lock(&self.state);
        s.clock += 1;
        let now = s.clock;
        s.programs.get_mut(key).map(|(used, p)| {
            *used = now;
            p.clone()
        })
    }

    fn insert(&self, key: ModuleKey, program: Program) {
        let mut s = lock(&self.state);
        s.clock += 1;
        if s.programs.len() >= LOADED_KEPT
            && let Some(oldest) = s
                .programs
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            s.programs.remove(&oldest);
        }
        let now = s.clock;
        s.programs.insert(key, (now, program));
    }
}

/// How a module became runnable, for the log and for measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    /// Already loaded in memory.
    Loaded,
    /// Loaded from its compiled form on disk.
    FromDisk,
    /// Compiled now.
    Compiled,
}

impl Preparation {
    /// `in_memory`, `from_disk` or `compiled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preparation::Loaded => "in_memory",
            Preparation::FromDisk => "from_disk",
            Preparation::Compiled => "compiled",
        }
    }
}

/// A result in which every module was refused for `reason`.
pub fn refused(a: &Assignment, reason: &str) -> TaskResult {
    ended_before_start(
        a,
        Outcome::Refused {
            reason: reason.to_owned(),
        },
    )
}

/// A result in which every module ended with `outcome` before it started.
pub fn ended_before_start(a: &Assignment, outcome: Outcome) -> TaskResult {
    TaskResult::uniform(a.attempt, &a.job, outcome)
}

impl Runner {
    /// Checks, prepares and runs an assignment on the calling thread; `on_start` is called
    /// just before the guests start. Every failure becomes part of the result.
    /// With `pooled`, the guests run in the sandbox's pool (the caller holds fixed slots for
    /// them).
    pub fn run(
        &self,
        a: &Assignment,
        control: &TaskControl,
        pooled: bool,
        on_start: impl FnOnce(),
    ) -> TaskResult {
        // The coordinator checked the job; the agent checks again what it is about to use as
        // file and thread names (the rest of the check is not needed to run it safely).
        if let Err(e) = a.job.check_names() {
            return refused(a, &format!("the job is not valid: {e}"));
        }
        if let Some(item) = &a.item
            && let Err(e) = item.check(&a.job)
        {
            return refused(a, &format!("the task's own part is not valid: {e}"));
        }
        let memory = a.job.resources.memory;
        if memory > self.max_task_memory {
            return refused(
                a,
                &format!(
                    "the task asks for {} of memory; this agent's cap is {}",
                    format_size(memory),
                    format_size(self.max_task_memory)
                ),
            );
        }
        let mut programs = Vec::new();
        for m in &a.job.modules {
            let started = Instant::now();
            match self.prepare_for(m, a.seed.is_some()) {
                Ok((p, how)) => {
                    tracing::info!(attempt = %a.attempt, module = %m.name, how = how.as_str(), took_us = started.elapsed().as_micros() as u64, pooled, "module ready");
                    programs.push(p)
                }
                Err(reason) => return refused(a, &format!("module {}: {reason}", m.name)),
            }
        }
        let dir = match self.work.take() {
            Ok(dir) => dir,
            Err(e) => {
                return refused(a, &format!("could not prepare the task's directories: {e}"));
            }
        };
        let result = match self.layout(a, &dir, pooled) {
            Ok((specs, hooks)) => {
                on_start();
                let result = self.execute(a, &programs, specs, control);
                hooks.finish(result.succeeded(&a.job));
                result
            }
            Err(e) => refused(
                a,
                &format!("could not prepare the task's directories: {e:#}"),
            ),
        };
        self.work.give_back(dir);
        result
    }

    /// Makes a module runnable: from memory, else checked against the trust list and loaded
    /// from its compiled form on disk, else compiled (and the compiled form kept).
    pub fn prepare(&self, m: &ModuleSpec) -> Result<(Program, Preparation), String> {
        self.prepare_for(m, false)
    }

    /// [`Runner::prepare`], or, with `deterministic`, for deterministic runs
    /// ([`crate::sandbox::Sandbox::load_deterministic`]: compiled and kept in memory only).
    pub fn prepare_for(
        &self,
        m: &ModuleSpec,
        deterministic: bool,
    ) -> Result<(Program, Preparation), String> {
        let key = (m.digest, m.signature.clone(), deterministic);
        if let Some(p) = self.loaded.get(&key) {
            return Ok((p, Preparation::Loaded));
        }
        let one = lock(&self.loaded.preparing)
            .entry(key.clone())
            .or_default()
            .clone();
        let _preparing = lock(&one);
        // Another task may have prepared it while this one waited.
        if let Some(p) = self.loaded.get(&key) {
            return Ok((p, Preparation::Loaded));
        }
        let result = self.prepare_now(m, key.clone());
        lock(&self.loaded.preparing).remove(&key);
        result
    }

    fn prepare_now(
        &self,
        m: &ModuleSpec,
        key: ModuleKey,
    ) -> Result<(Program, Preparation), String> {
        let bytes = std::fs::read(self.cache.path(&m.digest))
            .map_err(|e| format!("reading its bytes: {e}"))?;
        self.cache.touch(&m.digest);
        // The trust list is checked on every load from disk: the owner may have changed it.
        self.trust
            .verify(&bytes, m.signature.as_deref())
            .map_err(|e| e.to_string())?;
        if key.2 {
            let program = self
                .sandbox
                .load_deterministic(&bytes)
                .map_err(|e| e.to_string())?;
            self.loaded.insert(key, program.clone());
            return Ok((program, Preparation::Compiled));
        }
        let kept = match self.compiled.get(&m.digest) {
            Ok(artifact) => match self.sandbox.load(&artifact) {
                Ok(program) => Some(program),
                Err(e @ SandboxError::Artifact { .. }) => {
                    tracing::warn!(module = %m.digest, error = %e, "a compiled module on disk cannot be loaded; compiling it again");
                    self.compiled.discard(&m.digest);
                    None
                }
                Err(e) => return Err(e.to_string()),
            },
            Err(Miss::Absent | Miss::Corrupt(_)) => None,
        };
        let (program, how) = match kept {
            Some(program) => (program, Preparation::FromDisk),
            None => {
                let artifact = self.sandbox.precompile(&bytes).map_err(|e| e.to_string())?;
                let program = self.sandbox.load(&artifact).map_err(|e| e.to_string())?;
                if let Err(e) = self.compiled.put(&m.digest, &artifact) {
                    tracing::warn!(module = %m.digest, error = %format!("{e:#}"), "could not keep a compiled module on disk");
                }
                (program, Preparation::Compiled)
            }
        };
        self.loaded.insert(key, program.clone());
        Ok((program, how))
    }

    /// The task's directories, its modules' run specs, and the hooks they share.
    fn layout(
        &self,
        a: &Assignment,
        dir: &crate::workdir::TaskDir,
        pooled: bool,
    ) -> anyhow::Result<(Vec<RunSpec>, Arc<crate::checkpoint::AttemptHooks>)> {
        // One set of hooks for the task's modules, restoring the checkpoint it was given.
        let restore = match &a.checkpoint {
            Some(c) => Some(
                std::fs::read(self.cache.path(&c.digest))
                    .with_context(|| format!("reading the checkpoint {}", c.digest))?,
            ),
            None => None,
        };
        let attempt_hooks = Arc::new(crate::checkpoint::AttemptHooks::new(
            a.attempt,
            restore,
            self.checkpoints.clone(),
        ));
        let hooks = crate::sandbox::Hooks(attempt_hooks.clone());
        let (output, scratch) = (&dir.output, &dir.scratch);
        let index = a.attempt.task.index;
        let mut specs = Vec::new();
        let values = a.values();
        for (i, m) in a.job.modules.iter().enumerate() {
            // The task's own files, beside the ones every task of the job sees.
            let own = a.item.as_ref().and_then(|item| item.modules.get(i));
            let own_inputs = own.map_or(&[][..], |o| &o.inputs[..]);
            let input_dir = if m.inputs.is_empty() && own_inputs.is_empty() {
                None
            } else {
                let input = dir.path.join(format!("input-{i}"));
                self.place_files(&m.inputs, &input, true)?;
                self.place_files(own_inputs, &input, true)?;
                Some(input)
            };
            let mut mounts = Vec::new();
            for (j, mount) in m.mounts.iter().enumerate() {
                lull_protocol::job::check_mount_path(&mount.path)
                    .map_err(|r| anyhow::anyhow!("mount {r}"))?;
                if mount.path == lull_protocol::job::SCRATCH_MOUNT {
                    // The guest may change its scratch space: copies, never the cache's files.
                    self.place_files(&mount.files, scratch, false)?;
                } else {
                    let host = dir.path.join(format!("mount-{i}-{j}"));
                    std::fs::create_dir_all(&host)?;
                    self.place_files(&mount.files, &host, true)?;
                    mounts.push((host, mount.path.clone()));
                }
            }
            let stdin = match m.stdin.as_ref().or(own.and_then(|o| o.stdin.as_ref())) {
                Some(f) => std::fs::read(self.cache.path(&f.digest)).context("reading stdin")?,
                None => Vec::new(),
            };
            let mut env: Vec<(String, String)> =
                lull_protocol::job::expand_env(&m.env, index, values)
                    .into_iter()
                    .collect();
            if m.env_extra {
                env.push(("LULL_TASK_INDEX".into(), index.to_string()));
                env.push(("LULL_TASK_COUNT".into(), a.job.count.to_string()));
                env.push(("LULL_JOB".into(), a.attempt.task.job.to_string()));
                match a.seed {
                    // What differs between the agents that run a verified task stays out of it.
                    Some(seed) => env.push(("LULL_SEED".into(), seed.to_string())),
                    None => env.push(("LULL_ATTEMPT".into(), a.attempt.attempt.to_string())),
                }
            }
            specs.push(RunSpec {
                name: m.name.clone(),
                args: expand_args(&m.args, index, values),
                env,
                stdin,
                input_dir,
                output_dir: output.clone(),
                scratch_dir: scratch.clone(),
                memory_limit: a.job.resources.memory,
                timeout: Duration::from_millis(a.job.resources.timeout_ms),
                pooled: pooled && a.seed.is_none(),
                hooks: Some(hooks.clone()),
                seed: a.seed,
                mounts,
            });
        }
        Ok((specs, attempt_hooks))
    }

    /// Puts the blobs `files` under `dir` by their paths, from the cache: linked when `shared`
    /// (the guest sees them read-only), copied otherwise.
    fn place_files(
        &self,
        files: &[lull_protocol::job::FileRef],
        dir: &Path,
        shared: bool,
    ) -> anyhow::Result<()> {
        for f in files {
            lull_protocol::job::check_input_path(&f.path)
                .map_err(|r| anyhow::anyhow!("file {:?} {r}", f.path))?;
            let dest = dir.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let src = self.cache.path(&f.digest);
            if !shared || std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).with_context(|| format!("copying {}", f.path))?;
            }
        }
        Ok(())
    }

    fn execute(
        &self,
        a: &Assignment,
        programs: &[Program],
        specs: Vec<RunSpec>,
        control: &TaskControl,
    ) -> TaskResult {
        let started = Instant::now();
        let dirs: Vec<PathBuf> = specs
            .first()
            .map(|s| vec![s.output_dir.clone(), s.scratch_dir.clone()])
            .unwrap_or_default();
        let outputs: Vec<RunOutput> = std::thread::scope(|s| {
            // Watches the task's files while its guests run; told to end when they have.
            let (guests_done, done) = std::sync::mpsc::channel::<()>();
            let dirs = &dirs;
            let watcher = std::thread::Builder::new()
                .name(format!("disk {}", a.attempt))
                .spawn_scoped(s, move || self.task_disk.watch(dirs, control, &done));
            if let Err(e) = &watcher {
                tracing::error!(attempt = %a.attempt, error = %e, "could not start the task's disk watcher");
            }
            let handles: Vec<_> = programs
                .iter()
                .zip(specs.iter())
                .map(|(p, spec)| {
                    std::thread::Builder::new()
                        .name(format!("guest {}", spec.name))
                        .stack_size(GUEST_THREAD_STACK)
                        .spawn_scoped(s, move || {
                            let _counted = self.guests.enter();
                            self.sandbox.run(p, spec, control)
                        })
                })
                .collect();
            let outputs = handles
                .into_iter()
                .map(|h| {
                    let joined = h
                        .map_err(|e| e.to_string())
                        .and_then(|h| h.join().map_err(|_| "the guest thread panicked".to_owned()));
                    joined.unwrap_or_else(|message| RunOutput {
                        outcome: Outcome::Refused {
                            reason: format!("could not run the guest: {message}"),
                        },
                        stdout: vec![],
                        stdout_truncated: false,
                        stderr: vec![],
                        stderr_truncated: false,
                        elapsed: Duration::ZERO,
                    })
                })
                .collect::<Vec<_>>();
            drop(guests_done);
            if let Ok(Ok(Some(reason))) = watcher.map(|w| w.join()) {
                tracing::warn!(attempt = %a.attempt, %reason, "stopped the task: over its disk cap");
            }
            outputs
        });
        // The last walk, with the guests ended, is exact: a task that went over its cap
        // between two walks and ended before the next does not succeed either.
        let over = self.task_disk.exceeded_by(self.task_disk.measure(&dirs));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // What the agent could not keep (its disk full): the first reason.
        let mut lost: Option<String> = None;
        let mut modules: Vec<ModuleResult> = a
            .job
            .modules
            .iter()
            .zip(outputs)
            .map(|(m, out)| {
                let mut outcome = match (&over, out.outcome) {
                    (Some(reason), Outcome::Exited { .. }) => Outcome::DiskExceeded {
                        reason: reason.clone(),
                    },
                    (_, outcome) => outcome,
                };
                outcome.bound();
                ModuleResult {
                    name: m.name.clone(),
                    outcome,
                    stdout: self.capture(&out.stdout, out.stdout_truncated, &mut lost),
                    stderr: self.capture(&out.stderr, out.stderr_truncated, &mut lost),
                }
            })
            .collect();
        let output_dir = specs
            .first()
            .map(|s| s.output_dir.clone())
            .unwrap_or_default();
        let (outputs, outputs_truncated) = self.collect_outputs(&output_dir, &mut lost);
        if let Some(reason) = lost {
            // A result missing some of what the task wrote does not succeed: the attempt counts
            // as failed, with the reason, and the task runs again (an agent short of disk takes
            // no more work meanwhile). Not an eviction: a task whose own files fill the disk
            // would run for ever.
            tracing::error!(attempt = %a.attempt, %reason, "the task's output could not be kept");
            let succeeded = modules
                .iter_mut()
                .zip(&a.job.modules)
                .filter(|(m, spec)| m.outcome.succeeds_with(&spec.success_exit_codes));
            for (m, _) in succeeded {
                m.outcome = Outcome::Unreportable {
                    reason: format!("the agent could not keep the task's output: {reason}"),
                };
                m.outcome.bound();
            }
        }
        let mut result = TaskResult {
            attempt: a.attempt,
            modules,
            outputs,
            elapsed_ms,
            outputs_truncated,
        };
        if result.fit(lull_protocol::frame::DEFAULT_MAX_FRAME) {
            tracing::warn!(attempt = %a.attempt, cause = ?result.cause(&a.job), "the result was too large for one message; cut down");
        }
        result
    }

    /// Keeps a captured stream in the cache; when it cannot, says why in `lost`.
    fn capture(
        &self,
        bytes: &[u8],
        truncated: bool,
        lost: &mut Option<String>,
    ) -> Option<Captured> {
        match self.cache.put(bytes) {
            Ok(digest) => Some(Captured {
                digest,
                size: bytes.len() as u64,
                truncated,
            }),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not keep a task's output stream");
                lost.get_or_insert_with(|| format!("{e:#}"));
                None
            }
        }
    }

    /// The task's output files, moved into the cache; a file that cannot be kept is said in
    /// `lost`.
    fn collect_outputs(&self, root: &Path, lost: &mut Option<String>) -> (Vec<OutputFile>, bool) {
        let mut files = Vec::new();
        walk(root, root, &mut files);
        files.sort();
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut truncated = false;
        for (rel, path) in files {
            // A name the coordinator would refuse (too long, control characters), or one file
            // more than a result lists: dropped, and the result says some were.
            // Names that are not UTF-8 are read lossily, so two may read the same: one is kept.
            if out.len() >= MAX_OUTPUT_FILES
                || check_input_path(&rel).is_err()
                || out.last().is_some_and(|o: &OutputFile| o.path == rel)
            {
                truncated = true;
                continue;
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if total + size > self.outputs_cap {
                truncated = true;
                continue;
            }
            match self.cache.adopt(&path) {
                Ok((digest, size)) => {
                    total += size;
                    out.push(OutputFile {
                        path: rel,
                        digest,
                        size,
                    });
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %format!("{e:#}"), "could not keep an output file");
                    lost.get_or_insert_with(|| format!("{rel}: {e:#}"));
                }
            }
        }
        (out, truncated)
    }
}

/// Regular files under `dir`, with their `/`-separated paths relative to `root`. Symlinks are
/// not followed: a guest cannot make the agent read outside its directory.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            walk(root, &path, out);
        } else if ft.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((rel.join("/"), path));
        }
    }
}
