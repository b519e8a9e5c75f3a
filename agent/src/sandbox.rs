//! The WebAssembly sandbox: runs one task's guest under wasmtime, with every limit set on purpose.
//!
//! A guest is a WASI command: a core module for WASI preview 1 (`_start`) or a component for WASI
//! preview 2 (`wasi:cli/run`). [`Sandbox::compile`] tells them apart by their bytes and checks
//! their imports; [`Sandbox::run`] runs one to completion on the calling thread and reports an
//! [`Outcome`] for whatever the guest did.
//!
//! What a guest gets, and nothing more:
//!
//! - its arguments (`argv[0]` is [`RunSpec::name`]) and environment, none of the agent's;
//! - stdin from bytes; stdout and stderr captured, each up to [`SandboxConfig::output_cap`] bytes
//!   (the rest is dropped without the guest noticing);
//! - `/input` read-only (when the task has inputs), `/output` and `/scratch` read-write. For
//!   preview 1 guests the preopened descriptors are numbered from 3 in that order (so without
//!   inputs `/output` is 3);
//! - host clocks and randomness; no sockets and no name lookups. A run with a seed
//!   ([`RunSpec::seed`]) is deterministic instead ([`Sandbox::load_deterministic`]).
//!
//! And these limits: linear memory ([`RunSpec::memory_limit`], all memories together), tables and
//! instance counts, the wasm stack ([`SandboxConfig::max_wasm_stack`]) and wall time
//! ([`RunSpec::timeout`]), the last checked at every epoch tick.
//!
//! Getting out of the machine's way:
//!
//! - **Priority.** [`Sandbox::run`] first lowers its calling thread, for good, to the lowest CPU
//!   priority there is (`SCHED_IDLE` on Linux), so guests only get cores the machine's own
//!   programs leave idle. The agent runs each guest on a fresh thread of its own for this reason;
//!   compiling and everything else stay at normal priority.
//! - **Epoch checks.** At each advance of the engine's epoch a running guest calls back into
//!   [`TaskControl`], which decides whether it carries on, stops, or blocks. A request on a
//!   `TaskControl` (pause, cancel, eviction, CPU cap) advances the epoch itself, so guests act
//!   on it within microseconds. Besides, a ticker thread advances it every
//!   [`SandboxConfig::epoch_tick`] (10 ms) while guests run, for their time limits, and at the
//!   end of each run part of a duty cycle, so a capped guest rests on time; it sleeps while
//!   every guest is parked or resting, so the machine's own programs are not woken for
//!   nothing.
//! - **Pause.** [`TaskControl::pause`] parks the guest's thread on a condition variable at its
//!   next check (no spinning) until [`TaskControl::resume`]; the guest then carries on where it
//!   was. [`TaskControl::pause_and_wait`] returns once the guest has stopped.
//! - **Duty cycle.** [`TaskControl::set_cpu_share`] lets a guest run only a share of every
//!   [`DUTY_PERIOD`], all guests in phase.
//! - **Eviction.** [`TaskControl::evict`] lets the guest run for a grace period, then stops it with
//!   [`Outcome::Evicted`].
//! - Time paused or resting in the duty cycle does not count toward [`RunSpec::timeout`].
//!
//! Modules:
//!
//! - `control`: [`TaskControl`] (cancel, pause, duty cycle, eviction) and the epoch check;
//! - `priority`: lowering guest threads to idle priority;
//! - `limits`: the store's resource limiter (memory, tables, instances);
//! - `capture`: the capped stdout and stderr sinks;
//! - `outcome`: how a finished run becomes an [`Outcome`].

mod capture;
mod control;
mod determinism;
mod guest;
mod limits;
mod outcome;
mod priority;

/// The version of wasmtime the agent runs guests with, which agents report (constraints can
/// test it: `wasmtime >= 48`). A test checks it against `Cargo.lock`.
pub const WASMTIME_VERSION: &str = "48.0.8";

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lull_protocol::message::Outcome;
use lull_protocol::sync::lock;
use wasmtime::component::{self, Component, ResourceTable};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Precompiled, ResourceLimiter, Store, UnknownImportError,
    UpdateDeadline, WasmBacktraceDetails,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use self::capture::Capture;
pub use self::control::{DUTY_PERIOD, MIN_CPU_SHARE, TaskControl};
use self::control::{Gate, Nudge, Sleeper};
use self::guest::GuestLink;
pub use self::guest::{GuestHooks, Hooks};
use self::limits::Limits;
use self::outcome::Facts;
pub use self::priority::current_thread_is_idle_priority;

/// Where the guest sees the task's input directory (read-only).
pub const INPUT_DIR: &str = "/input";
/// Where the guest sees the task's output directory (read-write).
pub const OUTPUT_DIR: &str = "/output";
/// Where the guest sees its scratch directory (read-write).
pub const SCRATCH_DIR: &str = "/scratch";

