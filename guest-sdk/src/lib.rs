//! `lull-guest`: write Lull workloads that keep their work when the machine is taken back.
//!
//! A Lull task runs on a machine lent while its owner does not need it. When the owner (or the
//! coordinator) takes the machine back, the agent gives the task a **notice** with a grace
//! period; a task that then keeps a **checkpoint** and leaves is started again elsewhere, on any
//! agent, OS or CPU, from that checkpoint. A task that also keeps checkpoints now and then loses
//! at most the time since the last one if its machine vanishes without notice.
//!
//! This crate wraps the `lull:guest/host` interface (`wit/workload.wit`) for Rust programs built
//! for `wasm32-wasip2`:
//!
//! - [`task_index`], [`attempt`]: the task's place in its job;
//! - [`progress`]: how far it has got (shown by `lull status`);
//! - [`Checkpointer`]: keeps a serde state at most every so often, and at once — then leaves —
//!   when a notice arrives; [`restore`] gives an earlier attempt's state back;
//! - [`notice`], [`wait_notice`]: the eviction announced, if any;
//! - [`log`]: lines for the task's log.
//!
//! Plain WASI programs run on Lull without any of this; this crate adds the notice and the
//! checkpoints. Outside a Lull agent (in unit tests on the host, say) the functions panic: the
//! interface exists only inside the sandbox.
//!
//! # The entry pattern
//!
//! Restore first, then work in steps, ticking the checkpointer after each:
//!
//! ```no_run
//! use std::time::Duration;
//! use lull_guest::Checkpointer;
//! use serde::{Deserialize, Serialize};
//!
//! /// Everything the task has done: its checkpoint.
//! #[derive(Serialize, Deserialize)]
//! struct State {
//!     done: u64,
//!     inside: u64,
//!     rng: u64,
//! }
//!
//! const SAMPLES: u64 = 2_000_000_000;
//!
//! /// A xorshift generator: the next number in [0, 1).
//! fn next(s: &mut u64) -> f64 {
//!     *s ^= *s << 13;
//!     *s ^= *s >> 7;
//!     *s ^= *s << 17;
//!     (*s >> 11) as f64 / (1u64 << 53) as f64
//! }
//!
//! fn main() -> Result<(), lull_guest::Error> {
//!     // A fresh state on the first attempt, the last checkpoint on later ones.
//!     let mut state = match lull_guest::restore::<State>()? {
//!         Some(s) => {
//!             lull_guest::log(lull_guest::Level::Info, &format!("resuming at sample {}", s.done));
//!             s
//!         }
//!         None => State { done: 0, inside: 0, rng: 0x9E37_79B9_7F4A_7C15 },
//!     };
//!     let mut checkpoints = Checkpointer::new(Duration::from_secs(30));
//!     while state.done < SAMPLES {
//!         // One step: a million points in the unit square, a few milliseconds of work.
//!         for _ in 0..1_000_000 {
//!             let (x, y) = (next(&mut state.rng), next(&mut state.rng));
//!             state.inside += (x * x + y * y <= 1.0) as u64;
//!         }
//!         state.done += 1_000_000;
//!         lull_guest::progress(state.done as f64 / SAMPLES as f64);
//!         // Every 30 s a checkpoint; on a notice a checkpoint and the end of this attempt.
//!         checkpoints.tick(&state)?;
//!     }
//!     println!("pi ~= {}", 4.0 * state.inside as f64 / SAMPLES as f64);
//!     Ok(())
//! }
//! ```
//!
//! Choose the steps so that one takes well under the grace period (seconds at most), and the
//! interval so that losing that much work is acceptable. A state is serialized with
//! `serde_json`; keep it small (the agent caps checkpoints, 64 MiB by default).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "workload",
    });
}

use bindings::lull::guest::host;

pub use host::Level;

/// Why a checkpoint could not be kept or restored.
#[derive(Debug)]
pub enum Error {
    /// The agent refused the checkpoint, e.g. because it is over its size cap.
    Refused(String),
    /// The state could not be serialized, or a kept one deserialized (the program's state type
    /// changed between attempts?).
    Serde(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(reason) => write!(f, "the agent refused the checkpoint: {reason}"),
            Error::Serde(e) => write!(f, "the checkpoint's state: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serde(e)
    }
}

/// An eviction the agent announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Why, for people.
    pub reason: String,
    /// Time left, when the notice was read, before the agent stops the task.
    pub remaining: Duration,
}

impl From<host::Eviction> for Notice {
    fn from(e: host::Eviction) -> Self {
        Notice {
            reason: e.reason,
            remaining: Duration::from_millis(e.remaining_ms),
        }
    }
}

/// The task's index in its job, from 0.
pub fn task_index() -> u32 {
    host::task_index()
}

/// This attempt's number, from 1.
pub fn attempt() -> u32 {
    host::attempt()
}

/// Reports how far the task has got, from 0.0 to 1.0.
pub fn progress(fraction: f64) {
    host::progress(fraction)
}

/// Writes a line to the task's log (its stderr), prefixed with the level.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// The eviction announced, if there is one.
pub fn notice() -> Option<Notice> {
    host::notice().map(Notice::from)
}

