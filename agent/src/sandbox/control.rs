//! [`TaskControl`]: how the agent steers a running guest from another thread, and the check the
//! guest's epoch callback makes against it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A handle shared between the thread running a guest and the agent (cheap to clone; `Send` and
/// `Sync`).
///
/// The guest looks at it at every epoch check (about once per epoch tick, 1 ms by default), so a
/// [`cancel`](TaskControl::cancel) stops the guest within about a tick, unless it is blocked inside
/// a host call (see [`Sandbox::run`](super::Sandbox::run)).
#[derive(Clone, Default)]
pub struct TaskControl {
    inner: Arc<Inner>,
}

/// The shared state.
///
/// `attention` is the cheap flag the epoch callback reads on every tick; it is set whenever
/// anything in `state` needs the runner to act. The slow path takes the lock. Pausing will be a
/// field in `State` plus a `Condvar` here that [`TaskControl::checkpoint`] waits on.
#[derive(Default)]
struct Inner {
    attention: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set by [`TaskControl::cancel`]; the first reason wins.
    cancelled: Option<String>,
}

impl TaskControl {
    /// A control with nothing requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the guest stop at its next epoch check; [`Sandbox::run`](super::Sandbox::run) then
    /// returns [`Outcome::Cancelled`](lull_protocol::message::Outcome::Cancelled) with `reason`.
    /// Later calls keep the first reason. Cancelling before `run` starts makes `run` return
    /// `Cancelled` without running the guest.
    pub fn cancel(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.cancelled.is_none() {
            state.cancelled = Some(reason.into());
        }
        self.inner.attention.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](TaskControl::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled.is_some()
    }

    /// What the epoch callback calls: `Some(stop)` when the guest must stop now.
    ///
    /// The fast path is one atomic load and, when there is a deadline, one clock read.
    pub(crate) fn checkpoint(&self, deadline: Option<Instant>) -> Option<Stop> {
        if self.inner.attention.load(Ordering::Acquire)
            && let Some(stop) = self.attend()
        {
            return Some(stop);
        }
        match deadline {
            Some(deadline) if Instant::now() >= deadline => Some(Stop::TimedOut),
            _ => None,
        }
    }

    /// The slow path of [`checkpoint`](TaskControl::checkpoint), taken once something was
    /// requested. (Pausing will wait here, on a condition variable, while paused.)
    fn attend(&self) -> Option<Stop> {
        self.lock().cancelled.clone().map(Stop::Cancelled)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value that no code can leave half-updated, so a poisoned lock is
        // still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for TaskControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskControl")
            .field("cancelled", &self.lock().cancelled)
            .finish()
    }
}

/// Why the sandbox interrupted a guest. It travels through wasmtime as the error the epoch
/// callback returns, and [`super::outcome`] recognises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    /// The wall-time limit passed.
    #[error("the guest ran past its time limit")]
    TimedOut,
    /// [`TaskControl::cancel`] was called.
    #[error("the guest was cancelled: {0}")]
    Cancelled(String),
}
