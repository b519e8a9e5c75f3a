//! [`TaskControl`]: how the agent steers a running guest from another thread, and the check the
//! guest's epoch callback makes against it.
//!
//! The agent can:
//!
//! - **cancel** a task: its guests stop at their next epoch check;
//! - **pause** and **resume** it: at its next epoch check a paused guest blocks its thread on a
//!   condition variable (no spinning, no polling) until it is resumed, cancelled or evicted, then
//!   carries on exactly where it stopped. [`TaskControl::pause_and_wait`] also waits for the guest
//!   to acknowledge, which is how the agent learns when the guest really stopped;
//! - **cap its CPU share** (duty cycling): with a share below 1 a guest runs `share *`
//!   [`DUTY_PERIOD`] of every period and sleeps on the condition variable for the rest. Periods
//!   are aligned to one monotonic origin per process, so all guests of an agent run and rest in
//!   phase and the machine's own programs get whole stretches of the CPU back;
//! - **evict** it with a grace period: the guest keeps running (resumed if it was paused) until the
//!   grace runs out, then stops with [`Outcome::Evicted`]. A guest that ends on its own during the
//!   grace keeps its own outcome.
//!
//! Time spent paused or resting in the duty cycle does not count toward the task's time limit:
//! each guest's deadline moves forward by the time it slept.
//!
//! A request that needs the guest to act (pause, cancel, eviction, a CPU cap) advances the
//! engine's epoch at once (the sandbox's [`Nudge`]), so running guests make their check within
//! microseconds rather than at the next tick.
//!
//! A guest can only park at an epoch check it runs itself. Guest threads run at idle priority,
//! so while the machine's own programs keep every core busy a guest may wait hundreds of
//! milliseconds for a slice in which to reach its check. To be stopped promptly, a guest that is
//! asked to pause is raised to normal priority until it parks (see
//! [`priority::boost`](super::priority::boost)); it lowers itself again before it blocks. Once
//! running, a guest reaches its check within one tick, so the incumbents lend it microseconds.
//! Where the agent may not raise priorities (no `CAP_SYS_NICE`, `RLIMIT_NICE` of 0), pauses still
//! happen, only later on a saturated machine.
//!
//! The guest side is a [`Gate`], one per running guest, owned by the store's epoch callback. Its
//! fast path (nothing requested) is one atomic load plus the deadline check; everything else
//! takes the lock.
//!
//! [`Outcome::Evicted`]: lull_protocol::message::Outcome::Evicted

use std::fmt;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::priority::{self, ThreadId};
use lull_protocol::sync::lock;

/// The period of the duty cycle that [`TaskControl::set_cpu_share`] sets up: a capped guest runs
/// `share` of each period and sleeps the rest. Short enough that the machine's own programs
/// never wait long for a core, long enough that a guest's epoch checks (one per 1 ms tick) can
/// follow it.
pub const DUTY_PERIOD: Duration = Duration::from_millis(10);

/// The smallest CPU share [`TaskControl::set_cpu_share`] accepts; smaller values are raised to
/// it. (A share of zero is a pause: use [`TaskControl::pause`].)
pub const MIN_CPU_SHARE: f64 = 0.01;

/// A handle shared between the thread(s) running a task's guests and the agent (cheap to clone;
/// `Send` and `Sync`). One control may steer several guests at once (the modules of one task).
///
/// Guests look at it at every epoch check (about once per epoch tick, 1 ms by default), so a
/// request takes effect within about a tick, unless the guest is blocked inside a host call (see
/// [`Sandbox::run`](super::Sandbox::run)). Every method may be called before, during or after a
/// run.
#[derive(Clone, Default)]
pub struct TaskControl {
    inner: Arc<Inner>,
}

/// The shared state.
///
/// `attention` is the cheap flag the epoch callback reads on every tick; it is set whenever
/// anything in `state` needs the guest to act (cancelled, evicted, paused, or a CPU share below
/// 1). The slow path takes the lock. `changed` is notified on every change of `state`: guests
/// wait on it while paused or resting, and [`TaskControl::pause_and_wait`] waits on it for their
/// acknowledgement.
#[derive(Default)]
struct Inner {
    attention: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    /// The output of each module running with this control, by name, while it runs.
    outputs: Mutex<std::collections::HashMap<String, [super::capture::Capture; 2]>>,
}

