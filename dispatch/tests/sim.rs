//! The dispatch core driven by simulation: a store with the real store's rules, agents that run
//! tasks for a while, report, fail, go silent, reconnect and send results twice, and time that
//! passes only when the simulation says so. Thousands of agents and tasks run in simulated
//! minutes, in about a second of real time.
#![allow(clippy::disallowed_methods)] // The simulation's start is the one real clock reading.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lull_dispatch::{
    Change, Command, Config, Conn, Dispatch, Ending, HELD_CHECK_INTERVAL, HELD_RETRY, Hello, OpId,
    Persisted, Report, TaskState,
};
use lull_protocol::Digest;
use lull_protocol::job::{
    FileRef, ItemFiles, Items, JobSpec, ModuleSpec, Placement, Resources, TaskItem,
};
use lull_protocol::message::{
    AgentStatus, AttemptId, Capacity, Captured, CoordinatorMessage, ModuleResult, Outcome, TaskId,
    TaskResult,
};

const LEASE: Duration = Duration::from_secs(30);
const REPORT: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_secs(1);
/// The half-life of users' recent usage: short, so that fair share settles within a test.
const HALF_LIFE: Duration = Duration::from_secs(10);
/// The time the simulation advances in one step.
const STEP: Duration = Duration::from_millis(50);

/// A task's row in the simulated store.
#[derive(Debug, Clone)]
struct Row {
    state: TaskState,
    attempt: u32,
    agent: Option<String>,
    /// Every attempt's outcome, in order.
    outcomes: Vec<String>,
    /// Why it failed without an attempt ending (it ran out of time waiting).
    cause: Option<String>,
}

/// A store with the rules of the real one: an assignment only of a pending task, an ending only
/// of the current attempt (from its holder, when one is named), a late success taken while the
/// task waits, and a cancelled job's task never back to pending.
#[derive(Debug, Default)]
struct Store {
    tasks: BTreeMap<TaskId, Row>,
    cancelled: HashSet<u64>,
    /// While set, every change fails.
    failing: bool,
    /// Changes persisted.
    writes: u64,
    /// The replicas outvoted, as the real store marks them: task, attempt, agent.
    disagreed: Vec<(TaskId, u32, String)>,
    /// The result digest each verified task was accepted with.
    accepted: BTreeMap<TaskId, Digest>,
    /// Each task's own part, for jobs that have them.
    items: BTreeMap<TaskId, TaskItem>,
    /// Jobs held until the jobs they come after succeed, with their definitions, and why
    /// each blocked one stays held.
    held: BTreeMap<u64, JobSpec>,
    blocked: BTreeMap<u64, String>,
}

impl Store {
    fn apply(&mut self, change: &Change) -> Persisted {
        if self.failing {
            return Persisted::Failed("the disk is full".into());
        }
        self.writes += 1;
        match change {
            Change::Assign {
                task,
                agent,
                with_item,
            } => {
                let row = self.tasks.get_mut(task).expect("a stored task");
                if row.state != TaskState::Pending {
                    return Persisted::NotPending;
                }
                row.state = TaskState::Running;
                row.attempt += 1;
                row.agent = Some(agent.clone());
                Persisted::Assigned {
                    attempt: AttemptId {
                        task: *task,
                        attempt: row.attempt,
                    },
                    checkpoint: None,
                    item: if *with_item {
                        self.items.get(task).cloned().map(Box::new)
                    } else {
                        None
                    },
                }
            }
            Change::Start { .. } => Persisted::Done,
            Change::End(Ending {
                attempt,
                holder,
                outcome,
                result,
                next,
                verified,
                ..
            }) => {
                let cancelled = self.cancelled.contains(&attempt.task.job);
                let row = self.tasks.get_mut(&attempt.task).expect("a stored task");
                let late_success = result.is_some() && *next == TaskState::Succeeded;
                let current = row.attempt == attempt.attempt
                    && (row.state == TaskState::Running
                        || (row.state == TaskState::Pending && late_success));
                if !current
                    || holder
                        .as_ref()
                        .is_some_and(|h| row.agent.as_ref() != Some(h))
                {
                    return Persisted::Stale;
                }
                row.state = match next {
                    TaskState::Pending if cancelled => TaskState::Cancelled,
                    next => *next,
                };
                row.outcomes.push(outcome.clone());
                if let Some(v) = verified {
                    for (number, agent) in &v.dissenters {
                        self.disagreed.push((attempt.task, *number, agent.clone()));
                    }
                    if row.state == TaskState::Succeeded {
                        self.accepted.insert(attempt.task, v.digest);
                    }
                }
                Persisted::Ended(row.state)
            }
            Change::Release { job } => {
                if self.cancelled.contains(job) {
                    return Persisted::NotPending;
                }
                let Some(spec) = self.held.get(job) else {
                    return Persisted::NotPending;
                };
                let mut waiting = false;
                for parent in &spec.after {
                    if let Some(why) = self.blocked.get(parent) {
                        let why = format!("job {parent} is held: {why}");
                        self.blocked.insert(*job, why.clone());
                        return Persisted::Blocked(why);
                    }
                    if self.held.contains_key(parent) {
                        waiting = true;
                        continue;
                    }
                    let states: Vec<TaskState> = self
                        .tasks
                        .iter()
                        .filter(|(t, _)| t.job == *parent)
                        .map(|(_, r)| r.state)
                        .collect();
                    if states.iter().any(|s| !s.is_final()) {
                        waiting = true;
                    } else if states.iter().any(|s| *s != TaskState::Succeeded) {
                        let why = format!("job {parent} did not succeed");
                        self.blocked.insert(*job, why.clone());
                        return Persisted::Blocked(why);
                    }
                }
                if waiting {
                    return Persisted::Done;
                }
                Persisted::Released(Box::new(self.held.remove(job).expect("held")))
            }
            Change::Expire { job, tasks, cause } => {
                for (task, row) in self.tasks.iter_mut().filter(|(t, _)| t.job == *job) {
                    let named = tasks.as_ref().is_none_or(|ts| ts.contains(&task.index));
                    if named && row.state == TaskState::Pending {
                        row.state = TaskState::Failed;
                        row.cause = Some(cause.clone());
                    }
                }
                Persisted::Done
            }
        }
    }

    fn count(&self, state: TaskState) -> usize {
        self.tasks.values().filter(|r| r.state == state).count()
    }
}

/// How a simulated agent behaves.
#[derive(Debug, Clone)]
struct Behaviour {
    /// How long its tasks take.
    task_time: Duration,
    /// Whether its tasks fail (exit 1).
    fails: bool,
    /// Whether it sends each result twice.
    duplicates: bool,
    /// What it says its guests printed: nothing when `None` (what honest agents say), else
    /// these bytes' digest, a forged result.
    claims: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            task_time: Duration::from_secs(2),
            fails: false,
            duplicates: false,
            claims: None,
        }
    }
}

#[derive(Debug)]
struct Agent {
    conn: Option<Conn>,
    slots: u32,
    behaviour: Behaviour,
    /// Attempts it runs: when they end, and whether they are evicted then.
    running: BTreeMap<AttemptId, (Instant, bool)>,
    /// Whether it says nothing (frozen, or cut off by the network) while staying connected.
    silent: bool,
    next_report: Instant,
    /// Every message it was sent.
    inbox: Vec<CoordinatorMessage>,
}

/// The simulation.
struct Sim {
    core: Dispatch,
    store: Store,
    agents: BTreeMap<String, Agent>,
    jobs: HashMap<u64, Arc<JobSpec>>,
    start: Instant,
    now: Instant,
    /// Changes waiting to be persisted, each with when its write completes.
    persisting: VecDeque<(Instant, OpId, Change)>,
    /// How long a write takes.
    write_time: Duration,
    next_job: u64,
    /// Attempts assigned, in order.
    assigned: Vec<(AttemptId, String)>,
    /// When each attempt was assigned (time since the start), in order.
    assigned_at: Vec<(Duration, AttemptId)>,
    /// Held jobs released, in order.
    released: Vec<u64>,
}