/// Settings of a [`Sandbox`], the same for every task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Bytes kept of each of stdout and stderr; the rest is dropped. Default 1 MiB.
    pub output_cap: u64,
    /// The most stack wasm code may use, in bytes; deeper recursion traps. Default 1 MiB. The
    /// thread calling [`Sandbox::run`] needs this much stack plus room for the host (a few
    /// hundred KiB).
    pub max_wasm_stack: usize,
    /// How often the epoch advances while guests run: how precisely time limits are kept.
    /// Requests on a [`TaskControl`] do not wait for it (they advance the epoch themselves), nor
    /// do duty cycles (the ticker also advances it where their run parts end). Default 10 ms;
    /// ticks shorter than 100 us are made 100 us.
    ///
    /// [`Duration::ZERO`] starts no ticker thread and turns off the advances that requests make:
    /// the owner of the sandbox advances the epoch itself with [`Sandbox::increment_epoch`]
    /// (tests do, to decide exactly when guests check).
    pub epoch_tick: Duration,
    /// Guests that may run in the pooling instance allocator at once ([`RunSpec::pooled`]); 0
    /// makes no pool. Each takes one slot of instances, tables and (up to two) memories; the
    /// caller admits no more than this many at a time (the agent's [`crate::pool`]). Default 0.
    pub pooled_guests: u32,
    /// The most memory a pooled guest may grow to, in bytes (at most 4 GiB). Default 1 GiB.
    pub pooled_memory: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            output_cap: 1 << 20,
            max_wasm_stack: 1 << 20,
            epoch_tick: Duration::from_millis(10),
            pooled_guests: 0,
            pooled_memory: 1 << 30,
        }
    }
}

/// Memories each pooled guest may have (a component can hold a few core modules).
const POOLED_MEMORIES_PER_GUEST: u32 = 2;
/// Core instances each pooled guest may have.
const POOLED_INSTANCES_PER_GUEST: u32 = 8;
/// Bytes of a pooled slot's memory and of its tables reset by hand (rather than by the kernel)
/// when a guest leaves: a slot's first pages stay mapped, which saves system calls and page
/// faults on the next start.
const KEEP_RESIDENT: usize = 64 << 10;
/// Tables each pooled guest may have.
const POOLED_TABLES_PER_GUEST: u32 = 4;

/// The agent's sandbox: two wasmtime [`Engine`]s of one configuration (epoch interruption, the
/// same code generation), one allocating each guest's memory on demand and one with the pooling
/// instance allocator (when [`SandboxConfig::pooled_guests`] is not zero); their WASI linkers;
/// and a ticker thread advancing the engines' epochs every [`SandboxConfig::epoch_tick`] until
/// the sandbox is dropped (none when the tick is zero).
///
/// The pooling allocator keeps its slots' memory mapped between runs and resets a slot to the
/// module's copy-on-write memory image when a guest leaves it, so instantiating a module it has
/// run before is a few microseconds. Compiled code does not depend on the allocator, so one
/// [`Artifact`] loads into both engines.
pub struct Sandbox {
    config: SandboxConfig,
    /// Guests in memory allocated for them alone.
    variable: Flavor,
    /// Guests in the pool.
    pooled: Option<Flavor>,
    /// Guests that must run deterministically (tasks whose results agents must agree on):
    /// NaN bit patterns made canonical, relaxed SIMD deterministic (and no threads, as in
    /// every engine here). Made for the first such guest: an engine and its linkers take
    /// memory that an idle agent does not spend.
    deterministic: std::sync::OnceLock<Flavor>,
    /// The configuration the deterministic engine is made with.
    deterministic_config: Config,
    ticker: Option<Ticker>,
}

/// One engine and its linkers.
struct Flavor {
    engine: Engine,
    module_linker: Linker<ModuleHost>,
    component_linker: component::Linker<ComponentHost>,
}

impl Flavor {
    fn new(config: &Config) -> anyhow::Result<Flavor> {
        let engine = Engine::new(config).map_err(|e| wasmtime_error("creating the engine", &e))?;
        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut module_linker, |host: &mut ModuleHost| {
            &mut host.wasi
        })
        .map_err(|e| wasmtime_error("linking WASI preview 1", &e))?;