struct State {
    /// Set by [`TaskControl::cancel`] ([`Stop::Cancelled`]) or [`TaskControl::halt`] (another
    /// stop for good); the first wins.
    halted: Option<Stop>,
    /// Set by [`TaskControl::evict`]; the first reason and the earliest deadline win.
    eviction: Option<Eviction>,
    /// Whether the agent asked for a pause.
    paused: bool,
    /// The duty cycle's share, in [`MIN_CPU_SHARE`]`..=1`.
    cpu_share: f64,
    /// Guests inside [`Sandbox::run`](super::Sandbox::run) with this control (live [`Gate`]s).
    running: usize,
    /// Guests currently blocked by the pause.
    parked: usize,
    /// Since when at least one guest has been parked, while one is.
    parked_since: Option<Instant>,
    /// Time with at least one guest parked, over the periods that ended.
    parked_total: Duration,
    /// The OS threads of the guests that are running and not parked (where the OS names them).
    unparked: Vec<ThreadId>,
    /// Whether the threads in `unparked` were raised to normal priority to reach their pause.
    boosted: bool,
    /// Makes running guests reach their next epoch check now (advances their engine's epoch),
    /// so a request does not wait for the next tick. Set by the gates.
    nudge: Option<Nudge>,
}

/// Advances the epoch of the engine a control's guests run in: every running guest of it then
/// makes its check at its next loop iteration or call.
pub(crate) type Nudge = Arc<dyn Fn() + Send + Sync>;

impl Default for State {
    fn default() -> Self {
        Self {
            halted: None,
            eviction: None,
            paused: false,
            cpu_share: 1.0,
            running: 0,
            parked: 0,
            parked_since: None,
            parked_total: Duration::ZERO,
            unparked: Vec::new(),
            boosted: false,
            nudge: None,
        }
    }
}

impl State {
    /// Takes a guest's thread off the list of those running and not parked, lowering it back
    /// to idle priority if it was raised to reach a pause.
    fn unlist(&mut self, thread: ThreadId) {
        self.unparked.retain(|t| *t != thread);
        if self.boosted {
            priority::lower_thread(thread);
            self.boosted = !self.unparked.is_empty();
        }
    }

    /// Whether a guest must take the slow path at its next check.
    fn needs_attention(&self) -> bool {
        self.halted.is_some() || self.eviction.is_some() || self.paused || self.cpu_share < 1.0
    }
}

/// An eviction in progress.
#[derive(Debug)]
struct Eviction {
    reason: String,
    /// When the guest must stop.
    at: Instant,
}

impl TaskControl {
    /// A control with nothing requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a running module's stdout and stderr readable with [`TaskControl::read_output`]
    /// until [`TaskControl::forget_output`].
    pub(crate) fn show_output(
        &self,
        module: &str,
        stdout: &super::capture::Capture,
        stderr: &super::capture::Capture,
    ) {
        lock(&self.inner.outputs).insert(module.to_owned(), [stdout.clone(), stderr.clone()]);
    }

    /// A module's output is no longer readable: it ended, and its result carries it.
    pub(crate) fn forget_output(&self, module: &str) {
        lock(&self.inner.outputs).remove(module);
    }

    /// What a running module wrote to `stream` so far, from `offset` (at most
    /// [`MAX_TAIL`](lull_protocol::message::MAX_TAIL) bytes); `None` when no module of that
    /// name runs.
    pub fn read_output(
        &self,
        module: &str,
        stream: lull_protocol::message::Stream,
        offset: u64,
    ) -> Option<lull_protocol::message::LiveOutput> {
        let outputs = lock(&self.inner.outputs);
        let [stdout, stderr] = outputs.get(module)?;
        let capture = match stream {
            lull_protocol::message::Stream::Stdout => stdout,
            lull_protocol::message::Stream::Stderr => stderr,
        };
        Some(capture.read(offset, lull_protocol::message::MAX_TAIL))
    }

    /// Makes the guest stop at its next epoch check; [`Sandbox::run`](super::Sandbox::run) then
    /// returns [`Outcome::Cancelled`](lull_protocol::message::Outcome::Cancelled) with `reason`.
    /// Later calls keep the first reason. Cancelling before `run` starts makes `run` return
    /// `Cancelled` without running the guest; cancelling a paused guest wakes it to stop.
    pub fn cancel(&self, reason: impl Into<String>) {
        self.halt(Stop::Cancelled(reason.into()));
    }