fn job_spec(count: u32, max_attempts: u32) -> JobSpec {
    JobSpec {
        cluster: "default".into(),
        name: "sim".into(),
        count,
        modules: vec![ModuleSpec {
            name: "m".into(),
            digest: Digest::of(b"m"),
            size: 1,
            signature: None,
            args: vec![],
            env: Default::default(),
            stdin: None,
            inputs: vec![],
            success_exit_codes: vec![0],
            env_extra: true,
            mounts: vec![],
        }],
        resources: Resources {
            memory: 1 << 20,
            timeout_ms: 60_000,
            cpu_millis: 1000,
        },
        placement: Placement::default(),
        max_attempts,
        // The simulations of retries fail tasks in every way.
        retry_on: lull_protocol::job::Failure::ALL.to_vec(),
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

fn result(attempt: AttemptId, outcome: Outcome) -> TaskResult {
    TaskResult {
        attempt,
        modules: vec![ModuleResult {
            name: "m".into(),
            outcome,
            stdout: None,
            stderr: None,
        }],
        outputs: vec![],
        elapsed_ms: 1,
        outputs_truncated: false,
    }
}

impl Sim {
    fn new() -> Self {
        let start = Instant::now();
        Self {
            core: Dispatch::new(Config {
                lease: LEASE,
                report_interval: REPORT,
                retry_backoff: BACKOFF,
                seed: 7,
                fair_share_half_life: HALF_LIFE,
                preempt_min_runtime: Duration::from_secs(5),
                preempt_grace: Duration::from_secs(3),
            }),
            store: Store::default(),
            agents: BTreeMap::new(),
            jobs: HashMap::new(),
            start,
            now: start,
            persisting: VecDeque::new(),
            write_time: Duration::from_millis(5),
            next_job: 1,
            assigned: Vec::new(),
            assigned_at: Vec::new(),
            released: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn capacity(slots: u32) -> Capacity {
        Capacity {
            cores: slots,
            memory_total: 16 << 30,
            memory_available: 8 << 30,
            slots,
            max_task_memory: 1 << 30,
            os: "linux".into(),
            arch: "x86_64".into(),
            ..Capacity::default()
        }
    }

    /// Connects an agent (again, if it was): its hello lists what it runs.
    fn connect(&mut self, id: &str, slots: u32, behaviour: Behaviour) {
        self.connect_owned(id, slots, behaviour, "lab");
    }

    /// Connects an agent of a lender.
    fn connect_owned(&mut self, id: &str, slots: u32, behaviour: Behaviour, owner: &str) {
        let running = self
            .agents
            .get(id)
            .map(|a| a.running.keys().copied().collect())
            .unwrap_or_default();
        let conn = self.core.handle_hello(
            self.now,
            0,
            Hello {
                agent: id.into(),
                name: id.into(),
                capacity: Self::capacity(slots),
                status: AgentStatus::default(),
                running,
                compiled: vec![],
                cluster: "default".into(),
                draining: None,
                owner: owner.into(),
                disagreements: 0,
            },
        );
        let now = self.now;
        let agent = self.agents.entry(id.to_owned()).or_insert_with(|| Agent {
            conn: None,
            slots,
            behaviour: behaviour.clone(),
            running: BTreeMap::new(),
            silent: false,
            next_report: now,
            inbox: Vec::new(),
        });
        agent.conn = Some(conn);
        agent.silent = false;
        agent.behaviour = behaviour;
        agent.next_report = now + REPORT;
        self.drive();
    }

    fn disconnect(&mut self, id: &str) {
        let conn = self.agents.get_mut(id).and_then(|a| a.conn.take());
        if let Some(conn) = conn {
            self.core.handle_disconnected(id, conn);
        }
        self.drive();
    }

    fn submit(&mut self, count: u32, max_attempts: u32) -> u64 {
        self.submit_as("alice", 0, count, max_attempts)
    }

    /// Submits a job of `owner` with `priority`.
    fn submit_as(&mut self, owner: &str, priority: i32, count: u32, max_attempts: u32) -> u64 {
        let mut spec = job_spec(count, max_attempts);
        spec.owner = owner.to_owned();
        spec.priority = priority;
        self.submit_spec(spec)
    }

    /// Submits a job whose results `verify` agents must agree on.
    fn submit_verified(&mut self, verify: u32, count: u32, max_attempts: u32) -> u64 {
        let mut spec = job_spec(count, max_attempts);
        spec.owner = "alice".into();
        spec.verify = verify;
        self.submit_spec(spec)
    }

    fn submit_spec(&mut self, spec: JobSpec) -> u64 {
        let count = spec.count;
        let job = self.next_job;
        self.next_job += 1;
        for index in 0..count {
            self.store.tasks.insert(
                TaskId { job, index },
                Row {
                    state: TaskState::Pending,
                    attempt: 0,
                    agent: None,
                    outcomes: vec![],
                    cause: None,
                },
            );
        }
        if !spec.after.is_empty() {
            let after = spec.after.clone();
            self.jobs.insert(job, Arc::new(spec.clone()));
            self.store.held.insert(job, spec);
            self.core.handle_held(self.now, job, &after, None);
            self.drive();
            return job;
        }
        let spec = Arc::new(spec);
        self.jobs.insert(job, spec.clone());
        self.core.handle_submitted(self.now, job, spec, &[]);
        self.drive();
        job
    }

    fn cancel(&mut self, job: u64) {
        self.store.cancelled.insert(job);
        for (t, row) in self.store.tasks.iter_mut() {
            if t.job == job && row.state == TaskState::Pending {
                row.state = TaskState::Cancelled;
            }
        }
        self.core.handle_cancelled(job);
        self.drive();
    }

    /// Carries out the core's commands.
    fn drive(&mut self) {
        while let Some(command) = self.core.poll_command() {
            match command {
                Command::Send {
                    agent,
                    conn,
                    message,
                } => {
                    let a = self.agents.get_mut(&agent).expect("a known agent");
                    if a.conn != Some(conn) {
                        continue;
                    }
                    match &message {
                        CoordinatorMessage::Assign(assignment) => {
                            let done = self.now + a.behaviour.task_time;
                            a.running.insert(assignment.attempt, (done, false));
                            self.assigned.push((assignment.attempt, agent.clone()));
                            self.assigned_at
                                .push((self.now - self.start, assignment.attempt));
                        }
                        CoordinatorMessage::Cancel { attempt, .. } => {
                            a.running.remove(attempt);
                        }
                        CoordinatorMessage::Evict {
                            attempt, grace_ms, ..
                        } => {
                            let by = self.now + Duration::from_millis(*grace_ms);
                            if let Some((done, evicted)) = a.running.get_mut(attempt)
                                && by < *done
                            {
                                *done = by;
                                *evicted = true;
                            }
                        }
                        _ => {}
                    }
                    a.inbox.push(message);
                }
                Command::Close { agent, conn } => {
                    let a = self.agents.get_mut(&agent).expect("a known agent");
                    if a.conn == Some(conn) {
                        a.conn = None;
                    }
                }
                Command::Persist { op, change } => {
                    self.persisting
                        .push_back((self.now + self.write_time, op, change));
                }
                Command::Release { job, spec } => {
                    self.released.push(job);
                    self.core.handle_submitted(self.now, job, spec, &[]);
                }
            }
        }
    }

    /// Advances time by `d`, in steps.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `done` holds, at most `limit` of simulated time; panics past it.
    fn run_until(&mut self, limit: Duration, what: &str, done: impl Fn(&Sim) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(
                self.now < end,
                "{what}: not done after {:?} (store: {} pending, {} running, {} succeeded, {} failed)",
                limit,
                self.store.count(TaskState::Pending),
                self.store.count(TaskState::Running),
                self.store.count(TaskState::Succeeded),
                self.store.count(TaskState::Failed),
            );
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        // Writes that completed.
        while self.persisting.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, op, change) = self.persisting.pop_front().expect("a write");
            let outcome = self.store.apply(&change);
            self.core.handle_persisted(now, op, outcome);
            self.drive();
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
            self.drive();
        }
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        for id in ids {
            let a = self.agents.get_mut(&id).expect("agent");
            if a.conn.is_none() || a.silent {
                continue;
            }
            let finished: Vec<(AttemptId, bool)> = a
                .running
                .iter()
                .filter(|(_, (done, _))| *done <= now)
                .map(|(at, (_, evicted))| (*at, *evicted))
                .collect();
            let behaviour = a.behaviour.clone();
            for (attempt, evicted) in finished {
                self.agents
                    .get_mut(&id)
                    .expect("agent")
                    .running
                    .remove(&attempt);
                let outcome = if evicted {
                    Outcome::Evicted {
                        reason: "the agent is being drained".into(),
                    }
                } else {
                    Outcome::Exited {
                        code: i32::from(behaviour.fails),
                    }
                };
                let mut r = result(attempt, outcome);
                if let Some(claim) = &behaviour.claims {
                    r.modules[0].stdout = Some(Captured {
                        digest: Digest::of(claim.as_bytes()),
                        size: claim.len() as u64,
                        truncated: false,
                    });
                }
                let job = self.jobs[&attempt.task.job].clone();
                self.core.handle_result(now, &id, r.clone(), &job);
                if behaviour.duplicates {
                    self.core.handle_result(now, &id, r, &job);
                }
                self.drive();
            }
            let a = self.agents.get_mut(&id).expect("agent");
            if a.next_report <= now {
                a.next_report = now + REPORT;
                let report = Report {
                    capacity: Self::capacity(a.slots),
                    running: a.running.keys().copied().collect(),
                    status: AgentStatus::default(),
                    progress: vec![],
                };
                self.core.handle_report(now, &id, report);
                self.drive();
            }
        }
    }

    fn row(&self, task: TaskId) -> &Row {
        &self.store.tasks[&task]
    }

    fn job_done(&self, job: u64) -> bool {
        self.store
            .tasks
            .iter()
            .filter(|(t, _)| t.job == job)
            .all(|(_, r)| r.state.is_final())
    }

    /// No attempt is held by two agents, and each agent's running attempts fit its slots.
    fn check_invariants(&self) {
        for (id, a) in &self.agents {
            assert!(
                a.running.len() <= a.slots as usize,
                "agent {id} runs {} attempts in {} slots",
                a.running.len(),
                a.slots
            );
        }
        let mut seen = HashMap::new();
        for (id, a) in &self.agents {
            for attempt in a.running.keys() {
                if let Some(other) = seen.insert(attempt.task, id) {
                    let row = self.row(attempt.task);
                    // A task runs twice only while one of the two was lost and not yet told.
                    assert!(
                        row.outcomes.iter().any(|o| o.starts_with("lost")),
                        "task {} runs on {other} and {id}",
                        attempt.task
                    );
                }
            }
        }
    }
}

fn fast(task_time: Duration) -> Behaviour {
    Behaviour {
        task_time,
        ..Behaviour::default()
    }
}

#[test]
fn thousands_of_agents_run_tens_of_thousands_of_tasks_each_once() {
    let started = Instant::now();
    let mut sim = Sim::new();
    for i in 0..2_000 {
        sim.connect(&format!("agent-{i:04}"), 4, fast(Duration::from_secs(3)));
    }
    let jobs: Vec<u64> = (0..4).map(|_| sim.submit(10_000, 3)).collect();
    sim.run_until(Duration::from_secs(120), "every task done", |s| {
        jobs.iter().all(|j| s.job_done(*j))
    });
    sim.check_invariants();
    assert_eq!(sim.store.count(TaskState::Succeeded), 40_000);
    // Each task ran once: one assignment each, no loss, no retry.
    assert_eq!(sim.assigned.len(), 40_000);
    assert!(sim.store.tasks.values().all(|r| r.attempt == 1));
    // 40,000 tasks on 8,000 slots of 3 s each: five rounds, with the writes in between.
    assert!(
        sim.elapsed() < Duration::from_secs(30),
        "took {:?} of simulated time",
        sim.elapsed()
    );
    assert_eq!(sim.core.backlog(), (0, 0), "nothing queued or in flight");
    eprintln!(
        "40,000 tasks on 2,000 agents: {:?} simulated in {:?}",
        sim.elapsed(),
        started.elapsed()
    );
}

#[test]
fn a_silent_agent_loses_its_attempt_after_the_lease_and_gets_no_new_work() {
    let mut sim = Sim::new();
    sim.connect("frozen", 1, fast(Duration::from_secs(100)));
    let job = sim.submit(1, 3);
    let task = TaskId { job, index: 0 };
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.row(task).state, TaskState::Running);
    sim.connect("spare", 1, fast(Duration::from_secs(1)));
    sim.agents.get_mut("frozen").unwrap().silent = true;
    // Within the lease nothing happens...
    sim.run_for(LEASE - Duration::from_secs(2));
    assert_eq!(sim.row(task).attempt, 1);
    // ...past it the attempt is lost and the task runs elsewhere, and succeeds.
    sim.run_until(Duration::from_secs(10), "the task to succeed", |s| {
        s.row(task).state == TaskState::Succeeded
    });
    let row = sim.row(task);
    assert_eq!(row.attempt, 2);
    assert_eq!(row.outcomes[0], "lost: the agent stopped reporting");
    assert_eq!(row.agent.as_deref(), Some("spare"));
    // The frozen agent was told, and gets nothing new until it reports again.
    let told = sim.agents["frozen"].inbox.iter().any(
        |m| matches!(m, CoordinatorMessage::Cancel { reason, .. } if reason == "its lease expired"),
    );
    assert!(told);
    let job2 = sim.submit(3, 3);
    sim.run_until(Duration::from_secs(20), "the second job", |s| {
        s.job_done(job2)
    });
    assert!(
        sim.assigned
            .iter()
            .filter(|(a, _)| a.task.job == job2)
            .all(|(_, agent)| agent == "spare"),
        "a silent agent gets no work"
    );
}

#[test]
fn a_late_success_of_a_lost_attempt_counts_but_a_late_failure_does_not() {
    let mut sim = Sim::new();
    sim.connect("slow", 1, fast(Duration::from_secs(40)));
    let job = sim.submit(2, 3);
    let (t0, t1) = (TaskId { job, index: 0 }, TaskId { job, index: 1 });
    sim.run_for(Duration::from_secs(1));
    let first = sim.assigned[0].0;
    // The agent freezes past its lease; nobody else can take the task meanwhile.
    sim.agents.get_mut("slow").unwrap().silent = true;
    sim.run_for(LEASE + Duration::from_secs(2));
    assert_eq!(sim.row(first.task).state, TaskState::Pending);
    // It thaws and sends its success: the work is done, taken while the task waits.
    let spec = sim.jobs[&job].clone();
    let now = sim.now;
    sim.core.handle_result(
        now,
        "slow",
        result(first, Outcome::Exited { code: 0 }),
        &spec,
    );
    sim.drive();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.row(first.task).state, TaskState::Succeeded);
    // A late failure of a lost attempt is not taken: the task still has its retry.
    let other = if first.task == t0 { t1 } else { t0 };
    sim.agents.get_mut("slow").unwrap().silent = false;
    sim.agents.get_mut("slow").unwrap().running.clear();
    sim.run_until(Duration::from_secs(5), "the other task to start", |s| {
        s.row(other).state == TaskState::Running
    });
    let attempt = AttemptId {
        task: other,
        attempt: sim.row(other).attempt,
    };
    sim.agents.get_mut("slow").unwrap().silent = true;
    sim.run_for(LEASE + Duration::from_secs(2));
    assert_eq!(sim.row(other).state, TaskState::Pending);
    let now = sim.now;
    sim.core.handle_result(
        now,
        "slow",
        result(attempt, Outcome::Exited { code: 1 }),
        &spec,
    );
    sim.drive();
    sim.run_for(Duration::from_millis(100));
    let row = sim.row(other);
    assert_eq!(row.state, TaskState::Pending, "{row:?}");
    assert_eq!(row.outcomes, ["lost: the agent stopped reporting"]);
    // Both results were acknowledged: the agent stops resending them.
    let acks = sim.agents["slow"]
        .inbox
        .iter()
        .filter(|m| matches!(m, CoordinatorMessage::ResultAck { .. }))
        .count();
    assert_eq!(acks, 2);
}

