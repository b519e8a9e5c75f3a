//! Jobs held until the jobs they come after succeed: a workflow's later steps.
//!
//! A held job is known here with the jobs it comes after ([`JobSpec::after`]). Whenever tasks
//! of one of those jobs end (a result, a loss, an expiry, a cancel) and now and then besides
//! (they may end through another coordinator on the same database), the core asks the store to
//! release it ([`Change::Release`]): the store, which knows every job's counts, decides in one
//! transaction whether all of them succeeded (the job is released, with their outputs filled
//! in), one ended otherwise (it stays held for good, with the reason) or some still run. At
//! most one such question per held job is in flight; a change meanwhile asks again after it.
//!
//! [`JobSpec::after`]: lull_protocol::job::JobSpec::after

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Change, Command, Dispatch, Op, Persisted};

/// How often held jobs are looked at again without a change seen here.
pub const HELD_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// How soon a held job is looked at again when the store could not.
pub const HELD_RETRY: Duration = Duration::from_secs(1);

/// The held jobs.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    pub(crate) jobs: BTreeMap<u64, Held>,
    /// For each job that held jobs come after: those held jobs.
    dependents: HashMap<u64, Vec<u64>>,
    /// When every held job is next looked at.
    next_check: Option<Instant>,
}

/// One held job.
#[derive(Debug)]
pub(crate) struct Held {
    /// The jobs it comes after.
    after: Vec<u64>,
    /// Whether a release is being persisted.
    checking: bool,
    /// Whether one of its jobs changed meanwhile: it is looked at again once that is done.
    again: bool,
    /// Why it stays held for good, once known.
    blocked: Option<String>,
}

impl Holds {
    pub(crate) fn next_check(&self) -> Option<Instant> {
        self.next_check
    }

    /// Forgets a job (released, cancelled or gone).
    pub(crate) fn forget(&mut self, job: u64) {
        let Some(held) = self.jobs.remove(&job) else {
            return;
        };
        for parent in held.after {
            if let Some(children) = self.dependents.get_mut(&parent) {
                children.retain(|c| *c != job);
                if children.is_empty() {
                    self.dependents.remove(&parent);
                }
            }
        }
    }
}

impl Dispatch {
    /// A job that waits for the jobs it comes after (`after`): just submitted, or found held in
    /// the store at a start; `blocked` when the store already says why it stays held. Unless
    /// blocked, it is looked at at once: those jobs may have ended already.
    pub fn handle_held(&mut self, now: Instant, job: u64, after: &[u64], blocked: Option<String>) {
        self.tick(now);
        self.held.forget(job);
        let look = blocked.is_none();
        self.held.jobs.insert(
            job,
            Held {
                after: after.to_vec(),
                checking: false,
                again: false,
                blocked,
            },
        );
        for parent in after {
            self.held.dependents.entry(*parent).or_default().push(job);
        }
        if look {
            self.check_held(job);
        }
        self.held
            .next_check
            .get_or_insert(now + HELD_CHECK_INTERVAL);
    }

    /// Whether `job` is held here: `Some(None)` while it waits, `Some(Some(why))` once it stays
    /// held for good.
    pub fn held(&self, job: u64) -> Option<Option<&str>> {
        self.held.jobs.get(&job).map(|h| h.blocked.as_deref())
    }

    /// Tasks of `job` changed: the jobs held for it are looked at.
    pub(crate) fn parent_changed(&mut self, job: u64) {
        if let Some(children) = self.held.dependents.get(&job).cloned() {
            for child in children {
                self.check_held(child);
            }
        }
    }

    /// Asks the store to release a held job, unless it is blocked or already being asked.
    fn check_held(&mut self, job: u64) {
        let Some(held) = self.held.jobs.get_mut(&job) else {
            return;
        };
        if held.blocked.is_some() {
            return;
        }
        if held.checking {
            held.again = true;
            return;
        }
        held.checking = true;
        self.persist(Op::Release { job }, Change::Release { job });
    }

    /// Looks at every held job when it is time to.
    pub(crate) fn check_held_due(&mut self, now: Instant) {
        if self.held.next_check.is_none_or(|t| t > now) {
            return;
        }
        self.held.next_check = None;
        let jobs: Vec<u64> = self.held.jobs.keys().copied().collect();
        for job in jobs {
            self.check_held(job);
        }
        if !self.held.jobs.is_empty() {
            self.held.next_check = Some(now + HELD_CHECK_INTERVAL);
        }
    }

    /// What the store made of a release.
    pub(crate) fn release_recorded(&mut self, now: Instant, job: u64, outcome: Persisted) {
        let Some(held) = self.held.jobs.get_mut(&job) else {
            // Cancelled meanwhile: it does not run.
            return;
        };
        held.checking = false;
        match outcome {
            Persisted::Released(spec) => {
                self.held.forget(job);
                tracing::info!(job, "released: the jobs it comes after succeeded");
                self.commands.push_back(Command::Release {
                    job,
                    spec: Arc::from(spec),
                });
            }
            Persisted::Blocked(reason) => {
                tracing::info!(job, %reason, "held for good");
                held.blocked = Some(reason);
                // What comes after it is held for good too.
                self.parent_changed(job);
            }
            Persisted::NotPending => self.held.forget(job),
            Persisted::Failed(e) => {
                tracing::warn!(job, error = %e, "could not look at a held job; will retry");
                held.again = false;
                let due = now + HELD_RETRY;
                self.held.next_check = Some(self.held.next_check.map_or(due, |t| t.min(due)));
            }
            _ => {
                if std::mem::take(&mut held.again) {
                    self.check_held(job);
                }
            }
        }
    }
}
