//! Lull's dispatch core: the coordinator's task state machine, without IO and without a clock.
//!
//! [`Dispatch`] holds what a coordinator knows live — connected agents, the jobs with work to
//! do, each cluster's [`lull_scheduler::Scheduler`], leases, retries waiting out a backoff,
//! drains and cancels — and decides every change of a task's state in one place. The driver
//! (the coordinator's `Hub`) feeds it what happened with the time (`handle_*(now, …)`), and
//! carries out what it asks for ([`Dispatch::poll_command`]): a message to an agent, a
//! connection to close, or a change to persist. A persisted change comes back as
//! [`Dispatch::handle_persisted`], and only then is it acted on: every decision is durable
//! before an agent or a person hears of it.
//!
//! # A task's life
//!
//! ```text
//!                 submit
//!                   │
//!                   ▼          Assign persisted, lease granted, Assign sent
//!     ┌──────────► pending ──────────────────────────────────────► running
//!     │   (backoff, │                                                  │
//!     │  avoiding   │ job cancelled                                    │ result, lease lost,
//!     │  the agent) ▼                                                  │ agent revoked
//!     │         cancelled ◄────────── job cancelled ───────────────────┤
//!     │                                                                ├─ succeeded
//!     │                                                                ├─ failed: no attempts left
//!     └─── evicted (any number of times), or failed with attempts left ┘
//! ```
//!
//! - A placement reserves the task's slot in its cluster's scheduler and asks for
//!   [`Change::Assign`]; the assignment is sent only once it is persisted, and a job cancelled
//!   meanwhile ends the new attempt instead of sending it.
//! - An attempt holds a lease while its agent reports; a lease that runs out ends the attempt
//!   as lost (the agent is told, and gets no new work until it reports again). A loss the store
//!   cannot record keeps the lease for [`LOST_RETRY`], to be tried again.
//! - A failure with attempts left, of a kind the job's `retry_on` lists, waits out a backoff
//!   (doubling from [`Config::retry_backoff`], at most a minute) and avoids the agents it failed
//!   on; another kind fails the task at once; an eviction is not the task's fault and is queued
//!   again at once, whatever its attempts.
//! - A job's `queue_timeout` fails a task pending that long (since the job was accepted, or its
//!   last attempt ended) and its `deadline` every unfinished task, stopping running attempts,
//!   both through [`Change::Expire`], which applies only to tasks still pending.
//! - A job that comes after others ([`JobSpec::after`], a workflow's later step) is held: none
//!   of its tasks is queued until the store, asked with [`Change::Release`] whenever tasks of
//!   those jobs end, says they all succeeded; then it starts as a new job. One that did not
//!   succeed holds it for good, and the jobs after it in turn.
//! - A drained agent takes no new work and its attempts are evicted at the drain's deadline; a
//!   revoked agent is cut off and its attempts go back to pending.
//!
//! Tested by simulation (`tests/sim.rs`): leases running out, late and duplicate results,
//! agents lost mid-task, drains, backoffs, and thousands of agents and tasks in simulated time.

mod held;
pub mod leases;
pub mod verify;

pub use held::{HELD_CHECK_INTERVAL, HELD_RETRY};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lull_protocol::job::{Failure, JobSpec, TaskItem};
use lull_protocol::message::{
    AgentState, AgentStatus, Assignment, AttemptId, Capacity, CheckpointRef, CoordinatorMessage,
    Outcome, TaskId, TaskResult,
};
use lull_protocol::{Digest, PROTOCOL_VERSION, units};
use lull_scheduler::{JobPlacement, Scheduler};

pub use leases::Leases;
pub use lull_protocol::api::{TaskState, UnknownTaskState};
pub use verify::{Replica, Verdict};

/// How soon the loss of an attempt is tried again when the store could not record it.
pub const LOST_RETRY: Duration = Duration::from_secs(1);

/// How soon an assignment the store could not record is tried again.
pub const ASSIGN_RETRY: Duration = Duration::from_millis(200);

/// The longest backoff between attempts of a failing task.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often the jobs with nothing left to do here are forgotten (a late result of one is
/// checked against the store's copy).
pub const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long an assignment's lease lasts without a report.
    pub lease: Duration,
    /// How often agents report.
    pub report_interval: Duration,
    /// How long a failed task waits before its next attempt; doubles with each failure.
    pub retry_backoff: Duration,
    /// The seed of the schedulers' random choices.
    pub seed: u64,
    /// The half-life of users' recent usage, which fair share goes by.
    pub fair_share_half_life: Duration,
    /// In clusters that allow preemption: how long an attempt runs before it may be evicted
    /// for waiting work, so that it gets something done (and evictions cannot churn).
    pub preempt_min_runtime: Duration,
    /// The time an attempt evicted for waiting work has to checkpoint and stop.
    pub preempt_grace: Duration,
}

/// How often each cluster that allows preemption is looked at for work to evict (at most one
/// attempt each time).
pub const PREEMPT_INTERVAL: Duration = Duration::from_secs(1);

/// A connection's number: an agent that reconnects gets a new one.
pub type Conn = u64;

/// The number of a change asked to be persisted, given back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// What the core asks its driver to do.
#[derive(Debug)]
pub enum Command {
    /// Send a message on an agent's connection.
    Send {
        /// The agent.
        agent: String,
        /// Its connection.
        conn: Conn,
        /// The message.
        message: CoordinatorMessage,
    },
    /// Close a connection once what was sent on it is written.
    Close {
        /// The agent.
        agent: String,
        /// The connection.
        conn: Conn,
    },
    /// Persist a change, then tell the core with [`Dispatch::handle_persisted`].
    Persist {
        /// Its number.
        op: OpId,
        /// The change.
        change: Change,
    },
    /// A held job was released (every job it comes after succeeded, and the store filled in
    /// their outputs): take the cached results of its tasks if it caches, then hand it over
    /// with [`Dispatch::handle_submitted`], as a new job.
    Release {
        /// The job.
        job: u64,
        /// Its definition as released.
        spec: Arc<JobSpec>,
    },
}

/// A change of durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// Start the next attempt of `task` on `agent`, if the task is still pending. Answered by
    /// [`Persisted::Assigned`] (with the latest checkpoint, for a retried task) or
    /// [`Persisted::NotPending`].
    Assign {
        /// The task.
        task: TaskId,
        /// The agent.
        agent: String,
        /// Whether the task has its own part ([`JobSpec::items`]) to read with it.
        with_item: bool,
    },
    /// Record that an attempt's guest started. Answered by [`Persisted::Done`].
    Start {
        /// The attempt.
        attempt: AttemptId,
        /// How long its setup took, in microseconds.
        setup_us: u64,
    },
    /// End an attempt. Answered by [`Persisted::Ended`] or [`Persisted::Stale`].
    End(Ending),
    /// Release the held `job` if every job it comes after ([`JobSpec::after`]) has succeeded,
    /// filling in the mounts of their outputs. Answered by [`Persisted::Released`],
    /// [`Persisted::Blocked`] (one of them ended otherwise; the reason is recorded),
    /// [`Persisted::Done`] (some have not ended yet) or [`Persisted::NotPending`] (the job was
    /// cancelled, deleted or released already by another coordinator, which runs it).
    Release {
        /// The job.
        job: u64,
    },
    /// Fail tasks of `job` that are still pending (not running, not ended), with `cause`: these
    /// (`tasks`), or, with `None`, every one (its deadline passed). Answered by
    /// [`Persisted::Done`].
    Expire {
        /// The job.
        job: u64,
        /// The indexes of its tasks; `None`: all its pending tasks.
        tasks: Option<Vec<u32>>,
        /// Why they failed.
        cause: String,
    },
}

/// How an attempt ends.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The attempt; the change applies only while it is its task's current attempt.
    pub attempt: AttemptId,
    /// The agent that must hold the task for the change to apply (a result counts only from
    /// the agent the task is assigned to); `None` for a loss.
    pub holder: Option<String>,
    /// What happened, in words: `succeeded`, the result's cause, or why it was lost.
    pub outcome: String,
    /// The result the agent sent, if it sent one.
    pub result: Option<Box<TaskResult>>,
    /// The task's state after it. A task of a job cancelled in the store meanwhile becomes
    /// cancelled instead of pending: the store checks that in the same transaction.
    pub next: TaskState,
    /// For a successful result of a task of a verified job: what to keep of the comparison.
    pub verified: Option<Verified>,
    /// For a task that succeeds in a job that caches: its [`JobSpec::task_key`], under which
    /// its result is offered to later tasks.
    pub cache_key: Option<Digest>,
}

/// What is kept of a verified task's successful result ([`Ending::verified`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The result's digest, kept with the attempt: what later replicas are compared with.
    pub digest: Digest,
    /// Once agreement is reached: the earlier replicas whose results differ (attempt and
    /// agent), each recorded against its agent.
    pub dissenters: Vec<(u32, String)>,
}

/// What became of a change.
#[derive(Debug, Clone)]
pub enum Persisted {
    /// The attempt started.
    Assigned {
        /// The new attempt.
        attempt: AttemptId,
        /// The checkpoint it restores.
        checkpoint: Option<CheckpointRef>,
        /// The task's own part, when asked for.
        item: Option<Box<TaskItem>>,
    },
    /// The task was no longer pending (cancelled, or claimed elsewhere).
    NotPending,
    /// The attempt ended; the task is now in this state.
    Ended(TaskState),
    /// The attempt had already ended, or is not the holder's: nothing changed.
    Stale,
    /// The held job was released, with this definition.
    Released(Box<JobSpec>),
    /// The held job stays held for good: a job it comes after did not succeed (why).
    Blocked(String),
    /// Recorded.
    Done,
    /// The store failed; the reason.
    Failed(String),
}