#[test]
fn duplicate_results_are_recorded_once_and_each_acknowledged() {
    let mut sim = Sim::new();
    sim.connect(
        "echo",
        2,
        Behaviour {
            duplicates: true,
            ..fast(Duration::from_secs(1))
        },
    );
    let job = sim.submit(10, 3);
    sim.run_until(Duration::from_secs(30), "the job", |s| s.job_done(job));
    assert_eq!(sim.store.count(TaskState::Succeeded), 10);
    assert!(
        sim.store
            .tasks
            .values()
            .all(|r| r.outcomes == ["succeeded"])
    );
    let acks = sim.agents["echo"]
        .inbox
        .iter()
        .filter(|m| matches!(m, CoordinatorMessage::ResultAck { .. }))
        .count();
    assert_eq!(acks, 20);
}

#[test]
fn an_agent_that_reconnects_within_its_lease_keeps_its_attempts_and_one_that_is_late_does_not() {
    let mut sim = Sim::new();
    sim.connect("roamer", 2, fast(Duration::from_secs(60)));
    let job = sim.submit(2, 3);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.store.count(TaskState::Running), 2);
    // Away for less than a lease: it says what it runs, and keeps it.
    sim.disconnect("roamer");
    sim.run_for(Duration::from_secs(10));
    sim.connect("roamer", 2, fast(Duration::from_secs(60)));
    sim.run_for(LEASE);
    assert!(
        sim.store
            .tasks
            .values()
            .all(|r| r.attempt == 1 && r.state == TaskState::Running)
    );
    // Away for longer: its attempts are lost, and when it comes back it is told to stop them.
    sim.disconnect("roamer");
    sim.run_for(LEASE + Duration::from_secs(2));
    assert_eq!(
        sim.store.count(TaskState::Pending),
        2,
        "requeued, with no agent to run them"
    );
    let before = sim.agents["roamer"].inbox.len();
    let stale: Vec<AttemptId> = sim.agents["roamer"].running.keys().copied().collect();
    sim.connect("roamer", 2, fast(Duration::from_secs(1)));
    let told: Vec<AttemptId> = sim.agents["roamer"].inbox[before..]
        .iter()
        .filter_map(|m| match m {
            CoordinatorMessage::Cancel { attempt, reason } if reason.contains("no longer") => {
                Some(*attempt)
            }
            _ => None,
        })
        .collect();
    assert_eq!(told, stale);
    sim.run_until(Duration::from_secs(30), "the job", |s| s.job_done(job));
    assert!(sim.store.tasks.values().all(|r| r.attempt == 2
        && r.outcomes[0] == "lost: the agent stopped reporting"
        && r.state == TaskState::Succeeded));
}

#[test]
fn a_drained_agent_is_evicted_at_the_deadline_and_its_tasks_run_elsewhere_at_no_cost() {
    let mut sim = Sim::new();
    sim.connect("leaving", 2, fast(Duration::from_secs(600)));
    // One attempt only: an eviction must not spend it.
    let job = sim.submit(2, 1);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.store.count(TaskState::Running), 2);
    sim.connect("staying", 2, fast(Duration::from_secs(5)));
    let deadline_ms = 20_000;
    assert_eq!(
        sim.core.handle_drain(0, "leaving", Some(deadline_ms)),
        Some(2)
    );
    sim.drive();
    let graces: Vec<u64> = sim.agents["leaving"]
        .inbox
        .iter()
        .filter_map(|m| match m {
            CoordinatorMessage::Evict { grace_ms, .. } => Some(*grace_ms),
            _ => None,
        })
        .collect();
    assert_eq!(graces, [20_000, 20_000]);
    // Evicted at the deadline, requeued at once onto the other agent, and done there.
    sim.run_until(Duration::from_secs(40), "the job", |s| s.job_done(job));
    assert!(
        sim.elapsed() < Duration::from_secs(30),
        "{:?}",
        sim.elapsed()
    );
    for row in sim.store.tasks.values() {
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
        assert_eq!(row.agent.as_deref(), Some("staying"));
        assert_eq!(
            row.outcomes[0],
            "module m: evicted: the agent is being drained"
        );
    }
    // Drained, it takes nothing new; undrained, it does.
    let job2 = sim.submit(4, 1);
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.assigned
            .iter()
            .all(|(a, agent)| a.task.job != job2 || agent == "staying")
    );
    sim.core.handle_drain(0, "leaving", None);
    sim.drive();
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.assigned
            .iter()
            .any(|(a, agent)| a.task.job == job2 && agent == "leaving")
    );
}

