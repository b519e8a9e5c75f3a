//! `lull:guest/host`, the interface Lull offers components beyond WASI (`guest-sdk/wit/`): the
//! task's index and attempt, progress reports, checkpoints and their restoration, eviction
//! notices, and log lines.
//!
//! The sandbox answers the notice from the task's [`TaskControl`]; everything that leaves the
//! sandbox (progress, checkpoints, the checkpoint to restore) goes through the [`GuestHooks`]
//! the caller gives in [`RunSpec::hooks`](super::RunSpec::hooks). Without hooks, a guest still
//! links: its progress goes nowhere, `checkpoint` fails saying checkpoints are not kept here,
//! and `restore` finds nothing.

use std::sync::Arc;
use std::time::Duration;

use super::capture::Capture;
use super::control::{Stop, TaskControl};

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "workload",
    imports: {
        "lull:guest/host.checkpoint-and-leave": trappable,
    },
});

pub use self::lull::guest::host::{Eviction, Level};

/// The hooks of one run, as [`RunSpec::hooks`](super::RunSpec::hooks) holds them (compared by
/// identity).
#[derive(Clone)]
pub struct Hooks(pub Arc<dyn GuestHooks>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

impl PartialEq for Hooks {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Hooks {}

/// What the agent does with what a guest hands over, and what it hands the guest.
pub trait GuestHooks: Send + Sync {
    /// The task's index in its job.
    fn task_index(&self) -> u32;
    /// The attempt's number, from 1.
    fn attempt(&self) -> u32;
    /// The guest reports progress (already clamped to 0..=1).
    fn progress(&self, fraction: f64);
    /// The guest keeps a checkpoint; an error (such as the size cap) goes back to the guest.
    /// `leaving`: the guest ends its attempt right after (`checkpoint-and-leave`), so the state
    /// must be kept at once.
    fn checkpoint(&self, state: Vec<u8>, leaving: bool) -> Result<(), String>;
    /// The checkpoint an earlier attempt kept, for the guest to start from.
    fn restore(&self) -> Option<Vec<u8>>;
}

/// A component's link to the host: the store data `lull:guest/host` works on.
pub(crate) struct GuestLink {
    pub(crate) hooks: Option<Arc<dyn GuestHooks>>,
    pub(crate) control: TaskControl,
    pub(crate) stderr: Capture,
}

impl GuestLink {
    fn keep(&self, state: Vec<u8>, leaving: bool) -> Result<(), String> {
        match &self.hooks {
            Some(h) => h.checkpoint(state, leaving),
            None => Err("this sandbox keeps no checkpoints".into()),
        }
    }
}

fn eviction((reason, remaining): (String, Duration)) -> Eviction {
    Eviction {
        reason,
        remaining_ms: remaining.as_millis().min(u128::from(u64::MAX)) as u64,
    }
}

impl lull::guest::host::Host for GuestLink {
    fn task_index(&mut self) -> u32 {
        self.hooks.as_ref().map_or(0, |h| h.task_index())
    }

    fn attempt(&mut self) -> u32 {
        self.hooks.as_ref().map_or(1, |h| h.attempt())
    }

    fn progress(&mut self, fraction: f64) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        if let Some(h) = &self.hooks {
            h.progress(fraction);
        }
    }

    fn checkpoint(&mut self, state: Vec<u8>) -> Result<(), String> {
        self.keep(state, false)
    }

    fn checkpoint_and_leave(&mut self, state: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.keep(state, true) {
            return Ok(Err(e));
        }
        // Under notice, leaving is the eviction asked for; without one it is the guest's own
        // doing, and uses an attempt.
        let stop = match self.control.notice() {
            Some((reason, _)) => Stop::Evicted(reason),
            None => Stop::Left("the guest left after keeping a checkpoint".into()),
        };
        Err(wasmtime::Error::new(stop))
    }

    fn restore(&mut self) -> Option<Vec<u8>> {
        self.hooks.as_ref().and_then(|h| h.restore())
    }

    fn notice(&mut self) -> Option<Eviction> {
        self.control.notice().map(eviction)
    }

    fn wait_notice(&mut self, timeout_ms: u64) -> Option<Eviction> {
        self.control
            .wait_notice(Duration::from_millis(timeout_ms))
            .map(eviction)
    }

    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.stderr
            .append(format!("[{level}] {message}\n").as_bytes());
    }
}