        let mut component_linker = component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut component_linker)
            .map_err(|e| wasmtime_error("linking WASI preview 2", &e))?;
        guest::lull::guest::host::add_to_linker::<ComponentHost, component::HasSelf<GuestLink>>(
            &mut component_linker,
            |host| &mut host.guest,
        )
        .map_err(|e| wasmtime_error("linking lull:guest/host", &e))?;
        Ok(Flavor {
            engine,
            module_linker,
            component_linker,
        })
    }

    /// Loads an artifact into this engine and links it.
    fn load(&self, artifact: &Artifact) -> Result<ProgramKind, SandboxError> {
        let refused = |e: wasmtime::Error| SandboxError::Artifact {
            message: format!("{e:#}"),
        };
        // SAFETY: an `Artifact` holds bytes that `Engine::precompile_*` produced, either just
        // now or kept and checked since (`Artifact::from_trusted_bytes`); wasmtime checks
        // that they suit this engine's configuration and version.
        if artifact.component {
            let component = unsafe { Component::deserialize(&self.engine, &artifact.bytes) }
                .map_err(refused)?;
            Ok(ProgramKind::Component(self.link_component(&component)?))
        } else {
            let module =
                unsafe { Module::deserialize(&self.engine, &artifact.bytes) }.map_err(refused)?;
            Ok(ProgramKind::Module(self.link_module(&module)?))
        }
    }

    fn link_module(&self, module: &Module) -> Result<InstancePre<ModuleHost>, SandboxError> {
        let pre = self
            .module_linker
            .instantiate_pre(module)
            .map_err(|e| match e.downcast_ref::<UnknownImportError>() {
                Some(unknown) => SandboxError::UnsupportedImport {
                    import: format!("{}::{}", unknown.module(), unknown.name()),
                    detail: "not defined".to_string(),
                },
                None => SandboxError::Link {
                    message: format!("{e:#}"),
                },
            })?;
        match module.get_export("_start") {
            Some(ExternType::Func(func))
                if func.params().len() == 0 && func.results().len() == 0 => {}
            Some(_) => {
                return Err(SandboxError::NotACommand {
                    message: "its `_start` export is not a function taking and returning nothing"
                        .to_string(),
                });
            }
            None => {
                return Err(SandboxError::NotACommand {
                    message: "the module exports no `_start` function".to_string(),
                });
            }
        }
        Ok(pre)
    }

    fn link_component(
        &self,
        component: &Component,
    ) -> Result<CommandPre<ComponentHost>, SandboxError> {
        let pre = self
            .component_linker
            .instantiate_pre(component)
            .map_err(|e| {
                let detail = format!("{e:#}");
                let component_type = component.component_type();
                let import = component_type
                    .imports(&self.engine)
                    .map(|(name, _)| name)
                    .find(|name| detail.contains(&format!("`{name}`")));
                match import {
                    Some(import) => SandboxError::UnsupportedImport {
                        import: import.to_string(),
                        detail,
                    },
                    None => SandboxError::Link { message: detail },
                }
            })?;
        CommandPre::new(pre).map_err(|e| SandboxError::NotACommand {
            message: format!("it does not export `wasi:cli/run`: {e:#}"),
        })
    }
}

/// Feeds `Hash` output into sha256, for a key that is stable across runs and builds.
struct DigestHasher(lull_protocol::digest::Hasher);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only written to; the digest is read from the inner hasher")
    }
}