#[test]
fn a_failing_task_retries_after_growing_backoffs_on_other_agents_until_its_attempts_run_out() {
    let mut sim = Sim::new();
    let failing = Behaviour {
        fails: true,
        ..fast(Duration::from_secs(1))
    };
    for id in ["a", "b", "c", "d"] {
        sim.connect(id, 1, failing.clone());
    }
    let job = sim.submit(1, 4);
    let task = TaskId { job, index: 0 };
    sim.run_until(Duration::from_secs(60), "the task to fail", |s| {
        s.row(task).state == TaskState::Failed
    });
    let starts: Vec<&String> = sim
        .assigned
        .iter()
        .filter(|(attempt, _)| attempt.task == task)
        .map(|(_, agent)| agent)
        .collect();
    assert_eq!(starts.len(), 4, "four attempts: {starts:?}");
    let distinct: HashSet<&&String> = starts.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "each retry avoids the agents it failed on: {starts:?}"
    );
    let row = sim.row(task);
    assert_eq!(row.outcomes.len(), 4);
    assert!(
        row.outcomes
            .iter()
            .all(|o| o == "module m: exited with code 1")
    );
    // 1 s runs, then 1 s, 2 s and 4 s of backoff between them, and the writes.
    let took = sim.elapsed();
    assert!(
        took >= Duration::from_secs(11) && took < Duration::from_secs(13),
        "took {took:?}"
    );
}

#[test]
fn by_default_a_programs_own_failure_ends_its_task_at_once_and_a_lost_agent_does_not() {
    let mut sim = Sim::new();
    let failing = Behaviour {
        fails: true,
        ..fast(Duration::from_secs(1))
    };
    sim.connect("failing", 1, failing);
    let mut spec = job_spec(1, 3);
    spec.owner = "alice".into();
    spec.retry_on = lull_protocol::job::DEFAULT_RETRY_ON.to_vec();
    let exits = sim.submit_spec(spec.clone());
    let task = TaskId {
        job: exits,
        index: 0,
    };
    sim.run_until(Duration::from_secs(30), "the task to fail", |s| {
        s.row(task).state == TaskState::Failed
    });
    let row = sim.row(task);
    assert_eq!(
        row.outcomes,
        ["module m: exited with code 1 (not tried again: retry.on leaves out exit)"]
    );
    assert_eq!(row.attempt, 1, "one attempt of three");
    sim.disconnect("failing");

    // An agent that stops reporting is the agent's failure: tried again elsewhere...
    sim.connect("frozen", 1, fast(Duration::from_secs(100)));
    let lost = sim.submit_spec(spec.clone());
    let task = TaskId {
        job: lost,
        index: 0,
    };
    sim.run_for(Duration::from_secs(1));
    sim.agents.get_mut("frozen").unwrap().silent = true;
    sim.connect("spare", 1, fast(Duration::from_secs(1)));
    sim.run_until(
        LEASE + Duration::from_secs(10),
        "the task to succeed",
        |s| s.row(task).state == TaskState::Succeeded,
    );
    assert_eq!(
        sim.row(task).outcomes[0],
        "lost: the agent stopped reporting"
    );

    // ...unless the job leaves `agent` out.
    sim.disconnect("spare");
    sim.connect("frozen-too", 1, fast(Duration::from_secs(100)));
    spec.retry_on = vec![lull_protocol::job::Failure::Exit];
    let strict = sim.submit_spec(spec);
    let task = TaskId {
        job: strict,
        index: 0,
    };
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.row(task).state, TaskState::Running);
    sim.agents.get_mut("frozen-too").unwrap().silent = true;
    sim.run_until(LEASE + Duration::from_secs(10), "the task to fail", |s| {
        s.row(task).state == TaskState::Failed
    });
    assert_eq!(
        sim.row(task).outcomes,
        ["lost: the agent stopped reporting (not tried again: retry.on leaves out agent)"]
    );
    sim.check_invariants();
}

#[test]
fn at_its_deadline_a_jobs_unfinished_tasks_fail_and_its_running_ones_are_stopped() {
    let mut sim = Sim::new();
    sim.connect("one", 1, fast(Duration::from_secs(10)));
    let mut spec = job_spec(4, 3);
    spec.owner = "alice".into();
    spec.deadline_ms = Some(15_000);
    let job = sim.submit_spec(spec);
    let task = |index| TaskId { job, index };
    sim.run_for(Duration::from_secs(14));
    assert_eq!(sim.row(task(0)).state, TaskState::Succeeded);
    assert_eq!(sim.row(task(1)).state, TaskState::Running);
    sim.run_for(Duration::from_secs(2));
    let cause = "the job's deadline passed (15s after it was submitted)";
    for i in 2..4 {
        let row = sim.row(task(i));
        assert_eq!(row.state, TaskState::Failed, "task {i}");
        assert_eq!(row.cause.as_deref(), Some(cause));
        assert_eq!(row.attempt, 0, "never ran");
    }
    let stopped = sim.agents["one"].inbox.iter().any(|m| {
        matches!(m, CoordinatorMessage::Cancel { attempt, reason }
            if attempt.task == task(1) && reason == "the job's deadline passed")
    });
    assert!(stopped, "the running attempt is stopped");
    // The stopped attempt's end (here its lease running out) fails its task, with the cause.
    sim.run_until(LEASE + Duration::from_secs(5), "the job to end", |s| {
        s.job_done(job)
    });
    let row = sim.row(task(1));
    assert_eq!(row.state, TaskState::Failed);
    assert!(row.outcomes[0].ends_with(cause), "{:?}", row.outcomes);
    assert!(
        sim.assigned.iter().all(|(a, _)| a.task.index < 2),
        "nothing started after the deadline"
    );
    sim.check_invariants();
}

#[test]
fn a_deadline_the_store_cannot_record_is_tried_again_until_it_can() {
    let mut sim = Sim::new();
    let mut spec = job_spec(3, 3);
    spec.owner = "alice".into();
    spec.deadline_ms = Some(5_000);
    let job = sim.submit_spec(spec);
    sim.run_for(Duration::from_secs(4));
    sim.store.failing = true;
    sim.run_for(Duration::from_secs(3));
    assert!(
        (0..3).all(|index| sim.row(TaskId { job, index }).state == TaskState::Pending),
        "nothing could be written"
    );
    sim.store.failing = false;
    sim.run_until(Duration::from_secs(5), "the deadline to be recorded", |s| {
        s.job_done(job)
    });
    for index in 0..3 {
        let row = sim.row(TaskId { job, index });
        assert_eq!(row.state, TaskState::Failed);
        assert_eq!(
            row.cause.as_deref(),
            Some("the job's deadline passed (5s after it was submitted)")
        );
    }
    // No agent came: nothing ran, before or after.
    assert!(sim.assigned.iter().all(|(a, _)| a.task.job != job));
}

#[test]
fn a_task_waiting_longer_than_its_queue_timeout_fails_saying_why_it_waited() {
    let mut sim = Sim::new();
    let mut spec = job_spec(4, 3);
    spec.owner = "alice".into();
    spec.queue_timeout_ms = Some(12_000);
    spec.retry_on = lull_protocol::job::Failure::ALL.to_vec();
    let job = sim.submit_spec(spec.clone());
    let task = |job, index| TaskId { job, index };
    // One slot from 5 s on, tasks of 5 s: tasks 0 and 1 start in time (at 5 s and 10 s), the
    // others would wait past 12 s.
    sim.run_for(Duration::from_secs(5));
    sim.connect("one", 1, fast(Duration::from_secs(5)));
    sim.run_for(Duration::from_secs(8));
    assert_eq!(sim.row(task(job, 1)).state, TaskState::Running);
    for i in 2..4 {
        let row = sim.row(task(job, i));
        assert_eq!(row.state, TaskState::Failed, "task {i}");
        let cause = row.cause.as_deref().unwrap_or_default();
        assert!(
            cause.starts_with("waited 12s (queue_timeout) for an agent: "),
            "{cause}"
        );
    }
    sim.run_until(Duration::from_secs(10), "the job to end", |s| {
        s.job_done(job)
    });
    for i in 0..2 {
        assert_eq!(sim.row(task(job, i)).state, TaskState::Succeeded);
    }
    sim.disconnect("one");

    // A task back to pending after an attempt waits from then: it outlives the job's first
    // wait, and fails a queue timeout after its attempt ended.
    let failing = Behaviour {
        fails: true,
        ..fast(Duration::from_secs(5))
    };
    sim.connect("flaky", 1, failing);
    let mut one = spec;
    one.count = 1;
    let retried = sim.submit_spec(one);
    sim.run_for(Duration::from_millis(5_500));
    assert_eq!(
        sim.row(task(retried, 0)).outcomes.len(),
        1,
        "one attempt failed"
    );
    sim.disconnect("flaky");
    sim.run_for(Duration::from_secs(8));
    assert_eq!(
        sim.row(task(retried, 0)).state,
        TaskState::Pending,
        "13.5 s after submission, 8 s after its attempt: it waits on"
    );
    sim.run_for(Duration::from_secs(5));
    let row = sim.row(task(retried, 0));
    assert_eq!(row.state, TaskState::Failed);
    assert!(
        row.cause
            .as_deref()
            .is_some_and(|c| c.starts_with("waited 12s (queue_timeout) for an agent: no agent")),
        "{:?}",
        row.cause
    );
    sim.check_invariants();
}