/// A connected agent, as the core knows it.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Its connection.
    pub conn: Conn,
    /// Its name.
    pub name: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its policy's view: accepting work or not, and why.
    pub status: AgentStatus,
    /// The attempts assigned to it that it runs or is about to.
    pub running: HashSet<AttemptId>,
    /// When it connected (ms since the Unix epoch).
    pub connected_ms: i64,
    /// While it is being drained: when its attempts are evicted (ms since the Unix epoch).
    pub draining: Option<i64>,
    /// The cluster it belongs to.
    pub cluster: String,
    /// Whose machine it is (its lender); empty when no one is named.
    pub owner: String,
    /// How many of its results differed from the one other agents agreed on.
    pub disagreements: u64,
    /// Blobs downloaded on this connection.
    pub blobs_served: u64,
    /// The bytes of those blobs.
    pub bytes_served: u64,
    /// Whether a lease of its ran out since it last reported.
    pub silent: bool,
    /// The attempts that ran on it since the CPU it reported was last credited (those
    /// running, and those that ended in between).
    pub ran_since_credit: HashSet<AttemptId>,
}

impl Agent {
    /// Whether it takes new work: its policy says so, it is not being drained, and it has not
    /// gone silent.
    pub fn accepting(&self) -> bool {
        self.status.accepting && self.draining.is_none() && !self.silent
    }
}

/// An agent's hello, once the driver admitted it.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Its ID.
    pub agent: String,
    /// Its name.
    pub name: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its policy's view.
    pub status: AgentStatus,
    /// The attempts it runs.
    pub running: Vec<AttemptId>,
    /// The modules it holds compiled.
    pub compiled: Vec<Digest>,
    /// Its cluster, from the store.
    pub cluster: String,
    /// Its drain's deadline, from the store.
    pub draining: Option<i64>,
    /// Whose machine it is (its lender), from the store; empty when no one is named.
    pub owner: String,
    /// How many of its results differed from the one other agents agreed on, from the store.
    pub disagreements: u64,
}

/// An agent's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// What it offers now.
    pub capacity: Capacity,
    /// The attempts it runs.
    pub running: Vec<AttemptId>,
    /// Its policy's view.
    pub status: AgentStatus,
    /// Progress its guests reported (0..=1).
    pub progress: Vec<(AttemptId, f64)>,
}

/// Why an attempt ends without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Its lease here ran out.
    Expired,
    /// Its lease in the shared database ran out.
    ExpiredElsewhere,
    /// Its agent was revoked.
    Revoked,
    /// Its job was cancelled while the assignment was being persisted.
    CancelledBeforeStart,
    /// Its job's deadline passed while the assignment was being persisted.
    ExpiredBeforeStart,
}

impl Loss {
    fn outcome(self) -> &'static str {
        match self {
            Loss::Expired => "lost: the agent stopped reporting",
            Loss::ExpiredElsewhere => "lost: nobody renewed its lease",
            Loss::Revoked => "lost: its agent was revoked",
            Loss::CancelledBeforeStart => "cancelled before it started",
            Loss::ExpiredBeforeStart => "not started: the job's deadline passed",
        }
    }
}

/// What a failed task's outcome adds when it has attempts left but its kind of failure is not
/// tried again.
fn not_retried(failure: Failure) -> String {
    format!(" (not tried again: retry.on leaves out {failure})")
}

/// A change in flight, and what to do once it is persisted.
#[derive(Debug)]
enum Op {
    Assign {
        task: TaskId,
        agent: String,
    },
    Start {
        attempt: AttemptId,
    },
    Result {
        attempt: AttemptId,
        agent: String,
        evicted: bool,
        /// A successful replica of a verified task, kept if it does not settle the task.
        replica: Option<Replica>,
        /// The agents whose replicas of the task the result outvoted.
        dissenters: Vec<String>,
    },
    Lost {
        attempt: AttemptId,
        agent: String,
        loss: Loss,
    },
    /// Pending tasks failed for waiting too long (`tasks`: those taken out of the queue here),
    /// or, with `deadline`, every pending task of the job.
    Expire {
        job: u64,
        tasks: Vec<TaskId>,
        deadline: bool,
    },
    /// A held job asked to be released.
    Release {
        job: u64,
    },
}

/// A limit in time on a job's tasks, due at some moment ([`JobSpec::deadline_ms`],
/// [`JobSpec::queue_timeout_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    /// The job's deadline.
    Deadline(u64),
    /// The queue timeout of the job's tasks waiting since it was accepted.
    FirstWait(u64),
    /// The queue timeout of a task waiting since its last attempt ended.
    Wait(TaskId),
    /// A task whose failing for waiting too long the store could not record: it fails now.
    Overdue(TaskId),
}

/// What the core keeps of an attempt assigned here while it runs.
#[derive(Debug, Default)]
struct Live {
    /// When it was assigned.
    assigned_at: Option<Instant>,
    /// Whether it is being evicted for waiting work.
    preempted: bool,
    /// Why it waits on its agent before starting.
    waiting: Option<String>,
    /// The checkpoint it restores (its agent may fetch it).
    restoring: Option<Digest>,
    /// The progress its guest reported last (0..=1).
    progress: Option<f64>,
    /// The task's own part (its agent may fetch its files).
    item: Option<Arc<TaskItem>>,
}

/// The schedulers of the clusters, made as clusters get agents or jobs.
#[derive(Debug)]
struct Schedulers {
    by_cluster: BTreeMap<String, Scheduler>,
    seed: u64,
    half_life: Duration,
    /// Each cluster's users' quotas, kept for schedulers made later.
    quotas: BTreeMap<String, HashMap<String, lull_scheduler::Quota>>,
    /// Where the next round of polling starts, so that no cluster goes first every time.
    next: usize,
}

impl Schedulers {
    fn get(&mut self, cluster: &str) -> &mut Scheduler {
        let (seed, half_life) = (self.seed, self.half_life);
        let quotas = self.quotas.get(cluster).cloned().unwrap_or_default();
        self.by_cluster
            .entry(cluster.to_owned())
            .or_insert_with(|| {
                let mut s = Scheduler::new(seed);
                s.set_half_life(half_life);
                s.set_quotas(quotas);
                s
            })
    }

    /// A cluster's scheduler, if it has one.
    fn peek(&self, cluster: &str) -> Option<&Scheduler> {
        self.by_cluster.get(cluster)
    }

    /// Brings every cluster's fair share up to `now`.
    fn advance(&mut self, now: Instant) {
        for s in self.by_cluster.values_mut() {
            s.advance(now);
        }
    }

    /// The next placement in any cluster, taking the clusters in turn.
    fn poll_placement(&mut self) -> Option<lull_scheduler::Placement> {
        let mut order: Vec<&mut Scheduler> = self.by_cluster.values_mut().collect();
        if order.is_empty() {
            return None;
        }
        let start = self.next % order.len();
        self.next = self.next.wrapping_add(1);
        order.rotate_left(start);
        order.into_iter().find_map(Scheduler::poll_placement)
    }
}

/// The dispatch core. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Dispatch {
    config: Config,
    schedulers: Schedulers,
    leases: Leases,
    agents: HashMap<String, Agent>,
    /// Jobs with work to do, or with attempts running here.
    jobs: HashMap<u64, Arc<JobSpec>>,
    /// When each job submitted here was accepted (for its submit-to-start latency).
    accepted: HashMap<u64, Instant>,
    /// Jobs known to be cancelled.
    cancelled: HashSet<u64>,
    /// Jobs whose deadline passed, with the cause their unfinished tasks fail with.
    expired: HashMap<u64, String>,
    /// Deadlines and queue timeouts, by when they are due.
    expiries: BinaryHeap<Reverse<(Instant, Expiry)>>,
    /// Since when each task of a job with a queue timeout has waited, once it went back to
    /// pending after an attempt (before that, since its job was accepted).
    waiting_since: HashMap<TaskId, Instant>,
    /// Tasks queued in a scheduler and not yet placed, or waiting out a backoff: a task is
    /// queued once.
    queued: HashSet<TaskId>,
    /// Failed tasks waiting out their backoff before they are queued again.
    delayed: BinaryHeap<Reverse<(Instant, TaskId)>>,
    /// The agents each retried task failed on, which its next attempts avoid.
    failed_on: HashMap<TaskId, Vec<String>>,
    /// The successful runs of each undecided task of a verified job: their agents never run it
    /// again, and agents of the same owners only when no other can.
    replicas: HashMap<TaskId, Vec<Replica>>,
    /// Attempts assigned here, while they run.
    live: HashMap<AttemptId, Live>,
    /// Changes being persisted.
    ops: HashMap<OpId, Op>,
    next_op: u64,
    next_conn: Conn,
    commands: VecDeque<Command>,
    /// When the jobs with nothing left here are next forgotten.
    next_forget: Option<Instant>,
    /// The latest time an input carried.
    clock: Option<Instant>,
    /// The clusters that allow preemption, each with when it is next looked at and the
    /// attempt it is evicting, if any.
    preempting: BTreeMap<String, Preempting>,
    /// Jobs held until the jobs they come after succeed.
    held: held::Holds,
}