/// A compiled guest as bytes: machine code for this sandbox's engine configuration and
/// wasmtime version ([`Sandbox::compatibility_key`]).
#[derive(Clone)]
pub struct Artifact {
    component: bool,
    bytes: Vec<u8>,
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("component", &self.component)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Artifact {
    /// The bytes to keep.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// An artifact from kept bytes; `None` when they are not a wasmtime artifact at all.
    ///
    /// # Safety
    ///
    /// Loading runs the bytes as machine code, trusting them the way one trusts a program on
    /// disk. They must be exactly what [`Artifact::bytes`] returned for an artifact made by
    /// [`Sandbox::precompile`], checked since (the agent's cache keeps a sha256 beside each).
    /// wasmtime checks the version and configuration they were made for, not their code.
    pub unsafe fn from_trusted_bytes(bytes: Vec<u8>) -> Option<Artifact> {
        let component = match Engine::detect_precompiled(&bytes)? {
            Precompiled::Module => false,
            Precompiled::Component => true,
        };
        Some(Artifact { component, bytes })
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Creates the engine, the WASI linkers and the epoch ticker thread (unless
    /// [`SandboxConfig::epoch_tick`] is zero).
    ///
    /// The ticker thread inherits the calling thread's priority: create the sandbox on a thread
    /// at normal priority (never on one that has called [`Sandbox::run`]).
    pub fn new(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // Only checked against `max_wasm_stack`; guests never run on async stacks here.
            .async_stack_size(config.max_wasm_stack.max(1 << 20).saturating_add(1 << 20))
            .wasm_component_model(true)
            .wasm_backtrace_details(WasmBacktraceDetails::Disable);
        let variable = Flavor::new(&wasm)?;
        let deterministic_config = {
            let mut wasm = wasm.clone();
            // No threads either, in every engine: wasmtime is built without its `threads`
            // feature, so modules with shared memory are refused.
            wasm.cranelift_nan_canonicalization(true)
                .relaxed_simd_deterministic(true);
            wasm
        };
        let pooled = if config.pooled_guests == 0 {
            None
        } else {
            let guests = config.pooled_guests;
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(guests)
                .total_core_instances(guests * POOLED_INSTANCES_PER_GUEST)
                .total_memories(guests * POOLED_MEMORIES_PER_GUEST)
                .total_tables(guests * POOLED_TABLES_PER_GUEST)
                .total_gc_heaps(guests)
                .total_stacks(guests)
                .max_core_instances_per_component(POOLED_INSTANCES_PER_GUEST)
                .max_memories_per_component(POOLED_MEMORIES_PER_GUEST)
                .max_tables_per_component(POOLED_TABLES_PER_GUEST)
                .max_memory_size(config.pooled_memory.min(4 << 30) as usize)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT);
            let mut wasm = wasm.clone();
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            Some(Flavor::new(&wasm).context("the pooled engine")?)
        };
        let ticker = if config.epoch_tick.is_zero() {
            None
        } else {
            let mut engines = vec![variable.engine.clone()];
            engines.extend(pooled.as_ref().map(|f| f.engine.clone()));
            Some(Ticker::start(engines, config.epoch_tick)?)
        };
        Ok(Sandbox {
            config,
            variable,
            pooled,
            deterministic: std::sync::OnceLock::new(),
            deterministic_config,
            ticker,
        })
    }

    /// Advances the engine's epoch by one tick: every running guest makes its checks (time limit,
    /// [`TaskControl`]) at its next epoch check. The ticker thread does this every
    /// [`SandboxConfig::epoch_tick`]; with a zero tick, only calls to this do.
    pub fn increment_epoch(&self) {
        self.variable.engine.increment_epoch();
        if let Some(d) = self.deterministic.get() {
            d.engine.increment_epoch();
        }
        if let Some(p) = &self.pooled {
            p.engine.increment_epoch();
        }
    }

    /// Compiles a WASI preview 1 command module or a WASI preview 2 command component, telling
    /// them apart by the header, and links it against the sandbox's WASI so that imports the
    /// sandbox does not provide are refused here rather than when the task runs:
    /// [`Sandbox::precompile`] then [`Sandbox::load`].
    ///
    /// Compiling is CPU-heavy (cranelift, in parallel on wasmtime's threads); call it off the
    /// async runtime. The [`Program`] only runs on this sandbox.
    pub fn compile(&self, bytes: &[u8]) -> Result<Program, SandboxError> {
        self.load(&self.precompile(bytes)?)
    }

    /// Compiles a module or component to machine code, as an [`Artifact`] that can be kept
    /// (on disk) and loaded later without compiling again. Checks that the bytes are valid
    /// WebAssembly, not what they import or export ([`Sandbox::load`] does).
    pub fn precompile(&self, bytes: &[u8]) -> Result<Artifact, SandboxError> {
        precompile_for(&self.variable.engine, bytes)
    }

    /// Compiles and links a module or component for runs that must be deterministic (those
    /// with a [`RunSpec::seed`]): in an engine that makes every NaN a float operation produces
    /// the canonical one and runs relaxed SIMD the same on every CPU (shared memories, and so
    /// threads, are refused in every engine). Its code differs from [`Sandbox::compile`]'s and is not kept on disk.
    pub fn load_deterministic(&self, bytes: &[u8]) -> Result<Program, SandboxError> {
        let flavor = self.deterministic_flavor()?;
        let artifact = precompile_for(&flavor.engine, bytes)?;
        Ok(Program {
            engine: flavor.engine.clone(),
            kind: flavor.load(&artifact)?,
            pooled: None,
        })
    }
}

impl Sandbox {
    /// The deterministic engine, made on first use (and then advanced by the ticker too).
    fn deterministic_flavor(&self) -> Result<&Flavor, SandboxError> {
        if let Some(flavor) = self.deterministic.get() {
            return Ok(flavor);
        }
        let made = Flavor::new(&self.deterministic_config).map_err(|e| SandboxError::Link {
            message: format!("making the deterministic engine: {e:#}"),
        })?;
        let engine = made.engine.clone();
        // Another thread may have made one meanwhile: the first stays, and only it ticks.
        if self.deterministic.set(made).is_ok()
            && let Some(ticker) = &self.ticker
        {
            ticker.add_engine(engine);
        }
        Ok(self.deterministic.get().expect("set above"))
    }
}

/// Compiles a module or component for `engine`.
fn precompile_for(engine: &Engine, bytes: &[u8]) -> Result<Artifact, SandboxError> {
    let component = match binary_kind(bytes)? {
        BinaryKind::Module => false,
        BinaryKind::Component => true,
    };
    let compiled = if component {
        engine.precompile_component(bytes)
    } else {
        engine.precompile_module(bytes)
    };
    let bytes = compiled.map_err(|e| SandboxError::Invalid {
        message: format!("{e:#}"),
    })?;
    Ok(Artifact { component, bytes })
}

impl Sandbox {
    /// Loads a compiled artifact into the sandbox's engines and links it; see
    /// [`Sandbox::compile`]. A program whose shape exceeds what one pool slot holds (more
    /// memories, instances or tables) still loads, and runs outside the pool.
    pub fn load(&self, artifact: &Artifact) -> Result<Program, SandboxError> {
        let kind = self.variable.load(artifact)?;
        let pooled = self
            .pooled
            .as_ref()
            .and_then(|flavor| match flavor.load(artifact) {
                Ok(kind) => Some(kind),
                Err(e) => {
                    tracing::debug!(error = %e, "the program does not fit a pool slot; it runs outside the pool");
                    None
                }
            });
        Ok(Program {
            engine: self.variable.engine.clone(),
            kind,
            pooled,
        })
    }

    /// A key naming everything compiled code depends on: the wasmtime version, the target and
    /// the engine's code-generation settings. Artifacts kept under one key load in any sandbox
    /// with the same key.
    pub fn compatibility_key(&self) -> String {
        use std::hash::Hash;
        let mut hasher = DigestHasher(lull_protocol::digest::Hasher::new());
        WASMTIME_VERSION.hash(&mut hasher);
        self.variable
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.0.finish().hex()[..16].to_string()
    }

    /// Runs `program` to completion on the calling thread and reports how it ended.
    ///
    /// Never panics for anything the guest does: traps, exits, running out of memory, time or
    /// stack, cancellation and eviction all end as an [`Outcome`]. A setup problem on the host
    /// (such as an input directory that cannot be opened, or a `program` from another sandbox) is
    /// [`Outcome::Refused`].
    ///
    /// **Lowers the calling thread's CPU priority for good** before the guest starts: to
    /// `SCHED_IDLE` on Linux, the background policy on macOS, nice 19 on other Unix systems
    /// (process-wide on most of them); nothing on Windows. If that fails, a warning is logged
    /// once and the guest runs anyway. So call it from a fresh OS thread of its own (the agent
    /// uses one per guest, started for that guest), never from a thread that must keep normal
    /// priority such as the async runtime's, nor from inside a Tokio runtime at all: WASI's
    /// synchronous host calls block on their own runtime.
    ///
    /// The time limit and every request on `control` (cancel, pause, CPU share, eviction) act at
    /// the guest's next epoch check; a guest blocked inside a single host call (for example
    /// sleeping in `poll_oneoff`) notices only when that call returns. Time spent paused or resting
    /// in the duty cycle does not count toward [`RunSpec::timeout`]. Several guests may run with
    /// one `control` at once (the modules of a task), each on its own thread.
    pub fn run(&self, program: &Program, spec: &RunSpec, control: &TaskControl) -> RunOutput {
        priority::lower_current_thread();
        let started = Instant::now();
        let stdout = Capture::new(self.config.output_cap);
        let stderr = Capture::new(self.config.output_cap);
        control.show_output(&spec.name, &stdout, &stderr);
        let outcome = self.execute(program, spec, control, started, &stdout, &stderr, true);
        control.forget_output(&spec.name);
        let elapsed = started.elapsed();
        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        tracing::debug!(name = %spec.name, ?outcome, ?elapsed, "guest finished");
        RunOutput {
            outcome,
            stdout,
            stdout_truncated,
            stderr,
            stderr_truncated,
            elapsed,
        }
    }

    /// Instantiates `program` as [`Sandbox::run`] does (a store with the task's WASI context and
    /// limits, in the pool when [`RunSpec::pooled`]) and drops it without running the guest:
    /// what a start costs before the guest's own code runs. `Exited { code: 0 }` when it
    /// instantiated. Leaves the thread's priority alone. For measuring warm starts.
    pub fn instantiate_only(&self, program: &Program, spec: &RunSpec) -> Outcome {
        let stdout = Capture::new(self.config.output_cap);
        let stderr = Capture::new(self.config.output_cap);
        let control = TaskControl::new();
        self.execute(
            program,
            spec,
            &control,
            Instant::now(),
            &stdout,
            &stderr,
            false,
        )
    }

    /// Instantiates and, with `call`, runs the guest.
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        program: &Program,
        spec: &RunSpec,
        control: &TaskControl,
        started: Instant,
        stdout: &Capture,
        stderr: &Capture,
        call: bool,
    ) -> Outcome {
        let facts = Facts {
            memory_limit: spec.memory_limit,
            memory_denied: false,
            timeout: spec.timeout,
        };
        let deterministic = self
            .deterministic
            .get()
            .is_some_and(|d| Engine::same(&program.engine, &d.engine));
        if !deterministic && !Engine::same(&program.engine, &self.variable.engine) {
            return Outcome::Refused {
                reason: "the program was compiled by another sandbox".to_string(),
            };
        }
        if deterministic != spec.seed.is_some() {
            return Outcome::Refused {
                reason: "a deterministic run needs a program loaded for it, and a seed".to_string(),
            };
        }
        // The ticker ticks while this guest runs, and sleeps while every guest is parked.
        let ticking = self
            .ticker
            .as_ref()
            .map(|ticker| Box::new(ticker.hold()) as Box<dyn Sleeper>);
        // Requests act at once, except in a sandbox whose owner advances the epoch by hand.
        let (kind, flavor) = match (&program.pooled, &self.pooled) {
            _ if deterministic => (
                &program.kind,
                self.deterministic.get().expect("the program's engine"),
            ),
            (Some(kind), Some(flavor)) if spec.pooled => (kind, flavor),
            _ => (&program.kind, &self.variable),
        };
        let nudge = self.ticker.as_ref().map(|_| {
            let engine = flavor.engine.clone();
            Arc::new(move || engine.increment_epoch()) as Nudge
        });
        let mut gate = control.gate(started.checked_add(spec.timeout), ticking, nudge);
        // The first check: a cancelled or evicted task never starts, a paused one waits here.
        if let Some(stop) = gate.checkpoint() {
            return facts.failed(&wasmtime::Error::new(stop));
        }
        let mut wasi = match wasi_context(spec, stdout, stderr) {
            Ok(wasi) => wasi,
            Err(reason) => return Outcome::Refused { reason },
        };
        let limits = Limits::new(spec.memory_limit);

        match kind {
            ProgramKind::Module(pre) => {
                let host = ModuleHost {
                    wasi: wasi.build_p1(),
                    limits,
                };
                let mut store = store(&flavor.engine, host, gate);
                let result = pre.instantiate(&mut store).and_then(|instance| {
                    if !call {
                        return Ok(());
                    }
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call(&mut store, ())
                });
                let facts = Facts {
                    memory_denied: store.data().limits.memory_denied(),
                    ..facts
                };
                match result {
                    Ok(()) => facts.exited(0),
                    Err(error) => facts.failed(&error),
                }
            }
            ProgramKind::Component(pre) => {
                let host = ComponentHost {
                    wasi: wasi.build(),
                    table: ResourceTable::new(),
                    limits,
                    guest: GuestLink {
                        hooks: spec.hooks.as_ref().map(|h| h.0.clone()),
                        control: control.clone(),
                        stderr: stderr.clone(),
                    },
                };
                let mut store = store(&flavor.engine, host, gate);
                let result = pre.instantiate(&mut store).and_then(|command| {
                    if !call {
                        return Ok(Ok(()));
                    }
                    command.wasi_cli_run().call_run(&mut store)
                });
                let facts = Facts {
                    memory_denied: store.data().limits.memory_denied(),
                    ..facts
                };
                match result {
                    Ok(Ok(())) => facts.exited(0),
                    Ok(Err(())) => facts.exited(1),
                    Err(error) => facts.failed(&error),
                }
            }
        }
    }
}

/// A store for one run: the limiter, and an epoch deadline of one tick whose callback checks
/// the task's control and the time limit through `gate` (blocking there while the guest is
/// paused or resting) before granting the next tick. The gate lives as long as the store.
fn store<H: Host>(engine: &Engine, host: H, mut gate: Gate) -> Store<H> {
    let mut store = Store::new(engine, host);
    store.limiter(|host| -> &mut dyn ResourceLimiter { host.limits() });
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| match gate.checkpoint() {
        Some(stop) => Err(wasmtime::Error::new(stop)),
        None => Ok(UpdateDeadline::Continue(1)),
    });
    store
}