#[test]
fn a_job_cancelled_while_its_assignment_is_written_never_reaches_the_agent() {
    let mut sim = Sim::new();
    sim.write_time = Duration::from_millis(500);
    sim.connect("a", 1, fast(Duration::from_secs(5)));
    let job = sim.submit(1, 3);
    // The assignment is being written...
    assert_eq!(sim.persisting.len(), 1);
    sim.run_for(Duration::from_millis(100));
    // ...when the job is cancelled: the store's cancel runs first, and the assignment then
    // finds the task no longer pending.
    sim.cancel(job);
    sim.run_for(Duration::from_secs(2));
    assert!(
        !sim.agents["a"]
            .inbox
            .iter()
            .any(|m| matches!(m, CoordinatorMessage::Assign(_)))
    );
    assert_eq!(
        sim.row(TaskId { job, index: 0 }).state,
        TaskState::Cancelled
    );
    assert!(sim.row(TaskId { job, index: 0 }).outcomes.is_empty());

    // The other order: the assignment is written first, then the cancel, which reaches the
    // core before the assignment's outcome does.
    let job = sim.submit(1, 3);
    let task = TaskId { job, index: 0 };
    let (_, op, change) = sim
        .persisting
        .pop_front()
        .expect("the assignment being written");
    let outcome = sim.store.apply(&change);
    assert!(matches!(outcome, Persisted::Assigned { .. }));
    sim.cancel(job);
    sim.core.handle_persisted(sim.now, op, outcome);
    sim.drive();
    sim.run_for(Duration::from_secs(2));
    assert!(
        !sim.agents["a"]
            .inbox
            .iter()
            .any(|m| matches!(m, CoordinatorMessage::Assign(a) if a.attempt.task == task)),
        "a cancelled job's assignment is not sent"
    );
    let row = sim.row(task);
    assert_eq!(row.state, TaskState::Cancelled, "{row:?}");
    assert_eq!(row.outcomes, ["cancelled before it started"]);
}

#[test]
fn a_cancel_stops_running_attempts_and_nothing_of_the_job_runs_again() {
    let mut sim = Sim::new();
    for i in 0..3 {
        sim.connect(&format!("a{i}"), 2, fast(Duration::from_secs(10)));
    }
    let job = sim.submit(20, 3);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.store.count(TaskState::Running), 6);
    sim.cancel(job);
    let stops: usize = sim
        .agents
        .values()
        .map(|a| {
            a.inbox
                .iter()
                .filter(|m| matches!(m, CoordinatorMessage::Cancel { reason, .. } if reason == "the job was cancelled"))
                .count()
        })
        .sum();
    assert_eq!(stops, 6);
    // The agents stop them and say so with a cancelled result.
    for a in sim.agents.values_mut() {
        a.running.clear();
    }
    let running: Vec<AttemptId> = sim.assigned.iter().map(|(a, _)| *a).collect();
    let spec = sim.jobs[&job].clone();
    for (attempt, agent) in sim.assigned.clone() {
        sim.core.handle_result(
            sim.now,
            &agent,
            result(
                attempt,
                Outcome::Cancelled {
                    reason: "the job was cancelled".into(),
                },
            ),
            &spec,
        );
    }
    sim.drive();
    sim.run_for(Duration::from_secs(60));
    assert_eq!(
        sim.assigned.len(),
        running.len(),
        "nothing of it is assigned again"
    );
    assert_eq!(sim.store.count(TaskState::Cancelled), 20);
    assert_eq!(sim.core.backlog(), (0, 0));
}

#[test]
fn a_loss_the_store_cannot_record_is_tried_again_until_it_can() {
    let mut sim = Sim::new();
    sim.connect("gone", 1, fast(Duration::from_secs(100)));
    let job = sim.submit(1, 3);
    let task = TaskId { job, index: 0 };
    sim.run_for(Duration::from_secs(1));
    sim.agents.get_mut("gone").unwrap().silent = true;
    sim.store.failing = true;
    sim.run_for(LEASE + Duration::from_secs(5));
    // Still running in the store; the lease is back, so the loss is tried every second.
    assert_eq!(sim.row(task).state, TaskState::Running);
    let attempt = AttemptId { task, attempt: 1 };
    assert_eq!(sim.core.holder(attempt), Some("gone"));
    sim.store.failing = false;
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.row(task).outcomes,
        ["lost: the agent stopped reporting"]
    );
    assert_eq!(sim.core.holder(attempt), None);
}

#[test]
fn a_revoked_agent_is_refused_and_its_attempts_go_back_to_pending() {
    let mut sim = Sim::new();
    sim.connect("doomed", 2, fast(Duration::from_secs(100)));
    let job = sim.submit(2, 3);
    sim.run_for(Duration::from_secs(1));
    sim.connect("spare", 2, fast(Duration::from_secs(1)));
    assert_eq!(sim.core.handle_revoked("doomed"), 2);
    sim.drive();
    let inbox = &sim.agents["doomed"].inbox;
    assert!(matches!(
        inbox.last(),
        Some(CoordinatorMessage::Refused { reason }) if reason == "agent doomed was revoked"
    ));
    assert_eq!(sim.agents["doomed"].conn, None, "its connection is closed");
    sim.run_until(Duration::from_secs(10), "the job", |s| s.job_done(job));
    for row in sim.store.tasks.values() {
        assert_eq!(row.outcomes, ["lost: its agent was revoked", "succeeded"]);
        assert_eq!(row.agent.as_deref(), Some("spare"));
    }
}

#[test]
fn many_agents_coming_and_going_lose_no_task_and_finish_every_job() {
    let mut sim = Sim::new();
    for i in 0..200 {
        sim.connect(&format!("a{i:03}"), 2, fast(Duration::from_secs(4)));
    }
    let jobs: Vec<u64> = (0..5).map(|_| sim.submit(1_000, 10)).collect();
    // Every 5 s, ten agents leave (some for good, some to come back within the lease, some
    // after it) and a few freeze.
    let mut round = 0u64;
    while !jobs.iter().all(|j| sim.job_done(*j)) {
        assert!(sim.elapsed() < Duration::from_secs(600), "not done in time");
        for k in 0..10 {
            let id = format!("a{:03}", (round * 37 + k * 11) % 200);
            match (round + k) % 4 {
                0 => sim.disconnect(&id),
                1 => {
                    sim.disconnect(&id);
                    sim.connect(&id, 2, fast(Duration::from_secs(4)));
                }
                2 => sim.agents.get_mut(&id).unwrap().silent = true,
                _ => {
                    if sim.agents[&id].conn.is_none() || sim.agents[&id].silent {
                        sim.connect(&id, 2, fast(Duration::from_secs(4)));
                    }
                }
            }
        }
        sim.run_for(Duration::from_secs(5));
        sim.check_invariants();
        round += 1;
    }
    assert_eq!(sim.store.count(TaskState::Succeeded), 5_000);
    for row in sim.store.tasks.values() {
        assert_eq!(row.outcomes.last().map(String::as_str), Some("succeeded"));
        // Losses do not count against a task beyond its attempts: ten were plenty.
        assert!(row.attempt <= 10, "{row:?}");
    }
}

#[test]
fn finished_jobs_are_forgotten_and_a_late_result_of_one_is_still_handled() {
    let mut sim = Sim::new();
    // A long task on the only agent: its job is held while the attempt is leased.
    sim.connect("slow", 1, fast(Duration::from_secs(500)));
    let long = sim.submit(1, 3);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.store.count(TaskState::Running), 1);
    // Another job runs on another agent and finishes; a minute later it is forgotten.
    sim.connect("a", 2, fast(Duration::from_secs(1)));
    let submitted = sim.now;
    let other = sim.submit(2, 3);
    assert_eq!(
        sim.core.accepted(other),
        Some(submitted),
        "when a job was accepted is known while the job is"
    );
    sim.run_until(Duration::from_secs(20), "the other job", |s| {
        s.job_done(other)
    });
    sim.run_for(lull_dispatch::FORGET_INTERVAL + Duration::from_secs(1));
    assert!(!sim.core.knows_job(other), "a finished job is forgotten");
    assert_eq!(sim.core.accepted(other), None, "with when it was accepted");
    assert!(
        sim.core.knows_job(long),
        "a job is held while anything of it runs"
    );
    // A late duplicate of one of the forgotten job's results is still answered: the driver
    // reads the job from the store, the store says the result is stale, the agent is told.
    let first = sim
        .assigned
        .iter()
        .find(|(a, agent)| a.task.job == other && agent == "a")
        .map(|(a, _)| *a)
        .expect("an attempt of the other job on a");
    let spec = sim.jobs[&other].clone();
    let acks_before = sim.agents["a"]
        .inbox
        .iter()
        .filter(|m| matches!(m, CoordinatorMessage::ResultAck { .. }))
        .count();
    let now = sim.now;
    sim.core
        .handle_result(now, "a", result(first, Outcome::Exited { code: 0 }), &spec);
    sim.drive();
    sim.run_for(Duration::from_millis(100));
    let acks = sim.agents["a"]
        .inbox
        .iter()
        .filter(|m| matches!(m, CoordinatorMessage::ResultAck { .. }))
        .count();
    assert_eq!(acks, acks_before + 1);
    assert_eq!(sim.row(first.task).outcomes, ["succeeded"], "recorded once");
    assert!(!sim.core.knows_job(other), "and it stays forgotten");
    // Nothing is held once everything ends.
    sim.agents.get_mut("slow").unwrap().running.clear();
    sim.agents.get_mut("slow").unwrap().silent = true;
    sim.run_until(
        Duration::from_secs(120),
        "the long task to go elsewhere",
        |s| s.job_done(long),
    );
    sim.run_for(lull_dispatch::FORGET_INTERVAL + Duration::from_secs(1));
    assert_eq!(sim.core.jobs_held(), 0);
}