/// Where preemption stands in one cluster.
#[derive(Debug, Default, Clone, Copy)]
struct Preempting {
    /// When the cluster is next looked at.
    next: Option<Instant>,
    /// The attempt being evicted for waiting work: until it has stopped, its room is already
    /// promised and nothing more is evicted in the cluster.
    evicting: Option<AttemptId>,
}

impl Dispatch {
    /// An empty core.
    pub fn new(config: Config) -> Self {
        Self {
            schedulers: Schedulers {
                by_cluster: BTreeMap::new(),
                seed: config.seed,
                half_life: config.fair_share_half_life,
                quotas: BTreeMap::new(),
                next: 0,
            },
            leases: Leases::new(config.lease),
            agents: HashMap::new(),
            jobs: HashMap::new(),
            accepted: HashMap::new(),
            cancelled: HashSet::new(),
            expired: HashMap::new(),
            expiries: BinaryHeap::new(),
            waiting_since: HashMap::new(),
            queued: HashSet::new(),
            delayed: BinaryHeap::new(),
            failed_on: HashMap::new(),
            replicas: HashMap::new(),
            live: HashMap::new(),
            ops: HashMap::new(),
            next_op: 1,
            next_conn: 1,
            commands: VecDeque::new(),
            next_forget: None,
            clock: None,
            preempting: BTreeMap::new(),
            held: held::Holds::default(),
            config,
        }
    }

    // ----- Inputs -----

    /// The state read from the store at a start: unfinished jobs (with how long ago each was
    /// submitted, which its deadline and queue timeout count from), pending tasks, and running
    /// attempts with their agents, which get `grace` to come back. A task that went back to
    /// pending before the start counts its wait from the start.
    pub fn handle_recovered(
        &mut self,
        now: Instant,
        jobs: impl IntoIterator<Item = (u64, Arc<JobSpec>, Duration)>,
        pending: impl IntoIterator<Item = TaskId>,
        running: impl IntoIterator<Item = (AttemptId, String)>,
        grace: Duration,
    ) {
        for (id, spec, age) in jobs {
            self.arm(id, &spec, now.checked_sub(age).unwrap_or(now));
            self.jobs.insert(id, spec);
        }
        for task in pending {
            self.queue(task);
        }
        for (attempt, agent) in running {
            self.leases.grant_for(now, attempt, &agent, grace);
        }
        self.forget_later(now);
    }

    /// The successful replicas of undecided tasks of verified jobs, read from the store (at a
    /// start, or with tasks found in a shared database): given before the tasks are queued,
    /// so that their placements avoid the agents that ran them.
    pub fn handle_replicas(&mut self, replicas: impl IntoIterator<Item = (TaskId, Replica)>) {
        for (task, replica) in replicas {
            let known = self.replicas.entry(task).or_default();
            if !known.iter().any(|r| r.attempt == replica.attempt) {
                known.push(replica);
            }
        }
    }

    /// A job was stored: its tasks are queued, but for those (`cached`, by index, ascending)
    /// that took an earlier task's result when it was stored.
    pub fn handle_submitted(&mut self, now: Instant, job: u64, spec: Arc<JobSpec>, cached: &[u32]) {
        self.tick(now);
        self.forget_later(now);
        let count = spec.count;
        let cluster = spec.cluster.clone();
        self.arm(job, &spec, now);
        self.jobs.insert(job, spec);
        self.accepted.insert(job, now);
        if self.cancelled.contains(&job) || !self.ensure_job(job) {
            return;
        }
        // What `queue` does for each task, with the lookups made once: a job may have a
        // million tasks, none of which failed anywhere yet.
        self.queued.reserve(count as usize);
        let scheduler = self.schedulers.get(&cluster);
        let mut cached = cached.iter().copied().peekable();
        for index in 0..count {
            if cached.next_if_eq(&index).is_some() {
                continue;
            }
            let task = TaskId { job, index };
            if self.queued.insert(task) {
                scheduler.task_queued(task);
            }
        }
    }

    /// Jobs (with how long ago each was submitted) and pending tasks found in a database
    /// shared with other coordinators.
    pub fn handle_found_pending(
        &mut self,
        now: Instant,
        jobs: impl IntoIterator<Item = (u64, Arc<JobSpec>, Duration)>,
        tasks: impl IntoIterator<Item = TaskId>,
    ) {
        self.forget_later(now);
        for (id, spec, age) in jobs {
            if !self.jobs.contains_key(&id) {
                self.arm(id, &spec, now.checked_sub(age).unwrap_or(now));
                self.jobs.insert(id, spec);
            }
        }
        for task in tasks {
            self.queue(task);
        }
    }

    /// A job was cancelled in the store (here or by another coordinator): nothing of it is
    /// queued any more, and its attempts running here are told to stop.
    pub fn handle_cancelled(&mut self, job: u64) {
        self.held.forget(job);
        self.parent_changed(job);
        if !self.cancelled.insert(job) {
            return;
        }
        if let Some(s) = self.job_scheduler(job) {
            s.remove_job(job);
        }
        self.delayed.retain(|Reverse((_, t))| t.job != job);
        self.queued.retain(|t| t.job != job);
        self.failed_on.retain(|t, _| t.job != job);
        self.replicas.retain(|t, _| t.job != job);
        self.waiting_since.retain(|t, _| t.job != job);
        self.stop_running(job, "the job was cancelled");
    }

    /// A finished job was deleted.
    pub fn handle_deleted(&mut self, job: u64) {
        self.jobs.remove(&job);
        self.accepted.remove(&job);
        self.cancelled.remove(&job);
    }

    /// An admitted agent said hello on a new connection; returns the connection's number. The
    /// welcome is its first message; attempts it runs that are no longer its are cancelled, and
    /// those that are, evicted when it is being drained.
    pub fn handle_hello(&mut self, now: Instant, now_ms: i64, hello: Hello) -> Conn {
        let conn = self.next_conn;
        self.next_conn += 1;
        let agent = hello.agent;
        self.send(
            &agent,
            conn,
            CoordinatorMessage::Welcome {
                protocol_version: PROTOCOL_VERSION,
                lease_ms: self.config.lease.as_millis() as u64,
                report_interval_ms: self.config.report_interval.as_millis() as u64,
            },
        );
        let mut mine = HashSet::new();
        for attempt in hello.running {
            if self.leases.renew(now, attempt, &agent) {
                mine.insert(attempt);
            } else {
                self.send(&agent, conn, not_assigned(attempt));
            }
        }
        let scheduler = self.schedulers.get(&hello.cluster);
        scheduler.agent_up(
            &agent,
            &hello.capacity,
            hello.status.accepting && hello.draining.is_none(),
        );
        scheduler.agent_holds(&agent, hello.compiled.iter().copied());
        let mut sorted: Vec<AttemptId> = mine.iter().copied().collect();
        sorted.sort();
        if let Some(deadline) = hello.draining {
            for attempt in &sorted {
                self.send(&agent, conn, drain_eviction(*attempt, deadline, now_ms));
            }
        }
        for attempt in &sorted {
            if self.ensure_job(attempt.task.job)
                && let Some(s) = self.job_scheduler(attempt.task.job)
            {
                s.task_running(&agent, attempt.task);
            }
            self.live.entry(*attempt).or_insert_with(|| Live {
                assigned_at: Some(now),
                ..Live::default()
            });
        }
        let new = Agent {
            conn,
            name: hello.name.clone(),
            capacity: hello.capacity,
            status: hello.status,
            ran_since_credit: mine.clone(),
            running: mine,
            connected_ms: now_ms,
            draining: hello.draining,
            cluster: hello.cluster,
            owner: hello.owner,
            disagreements: hello.disagreements,
            blobs_served: 0,
            bytes_served: 0,
            silent: false,
        };
        if let Some(old) = self.agents.insert(agent.clone(), new) {
            tracing::info!(%agent, old = old.conn, "agent reconnected; old connection replaced");
            self.commands.push_back(Command::Close {
                agent: agent.clone(),
                conn: old.conn,
            });
        }
        conn
    }

    /// An agent's connection ended. Its leases run on: it may reconnect in time.
    pub fn handle_disconnected(&mut self, agent: &str, conn: Conn) {
        if self.agents.get(agent).is_some_and(|a| a.conn == conn)
            && let Some(a) = self.agents.remove(agent)
        {
            self.schedulers.get(&a.cluster).agent_down(agent);
            for attempt in &a.running {
                if let Some(live) = self.live.get_mut(attempt) {
                    live.waiting = None;
                    live.progress = None;
                }
            }
            tracing::info!(%agent, "agent disconnected");
        }
        self.commands.push_back(Command::Close {
            agent: agent.to_owned(),
            conn,
        });
    }

    /// An agent reported: its leases are renewed, attempts it runs that are not its are
    /// cancelled, and its capacity and policy's view replace the old.
    /// Returns whether the agent is connected here (a report on a replaced connection is not).
    pub fn handle_report(&mut self, now: Instant, agent: &str, report: Report) -> bool {
        self.tick(now);
        let Some(a) = self.agents.get_mut(agent) else {
            return false;
        };
        for (attempt, fraction) in report.progress {
            if a.running.contains(&attempt) && fraction.is_finite() {
                self.live.entry(attempt).or_default().progress = Some(fraction.clamp(0.0, 1.0));
            }
        }
        let conn = a.conn;
        let mut stale = Vec::new();
        for attempt in &report.running {
            if !self.leases.renew(now, *attempt, agent) {
                stale.push(*attempt);
            }
        }
        a.capacity = report.capacity;
        a.status = report.status;
        a.silent = false;
        let accepting = a.accepting();
        self.schedulers
            .get(&a.cluster)
            .agent_up(agent, &a.capacity, accepting);
        for attempt in stale {
            self.send(agent, conn, not_assigned(attempt));
        }
        true
    }