/// A compiled, linked guest, ready to run any number of times (cheap to clone).
#[derive(Clone)]
pub struct Program {
    /// The engine it was loaded into; [`Sandbox::run`] refuses programs of other sandboxes.
    engine: Engine,
    kind: ProgramKind,
    /// The same, linked in the pooled engine (`None` without a pool, or when the program does
    /// not fit a slot).
    pooled: Option<ProgramKind>,
}

#[derive(Clone)]
enum ProgramKind {
    /// A WASI preview 1 command module.
    Module(InstancePre<ModuleHost>),
    /// A WASI preview 2 command component.
    Component(CommandPre<ComponentHost>),
}

impl Program {
    /// Whether this is a component (WASI preview 2) rather than a core module (preview 1).
    pub fn is_component(&self) -> bool {
        matches!(self.kind, ProgramKind::Component(_))
    }

    /// Whether it can run in the sandbox's pool ([`RunSpec::pooled`]).
    pub fn fits_pool(&self) -> bool {
        self.pooled.is_some()
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("is_component", &self.is_component())
            .finish_non_exhaustive()
    }
}

/// What to run a program with: everything that differs between tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// `argv[0]`.
    pub name: String,
    /// `argv[1..]`, already expanded by the caller.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// The guest's stdin.
    pub stdin: Vec<u8>,
    /// A host directory the guest sees read-only as `/input`.
    pub input_dir: Option<PathBuf>,
    /// Directory trees the guest sees read-only: host directory and guest path.
    pub mounts: Vec<(PathBuf, String)>,
    /// A host directory the guest sees read-write as `/output`.
    pub output_dir: PathBuf,
    /// A host directory the guest sees read-write as `/scratch`.
    pub scratch_dir: PathBuf,
    /// Cap on the guest's linear memory, all memories together, in bytes.
    pub memory_limit: u64,
    /// Wall-time limit, from the start of [`Sandbox::run`].
    pub timeout: Duration,
    /// Run in the pooling allocator, when the sandbox has one and the program fits a slot
    /// ([`Program::fits_pool`]); otherwise in memory allocated for this run.
    pub pooled: bool,
    /// Where a component's progress and checkpoints go through `lull:guest/host`, and the
    /// checkpoint it restores; `None`: nowhere, and none.
    pub hooks: Option<Hooks>,
    /// Run deterministically, with this seed (the program must come from
    /// [`Sandbox::load_deterministic`]): the clocks start at fixed times and move on by a
    /// fixed step at each reading, and the random streams come from the seed. `None`: the
    /// host's clocks and randomness.
    pub seed: Option<u64>,
}