#[test]
fn a_slot_is_filled_again_in_the_batch_that_stores_its_result() {
    let mut sim = Sim::new();
    sim.write_time = Duration::from_millis(200);
    sim.connect("one", 1, fast(Duration::from_millis(100)));
    let job = sim.submit(3, 3);
    sim.run_until(Duration::from_secs(5), "the first result", |s| {
        s.persisting
            .iter()
            .any(|(_, _, c)| matches!(c, Change::End(_)))
    });
    // The result is not stored yet, and the next task's assignment is already written with it.
    assert!(
        sim.persisting
            .iter()
            .any(|(_, _, c)| matches!(c, Change::Assign { agent, .. } if agent == "one")),
        "{:?}",
        sim.persisting
    );
    let started = sim.elapsed();
    sim.run_until(Duration::from_secs(5), "the job", |s| s.job_done(job));
    sim.check_invariants();
    assert_eq!(sim.store.count(TaskState::Succeeded), 3);
    // Two more tasks after the first result: one write and a run each, not two writes.
    assert!(
        sim.elapsed() - started < Duration::from_millis(2 * (200 + 100 + 2 * 50) + 50),
        "{:?}",
        sim.elapsed() - started
    );
}

#[test]
fn a_late_result_does_not_free_the_slot_of_the_tasks_next_attempt() {
    let mut sim = Sim::new();
    sim.connect("lost", 1, fast(Duration::from_secs(300)));
    let job = sim.submit(1, 3);
    sim.run_for(Duration::from_secs(1));
    let first = sim.assigned[0].0;
    sim.agents.get_mut("lost").unwrap().silent = true;
    sim.run_for(LEASE + Duration::from_secs(2));
    // The task runs again on an agent of one slot; a second job waits for that slot.
    sim.connect("busy", 1, fast(Duration::from_secs(30)));
    sim.run_until(Duration::from_secs(5), "the task's second attempt", |s| {
        s.assigned.iter().any(|(_, a)| a == "busy")
    });
    let other = sim.submit(1, 3);
    sim.run_for(Duration::from_secs(1));
    // The lost attempt's late failure arrives: the slot on "busy" is still taken.
    let spec = sim.jobs[&job].clone();
    let now = sim.now;
    sim.core.handle_result(
        now,
        "lost",
        result(first, Outcome::Exited { code: 1 }),
        &spec,
    );
    sim.drive();
    sim.run_for(Duration::from_secs(1));
    sim.check_invariants();
    let on_busy: Vec<_> = sim.assigned.iter().filter(|(_, a)| a == "busy").collect();
    assert_eq!(on_busy.len(), 1, "{on_busy:?}");
    assert_eq!(
        sim.row(TaskId {
            job: other,
            index: 0
        })
        .state,
        TaskState::Pending
    );
}

/// The attempts of each job's owner assigned from `from` (time since the start) up to `to`.
fn assignments_by_owner(sim: &Sim, from: Duration, to: Duration) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (at, attempt) in &sim.assigned_at {
        if *at >= from && *at < to {
            *by.entry(sim.jobs[&attempt.task.job].owner.clone())
                .or_default() += 1;
        }
    }
    by
}

#[test]
fn two_users_arriving_at_different_times_share_the_contended_pool_equally() {
    let mut sim = Sim::new();
    for i in 0..4 {
        sim.connect(&format!("agent-{i}"), 4, fast(Duration::from_secs(2)));
    }
    // Alice has the pool to herself for 40 s (four half-lives)...
    let alice = sim.submit_as("alice", 0, 1_000, 1);
    sim.run_for(Duration::from_secs(40));
    let alone = assignments_by_owner(&sim, Duration::ZERO, sim.elapsed());
    assert!(alone["alice"] >= 300, "{alone:?}");
    // ...then Bob submits as many.
    let contended_from = sim.elapsed();
    let bob = sim.submit_as("bob", 0, 1_000, 1);
    let why = sim.core.waiting_reason(&sim.jobs[&alice]);
    assert!(
        why.starts_with(
            "waiting for a free slot; fair share serves bob first (cores held recently: alice 1"
        ),
        "{why}"
    );
    let shares = sim.core.shares();
    assert_eq!(
        shares
            .iter()
            .map(|(c, s)| (c.as_str(), s.user.as_str()))
            .collect::<Vec<_>>(),
        [("default", "alice"), ("default", "bob")],
        "{shares:?}"
    );
    assert_eq!(shares[1].1.waiting, 1_000);
    let pending = |sim: &Sim, job: u64| {
        sim.store
            .tasks
            .iter()
            .any(|(t, r)| t.job == job && r.state == TaskState::Pending)
    };
    sim.run_until(
        Duration::from_secs(600),
        "one of them has nothing left waiting",
        |s| !pending(s, alice) || !pending(s, bob),
    );
    let contended_to = sim.elapsed();
    let shares = assignments_by_owner(&sim, contended_from, contended_to);
    let (a, b) = (shares["alice"] as f64, shares["bob"] as f64);
    let bob_share = b / (a + b);
    eprintln!(
        "contended for {:?}: alice {a}, bob {b} tasks (bob's share {bob_share:.3})",
        contended_to - contended_from
    );
    assert!(
        (0.45..=0.55).contains(&bob_share),
        "shares not within 10 % of equal over the contended period: alice {a}, bob {b}"
    );
    // Bob, who had used nothing, is served first at once: the first slots freed go to him.
    let first: Vec<String> = sim
        .assigned_at
        .iter()
        .filter(|(at, _)| *at >= contended_from)
        .take(8)
        .map(|(_, attempt)| sim.jobs[&attempt.task.job].owner.clone())
        .collect();
    assert!(first.iter().all(|o| o == "bob"), "{first:?}");
    sim.run_until(Duration::from_secs(600), "both jobs done", |s| {
        s.job_done(alice) && s.job_done(bob)
    });
    sim.check_invariants();
}

#[test]
fn a_high_priority_job_overtakes_its_owners_earlier_jobs_but_not_other_users() {
    let mut sim = Sim::new();
    for i in 0..2 {
        sim.connect(&format!("agent-{i}"), 4, fast(Duration::from_secs(2)));
    }
    let low = sim.submit_as("alice", 0, 200, 1);
    sim.run_for(Duration::from_secs(5));
    let urgent_from = sim.elapsed();
    let urgent = sim.submit_as("alice", 10, 12, 1);
    sim.run_until(Duration::from_secs(60), "the urgent job done", |s| {
        s.job_done(urgent)
    });
    // From its submission on, every slot freed went to the urgent job until it had none left.
    let after: Vec<u64> = sim
        .assigned_at
        .iter()
        .filter(|(at, _)| *at >= urgent_from)
        .map(|(_, a)| a.task.job)
        .collect();
    assert_eq!(
        after[..12],
        [urgent; 12],
        "the first assignments after it: {after:?}"
    );
    assert!(!sim.job_done(low), "the low job still has work");

    // Bob's ordinary job is not held up by Alice's priorities: priority orders only her own.
    let bob_from = sim.elapsed();
    let bob = sim.submit_as("bob", 0, 8, 1);
    let also_urgent = sim.submit_as("alice", 100, 50, 1);
    sim.run_until(Duration::from_secs(60), "Bob's job done", |s| {
        s.job_done(bob)
    });
    let shares = assignments_by_owner(&sim, bob_from, sim.elapsed());
    assert!(
        shares["bob"] == 8 && shares.get("alice").copied().unwrap_or(0) <= 8,
        "Bob ran his 8 tasks while Alice's urgent job waited its turn: {shares:?}"
    );
    sim.run_until(Duration::from_secs(300), "everything done", |s| {
        s.job_done(low) && s.job_done(also_urgent)
    });
    sim.check_invariants();
}

#[test]
fn an_agents_harvest_is_split_among_the_users_whose_tasks_it_runs() {
    let mut sim = Sim::new();
    sim.connect("agent-0", 4, fast(Duration::from_secs(30)));
    assert_eq!(
        sim.core.handle_harvest("agent-0", 4.0),
        None,
        "an idle agent's guest CPU is no one's"
    );
    sim.submit_as("alice", 0, 3, 1);
    sim.submit_as("bob", 0, 1, 1);
    sim.run_for(Duration::from_secs(2));
    let (lender, parts) = sim
        .core
        .handle_harvest("agent-0", 4.0)
        .expect("four tasks run");
    assert_eq!(lender, "lab");
    assert_eq!(
        parts,
        vec![("alice".to_owned(), 3.0), ("bob".to_owned(), 1.0)],
        "by the CPU each user's tasks reserve"
    );
    assert_eq!(sim.core.handle_harvest("nobody", 4.0), None);
    assert_eq!(sim.core.handle_harvest("agent-0", f64::NAN), None);
    // Tasks that ended since the last credit still get their part of the next one.
    sim.run_for(Duration::from_secs(30));
    let (_, parts) = sim
        .core
        .handle_harvest("agent-0", 2.0)
        .expect("the tasks that ended in the interval");
    assert_eq!(
        parts,
        vec![("alice".to_owned(), 1.5), ("bob".to_owned(), 0.5)]
    );
    assert_eq!(
        sim.core.handle_harvest("agent-0", 2.0),
        None,
        "then nothing ran"
    );
}

/// A simulation of four agents of four slots, whose tasks take 2 s.
fn sixteen_slots() -> Sim {
    let mut sim = Sim::new();
    for i in 0..4 {
        sim.connect(&format!("agent-{i}"), 4, fast(Duration::from_secs(2)));
    }
    sim
}

/// A quota of `tasks` running and `millis` thousandths of a core reserved.
fn quota(tasks: Option<u32>, millis: Option<u64>) -> lull_scheduler::Quota {
    lull_scheduler::Quota {
        max_tasks: tasks,
        max_cpu_millis: millis,
    }
}