    /// Makes the guest stop at its next epoch check because its files grew past the agent's
    /// cap: [`Sandbox::run`](super::Sandbox::run) then returns
    /// [`Outcome::DiskExceeded`](lull_protocol::message::Outcome::DiskExceeded) with `reason`.
    /// Like [`cancel`](TaskControl::cancel), the first stop requested wins.
    pub fn stop_over_disk(&self, reason: impl Into<String>) {
        self.halt(Stop::DiskExceeded(reason.into()));
    }

    fn halt(&self, stop: Stop) {
        let mut state = self.lock();
        if state.halted.is_none() {
            state.halted = Some(stop);
        }
        self.changed(&mut state);
    }

    /// Whether the task was told to stop for good ([`cancel`](TaskControl::cancel) or
    /// [`stop_over_disk`](TaskControl::stop_over_disk)).
    pub fn is_cancelled(&self) -> bool {
        self.lock().halted.is_some()
    }

    /// Asks the guest to stop where it is: at its next epoch check its thread blocks until
    /// [`resume`](TaskControl::resume), [`cancel`](TaskControl::cancel) or
    /// [`evict`](TaskControl::evict). Nothing of the guest's state is lost, and the time it spends
    /// paused does not count toward its time limit. Pausing before `run` starts makes the guest
    /// wait before it is instantiated. Returns at once; see
    /// [`pause_and_wait`](TaskControl::pause_and_wait) to learn when the guest has stopped.
    pub fn pause(&self) {
        let mut state = self.lock();
        state.paused = true;
        self.changed(&mut state);
    }