/// How a run ended, and what the guest printed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// How it ended.
    pub outcome: Outcome,
    /// The first [`SandboxConfig::output_cap`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// Whether stdout had more than that.
    pub stdout_truncated: bool,
    /// The first [`SandboxConfig::output_cap`] bytes of stderr.
    pub stderr: Vec<u8>,
    /// Whether stderr had more than that.
    pub stderr_truncated: bool,
    /// Wall time of the run, instantiation, pauses and duty-cycle rests included.
    pub elapsed: Duration,
}

/// Why [`Sandbox::compile`] refused a program.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The bytes are not a WebAssembly binary (no `\0asm` header).
    #[error("not a WebAssembly module or component (the `\\0asm` header is missing)")]
    NotWasm,
    /// The bytes start like WebAssembly but wasmtime cannot decode, validate or compile them.
    #[error("invalid WebAssembly: {message}")]
    Invalid {
        /// wasmtime's explanation.
        message: String,
    },
    /// The program imports something the sandbox does not provide (anything beyond WASI
    /// preview 1 for modules, WASI preview 2 for components), or with another type.
    #[error("the program imports `{import}`, which the sandbox does not provide ({detail})")]
    UnsupportedImport {
        /// The import: `module::name` for a core module, the interface or function name for a
        /// component.
        import: String,
        /// More about the mismatch.
        detail: String,
    },
    /// A compiled artifact cannot be loaded (made by another wasmtime or configuration).
    #[error("cannot load the compiled program: {message}")]
    Artifact {
        /// wasmtime's explanation.
        message: String,
    },
    /// Linking failed for another reason than a missing import.
    #[error("cannot link the program: {message}")]
    Link {
        /// wasmtime's explanation.
        message: String,
    },
    /// The program is not a WASI command: a module without a `_start` function, or a component
    /// without a `wasi:cli/run` export.
    #[error("not a WASI command: {message}")]
    NotACommand {
        /// What is missing.
        message: String,
    },
}