/// Waits up to `timeout` for an eviction notice.
pub fn wait_notice(timeout: Duration) -> Option<Notice> {
    host::wait_notice(timeout.as_millis().min(u128::from(u64::MAX)) as u64).map(Notice::from)
}

/// The state an earlier attempt of this task kept with a [`Checkpointer`], if any.
pub fn restore<S: DeserializeOwned>() -> Result<Option<S>, Error> {
    match host::restore() {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// What a [`Checkpointer`] needs of the host; [`Lull`] is the real one.
pub trait Host {
    /// Keeps `state` as the checkpoint.
    fn checkpoint(&mut self, state: &[u8]) -> Result<(), String>;
    /// Keeps `state` and ends the attempt; returns only if the checkpoint was refused.
    fn checkpoint_and_leave(&mut self, state: &[u8]) -> Result<(), String>;
    /// Whether an eviction has been announced.
    fn notice(&mut self) -> bool;
    /// Now.
    fn now(&mut self) -> Instant;
}

/// The agent's host interface.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lull;

impl Host for Lull {
    fn checkpoint(&mut self, state: &[u8]) -> Result<(), String> {
        host::checkpoint(state)
    }
    fn checkpoint_and_leave(&mut self, state: &[u8]) -> Result<(), String> {
        host::checkpoint_and_leave(state)
    }
    fn notice(&mut self) -> bool {
        host::notice().is_some()
    }
    fn now(&mut self) -> Instant {
        Instant::now()
    }
}

/// Keeps a task's state as checkpoints: at most every `every`, and at once when an eviction
/// is announced — then ending the attempt, so that the next one resumes from it.
#[derive(Debug)]
pub struct Checkpointer<H: Host = Lull> {
    host: H,
    every: Duration,
    /// When the last checkpoint was kept (or the checkpointer made).
    last: Instant,
    kept: u64,
}

impl Checkpointer<Lull> {
    /// A checkpointer keeping a checkpoint at most every `every`.
    pub fn new(every: Duration) -> Self {
        Self::with_host(Lull, every)
    }
}

impl<H: Host> Checkpointer<H> {
    /// A checkpointer over another host (for tests of code that uses one).
    pub fn with_host(mut host: H, every: Duration) -> Self {
        let start = host.now();
        Self {
            host,
            every,
            last: start,
            kept: 0,
        }
    }

    /// Call after each step of work: on a notice, keeps `state` and ends the attempt (it does
    /// not return then); otherwise keeps `state` if `every` has passed since the last
    /// checkpoint (or the start). Cheap when neither happens: nothing is serialized.
    pub fn tick<S: Serialize>(&mut self, state: &S) -> Result<(), Error> {
        if self.host.notice() {
            return self.leave(state);
        }
        let now = self.host.now();
        if now.duration_since(self.last) >= self.every {
            self.save(state)?;
        }
        Ok(())
    }

    /// Keeps `state` now.
    pub fn save<S: Serialize>(&mut self, state: &S) -> Result<(), Error> {
        let bytes = serde_json::to_vec(state)?;
        self.host.checkpoint(&bytes).map_err(Error::Refused)?;
        self.last = self.host.now();
        self.kept += 1;
        Ok(())
    }

    /// Keeps `state` and ends this attempt as evicted; the next attempt restores it. Returns
    /// only with the reason the checkpoint was refused.
    pub fn leave<S: Serialize>(&mut self, state: &S) -> Result<(), Error> {
        let bytes = serde_json::to_vec(state)?;
        self.host
            .checkpoint_and_leave(&bytes)
            .map_err(Error::Refused)
    }

    /// Checkpoints kept so far by [`tick`](Checkpointer::tick) and [`save`](Checkpointer::save).
    pub fn kept(&self) -> u64 {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose clock and notice the test moves.
    #[derive(Default)]
    struct Fake {
        now: Option<Instant>,
        offset: Duration,
        noticed: bool,
        kept: Vec<Vec<u8>>,
        left_with: Option<Vec<u8>>,
    }

    impl Host for &mut Fake {
        fn checkpoint(&mut self, state: &[u8]) -> Result<(), String> {
            self.kept.push(state.to_vec());
            Ok(())
        }
        fn checkpoint_and_leave(&mut self, state: &[u8]) -> Result<(), String> {
            self.left_with = Some(state.to_vec());
            Ok(())
        }
        fn notice(&mut self) -> bool {
            self.noticed
        }
        fn now(&mut self) -> Instant {
            *self.now.get_or_insert_with(Instant::now) + self.offset
        }
    }

    #[test]
    fn keeps_at_most_every_interval_and_leaves_on_notice() {
        let mut fake = Fake::default();
        {
            let mut c = Checkpointer::with_host(&mut fake, Duration::from_secs(30));
            c.tick(&1u32).unwrap();
            assert_eq!(c.kept(), 0, "nothing before the interval");
            c.host.offset = Duration::from_secs(31);
            c.tick(&2u32).unwrap();
            c.tick(&3u32).unwrap();
            assert_eq!(c.kept(), 1, "once per interval");
            c.host.noticed = true;
            c.tick(&4u32).unwrap();
        }
        assert_eq!(fake.kept, [b"2".to_vec()]);
        assert_eq!(fake.left_with, Some(b"4".to_vec()));
    }
}