    /// Lets a paused guest carry on. Does nothing if it is not paused.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.paused = false;
        self.changed(&mut state);
    }

    /// Whether a pause is requested (by [`pause`](TaskControl::pause), and not yet undone by
    /// [`resume`](TaskControl::resume) or [`evict`](TaskControl::evict)). The guest may still be
    /// on its way to its next epoch check.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Requests a pause, like [`pause`](TaskControl::pause), then blocks the caller until every
    /// guest running with this control has stopped (its thread is parked), or none is running
    /// (not started yet, or finished). Returns how long that took from the call, or `None` if it
    /// took longer than `timeout` (for example because the guest is inside a long host call) or
    /// if the pause was lifted in the meantime; the pause stays requested either way.
    ///
    /// This is "decision to guest stopped". The guest's thread notifies the same condition
    /// variable it then waits on, so the caller wakes as soon as the guest parks.
    pub fn pause_and_wait(&self, timeout: Duration) -> Option<Duration> {
        let asked = Instant::now();
        let mut state = self.lock();
        state.paused = true;
        self.changed(&mut state);
        loop {
            if state.parked >= state.running {
                return Some(asked.elapsed());
            }
            if !state.paused {
                return None;
            }
            let left = timeout.checked_sub(asked.elapsed())?;
            if left.is_zero() {
                return None;
            }
            state = self.wait(state, Some(left));
        }
    }

    /// Total wall time during which at least one of this control's guests was stopped by a
    /// pause, including a pause in progress. Time paused before the guest started, and the rests
    /// of the duty cycle, are not included.
    pub fn paused_for(&self) -> Duration {
        let state = self.lock();
        let current = state
            .parked_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        state.parked_total.saturating_add(current)
    }

    /// Caps the guest's CPU use by duty cycling: with `share` below 1 the guest runs `share` of
    /// every [`DUTY_PERIOD`] and sleeps the rest (its thread blocks, it does not spin), checked at
    /// its epoch checks, so the run part is rounded up to a whole tick. `1.0` lifts the cap.
    /// Values above 1 (or NaN) mean 1, values below [`MIN_CPU_SHARE`] mean that minimum.
    ///
    /// The periods of all guests of the process start at the same instants. Rests do not count
    /// toward the time limit; pause, resume, cancel and evict interrupt them.
    pub fn set_cpu_share(&self, share: f64) {
        let share = if share.is_nan() {
            1.0
        } else {
            share.clamp(MIN_CPU_SHARE, 1.0)
        };
        let mut state = self.lock();
        state.cpu_share = share;
        self.changed(&mut state);
    }

    /// The CPU share set by [`set_cpu_share`](TaskControl::set_cpu_share) (1 when uncapped).
    pub fn cpu_share(&self) -> f64 {
        self.lock().cpu_share
    }

    /// Evicts the task with notice: the guest keeps running (it is resumed if paused) for `grace`,
    /// then stops at its next epoch check and [`Sandbox::run`](super::Sandbox::run) returns
    /// [`Outcome::Evicted`](lull_protocol::message::Outcome::Evicted) with `reason`. With a zero
    /// grace it stops at its next epoch check. A guest that ends by itself during the grace keeps
    /// its own outcome. Later calls keep the first reason and may only shorten the grace.
    ///
    /// A [`pause`](TaskControl::pause) during the grace stops the guest again, but the grace
    /// keeps running out: the guest is woken to stop when it ends. The CPU share is left as it is.
    pub fn evict(&self, reason: impl Into<String>, grace: Duration) {
        let now = Instant::now();
        // A grace too long for the clock is no deadline at all; a century will do.
        let at = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut state = self.lock();
        match &mut state.eviction {
            Some(eviction) => eviction.at = eviction.at.min(at),
            None => {
                state.eviction = Some(Eviction {
                    reason: reason.into(),
                    at,
                });
            }
        }
        state.paused = false;
        self.changed(&mut state);
    }

    /// Whether [`evict`](TaskControl::evict) was called.
    pub fn is_evicted(&self) -> bool {
        self.lock().eviction.is_some()
    }

    /// The eviction announced, if any: its reason and the time left before the guest is
    /// stopped (what the guest's `notice` answers).
    pub fn notice(&self) -> Option<(String, Duration)> {
        let state = self.lock();
        state.eviction.as_ref().map(|e| {
            (
                e.reason.clone(),
                e.at.saturating_duration_since(Instant::now()),
            )
        })
    }

    /// Waits up to `timeout` for an eviction to be announced (what the guest's `wait-notice`
    /// does); returns it, or `None` at the timeout or when the task is cancelled.
    pub fn wait_notice(&self, timeout: Duration) -> Option<(String, Duration)> {
        let until = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        loop {
            if let Some(e) = &state.eviction {
                return Some((
                    e.reason.clone(),
                    e.at.saturating_duration_since(Instant::now()),
                ));
            }
            if state.halted.is_some() {
                return None;
            }
            let left = match until {
                Some(until) => until.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            state = self.wait(state, Some(left));
        }
    }

    /// How a task that has not started yet ends if it was cancelled or evicted meanwhile: at
    /// once, whatever the eviction's grace (it has no work to lose).
    pub fn outcome_before_start(&self) -> Option<lull_protocol::message::Outcome> {
        use lull_protocol::message::Outcome;
        let state = self.lock();
        match &state.halted {
            Some(Stop::Cancelled(reason)) => {
                return Some(Outcome::Cancelled {
                    reason: reason.clone(),
                });
            }
            Some(Stop::DiskExceeded(reason)) => {
                return Some(Outcome::DiskExceeded {
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        state.eviction.as_ref().map(|e| Outcome::Evicted {
            reason: e.reason.clone(),
        })
    }

    /// The guest side of one run, called on the guest's own thread: registers a running guest
    /// (until the [`Gate`] is dropped) whose wall-time limit ends at `deadline`. `sleeper` is told
    /// whenever the guest blocks (paused, or resting in the duty cycle) and wakes; `nudge`, when
    /// given, is how requests make the guest check at once.
    pub(crate) fn gate(
        &self,
        deadline: Option<Instant>,
        sleeper: Option<Box<dyn Sleeper>>,
        nudge: Option<Nudge>,
    ) -> Gate {
        let thread = priority::current_thread_id();
        let mut state = self.lock();
        state.running += 1;
        if nudge.is_some() {
            state.nudge = nudge;
        }
        if let Some(thread) = thread {
            state.unparked.push(thread);
            if state.boosted {
                // Joining a pause that is waiting for its guests: this one must hurry too.
                priority::boost(thread);
            }
        }
        drop(state);
        Gate {
            control: self.clone(),
            deadline,
            thread,
            sleeper,
            duty: None,
        }
    }

    /// Publishes a change of `state`: refreshes the fast-path flag, raises the priority of guests
    /// that must hurry to a pause (or lowers them again when it was lifted before they got
    /// there), makes running guests check at once when they must act, and wakes every waiter.
    fn changed(&self, state: &mut State) {
        let attention = state.needs_attention();
        self.inner.attention.store(attention, Ordering::Release);
        if attention
            && state.running > state.parked
            && let Some(nudge) = &state.nudge
        {
            nudge();
        }
        if state.paused && !state.boosted && !state.unparked.is_empty() {
            state.boosted = true;
            state.unparked.iter().copied().for_each(priority::boost);
        } else if !state.paused && state.boosted {
            state.boosted = false;
            state
                .unparked
                .iter()
                .copied()
                .for_each(priority::lower_thread);
        }
        self.inner.changed.notify_all();
    }

    /// Waits on the condition variable for a change, at most `timeout` when given.
    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        let changed = &self.inner.changed;
        // The state is a plain value that no code can leave half-updated (see `lock`).
        match timeout {
            None => changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(timeout) => {
                changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value that no code can leave half-updated, so a poisoned lock is
        // still consistent.
        lock(&self.inner.state)
    }
}

impl fmt::Debug for TaskControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("TaskControl")
            .field("halted", &state.halted)
            .field("eviction", &state.eviction)
            .field("paused", &state.paused)
            .field("cpu_share", &state.cpu_share)
            .field("running", &state.running)
            .field("parked", &state.parked)
            .finish()
    }
}

/// Told when a running guest blocks in its [`Gate`] (paused, or resting in its duty cycle) and
/// when it carries on, and whether it is duty-cycled: the sandbox lets its epoch ticker sleep
/// while no guest runs, and tick fast only while a duty cycle needs it.
pub(crate) trait Sleeper: Send + Sync {
    /// The guest is about to block.
    fn asleep(&mut self);
    /// The guest carries on.
    fn awake(&mut self);
    /// The guest is duty-cycled with this CPU share (`Some`): it needs a check when each run
    /// part of its cycle ends ([`duty_run_ends_in`]); or no longer (`None`).
    fn duty_cycled(&mut self, share: Option<f64>);
}

/// One running guest's side of a [`TaskControl`]: what its epoch callback calls, and its
/// wall-time deadline, which moves forward by the time the guest sleeps.
pub(crate) struct Gate {
    control: TaskControl,
    deadline: Option<Instant>,
    /// The guest's OS thread, where the OS names it.
    thread: Option<ThreadId>,
    sleeper: Option<Box<dyn Sleeper>>,
    /// What the sleeper was last told by [`Sleeper::duty_cycled`].
    duty: Option<f64>,
}

impl Gate {
    /// What the epoch callback calls: `Some(stop)` when the guest must stop now, `None` to carry
    /// on. While the guest is paused, or resting in its duty cycle, this blocks.
    ///
    /// The fast path is one atomic load and, when there is a deadline, one clock read.
    pub(crate) fn checkpoint(&mut self) -> Option<Stop> {
        if self.control.inner.attention.load(Ordering::Acquire) {
            if let Some(stop) = self.attend() {
                return Some(stop);
            }
        } else if self.duty.is_some() {
            // The cap was lifted: ordinary ticks will do.
            self.set_duty(None);
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Some(Stop::TimedOut),
            _ => None,
        }
    }

    /// The slow path of [`checkpoint`](Gate::checkpoint), taken once something was requested.
    fn attend(&mut self) -> Option<Stop> {
        let control = self.control.clone();
        let mut state = control.lock();
        loop {
            if let Some(stop) = &state.halted {
                return Some(stop.clone());
            }
            let now = Instant::now();
            if let Some(eviction) = &state.eviction
                && now >= eviction.at
            {
                return Some(Stop::Evicted(eviction.reason.clone()));
            }
            if state.paused {
                state = self.park(&control, state);
                continue;
            }
            let duty = (state.cpu_share < 1.0).then_some(state.cpu_share);
            if duty != self.duty {
                self.set_duty(duty);
            }
            // Not paused: carry on unless the duty cycle says to rest.
            let rest = duty_rest(
                now.saturating_duration_since(duty_origin()),
                state.cpu_share,
            )?;
            // Wake at the end of the rest, or when the grace of an eviction runs out.
            let rest = match &state.eviction {
                Some(eviction) => rest.min(eviction.at.saturating_duration_since(now)),
                None => rest,
            };
            self.sleeping(true);
            state = control.wait(state, Some(rest));
            self.sleeping(false);
            self.extend(now.elapsed());
        }
    }

    /// Blocks while the guest is paused: acknowledges the pause (for
    /// [`TaskControl::pause_and_wait`]), then waits until resumed, cancelled, or the grace of an
    /// eviction runs out.
    fn park<'a>(
        &mut self,
        control: &'a TaskControl,
        mut state: MutexGuard<'a, State>,
    ) -> MutexGuard<'a, State> {
        let since = Instant::now();
        state.parked += 1;
        if state.parked == 1 {
            state.parked_since = Some(since);
        }
        if let Some(thread) = self.thread {
            // Raised to get here: back to idle priority before anything else runs.
            state.unlist(thread);
        }
        self.sleeping(true);
        control.inner.changed.notify_all();
        loop {
            if !state.paused || state.halted.is_some() {
                break;
            }
            let left = state
                .eviction
                .as_ref()
                .map(|e| e.at.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                break;
            }
            state = control.wait(state, left);
        }
        state.parked -= 1;
        if state.parked == 0
            && let Some(start) = state.parked_since.take()
        {
            state.parked_total = state.parked_total.saturating_add(start.elapsed());
        }
        if let Some(thread) = self.thread {
            state.unparked.push(thread);
        }
        self.sleeping(false);
        self.extend(since.elapsed());
        state
    }

    /// Tells the sleeper, if any, whether the guest is duty-cycled, and at what share.
    fn set_duty(&mut self, duty: Option<f64>) {
        self.duty = duty;
        if let Some(sleeper) = &mut self.sleeper {
            sleeper.duty_cycled(duty);
        }
    }

    /// Tells the sleeper, if any, that the guest blocks (`true`) or carries on (`false`).
    fn sleeping(&mut self, asleep: bool) {
        if let Some(sleeper) = &mut self.sleeper {
            if asleep {
                sleeper.asleep();
            } else {
                sleeper.awake();
            }
        }
    }

    /// Moves the deadline forward by time the guest spent asleep.
    fn extend(&mut self, slept: Duration) {
        self.deadline = self
            .deadline
            .and_then(|deadline| deadline.checked_add(slept));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut state = self.control.lock();
        state.running -= 1;
        if let Some(thread) = self.thread {
            // The thread may go on to other work: not at a priority meant for one pause.
            state.unlist(thread);
        }
        // The sleeper (the ticker's hold) goes with the gate.
        drop(mem::take(&mut self.sleeper));
        // A `pause_and_wait` may be waiting for this guest.
        self.control.inner.changed.notify_all();
        drop(state);
    }
}

/// The instant all duty cycles of the process are aligned to.
fn duty_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// How long from `now` until the run part of a duty cycle with CPU share `share` (below 1)
/// ends: the end of this period's run part, or of the next one's when it is already over. A
/// guest must check then to keep to its share.
pub(crate) fn duty_run_ends_in(now: Instant, share: f64) -> Duration {
    let period = DUTY_PERIOD.as_nanos();
    let phase = now.saturating_duration_since(duty_origin()).as_nanos() % period;
    let run = (share.clamp(MIN_CPU_SHARE, 1.0) * period as f64) as u128;
    let left = if phase < run {
        run - phase
    } else {
        period - phase + run
    };
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

/// How long a guest with CPU share `share` must rest now, `since_origin` after the duty cycles'
/// origin: `None` in the first `share` of a [`DUTY_PERIOD`], else the time to the next period.
fn duty_rest(since_origin: Duration, share: f64) -> Option<Duration> {
    if share >= 1.0 {
        return None;
    }
    let period = DUTY_PERIOD.as_nanos();
    let phase = since_origin.as_nanos() % period;
    // `share` is in MIN_CPU_SHARE..1, so this is below `period`, which fits a u64 many times.
    let run = (share * period as f64) as u128;
    if phase < run {
        return None;
    }
    Some(Duration::from_nanos(
        u64::try_from(period - phase).unwrap_or(u64::MAX),
    ))
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
    /// [`TaskControl::evict`] was called and its grace ran out, or the guest kept a checkpoint
    /// and left under notice.
    #[error("the guest was evicted: {0}")]
    Evicted(String),
    /// The guest kept a checkpoint and left with no notice.
    #[error("the guest left: {0}")]
    Left(String),
    /// [`TaskControl::stop_over_disk`] was called: the task's files grew past the agent's cap.
    #[error("the task's files grew past their cap: {0}")]
    DiskExceeded(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn duty_cycle_runs_the_first_share_of_each_period() {
        assert_eq!(duty_rest(Duration::ZERO, 1.0), None);
        assert_eq!(duty_rest(7 * MS, 1.0), None);
        assert_eq!(duty_rest(Duration::ZERO, 0.25), None);
        assert_eq!(duty_rest(2 * MS, 0.25), None);
        assert_eq!(duty_rest(3 * MS, 0.25), Some(7 * MS));
        assert_eq!(duty_rest(9 * MS, 0.25), Some(MS));
        // Periods repeat from the origin.
        assert_eq!(duty_rest(DUTY_PERIOD * 41 + 2 * MS, 0.25), None);
        assert_eq!(duty_rest(DUTY_PERIOD * 41 + 5 * MS, 0.25), Some(5 * MS));
    }

    #[test]
    fn run_parts_end_where_rests_begin() {
        let origin = duty_origin();
        let at = |d: Duration| origin + d;
        assert_eq!(
            duty_run_ends_in(at(Duration::ZERO), 0.25),
            2_500 * MS / 1000
        );
        assert_eq!(duty_run_ends_in(at(MS), 0.25), 1_500 * MS / 1000);
        // Resting: the next period's run part.
        assert_eq!(duty_run_ends_in(at(3 * MS), 0.25), 9_500 * MS / 1000);
        assert_eq!(duty_run_ends_in(at(DUTY_PERIOD * 7 + 9 * MS), 0.5), 6 * MS);
        // A guest that checks when told is exactly at the start of its rest.
        let end = at(MS) + duty_run_ends_in(at(MS), 0.25);
        assert_eq!(
            duty_rest(end.saturating_duration_since(origin), 0.25),
            Some(7_500 * MS / 1000)
        );
    }

    #[test]
    fn shares_are_clamped() {
        let control = TaskControl::new();
        assert_eq!(control.cpu_share(), 1.0);
        control.set_cpu_share(0.0);
        assert_eq!(control.cpu_share(), MIN_CPU_SHARE);
        control.set_cpu_share(3.0);
        assert_eq!(control.cpu_share(), 1.0);
        control.set_cpu_share(f64::NAN);
        assert_eq!(control.cpu_share(), 1.0);
    }

    #[test]
    fn only_requests_take_the_slow_path() {
        let control = TaskControl::new();
        let attention = || control.inner.attention.load(Ordering::Acquire);
        assert!(!attention());
        control.pause();
        assert!(attention());
        control.resume();
        assert!(!attention());
        control.set_cpu_share(0.5);
        assert!(attention());
        control.set_cpu_share(1.0);
        assert!(!attention());
        control.evict("owner", Duration::from_secs(1));
        assert!(attention());
    }

    #[test]
    fn pause_and_wait_returns_at_once_without_guests() {
        let control = TaskControl::new();
        assert!(control.pause_and_wait(Duration::from_secs(5)).is_some());
        assert!(control.is_paused());
        assert_eq!(control.paused_for(), Duration::ZERO);
    }

    #[test]
    fn eviction_keeps_the_first_reason_and_the_earliest_deadline_and_resumes() {
        let control = TaskControl::new();
        control.pause();
        control.evict("first", Duration::from_secs(60));
        control.evict("second", Duration::ZERO);
        control.evict("third", Duration::from_secs(60));
        assert!(!control.is_paused());
        let mut gate = control.gate(None, None, None);
        assert_eq!(gate.checkpoint(), Some(Stop::Evicted("first".into())));
    }

    #[test]
    fn a_parked_gate_wakes_on_resume_with_its_deadline_moved() {
        let control = TaskControl::new();
        control.pause();
        let far = Instant::now() + Duration::from_secs(3600);
        let mut gate = control.gate(Some(far), None, None);
        let guest = std::thread::spawn(move || {
            let stop = gate.checkpoint();
            (stop, gate.deadline)
        });
        assert!(control.pause_and_wait(Duration::from_secs(10)).is_some());
        std::thread::sleep(20 * MS);
        control.resume();
        let (stop, deadline) = guest.join().expect("guest thread");
        assert_eq!(stop, None);
        assert!(deadline.expect("deadline") >= far + 20 * MS);
        assert!(control.paused_for() >= 20 * MS);
        // The gate is gone: nothing is running any more.
        assert_eq!(control.lock().running, 0);
    }
}