/// The tasks of `job` running now.
fn running(sim: &Sim, job: u64) -> usize {
    sim.store
        .tasks
        .iter()
        .filter(|(t, r)| t.job == job && r.state == TaskState::Running)
        .count()
}

#[test]
fn a_user_at_their_quota_waits_while_others_use_the_rest_of_the_pool() {
    let mut sim = sixteen_slots();
    sim.core.set_quotas(
        "default",
        HashMap::from([
            ("alice".to_owned(), quota(Some(4), None)),
            (
                lull_scheduler::EVERY_USER.to_owned(),
                quota(None, Some(6_000)),
            ),
        ]),
    );
    let alice = sim.submit_as("alice", 0, 100, 1);
    let bob = sim.submit_as("bob", 0, 100, 1);
    for _ in 0..100 {
        sim.step();
        assert!(running(&sim, alice) <= 4, "alice over her 4 tasks");
        assert!(running(&sim, bob) <= 6, "bob over everyone's 6 cores");
    }
    assert_eq!((running(&sim, alice), running(&sim, bob)), (4, 6));
    let why = sim.core.waiting_reason(&sim.jobs[&alice]);
    assert_eq!(
        why,
        "alice is at their quota: 4 of 4 task(s) running in cluster default"
    );
    let why = sim.core.waiting_reason(&sim.jobs[&bob]);
    assert_eq!(
        why,
        "bob is at their quota: 6.0 of 6.0 core(s) reserved in cluster default"
    );
    // Lifted: the whole pool is used again.
    sim.core.set_quotas("default", HashMap::new());
    sim.drive();
    sim.run_for(Duration::from_secs(3));
    assert_eq!(running(&sim, alice) + running(&sim, bob), 16);
    sim.run_until(Duration::from_secs(120), "both done", |s| {
        s.job_done(alice) && s.job_done(bob)
    });
    sim.check_invariants();
}

#[test]
fn a_group_at_its_quota_holds_all_its_members_while_others_use_the_rest() {
    let mut sim = sixteen_slots();
    sim.core.set_quotas(
        "default",
        HashMap::from([
            ("@physics".to_owned(), quota(Some(5), None)),
            ("alice".to_owned(), quota(Some(3), None)),
        ]),
    );
    let in_group = |sim: &mut Sim, owner: &str| {
        let mut spec = job_spec(100, 1);
        spec.owner = owner.to_owned();
        spec.group = Some("physics".into());
        sim.submit_spec(spec)
    };
    let alice = in_group(&mut sim, "alice");
    let bob = in_group(&mut sim, "bob");
    let carol = sim.submit_as("carol", 0, 100, 1);
    let mut bob_seen = 0;
    for _ in 0..100 {
        sim.step();
        assert!(running(&sim, alice) <= 3, "alice over her own 3 tasks");
        assert!(
            running(&sim, alice) + running(&sim, bob) <= 5,
            "group physics over its 5 tasks"
        );
        bob_seen = bob_seen.max(running(&sim, bob));
    }
    assert_eq!(running(&sim, alice) + running(&sim, bob), 5);
    assert!(bob_seen >= 2, "bob gets the group's room alice may not use");
    assert_eq!(running(&sim, carol), 11, "carol, in no group, has the rest");
    let alice_why = sim.core.waiting_reason(&sim.jobs[&alice]);
    let bob_why = sim.core.waiting_reason(&sim.jobs[&bob]);
    let expected = if running(&sim, alice) == 3 {
        "alice is at their quota: 3 of 3 task(s) running in cluster default"
    } else {
        "group physics is at its quota: 5 of 5 task(s) running in cluster default"
    };
    assert_eq!(alice_why, expected);
    assert_eq!(
        bob_why,
        "group physics is at its quota: 5 of 5 task(s) running in cluster default"
    );
    // A group's quota in cores.
    sim.core.set_quotas(
        "default",
        HashMap::from([("@physics".to_owned(), quota(None, Some(2_000)))]),
    );
    for _ in 0..100 {
        sim.step();
    }
    assert!(
        sim.core
            .waiting_reason(&sim.jobs[&bob])
            .starts_with("group physics is at its quota: 2.0 of 2.0 core(s) reserved"),
        "{}",
        sim.core.waiting_reason(&sim.jobs[&bob])
    );
    assert_eq!(running(&sim, alice) + running(&sim, bob), 2);
    sim.run_until(Duration::from_secs(600), "all done", |s| {
        s.job_done(alice) && s.job_done(bob) && s.job_done(carol)
    });
    sim.check_invariants();
}