    /// An agent's heartbeat: the leases of what it runs are renewed.
    pub fn handle_heartbeat(&mut self, now: Instant, agent: &str) {
        self.tick(now);
        if let Some(a) = self.agents.get(agent) {
            for attempt in &a.running {
                self.leases.renew(now, *attempt, agent);
            }
        }
    }

    /// An agent's policy changed state.
    pub fn handle_state_changed(&mut self, agent: &str, to: AgentState, reason: &str) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.status.state = to;
            a.status.reason = reason.to_owned();
            a.status.accepting = to.takes_work();
            self.refresh_accepting(agent);
        }
    }

    /// An agent compiled or dropped modules.
    pub fn handle_holds(&mut self, agent: &str, compiled: Vec<Digest>, dropped: Vec<Digest>) {
        if let Some(cluster) = self.agents.get(agent).map(|a| a.cluster.clone()) {
            let scheduler = self.schedulers.get(&cluster);
            scheduler.agent_holds(agent, compiled);
            scheduler.agent_drops(agent, dropped);
        }
    }

    /// An attempt's guest started; returns `false` (and nothing changes) when the attempt is
    /// not the agent's.
    pub fn handle_started(&mut self, agent: &str, attempt: AttemptId, setup_us: u64) -> bool {
        if !self.holds(agent, attempt) {
            return false;
        }
        if let Some(live) = self.live.get_mut(&attempt) {
            live.waiting = None;
        }
        self.persist(Op::Start { attempt }, Change::Start { attempt, setup_us });
        true
    }

    /// An attempt waits on its agent, for `reason`; returns `false` (and nothing changes) when
    /// the attempt is not the agent's.
    pub fn handle_waiting(&mut self, agent: &str, attempt: AttemptId, reason: String) -> bool {
        if !self.holds(agent, attempt) {
            return false;
        }
        self.live.entry(attempt).or_default().waiting = Some(reason);
        true
    }

    /// An agent sent a result, checked by the driver against its job (`job`). The task's next
    /// state is decided here and persisted; the agent hears back once it is. Returns the
    /// change's number.
    ///
    /// The attempt's slot on its agent is free from now on (the agent sends a result once its
    /// guests are gone), so the next placement there is written in the same batch as this
    /// result rather than after it. The attempt keeps its lease until the result is stored.
    pub fn handle_result(
        &mut self,
        now: Instant,
        agent: &str,
        result: TaskResult,
        job: &JobSpec,
    ) -> OpId {
        self.tick(now);
        let attempt = result.attempt;
        if let Some(live) = self.live.get_mut(&attempt) {
            live.waiting = None;
            live.progress = None;
        }
        if self.holds(agent, attempt) {
            // Only the holder's result: a late one must not free the slot of the task's
            // current attempt on another agent.
            self.task_ended_in_scheduler(attempt.task);
        }
        let cancelled = result.cancelled() || self.cancelled.contains(&attempt.task.job);
        let succeeded = result.succeeded(job);
        if job.verified() && succeeded && !cancelled {
            return self.verified_result(agent, result, job);
        }
        let evicted = result.evicted(job);
        // What `retry.on` leaves out is not tried again (what has no kind always is).
        let left_out = result.failure(job).filter(|f| !job.retries(*f));
        let attempts_left = attempt.attempt < job.attempt_limit();
        let next = if succeeded {
            TaskState::Succeeded
        } else if cancelled {
            TaskState::Cancelled
        } else if evicted || (attempts_left && left_out.is_none()) {
            // An eviction is not the task's fault: it runs again, whatever its attempts.
            TaskState::Pending
        } else {
            TaskState::Failed
        };
        let mut outcome = if succeeded {
            "succeeded".to_owned()
        } else {
            result.cause(job).unwrap_or_else(|| "failed".into())
        };
        if let (TaskState::Failed, true, Some(f)) = (next, attempts_left, left_out) {
            outcome.push_str(&not_retried(f));
        }
        // Past its job's deadline, a task that did not succeed fails, whatever else holds (an
        // attempt stopped at the deadline ends as cancelled).
        let next = match self.expired.get(&attempt.task.job) {
            Some(cause) if !succeeded && next != TaskState::Failed => {
                outcome = cause.clone();
                TaskState::Failed
            }
            _ => next,
        };
        self.persist_result(agent, result, outcome, next, evicted, None, job)
    }

    /// Asks for an agent's result to be stored, ending its attempt with `outcome` and moving
    /// the task to `next`; with `verified`, a verified task's run and the runs it outvoted.
    #[allow(clippy::too_many_arguments)]
    fn persist_result(
        &mut self,
        agent: &str,
        result: TaskResult,
        outcome: String,
        next: TaskState,
        evicted: bool,
        verified: Option<(Replica, Vec<(u32, String)>)>,
        job: &JobSpec,
    ) -> OpId {
        let attempt = result.attempt;
        let cache_key = (job.cache && next == TaskState::Succeeded).then(|| {
            let item = self.live.get(&attempt).and_then(|l| l.item.as_deref());
            job.task_key(attempt.task.index, item)
        });
        let (replica, dissenters, verified) = match verified {
            Some((replica, dissenters)) => (
                Some(replica.clone()),
                dissenters.iter().map(|(_, agent)| agent.clone()).collect(),
                Some(Verified {
                    digest: replica.digest,
                    dissenters,
                }),
            ),
            None => (None, Vec::new(), None),
        };
        self.persist(
            Op::Result {
                attempt,
                agent: agent.to_owned(),
                evicted,
                replica,
                dissenters,
            },
            Change::End(Ending {
                attempt,
                holder: Some(agent.to_owned()),
                outcome,
                result: Some(Box::new(result)),
                next,
                verified,
                cache_key,
            }),
        )
    }

    /// A successful result of a task of a verified job: compared with the task's earlier
    /// replicas, it settles the task when enough distinct agents agree, and otherwise asks
    /// for another agent's run (or, with no attempts left, fails the task).
    fn verified_result(&mut self, agent: &str, result: TaskResult, job: &JobSpec) -> OpId {
        let attempt = result.attempt;
        let replica = Replica {
            attempt: attempt.attempt,
            agent: agent.to_owned(),
            owner: self
                .agents
                .get(agent)
                .map(|a| a.owner.clone())
                .unwrap_or_default(),
            digest: result.digest(),
        };
        let mut all: Vec<Replica> = self
            .replicas
            .get(&attempt.task)
            .map(|known| {
                known
                    .iter()
                    .filter(|r| r.attempt != attempt.attempt)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        all.push(replica.clone());
        let (next, outcome, dissenters) = match verify::tally(job.verify, &all) {
            Verdict::Agreed {
                agents, dissenters, ..
            } => {
                if !dissenters.is_empty() {
                    tracing::warn!(%attempt, ?dissenters, "agents sent results that differ from the agreed one");
                }
                let outcome = format!("succeeded: {agents} agents agree on its result");
                (TaskState::Succeeded, outcome, dissenters)
            }
            Verdict::Short { best, results } => {
                let need = job.verify as usize - best;
                let differ = if results > 1 {
                    format!(" ({results} different results so far)")
                } else {
                    String::new()
                };
                if attempt.attempt < job.attempt_limit() {
                    let outcome = format!(
                        "succeeded; {need} more agent{} must agree{differ}",
                        if need == 1 { "" } else { "s" }
                    );
                    (TaskState::Pending, outcome, vec![])
                } else {
                    let outcome = format!(
                        "no {} agents agreed on its result after {} attempts{differ}",
                        job.verify, attempt.attempt
                    );
                    (TaskState::Failed, outcome, vec![])
                }
            }
        };
        self.persist_result(
            agent,
            result,
            outcome,
            next,
            false,
            Some((replica, dissenters)),
            job,
        )
    }

    /// Time passed: failed tasks whose backoff is over are queued again, attempts whose
    /// leases ran out are ended as lost, and, every [`FORGET_INTERVAL`], jobs with nothing
    /// left here are forgotten.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.check_held_due(now);
        if self.next_forget.is_some_and(|t| t <= now) {
            self.next_forget = None;
            self.forget_idle_jobs();
            if !self.jobs.is_empty() {
                self.forget_later(now);
            }
        }
        while let Some(Reverse((due, task))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            self.queued.remove(&task);
            self.queue(task);
        }
        let mut expired = self.leases.poll_expired(now);
        expired.sort();
        for (attempt, agent) in expired {
            tracing::warn!(%attempt, %agent, "lease expired: the agent stopped reporting");
            self.lose(attempt, &agent, Loss::Expired);
        }
        while let Some(Reverse((due, expiry))) = self.expiries.peek().copied() {
            if due > now {
                break;
            }
            self.expiries.pop();
            match expiry {
                Expiry::Deadline(job) => self.deadline_passed(job),
                Expiry::FirstWait(job) => {
                    // Those that went back to pending since wait from then, on their own.
                    let tasks: Vec<TaskId> = self
                        .queued
                        .iter()
                        .filter(|t| t.job == job && !self.waiting_since.contains_key(t))
                        .copied()
                        .collect();
                    self.waited_too_long(job, tasks);
                }
                Expiry::Wait(task) => {
                    let limit = self.jobs.get(&task.job).and_then(|j| j.queue_timeout_ms);
                    let due_now = match (self.waiting_since.get(&task), limit) {
                        (Some(since), Some(ms)) => *since + Duration::from_millis(ms) <= now,
                        _ => false,
                    };
                    if due_now && self.queued.contains(&task) {
                        self.waited_too_long(task.job, vec![task]);
                    }
                }
                Expiry::Overdue(task) => {
                    if self.expired.contains_key(&task.job) {
                        // Queueing a task of a job past its deadline fails it again.
                        self.queue(task);
                    } else if self.queued.contains(&task) {
                        self.waited_too_long(task.job, vec![task]);
                    }
                }
            }
        }
    }

    /// Sets the timers of a job's deadline and queue timeout, counted from `accepted`.
    fn arm(&mut self, job: u64, spec: &JobSpec, accepted: Instant) {
        if let Some(ms) = spec.deadline_ms {
            let due = accepted + Duration::from_millis(ms);
            self.expiries.push(Reverse((due, Expiry::Deadline(job))));
        }
        if let Some(ms) = spec.queue_timeout_ms {
            let due = accepted + Duration::from_millis(ms);
            self.expiries.push(Reverse((due, Expiry::FirstWait(job))));
        }
    }

    /// A job's deadline passed: its pending tasks fail, here and in the store, and its
    /// attempts running here are stopped (their endings fail their tasks).
    fn deadline_passed(&mut self, job: u64) {
        let Some(spec) = self.jobs.get(&job).cloned() else {
            return;
        };
        if self.cancelled.contains(&job) || self.expired.contains_key(&job) {
            return;
        }
        let after =
            units::format_duration(Duration::from_millis(spec.deadline_ms.unwrap_or_default()));
        let cause = format!("the job's deadline passed ({after} after it was submitted)");
        tracing::info!(job, %cause, "deadline passed");
        self.expired.insert(job, cause.clone());
        let tasks = self.take_waiting(job, |_| true);
        self.persist(
            Op::Expire {
                job,
                tasks,
                deadline: true,
            },
            Change::Expire {
                job,
                tasks: None,
                cause,
            },
        );
        self.stop_running(job, "the job's deadline passed");
    }

    /// Tasks of `job` waited longer than its queue timeout: they fail, saying why they waited.
    fn waited_too_long(&mut self, job: u64, tasks: Vec<TaskId>) {
        let Some(spec) = self.jobs.get(&job).cloned() else {
            return;
        };
        if tasks.is_empty() || self.cancelled.contains(&job) || self.expired.contains_key(&job) {
            return;
        }
        let why = self.waiting_reason(&spec);
        let limit = units::format_duration(Duration::from_millis(
            spec.queue_timeout_ms.unwrap_or_default(),
        ));
        let cause = format!("waited {limit} (queue_timeout) for an agent: {why}");
        tracing::info!(job, tasks = tasks.len(), %cause, "tasks waited too long");
        let wanted: HashSet<TaskId> = tasks.into_iter().collect();
        let tasks = self.take_waiting(job, |t| wanted.contains(t));
        let indexes = tasks.iter().map(|t| t.index).collect();
        self.persist(
            Op::Expire {
                job,
                tasks,
                deadline: false,
            },
            Change::Expire {
                job,
                tasks: Some(indexes),
                cause,
            },
        );
    }

    /// Takes the job's waiting tasks that `which` picks out of the queue (placed or waiting a
    /// backoff), and returns them.
    fn take_waiting(&mut self, job: u64, which: impl Fn(&TaskId) -> bool) -> Vec<TaskId> {
        let mut taken: Vec<TaskId> = self
            .queued
            .iter()
            .filter(|t| t.job == job && which(t))
            .copied()
            .collect();
        taken.sort();
        let set: HashSet<TaskId> = taken.iter().copied().collect();
        self.queued.retain(|t| !set.contains(t));
        self.delayed.retain(|Reverse((_, t))| !set.contains(t));
        for t in &taken {
            self.waiting_since.remove(t);
            self.failed_on.remove(t);
            self.replicas.remove(t);
        }
        if let Some(s) = self.job_scheduler(job) {
            s.remove_waiting(job, &set);
        }
        taken
    }

    /// Tells the agents running attempts of `job` here to stop them, for `reason`.
    fn stop_running(&mut self, job: u64, reason: &str) {
        let mut stops = Vec::new();
        for (id, a) in &self.agents {
            for attempt in a.running.iter().filter(|at| at.task.job == job) {
                stops.push((id.clone(), a.conn, *attempt));
            }
        }
        stops.sort();
        for (agent, conn, attempt) in stops {
            self.send(
                &agent,
                conn,
                CoordinatorMessage::Cancel {
                    attempt,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// What became of failing tasks that waited too long: on a store error they wait again,
    /// and fail at the next look, a second on.
    fn expiry_recorded(
        &mut self,
        now: Instant,
        job: u64,
        tasks: Vec<TaskId>,
        deadline: bool,
        outcome: Persisted,
    ) {
        let Persisted::Failed(e) = outcome else {
            return;
        };
        tracing::error!(job, error = %e, "could not fail tasks that ran out of time; trying again shortly");
        let again = now + Duration::from_secs(1);
        if deadline {
            self.expired.remove(&job);
            self.expiries.push(Reverse((again, Expiry::Deadline(job))));
        }
        for task in tasks {
            if !deadline {
                self.expiries.push(Reverse((again, Expiry::Overdue(task))));
            }
            // A task of a job past its deadline is not queued: its overdue look fails it.
            if !self.expired.contains_key(&job) {
                self.queue(task);
            }
        }
    }

    /// An attempt's lease in the database shared with other coordinators ran out: nobody
    /// renewed it. Ended as lost; when the store cannot record that, the next look tries again.
    pub fn handle_lost_elsewhere(&mut self, attempt: AttemptId, agent: &str) {
        tracing::warn!(%attempt, %agent, "lease in the database ran out: requeueing");
        self.lose(attempt, agent, Loss::ExpiredElsewhere);
    }

    /// An agent was revoked: its connection is closed with the reason and the attempts it held
    /// go back to pending. Returns how many.
    pub fn handle_revoked(&mut self, agent: &str) -> usize {
        let mut attempts = self.leases.held_by(agent);
        if let Some(a) = self.agents.remove(agent) {
            self.schedulers.get(&a.cluster).agent_down(agent);
            self.send(
                agent,
                a.conn,
                CoordinatorMessage::Refused {
                    reason: format!("agent {agent} was revoked"),
                },
            );
            self.commands.push_back(Command::Close {
                agent: agent.to_owned(),
                conn: a.conn,
            });
            attempts.extend(a.running);
        }
        attempts.sort();
        attempts.dedup();
        // The leases stay until the losses are recorded: if the store cannot record them now,
        // they run out and are tried again.
        for attempt in &attempts {
            self.lose(*attempt, agent, Loss::Revoked);
        }
        attempts.len()
    }

    /// Starts (with its deadline, ms since the Unix epoch) or ends a drain of an agent: its
    /// running attempts are told when they are evicted, and its scheduler whether it takes
    /// work. Returns how many attempts it runs, or `None` when it is not connected here.
    pub fn handle_drain(
        &mut self,
        now_ms: i64,
        agent: &str,
        deadline: Option<i64>,
    ) -> Option<usize> {
        let a = self.agents.get_mut(agent)?;
        if a.draining == deadline {
            return Some(a.running.len());
        }
        a.draining = deadline;
        let conn = a.conn;
        let mut running: Vec<AttemptId> = a.running.iter().copied().collect();
        running.sort();
        if let Some(deadline) = deadline {
            for attempt in &running {
                self.send(agent, conn, drain_eviction(*attempt, deadline, now_ms));
            }
        }
        self.refresh_accepting(agent);
        Some(running.len())
    }

    /// Sends a message to an agent on its current connection, if it is connected here.
    pub fn tell(&mut self, agent: &str, message: CoordinatorMessage) {
        self.send_to(agent, message);
    }

    /// Counts a blob served to an agent.
    pub fn handle_blob_served(&mut self, agent: &str, bytes: u64) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.blobs_served += 1;
            a.bytes_served += bytes;
        }
    }

    /// A change asked for with [`Command::Persist`] was persisted, or failed.
    pub fn handle_persisted(&mut self, now: Instant, op: OpId, outcome: Persisted) {
        self.tick(now);
        let Some(op) = self.ops.remove(&op) else {
            tracing::error!(op = op.0, "an unknown change was persisted");
            return;
        };
        match op {
            Op::Start { attempt } => {
                if let Persisted::Failed(e) = outcome {
                    tracing::warn!(%attempt, error = %e, "could not record a start");
                }
            }
            Op::Assign { task, agent } => self.assigned(now, task, &agent, outcome),
            Op::Result {
                attempt,
                agent,
                evicted,
                replica,
                dissenters,
            } => {
                if matches!(outcome, Persisted::Ended(_)) {
                    for dissenter in &dissenters {
                        if let Some(a) = self.agents.get_mut(dissenter) {
                            a.disagreements += 1;
                        }
                    }
                }
                self.result_recorded(now, attempt, &agent, evicted, replica, outcome);
                self.parent_changed(attempt.task.job);
            }
            Op::Lost {
                attempt,
                agent,
                loss,
            } => {
                self.loss_recorded(now, attempt, &agent, loss, outcome);
                self.parent_changed(attempt.task.job);
            }
            Op::Expire {
                job,
                tasks,
                deadline,
            } => {
                self.expiry_recorded(now, job, tasks, deadline, outcome);
                self.parent_changed(job);
            }
            Op::Release { job } => self.release_recorded(now, job, outcome),
        }
    }

    // ----- Outputs -----

    /// The next thing to do. When nothing else is, pending tasks are placed on agents with
    /// room: each placement reserves its slot and asks for a [`Change::Assign`].
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.commands.is_empty() {
            self.place();
        }
        self.commands.pop_front()
    }

    /// When [`Dispatch::handle_timeout`] has something to do: the next lease to run out,
    /// backoff to end, deadline or queue timeout to pass, or look for jobs to forget.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let backoff = self.delayed.peek().map(|Reverse((due, _))| *due);
        let expiry = self.expiries.peek().map(|Reverse((due, _))| *due);
        [
            self.leases.poll_timeout(),
            backoff,
            expiry,
            self.next_forget,
            self.held.next_check(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- Queries -----

    /// The connected agents.
    pub fn agents(&self) -> impl Iterator<Item = (&str, &Agent)> {
        self.agents.iter().map(|(id, a)| (id.as_str(), a))
    }

    /// A connected agent.
    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    /// A job the core knows.
    pub fn job(&self, id: u64) -> Option<&Arc<JobSpec>> {
        self.jobs.get(&id)
    }

    /// When a job submitted to this core was accepted (`None` for jobs recovered from the
    /// store or found in a shared one).
    pub fn accepted(&self, id: u64) -> Option<Instant> {
        self.accepted.get(&id).copied()
    }

    /// Whether the core knows a job.
    pub fn knows_job(&self, id: u64) -> bool {
        self.jobs.contains_key(&id)
    }

    /// Whether `agent` holds the lease of `attempt`.
    pub fn holds(&self, agent: &str, attempt: AttemptId) -> bool {
        self.leases.holder(&attempt) == Some(agent)
    }

    /// Who holds the lease of `attempt`.
    pub fn holder(&self, attempt: AttemptId) -> Option<&str> {
        self.leases.holder(&attempt)
    }

    /// Whether `agent` may download the blob `digest`: only the modules, inputs and restored
    /// checkpoints of the attempts assigned to it.
    pub fn may_fetch(&self, agent: &str, digest: &Digest) -> bool {
        let Some(a) = self.agents.get(agent) else {
            return false;
        };
        a.running.iter().any(|attempt| {
            self.live.get(attempt).is_some_and(|l| {
                l.restoring.as_ref() == Some(digest)
                    || l.item
                        .as_ref()
                        .is_some_and(|i| i.blobs().any(|f| f.digest == *digest))
            }) || self
                .jobs
                .get(&attempt.task.job)
                .is_some_and(|job| job.blobs().any(|(d, _)| d == *digest))
        })
    }

    /// The progress an attempt's guest reported last, if it runs here and reported any.
    pub fn progress(&self, attempt: AttemptId) -> Option<f64> {
        self.live.get(&attempt).and_then(|l| l.progress)
    }

    /// The progress of each job's running attempts, added up.
    pub fn running_progress(&self) -> HashMap<u64, f64> {
        let mut sums: HashMap<u64, f64> = HashMap::new();
        for (attempt, live) in &self.live {
            if let Some(p) = live.progress {
                *sums.entry(attempt.task.job).or_default() += p;
            }
        }
        sums
    }

    /// Why an attempt assigned here waits on its agent, if it does.
    pub fn waiting(&self, attempt: AttemptId) -> Option<&str> {
        self.live.get(&attempt).and_then(|l| l.waiting.as_deref())
    }

    /// The jobs with attempts running on agents connected here that are not known to be
    /// cancelled: what another coordinator's cancel could concern.
    pub fn running_jobs(&self) -> Vec<u64> {
        let mut jobs: Vec<u64> = self
            .agents
            .values()
            .flat_map(|a| a.running.iter().map(|at| at.task.job))
            .filter(|j| !self.cancelled.contains(j))
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }

    /// How many tasks wait for placement or a backoff, and how many changes are in flight.
    pub fn backlog(&self) -> (usize, usize) {
        (self.queued.len(), self.ops.len())
    }

    /// How many jobs the core holds.
    pub fn jobs_held(&self) -> usize {
        self.jobs.len()
    }

    /// Why a job's pending tasks are waiting, in words for `lull status`.
    pub fn waiting_reason(&self, spec: &JobSpec) -> String {
        let agents: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| a.cluster == spec.cluster)
            .collect();
        if agents.is_empty() {
            return if spec.cluster == lull_protocol::job::DEFAULT_CLUSTER {
                "no agent is connected".into()
            } else {
                format!("no agent of cluster {} is connected", spec.cluster)
            };
        }
        if spec.verified() && agents.len() < spec.verify as usize {
            return format!(
                "verify = {} needs that many distinct agents; {} of cluster {} {} connected",
                spec.verify,
                agents.len(),
                spec.cluster,
                if agents.len() == 1 { "is" } else { "are" }
            );
        }
        let largest = agents
            .iter()
            .map(|a| a.capacity.max_task_memory)
            .max()
            .unwrap_or(0);
        let constraints =
            lull_protocol::constraint::parse_all(&spec.placement.constraints).unwrap_or_default();
        if !agents
            .iter()
            .any(|a| constraints.iter().all(|c| c.holds(&a.capacity)))
        {
            return format!(
                "no connected agent satisfies the constraints ({})",
                spec.placement.constraints.join(", ")
            );
        }
        if largest < spec.resources.memory {
            return format!(
                "no connected agent accepts tasks of {} (the largest cap is {})",
                units::format_size(spec.resources.memory),
                units::format_size(largest)
            );
        }
        if !agents.iter().any(|a| a.accepting()) {
            let mut why: Vec<String> = agents
                .iter()
                .map(|a| match a.draining {
                    Some(_) => format!("{} draining", a.name),
                    None => format!("{} {} ({})", a.name, a.status.state, a.status.reason),
                })
                .collect();
            why.sort();
            return format!("no agent is accepting work now: {}", why.join("; "));
        }
        if let Some(why) = self.schedulers.peek(&spec.cluster).and_then(|s| {
            s.quota_reason(
                &spec.owner,
                spec.group.as_deref(),
                spec.resources.cpu_millis,
            )
        }) {
            return format!("{why} in cluster {}", spec.cluster);
        }
        let shares = self
            .schedulers
            .peek(&spec.cluster)
            .map(Scheduler::shares)
            .unwrap_or_default();
        let mine = shares.iter().find(|s| s.user == spec.owner);
        let ahead: Vec<&lull_scheduler::Share> = shares
            .iter()
            .filter(|s| s.user != spec.owner && s.waiting > 0)
            .filter(|s| mine.is_none_or(|m| s.rank() < m.rank()))
            .collect();
        if let (Some(mine), false) = (mine, ahead.is_empty()) {
            let others: Vec<String> = ahead
                .iter()
                .map(|s| format!("{} {:.1}", s.user, s.recent_cores))
                .collect();
            return format!(
                "waiting for a free slot; fair share serves {} first (cores held recently: {} \
                 {:.1}, {})",
                ahead
                    .iter()
                    .map(|s| s.user.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                mine.user,
                mine.recent_cores,
                others.join(", ")
            );
        }
        "waiting for a free slot".into()
    }

    /// Credits `core_seconds` of guest CPU that `agent` reported (over its last report
    /// interval) to the owners of the jobs whose attempts ran on it in that interval, by the
    /// CPU each reserves, and starts the next interval. Returns the agent's lender (empty when
    /// no one is named) and each user's part; nothing when the agent is unknown or ran nothing
    /// (its guests' CPU then belongs to no one here).
    pub fn handle_harvest(
        &mut self,
        agent: &str,
        core_seconds: f64,
    ) -> Option<(String, Vec<(String, f64)>)> {
        let a = self.agents.get_mut(agent)?;
        let ran = std::mem::replace(&mut a.ran_since_credit, a.running.clone());
        if !(core_seconds.is_finite() && core_seconds > 0.0) {
            return None;
        }
        let a = self.agents.get(agent)?;
        let mut weights: BTreeMap<&str, f64> = BTreeMap::new();
        for attempt in &ran {
            if let Some(job) = self.jobs.get(&attempt.task.job) {
                *weights.entry(job.owner.as_str()).or_default() +=
                    f64::from(job.resources.cpu_millis.max(1));
            }
        }
        let total: f64 = weights.values().sum();
        if total <= 0.0 {
            return None;
        }
        let parts = weights
            .into_iter()
            .map(|(user, w)| (user.to_owned(), core_seconds * w / total))
            .collect();
        Some((a.owner.clone(), parts))
    }

    /// Sets the quotas of `cluster`'s users (`lull_scheduler::EVERY_USER` for everyone without
    /// their own), replacing the earlier ones.
    pub fn set_quotas(&mut self, cluster: &str, quotas: HashMap<String, lull_scheduler::Quota>) {
        if quotas.is_empty() {
            self.schedulers.quotas.remove(cluster);
        } else {
            self.schedulers
                .quotas
                .insert(cluster.to_owned(), quotas.clone());
        }
        if let Some(s) = self.schedulers.by_cluster.get_mut(cluster) {
            s.set_quotas(quotas);
        }
    }

    /// Every user's fair share, by cluster.
    pub fn shares(&self) -> Vec<(String, lull_scheduler::Share)> {
        self.schedulers
            .by_cluster
            .iter()
            .flat_map(|(cluster, s)| s.shares().into_iter().map(|sh| (cluster.clone(), sh)))
            .collect()
    }

    // ----- Inside -----

    /// Makes sure the jobs with nothing left are looked for in a while.
    fn forget_later(&mut self, now: Instant) {
        self.next_forget.get_or_insert(now + FORGET_INTERVAL);
    }

    /// Forgets the jobs of which nothing is queued, leased, being persisted or running here:
    /// their tasks have ended, or run elsewhere.
    fn forget_idle_jobs(&mut self) {
        let mut busy: HashSet<u64> = self.queued.iter().map(|t| t.job).collect();
        busy.extend(self.leases.attempts().map(|a| a.task.job));
        busy.extend(self.live.keys().map(|a| a.task.job));
        for a in self.agents.values() {
            busy.extend(a.running.iter().map(|at| at.task.job));
        }
        busy.extend(self.ops.values().map(|op| match op {
            Op::Assign { task, .. } => task.job,
            Op::Start { attempt } | Op::Result { attempt, .. } | Op::Lost { attempt, .. } => {
                attempt.task.job
            }
            Op::Expire { job, .. } | Op::Release { job } => *job,
        }));
        let before = self.jobs.len();
        self.jobs.retain(|job, _| busy.contains(job));
        self.accepted.retain(|job, _| busy.contains(job));
        self.cancelled.retain(|job| busy.contains(job));
        self.expired.retain(|job, _| busy.contains(job));
        if self.jobs.len() < before {
            tracing::debug!(
                forgotten = before - self.jobs.len(),
                kept = self.jobs.len(),
                "forgot jobs with nothing left here"
            );
        }
    }

    fn send(&mut self, agent: &str, conn: Conn, message: CoordinatorMessage) {
        self.commands.push_back(Command::Send {
            agent: agent.to_owned(),
            conn,
            message,
        });
    }

    /// Sends to an agent if it is connected here.
    fn send_to(&mut self, agent: &str, message: CoordinatorMessage) {
        if let Some(conn) = self.agents.get(agent).map(|a| a.conn) {
            self.send(agent, conn, message);
        }
    }

    fn persist(&mut self, op: Op, change: Change) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(id, op);
        self.commands.push_back(Command::Persist { op: id, change });
        id
    }

    /// Places pending tasks on agents with room, each asking for its assignment.
    fn place(&mut self) {
        while let Some(p) = self.schedulers.poll_placement() {
            self.queued.remove(&p.task);
            let with_item = self
                .jobs
                .get(&p.task.job)
                .is_some_and(|job| job.items.is_some());
            self.persist(
                Op::Assign {
                    task: p.task,
                    agent: p.agent.clone(),
                },
                Change::Assign {
                    task: p.task,
                    agent: p.agent,
                    with_item,
                },
            );
        }
        self.preempt();
    }

    /// Brings time-dependent state up to `now`: fair share.
    fn tick(&mut self, now: Instant) {
        self.clock = Some(now);
        self.schedulers.advance(now);
    }

    /// In each cluster that allows preemption, when waiting work fits nowhere and running work
    /// of a user served after it (or of its own user's lower priorities) stands in the way:
    /// evicts one such attempt that has run long enough, through the eviction notice (the
    /// agent checkpoints, the task goes back to the queue at no cost). Each cluster is looked
    /// at, and so evicts, at most once every [`PREEMPT_INTERVAL`], and not while an attempt it
    /// evicted is still stopping (the waiting work would otherwise take a second victim for
    /// the room the first is about to leave).
    fn preempt(&mut self) {
        let Some(now) = self.clock else {
            return;
        };
        let live = &self.live;
        let clusters: Vec<String> = self
            .preempting
            .iter()
            .filter(|(_, p)| {
                p.next.is_none_or(|t| t <= now) && p.evicting.is_none_or(|a| !live.contains_key(&a))
            })
            .map(|(c, _)| c.clone())
            .collect();
        for cluster in clusters {
            // Looking walks the running tasks: once a second per cluster, whatever it finds, not
            // at every placement round.
            let state = self.preempting.entry(cluster.clone()).or_default();
            state.next = Some(now + PREEMPT_INTERVAL);
            state.evicting = None;
            let Some((waiting, victims)) = self
                .schedulers
                .by_cluster
                .get_mut(&cluster)
                .and_then(Scheduler::preemption)
            else {
                continue;
            };
            let min_runtime = self.config.preempt_min_runtime;
            // Each victim's current attempt, found with one pass over the live attempts.
            let wanted: HashSet<TaskId> = victims.iter().copied().collect();
            let evictable: HashMap<TaskId, AttemptId> = self
                .live
                .iter()
                .filter(|(attempt, live)| {
                    wanted.contains(&attempt.task)
                        && !live.preempted
                        && live
                            .assigned_at
                            .is_some_and(|at| now.saturating_duration_since(at) >= min_runtime)
                })
                .map(|(attempt, _)| (attempt.task, *attempt))
                .collect();
            let chosen = victims.iter().find_map(|t| evictable.get(t).copied());
            let Some(attempt) = chosen else {
                continue;
            };
            let Some(agent) = self.leases.holder(&attempt).map(str::to_owned) else {
                continue;
            };
            if let Some(live) = self.live.get_mut(&attempt) {
                live.preempted = true;
            }
            self.preempting.entry(cluster.clone()).or_default().evicting = Some(attempt);
            let for_whom = self
                .jobs
                .get(&waiting.job)
                .map(|j| j.owner.clone())
                .unwrap_or_default();
            tracing::info!(%attempt, %agent, for_task = %waiting, "preempting");
            self.send_to(
                &agent,
                CoordinatorMessage::Evict {
                    attempt,
                    reason: format!("preempted for waiting work of {for_whom}"),
                    grace_ms: u64::try_from(self.config.preempt_grace.as_millis())
                        .unwrap_or(u64::MAX),
                },
            );
        }
    }

    /// Whether waiting work in `cluster` may evict running work that stands in its way.
    pub fn set_preemption(&mut self, cluster: &str, allowed: bool) {
        if allowed {
            self.preempting.entry(cluster.to_owned()).or_default();
        } else {
            self.preempting.remove(cluster);
        }
    }

    fn assigned(&mut self, now: Instant, task: TaskId, agent: &str, outcome: Persisted) {
        let (attempt, checkpoint, item) = match outcome {
            Persisted::Assigned {
                attempt,
                checkpoint,
                item,
            } => (attempt, checkpoint, item.map(Arc::from)),
            Persisted::Failed(e) => {
                tracing::error!(%task, error = %e, "could not assign; will retry");
                self.task_ended_in_scheduler(task);
                self.queue_after(now + ASSIGN_RETRY, task);
                return;
            }
            _ => {
                // No longer pending (cancelled, or claimed elsewhere): the reservation goes back.
                self.task_ended_in_scheduler(task);
                return;
            }
        };
        self.leases.grant(now, attempt, agent);
        self.waiting_since.remove(&task);
        if self.cancelled.contains(&task.job) {
            // Cancelled while the assignment was written: it never reaches the agent. The lease
            // stays until that is recorded, so that a failure to record it is tried again.
            self.lose(attempt, agent, Loss::CancelledBeforeStart);
            return;
        }
        if self.expired.contains_key(&task.job) {
            // Its job's deadline passed while the assignment was written: likewise.
            self.lose(attempt, agent, Loss::ExpiredBeforeStart);
            return;
        }
        let Some(job) = self.jobs.get(&task.job).cloned() else {
            tracing::error!(%attempt, "assigned a task of a job the core does not know");
            return;
        };
        // A verified task's runs must not build on one another's work: each starts afresh,
        // with the task's seed.
        let (checkpoint, seed) = if job.verified() {
            (None, Some(verify::seed(task)))
        } else {
            (checkpoint, None)
        };
        let Some(a) = self.agents.get_mut(agent) else {
            // Gone since the placement; the lease runs out and requeues it.
            tracing::debug!(%attempt, %agent, "agent left before assignment");
            return;
        };
        a.running.insert(attempt);
        a.ran_since_credit.insert(attempt);
        let conn = a.conn;
        self.live.insert(
            attempt,
            Live {
                assigned_at: Some(now),
                restoring: checkpoint.as_ref().map(|c| c.digest),
                item: item.clone(),
                ..Live::default()
            },
        );
        tracing::debug!(%attempt, %agent, "assigned");
        self.send(
            agent,
            conn,
            CoordinatorMessage::Assign(Box::new(Assignment {
                attempt,
                job: (*job).clone(),
                checkpoint,
                seed,
                item: item.map(|i| (*i).clone()),
            })),
        );
    }

    fn result_recorded(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        agent: &str,
        evicted: bool,
        replica: Option<Replica>,
        outcome: Persisted,
    ) {
        match outcome {
            Persisted::Ended(state) => {
                tracing::info!(%agent, %attempt, state = state.as_str(), "result recorded");
                if let (TaskState::Pending, Some(replica)) = (state, replica) {
                    // A replica that did not settle its task: another agent runs it, now.
                    self.replicas.entry(attempt.task).or_default().push(replica);
                    self.end_attempt(attempt, agent, state, None);
                } else if state == TaskState::Pending && !evicted {
                    // It failed and has attempts left: elsewhere, after a backoff.
                    let wait = retry_backoff(self.config.retry_backoff, attempt.attempt);
                    tracing::info!(%attempt, wait_ms = wait.as_millis() as u64, "task failed; retrying after a backoff");
                    self.failed_on
                        .entry(attempt.task)
                        .or_default()
                        .push(agent.to_owned());
                    self.end_attempt(attempt, agent, state, Some(now + wait));
                } else {
                    self.end_attempt(attempt, agent, state, None);
                }
            }
            Persisted::Failed(e) => {
                tracing::error!(%attempt, error = %e, "could not record result; the agent resends it when it reconnects");
                return;
            }
            _ => tracing::info!(%agent, %attempt, "late or duplicate result ignored"),
        }
        self.send_to(agent, CoordinatorMessage::ResultAck { attempt });
    }

    fn loss_recorded(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        agent: &str,
        loss: Loss,
        outcome: Persisted,
    ) {
        let state = match outcome {
            Persisted::Ended(state) => state,
            Persisted::Failed(e) => {
                if loss == Loss::Expired {
                    // The store did not take the loss (disk full, database restarting): the
                    // lease comes back for a moment, so the loss is recorded as soon as the
                    // store answers and the task does not stay running for good.
                    tracing::error!(%attempt, error = %e, "could not requeue a lost attempt; trying again shortly");
                    self.leases.grant_for(now, attempt, agent, LOST_RETRY);
                } else {
                    // The store still says what it said; the next look tries again.
                    tracing::error!(%attempt, error = %e, "could not record a lost attempt");
                }
                return;
            }
            _ => return,
        };
        if matches!(loss, Loss::Expired | Loss::ExpiredElsewhere) {
            if let Some(a) = self.agents.get_mut(agent) {
                // An agent that let a lease run out is silent, maybe gone with its connection
                // not yet timed out: no new work until it reports again.
                a.silent = true;
                let conn = a.conn;
                self.send(
                    agent,
                    conn,
                    CoordinatorMessage::Cancel {
                        attempt,
                        reason: "its lease expired".into(),
                    },
                );
            }
            self.refresh_accepting(agent);
            // The retry goes elsewhere when it can.
            self.failed_on
                .entry(attempt.task)
                .or_default()
                .push(agent.to_owned());
        }
        self.end_attempt(attempt, agent, state, None);
    }

    /// Asks for an attempt to be ended as lost.
    fn lose(&mut self, attempt: AttemptId, agent: &str, loss: Loss) {
        let mut outcome = loss.outcome().to_owned();
        let expired = self.expired.get(&attempt.task.job);
        let next =
            if loss == Loss::CancelledBeforeStart || self.cancelled.contains(&attempt.task.job) {
                TaskState::Cancelled
            } else if let Some(cause) = expired {
                if loss != Loss::ExpiredBeforeStart {
                    outcome = format!("{outcome}; {cause}");
                }
                TaskState::Failed
            } else {
                match self.jobs.get(&attempt.task.job) {
                    Some(job) if attempt.attempt >= job.attempt_limit() => TaskState::Failed,
                    Some(job) if !job.retries(Failure::Agent) => {
                        outcome.push_str(&not_retried(Failure::Agent));
                        TaskState::Failed
                    }
                    // A job this coordinator does not know (submitted through another one) is
                    // given another attempt; its next placement loads it.
                    _ => TaskState::Pending,
                }
            };
        self.persist(
            Op::Lost {
                attempt,
                agent: agent.to_owned(),
                loss,
            },
            Change::End(Ending {
                attempt,
                holder: None,
                outcome,
                result: None,
                next,
                verified: None,
                cache_key: None,
            }),
        );
    }

    /// Ends an attempt in the live state; a task back to pending is queued at once, or at
    /// `retry_at`.
    fn end_attempt(
        &mut self,
        attempt: AttemptId,
        agent: &str,
        state: TaskState,
        retry_at: Option<Instant>,
    ) {
        self.leases.release(&attempt);
        self.live.remove(&attempt);
        if let Some(a) = self.agents.get_mut(agent) {
            a.running.remove(&attempt);
        }
        self.task_ended_in_scheduler(attempt.task);
        if state == TaskState::Pending
            && let Some(ms) = self
                .jobs
                .get(&attempt.task.job)
                .and_then(|j| j.queue_timeout_ms)
            && let Some(now) = self.clock
        {
            self.waiting_since.insert(attempt.task, now);
            let due = now + Duration::from_millis(ms);
            self.expiries
                .push(Reverse((due, Expiry::Wait(attempt.task))));
        }
        match (state, retry_at) {
            (TaskState::Pending, Some(at)) => self.queue_after(at, attempt.task),
            (TaskState::Pending, None) => self.queue(attempt.task),
            _ => {
                self.failed_on.remove(&attempt.task);
                self.replicas.remove(&attempt.task);
            }
        }
    }

    fn task_ended_in_scheduler(&mut self, task: TaskId) {
        if let Some(s) = self.job_scheduler(task.job) {
            s.task_ended(task);
        }
    }

    /// Queues a task at `at`; counted as queued while it waits, so that nothing queues it
    /// sooner.
    fn queue_after(&mut self, at: Instant, task: TaskId) {
        if self.queued.insert(task) {
            self.delayed.push(Reverse((at, task)));
        }
    }

    /// Queues a task for placement, away from the agents it failed on.
    fn queue(&mut self, task: TaskId) {
        if let Some(cause) = self.expired.get(&task.job).cloned() {
            // Back to pending after its job's deadline passed (its attempt ended meanwhile):
            // it fails too.
            self.persist(
                Op::Expire {
                    job: task.job,
                    tasks: vec![task],
                    deadline: false,
                },
                Change::Expire {
                    job: task.job,
                    tasks: Some(vec![task.index]),
                    cause,
                },
            );
            return;
        }
        // Only tasks of jobs known here, and not held, are queued (a job found held in a
        // shared database is loaded once it is released).
        if self.cancelled.contains(&task.job)
            || self.held.jobs.contains_key(&task.job)
            || !self.jobs.contains_key(&task.job)
            || !self.queued.insert(task)
        {
            return;
        }
        if self.ensure_job(task.job) {
            let mut avoid = self.failed_on.get(&task).cloned().unwrap_or_default();
            let mut exclude = Vec::new();
            if let Some(replicas) = self.replicas.get(&task) {
                // Agents that sent a replica never run the task again; other agents of their
                // owners only when no one else can.
                exclude.extend(replicas.iter().map(|r| r.agent.clone()));
                let owners: HashSet<&str> = replicas
                    .iter()
                    .map(|r| r.owner.as_str())
                    .filter(|o| !o.is_empty())
                    .collect();
                if !owners.is_empty() {
                    avoid.extend(
                        self.agents
                            .iter()
                            .filter(|(_, a)| owners.contains(a.owner.as_str()))
                            .map(|(id, _)| id.clone()),
                    );
                }
            }
            if let Some(s) = self.job_scheduler(task.job) {
                s.task_queued(task);
                s.avoid(task, avoid);
                s.exclude(task, exclude);
            }
        } else {
            self.queued.remove(&task);
        }
    }

    /// Makes sure the scheduler knows the job (it forgets jobs with nothing waiting or
    /// running); `false` when the core does not know it either.
    fn ensure_job(&mut self, job: u64) -> bool {
        let Some(spec) = self.jobs.get(&job).cloned() else {
            return false;
        };
        let scheduler = self.schedulers.get(&spec.cluster);
        if scheduler.has_job(job) {
            return true;
        }
        match JobPlacement::of(&spec) {
            Ok(placement) => {
                scheduler.add_job(job, placement, spec.modules.len());
                true
            }
            Err(e) => {
                tracing::error!(job, error = %e, "the job's placement cannot be read; its tasks wait");
                false
            }
        }
    }

    fn job_scheduler(&mut self, job: u64) -> Option<&mut Scheduler> {
        let cluster = self.jobs.get(&job)?.cluster.clone();
        Some(self.schedulers.get(&cluster))
    }

    /// Tells the agent's cluster scheduler whether the agent takes work now.
    fn refresh_accepting(&mut self, agent: &str) {
        if let Some(a) = self.agents.get(agent) {
            let accepting = a.accepting();
            self.schedulers
                .get(&a.cluster)
                .agent_accepting(agent, accepting);
        }
    }
}

/// How long a task waits before its next attempt after its `attempt`-th failed: `base`,
/// doubling with each failure, at most [`MAX_BACKOFF`].
pub fn retry_backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The eviction of a drained agent's attempt, with what is left of the drain's deadline at
/// `now_ms`.
fn drain_eviction(attempt: AttemptId, deadline_ms: i64, now_ms: i64) -> CoordinatorMessage {
    CoordinatorMessage::Evict {
        attempt,
        reason: "the agent is being drained".into(),
        grace_ms: u64::try_from(deadline_ms.saturating_sub(now_ms)).unwrap_or(0),
    }
}

fn not_assigned(attempt: AttemptId) -> CoordinatorMessage {
    CoordinatorMessage::Cancel {
        attempt,
        reason: "the attempt is no longer assigned to this agent".into(),
    }
}

/// The first evicted module's reason in a result, if any module was evicted.
pub fn eviction_reason(result: &TaskResult) -> Option<&str> {
    result.modules.iter().find_map(|m| match &m.outcome {
        Outcome::Evicted { reason } => Some(reason.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_up_to_a_minute() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|a| retry_backoff(base, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_backoff(base, 0), base);
        assert_eq!(retry_backoff(base, u32::MAX), Duration::from_secs(60));
        assert_eq!(retry_backoff(Duration::ZERO, 5), Duration::ZERO);
    }
}