/// Store data of a core module's run.
struct ModuleHost {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Store data of a component's run.
struct ComponentHost {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    guest: GuestLink,
}

impl WasiView for ComponentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What [`Sandbox::store`] needs of a store's data.
trait Host: Send + 'static {
    fn limits(&mut self) -> &mut Limits;
}

impl Host for ModuleHost {
    fn limits(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

impl Host for ComponentHost {
    fn limits(&mut self) -> &mut Limits {
        &mut self.limits
    }
}

/// The WASI context of one run, built from nothing: each grant is explicit.
fn wasi_context(
    spec: &RunSpec,
    stdout: &Capture,
    stderr: &Capture,
) -> Result<WasiCtxBuilder, String> {
    let mut wasi = WasiCtxBuilder::new();
    // Must come before the preopens, which copy it: file operations then run on this thread
    // instead of being handed to a blocking pool and waited for.
    wasi.allow_blocking_current_thread(true)
        .stdin(MemoryInputPipe::new(spec.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .arg(&spec.name)
        .args(&spec.args)
        .envs(&spec.env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    let mut preopen = |host: &PathBuf, guest: &str, perms: FsPerms| {
        wasi.preopened_dir(host, guest, perms)
            .map(|_| ())
            .map_err(|e| format!("cannot open {} for {guest}: {e:#}", host.display()))
    };
    if let Some(input) = &spec.input_dir {
        preopen(input, INPUT_DIR, FsPerms::ReadOnly)?;
    }
    for (host, guest) in &spec.mounts {
        preopen(host, guest, FsPerms::ReadOnly)?;
    }
    preopen(&spec.output_dir, OUTPUT_DIR, FsPerms::ReadWrite)?;
    preopen(&spec.scratch_dir, SCRATCH_DIR, FsPerms::ReadWrite)?;
    if let Some(seed) = spec.seed {
        determinism::apply(&mut wasi, seed);
    }
    Ok(wasi)
}

enum BinaryKind {
    Module,
    Component,
}

/// Tells a core module from a component by the header: `\0asm`, then a 16-bit version and a 16-bit
/// layer (0 for core modules, 1 for components).
fn binary_kind(bytes: &[u8]) -> Result<BinaryKind, SandboxError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => Ok(BinaryKind::Module),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(BinaryKind::Component),
        Some([0, b'a', b's', b'm', _, _, low, high]) => Err(SandboxError::Invalid {
            message: format!("unknown binary layer {}", u16::from_le_bytes([*low, *high])),
        }),
        _ => Err(SandboxError::NotWasm),
    }
}

/// wasmtime has its own error type; the agent's setup errors are `anyhow`.
fn wasmtime_error(doing: &str, error: &wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{doing}: {error:#}")
}

/// The thread that advances the engine's epoch; it stops when this is dropped.
struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the ticker thread and the runs share: how many guests run (the ticker sleeps without
/// waking while there are none, so an idle agent costs nothing here), the CPU shares of those
/// that are duty-cycled (the ticker also ticks where their run parts end), and whether to stop.
#[derive(Default)]
struct TickerShared {
    state: Mutex<TickerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TickerState {
    /// The engines whose epochs it advances.
    engines: Vec<Engine>,
    active: usize,
    /// One entry per duty-cycled guest.
    shares: Vec<f64>,
    /// Bumped whenever `shares` changes, so that the ticker recomputes its next tick.
    generation: u64,
    stop: bool,
}

impl Ticker {
    fn start(engines: Vec<Engine>, tick: Duration) -> anyhow::Result<Ticker> {
        // A zero tick would spin a core; nothing needs finer than this.
        let tick = tick.max(Duration::from_micros(100));
        let shared = Arc::new(TickerShared::default());
        lock(&shared.state).engines = engines;
        let theirs = shared.clone();
        let thread = thread::Builder::new()
            .name("lull-epoch".to_string())
            .spawn(move || {
                let mut state = lock(&theirs.state);
                loop {
                    while state.active == 0 && !state.stop {
                        state = theirs.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                    if state.stop {
                        return;
                    }
                    // The next tick, or the next end of a duty cycle's run part if sooner (not
                    // too soon: a guest that checks at a run part's end rests from then on).
                    let now = Instant::now();
                    let wait = state
                        .shares
                        .iter()
                        .map(|&share| control::duty_run_ends_in(now, share))
                        .fold(tick, Duration::min)
                        .max(Duration::from_micros(20));
                    let generation = state.generation;
                    state = theirs
                        .wake
                        .wait_timeout_while(state, wait, |s| !s.stop && s.generation == generation)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    if state.generation != generation {
                        // The duty cycles changed: work out the next tick again.
                        continue;
                    }
                    for engine in &state.engines {
                        engine.increment_epoch();
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("starting the epoch ticker thread: {e}"))?;
        Ok(Ticker {
            shared,
            thread: Some(thread),
        })
    }

    /// Advances `engine`'s epoch too from now on.
    fn add_engine(&self, engine: Engine) {
        lock(&self.shared.state).engines.push(engine);
    }

    /// A hold that keeps the ticker ticking while it lives and is awake (one per running guest).
    fn hold(&self) -> TickerHold {
        let mut hold = TickerHold {
            shared: self.shared.clone(),
            awake: false,
            share: None,
        };
        hold.awake();
        hold
    }
}

/// A running guest's hold on the ticker: released while the guest sleeps in its gate (paused or
/// resting), so that the ticker sleeps too once every guest does, and the machine's own programs
/// are not woken a thousand times a second for guests that cannot use the ticks.
struct TickerHold {
    shared: Arc<TickerShared>,
    awake: bool,
    /// This guest's duty cycle share, as entered in the ticker's `shares`.
    share: Option<f64>,
}

impl Sleeper for TickerHold {
    fn asleep(&mut self) {
        if self.awake {
            self.awake = false;
            let mut state = lock(&self.shared.state);
            state.active = state.active.saturating_sub(1);
        }
    }

    fn awake(&mut self) {
        if !self.awake {
            self.awake = true;
            lock(&self.shared.state).active += 1;
            self.shared.wake.notify_all();
        }
    }

    fn duty_cycled(&mut self, share: Option<f64>) {
        if self.share != share {
            let mut state = lock(&self.shared.state);
            if let Some(old) = self.share
                && let Some(at) = state.shares.iter().position(|s| *s == old)
            {
                state.shares.swap_remove(at);
            }
            state.shares.extend(share);
            state.generation = state.generation.wrapping_add(1);
            drop(state);
            self.share = share;
            self.shared.wake.notify_all();
        }
    }
}

impl Drop for TickerHold {
    fn drop(&mut self) {
        self.asleep();
        self.duty_cycled(None);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The ticker only sleeps and increments a counter; a panic there is not ours to
            // propagate from a destructor.
            let _ = thread.join();
        }
    }
}