/// The attempts `sim`'s agents were told to evict, with the reasons.
fn evictions(sim: &Sim) -> Vec<(AttemptId, String)> {
    sim.agents
        .values()
        .flat_map(|a| &a.inbox)
        .filter_map(|m| match m {
            CoordinatorMessage::Evict {
                attempt, reason, ..
            } => Some((*attempt, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn where_preemption_is_allowed_a_newcomer_evicts_a_heavy_users_work_at_no_cost() {
    for allowed in [false, true] {
        let mut sim = Sim::new();
        sim.connect("agent-0", 4, fast(Duration::from_secs(60)));
        sim.core.set_preemption("default", allowed);
        let alice = sim.submit_as("alice", 0, 6, 1);
        sim.run_for(Duration::from_secs(20));
        let bob = sim.submit_as("bob", 0, 2, 1);
        sim.run_for(Duration::from_secs(10));
        let bob_running = sim
            .store
            .tasks
            .iter()
            .filter(|(t, r)| t.job == bob && r.state == TaskState::Running)
            .count();
        let evicted = evictions(&sim);
        if !allowed {
            assert!(evicted.is_empty(), "{evicted:?}");
            assert_eq!(bob_running, 0, "without preemption Bob waits");
            continue;
        }
        // Two of Alice's four evicted, one a second, for Bob's two tasks; then no more.
        assert_eq!(evicted.len(), 2, "{evicted:?}");
        assert!(
            evicted
                .iter()
                .all(|(a, why)| a.task.job == alice && why == "preempted for waiting work of bob"),
            "{evicted:?}"
        );
        assert_eq!(bob_running, 2);
        sim.run_until(Duration::from_secs(600), "everything done", |s| {
            s.job_done(alice) && s.job_done(bob)
        });
        sim.check_invariants();
        // The evicted tasks ran again and succeeded; an eviction costs no attempt.
        assert_eq!(sim.store.count(TaskState::Succeeded), 8);
        for (attempt, _) in &evicted {
            assert_eq!(sim.row(attempt.task).state, TaskState::Succeeded);
        }
    }
}

#[test]
fn preemption_serves_a_users_urgent_job_before_their_running_low_one() {
    let mut sim = Sim::new();
    sim.connect("agent-0", 2, fast(Duration::from_secs(60)));
    sim.core.set_preemption("default", true);
    let low = sim.submit_as("alice", -5, 2, 1);
    sim.run_for(Duration::from_secs(10));
    let urgent = sim.submit_as("alice", 5, 1, 1);
    sim.run_for(Duration::from_secs(5));
    let evicted = evictions(&sim);
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].0.task.job, low);
    sim.run_until(Duration::from_secs(300), "everything done", |s| {
        s.job_done(low) && s.job_done(urgent)
    });
    sim.check_invariants();
}

fn liar(claim: &str) -> Behaviour {
    Behaviour {
        claims: Some(claim.into()),
        ..fast(Duration::from_secs(2))
    }
}

/// The agents that ran each task of `job`, in order.
fn runners(sim: &Sim, job: u64) -> BTreeMap<u32, Vec<String>> {
    let mut by_task: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (attempt, agent) in &sim.assigned {
        if attempt.task.job == job {
            by_task
                .entry(attempt.task.index)
                .or_default()
                .push(agent.clone());
        }
    }
    by_task
}

#[test]
fn verify_runs_each_task_on_distinct_agents_and_outvotes_a_lying_one() {
    let mut sim = Sim::new();
    sim.connect("honest-a", 1, fast(Duration::from_secs(2)));
    sim.connect("honest-b", 1, fast(Duration::from_secs(3)));
    sim.connect("liar", 1, liar("forged"));
    let job = sim.submit_verified(2, 30, 3);
    sim.run_until(Duration::from_secs(900), "the verified job", |s| {
        s.job_done(job)
    });
    sim.check_invariants();
    assert_eq!(sim.store.count(TaskState::Succeeded), 30);
    let honest = result(
        AttemptId {
            task: TaskId { job, index: 0 },
            attempt: 1,
        },
        Outcome::Exited { code: 0 },
    )
    .digest();
    let runners = runners(&sim, job);
    let mut caught = 0;
    for (index, agents) in &runners {
        let task = TaskId { job, index: *index };
        // Nobody ran a task twice; the accepted result is the honest one.
        let distinct: HashSet<&String> = agents.iter().collect();
        assert_eq!(distinct.len(), agents.len(), "task {index}: {agents:?}");
        assert_eq!(sim.store.accepted.get(&task), Some(&honest), "task {index}");
        if agents.iter().any(|a| a == "liar") {
            // The liar's run and both honest ones: the liar is outvoted and named.
            assert_eq!(agents.len(), 3, "task {index}: {agents:?}");
            assert!(
                sim.store
                    .disagreed
                    .iter()
                    .any(|(t, _, agent)| *t == task && agent == "liar"),
                "task {index}: {:?}",
                sim.store.disagreed
            );
            caught += 1;
        } else {
            assert_eq!(agents.len(), 2, "task {index}: {agents:?}");
        }
    }
    assert!(caught > 0, "the liar ran some task: {runners:?}");
    assert_eq!(sim.store.disagreed.len(), caught, "only the liar is named");
    assert_eq!(
        sim.core.agent("liar").map(|a| a.disagreements),
        Some(caught as u64)
    );
    assert_eq!(sim.core.agent("honest-a").map(|a| a.disagreements), Some(0));
}

#[test]
fn a_verified_task_waits_for_another_agent_rather_than_running_twice_on_one() {
    let mut sim = Sim::new();
    sim.connect("only", 2, fast(Duration::from_secs(1)));
    let job = sim.submit_verified(2, 1, 3);
    sim.run_for(Duration::from_secs(60));
    let task = TaskId { job, index: 0 };
    assert_eq!(sim.row(task).state, TaskState::Pending);
    assert_eq!(sim.row(task).attempt, 1, "ran once, then waits");
    let reason = sim.core.waiting_reason(&sim.jobs[&job]);
    assert!(
        reason.contains(
            "verify = 2 needs that many distinct agents; 1 of cluster default is connected"
        ),
        "{reason}"
    );
    sim.connect("second", 1, fast(Duration::from_secs(1)));
    sim.run_until(Duration::from_secs(60), "the second run", |s| {
        s.job_done(job)
    });
    assert_eq!(sim.row(task).state, TaskState::Succeeded);
    assert_eq!(runners(&sim, job)[&0], ["only", "second"]);
    // No backoff for a run that succeeded: the second started as soon as it could.
    assert!(
        sim.row(task).outcomes[0].starts_with("succeeded; 1 more agent must agree"),
        "{:?}",
        sim.row(task).outcomes
    );
}

#[test]
fn a_verified_tasks_runs_go_to_other_owners_machines_where_they_can() {
    let mut sim = Sim::new();
    sim.connect_owned("lab-1", 1, fast(Duration::from_secs(1)), "lab");
    sim.connect_owned("lab-2", 1, fast(Duration::from_secs(1)), "lab");
    sim.connect_owned("lab-3", 1, fast(Duration::from_secs(1)), "lab");
    sim.connect_owned("home-1", 1, fast(Duration::from_secs(1)), "home");
    for _ in 0..12 {
        let job = sim.submit_verified(2, 1, 1);
        sim.run_until(Duration::from_secs(60), "the job", |s| s.job_done(job));
        let agents = &runners(&sim, job)[&0];
        assert_eq!(agents.len(), 2, "{agents:?}");
        let owners: HashSet<&str> = agents
            .iter()
            .map(|a| a.split('-').next().unwrap_or_default())
            .collect();
        assert_eq!(
            owners.len(),
            2,
            "one run on each owner's machines: {agents:?}"
        );
    }
}

#[test]
fn a_verified_task_whose_runs_never_agree_fails_saying_so() {
    let mut sim = Sim::new();
    sim.connect("a", 1, liar("one story"));
    sim.connect("b", 1, liar("another"));
    sim.connect("c", 1, liar("a third"));
    // One attempt for failures, one more for the second agent: two runs, which differ.
    let job = sim.submit_verified(2, 1, 1);
    sim.run_until(Duration::from_secs(60), "the job", |s| s.job_done(job));
    let row = sim.row(TaskId { job, index: 0 });
    assert_eq!(row.state, TaskState::Failed);
    assert_eq!(row.attempt, 2);
    assert_eq!(
        row.outcomes.last().map(String::as_str),
        Some("no 2 agents agreed on its result after 2 attempts (2 different results so far)")
    );
    assert!(sim.store.disagreed.is_empty(), "no majority, nobody named");
}

#[test]
fn a_task_is_sent_its_own_part_and_only_its_agent_may_fetch_its_files() {
    let mut sim = Sim::new();
    sim.connect("a", 1, fast(Duration::from_secs(100)));
    sim.connect("b", 1, fast(Duration::from_secs(100)));
    let shard = |i: u32| FileRef {
        path: format!("part-{i}.txt"),
        digest: Digest::of(format!("shard {i}").as_bytes()),
        size: 7,
    };
    let mut spec = job_spec(2, 1);
    spec.owner = "alice".into();
    spec.items = Some(Items {
        digest: Digest::of(b"rows"),
        size: 4,
        columns: vec!["n".into()],
    });
    let job = sim.next_job;
    for i in 0..2 {
        sim.store.items.insert(
            TaskId { job, index: i },
            TaskItem {
                values: [("n".to_owned(), format!("{}", 10 * i))].into(),
                modules: vec![ItemFiles {
                    stdin: None,
                    inputs: vec![shard(i)],
                }],
            },
        );
    }
    assert_eq!(sim.submit_spec(spec), job);
    sim.run_for(Duration::from_secs(1));
    let mut holders = BTreeMap::new();
    for (id, agent) in &sim.agents {
        for message in &agent.inbox {
            if let CoordinatorMessage::Assign(a) = message {
                let item = a
                    .item
                    .as_ref()
                    .expect("the task's own part travels with it");
                let index = a.attempt.task.index;
                assert_eq!(item.values["n"], format!("{}", 10 * index));
                assert_eq!(item.modules[0].inputs, vec![shard(index)]);
                assert!(a.blobs().contains(&shard(index).digest));
                holders.insert(index, id.clone());
            }
        }
    }
    assert_eq!(holders.len(), 2, "both tasks assigned: {holders:?}");
    for (index, holder) in &holders {
        let other = if holder == "a" { "b" } else { "a" };
        assert!(sim.core.may_fetch(holder, &shard(*index).digest));
        assert!(
            !sim.core.may_fetch(other, &shard(*index).digest),
            "task {index}'s file is not for {other}"
        );
    }
}

/// A job of `count` tasks of alice's that comes after `after`.
fn step(count: u32, after: &[u64]) -> JobSpec {
    let mut spec = job_spec(count, 1);
    spec.owner = "alice".into();
    spec.after = after.to_vec();
    spec
}

fn started(sim: &Sim, job: u64) -> bool {
    sim.assigned.iter().any(|(a, _)| a.task.job == job)
}

#[test]
fn a_job_starts_once_every_job_it_comes_after_has_succeeded() {
    let mut sim = Sim::new();
    sim.connect("a", 4, fast(Duration::from_secs(3)));
    let map = sim.submit_spec(step(4, &[]));
    let other = sim.submit_spec(step(2, &[]));
    let reduce = sim.submit_spec(step(1, &[map, other]));
    // Four slots: the map's four tasks run, the other job's wait, and so does the reduce.
    let mut seen_both_unfinished = false;
    while !(sim.job_done(map) && sim.job_done(other)) {
        assert!(
            !started(&sim, reduce),
            "the reduce started before its jobs ended"
        );
        assert_eq!(sim.core.held(reduce), Some(None), "waiting, not blocked");
        seen_both_unfinished |= !sim.job_done(map) && !sim.job_done(other);
        sim.run_for(Duration::from_millis(100));
        assert!(sim.elapsed() < Duration::from_secs(30));
    }
    assert!(seen_both_unfinished);
    // Released as the last of them ends, not at the next look at every held job.
    sim.run_until(Duration::from_secs(1), "the reduce to start", |s| {
        started(s, reduce)
    });
    sim.run_until(Duration::from_secs(30), "the reduce to succeed", |s| {
        s.job_done(reduce)
    });
    assert_eq!(
        sim.row(TaskId {
            job: reduce,
            index: 0
        })
        .state,
        TaskState::Succeeded
    );
    assert_eq!(sim.released, [reduce]);
    assert_eq!(sim.core.held(reduce), None, "no longer held");
}

#[test]
fn a_failed_job_holds_what_comes_after_it_for_good() {
    let mut sim = Sim::new();
    sim.connect(
        "a",
        2,
        Behaviour {
            fails: true,
            ..fast(Duration::from_secs(1))
        },
    );
    let map = sim.submit_spec(step(2, &[]));
    let reduce = sim.submit_spec(step(1, &[map]));
    let last = sim.submit_spec(step(1, &[reduce]));
    sim.run_until(Duration::from_secs(30), "the map to fail", |s| {
        s.job_done(map)
    });
    sim.run_for(Duration::from_secs(5));
    assert!(!started(&sim, reduce) && !started(&sim, last));
    assert_eq!(sim.core.held(reduce), Some(Some("job 1 did not succeed")));
    assert_eq!(sim.store.blocked[&reduce], "job 1 did not succeed");
    // And so is the one after it, in turn.
    assert_eq!(
        sim.core.held(last),
        Some(Some("job 2 is held: job 1 did not succeed"))
    );
    let writes = sim.store.writes;
    sim.run_for(HELD_CHECK_INTERVAL * 3);
    assert_eq!(
        sim.store.writes, writes,
        "a job held for good is not asked about again"
    );
    assert!(sim.released.is_empty());
    // Cancelled, a held job is forgotten.
    sim.cancel(last);
    assert_eq!(sim.core.held(last), None);
}

#[test]
fn a_job_held_while_the_store_fails_is_released_once_it_recovers() {
    let mut sim = Sim::new();
    sim.connect("a", 2, fast(Duration::from_secs(2)));
    let map = sim.submit_spec(step(2, &[]));
    sim.run_until(Duration::from_secs(30), "the map to end", |s| {
        s.job_done(map)
    });
    // The store fails when the reduce is submitted and asked about, and a few times after.
    sim.store.failing = true;
    let reduce = sim.submit_spec(step(1, &[map]));
    sim.run_for(HELD_RETRY * 3);
    assert!(!started(&sim, reduce));
    sim.store.failing = false;
    sim.run_until(Duration::from_secs(60), "the reduce to succeed", |s| {
        s.job_done(reduce)
    });
    assert_eq!(sim.released, [reduce]);
}
