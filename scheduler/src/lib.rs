//! Placement for Lull: which agent runs which waiting task. Pure logic: no IO, no clock, no
//! threads; randomness comes from a seed, so tests and benchmarks repeat exactly.
//!
//! The coordinator tells the [`Scheduler`] about agents ([`Scheduler::agent_up`],
//! [`Scheduler::agent_down`]), jobs ([`Scheduler::add_job`]) and tasks
//! ([`Scheduler::task_queued`], [`Scheduler::task_running`], [`Scheduler::task_ended`]), and
//! drains decisions with [`Scheduler::poll_placement`]. A placement reserves the task's memory,
//! CPU and one slot on its agent until the task ends.
//!
//! # How an agent is chosen
//!
//! 1. **Feasible**: the agent satisfies every constraint of the job (its static attributes:
//!    os, arch, cores, memory, wasmtime, labels; see [`lull_protocol::constraint`]), accepts
//!    tasks of the job's memory, takes work now, and has a free slot and enough unreserved
//!    memory and CPU. Memory counts the machine's total memory and the tasks' caps; CPU counts
//!    cores and the tasks' `cpu`.
//! 2. **Strategy** among the feasible agents:
//!    - `binpack`: the fullest agent after placing, by memory, then CPU;
//!    - `spread`: the agent with the fewest of this job's tasks (or, with `spread = ATTRIBUTE`,
//!      whose attribute value has the fewest), then the emptiest;
//!    - `random`: any, uniformly.
//! 3. **Ties** (`binpack`, `spread`) go to agents that already hold the job's first module
//!    compiled (they start it without compiling), then to the agent that joined first.
//!
//! # Whose task goes first
//!
//! Between users, **fair share**, as HTCondor does it: each user has a *recent usage*, the
//! cores their tasks hold, smoothed with a half-life ([`Scheduler::set_half_life`], a day by
//! default, advanced by [`Scheduler::advance`]). The pool is shared in inverse proportion to
//! recent usage: the next free slot goes to the waiting user whose `(cores running + 1) x
//! max(recent usage, 0.5)` is smallest (on a tie, the one who used less). Two users who have
//! used the pool alike get equal
//! parts of it; one who used it heavily gives way to one who did not until their recent
//! usages meet. Within a user's jobs, the higher `priority` first, then the older. A job none
//! of whose tasks fits anywhere does not hold up the jobs behind it.
//!
//! # Cost
//!
//! Each job keeps the list of agents whose attributes satisfy its constraints, rebuilt only
//! when agents join or leave. A decision walks either that list or the set of agents with free
//! capacity, whichever is shorter, from a random point, and scores at most
//! [`CANDIDATES`] feasible agents (plus up to as many that hold the module compiled). On
//! clusters with at most that many feasible agents the choice is therefore exact; on larger
//! ones it is the best of a random sample, as Nomad's scheduler does, and costs microseconds
//! whatever the cluster's size (`cargo xtask bench schedule`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use lull_protocol::Digest;
use lull_protocol::constraint::{Attribute, Constraint};
use lull_protocol::job::{JobSpec, Strategy};
use lull_protocol::message::{Capacity, TaskId};

/// How many feasible agents a decision scores at most (besides those holding the module).
pub const CANDIDATES: usize = 32;

/// What one task of a job reserves on its agent, and where it may go.
#[derive(Debug, Clone)]
pub struct JobPlacement {
    /// Memory cap per task (every module gets this cap; the task reserves it once per module).
    pub memory: u64,
    /// CPU per task, in thousandths of a core.
    pub cpu_millis: u32,
    /// The strategy.
    pub strategy: Strategy,
    /// With `spread`: the attribute whose values to spread over, instead of agents.
    pub spread: Option<Attribute>,
    /// Constraints on agents' attributes.
    pub constraints: Vec<Constraint>,
    /// The job's first module (agents holding it compiled win ties).
    pub module: Option<Digest>,
    /// The user it belongs to: fair share is between users.
    pub owner: String,
    /// Among its owner's jobs, higher goes first.
    pub priority: i32,
    /// The group whose quota it counts against, if any.
    pub group: Option<String>,
}

impl JobPlacement {
    /// The placement of a checked job. Fails only on constraints a checked job cannot have.
    pub fn of(spec: &JobSpec) -> Result<Self, PlacementError> {
        let constraints = lull_protocol::constraint::parse_all(&spec.placement.constraints)?;
        let spread = spec
            .placement
            .spread
            .as_deref()
            .map(str::parse::<Attribute>)
            .transpose()?;
        Ok(Self {
            memory: spec
                .resources
                .memory
                .saturating_mul(spec.modules.len().max(1) as u64),
            cpu_millis: spec.resources.cpu_millis,
            strategy: spec.placement.strategy,
            spread,
            constraints,
            module: spec.modules.first().map(|m| m.digest),
            owner: spec.owner.clone(),
            priority: spec.priority,
            group: spec.group.clone(),
        })
    }

    /// Where job `job` of this placement stands among its owner's: higher priority, then older.
    fn serving_rank(&self, job: u64) -> (i64, u64) {
        (-i64::from(self.priority), job)
    }

    /// Memory per module, the figure an agent's `max_task_memory` is compared with.
    fn per_module_memory(&self, modules: u64) -> u64 {
        self.memory / modules.max(1)
    }
}

/// Why a job's placement cannot be read (a job checked at submission has none of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A constraint that does not parse.
    #[error(transparent)]
    Constraint(#[from] lull_protocol::constraint::ConstraintError),
    /// A spread over an attribute agents do not have.
    #[error("spread: {0}")]
    Spread(#[from] lull_protocol::constraint::UnknownAttribute),
}

/// A decision: run `task` on `agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The task.
    pub task: TaskId,
    /// The agent's ID.
    pub agent: String,
}

/// An agent as the scheduler sees it.
#[derive(Debug, Clone)]
struct Agent {
    id: String,
    /// Its attributes and limits, as last reported.
    capacity: Capacity,
    accepting: bool,
    /// Reservations of the tasks placed on it and still running.
    busy: u32,
    memory_used: u64,
    cpu_used: u64,
    /// Modules it holds compiled.
    warm: HashSet<Digest>,
}

impl Agent {
    fn cpu_total(&self) -> u64 {
        u64::from(self.capacity.cores.max(1)) * 1000
    }

    fn has_room(&self) -> bool {
        self.accepting
            && self.busy < self.capacity.slots
            && self.memory_used < self.capacity.memory_total
            && self.cpu_used < self.cpu_total()
    }

    fn fits(&self, job: &Job) -> bool {
        self.has_room()
            && self.capacity.max_task_memory >= job.module_memory
            && self.memory_used.saturating_add(job.placement.memory) <= self.capacity.memory_total
            && self.cpu_used + u64::from(job.placement.cpu_millis) <= self.cpu_total()
    }
}

/// A job known to the scheduler: its placement, waiting tasks and where its tasks run.
#[derive(Debug)]
struct Job {
    placement: JobPlacement,
    /// Memory per module, for agents' per-task caps.
    module_memory: u64,
    queue: VecDeque<TaskId>,
    /// Agents whose static attributes satisfy the constraints, as of `eligible_gen`.
    eligible: Vec<u32>,
    is_eligible: Vec<bool>,
    eligible_gen: u64,
    /// This job's tasks on each agent, and on each value of the spread attribute.
    on_agent: HashMap<u32, u32>,
    on_value: HashMap<String, u32>,
}

/// The recent usage below which every user counts alike (half a core, as HTCondor's lowest
/// user priority), so that new users share among themselves by what they run now.
pub const MIN_RECENT_USAGE: f64 = 0.5;

/// The half-life of recent usage when nothing sets it: a day.
pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(24 * 3600);

/// How many waiting jobs, first in serving order, [`Scheduler::preemption`] looks for room for.
pub const PREEMPTION_JOBS: usize = 8;

/// A limit on what one user, or the jobs of one group, may run at once in a cluster. `None`:
/// no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Tasks running at once.
    pub max_tasks: Option<u32>,
    /// CPU reserved at once, in thousandths of a core.
    pub max_cpu_millis: Option<u64>,
}

/// The limit of a [`Quota`] that a user has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuotaBlock {
    /// Tasks running.
    Tasks { running: u32, max: u32 },
    /// CPU reserved, in thousandths of a core.
    Cpu { reserved: u64, max: u64 },
}

/// The quota that applies to every user without one of their own.
pub const EVERY_USER: &str = "*";

/// How a group's quota is keyed among users' ([`Scheduler::set_quotas`]): `@` and its name.
pub use lull_protocol::api::GROUP_PREFIX;

/// What runs at once for a user or a group: tasks, and the CPU they reserve.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Tasks running.
    tasks: u32,
    /// Thousandths of a core they reserve.
    millis: u64,
}

impl Load {
    /// Counts a task reserving `cpu_millis` starting (`starts`) or ending.
    fn count(&mut self, cpu_millis: u32, starts: bool) {
        let cpu = u64::from(cpu_millis);
        if starts {
            self.millis += cpu;
            self.tasks += 1;
        } else {
            self.millis = self.millis.saturating_sub(cpu);
            self.tasks = self.tasks.saturating_sub(1);
        }
    }

    /// What in `quota` stops one more task reserving `cpu_millis` from starting.
    fn block(&self, quota: &Quota, cpu_millis: u32) -> Option<QuotaBlock> {
        if let Some(max) = quota.max_tasks
            && self.tasks >= max
        {
            return Some(QuotaBlock::Tasks {
                running: self.tasks,
                max,
            });
        }
        match quota.max_cpu_millis {
            Some(max) if self.millis + u64::from(cpu_millis) > max => Some(QuotaBlock::Cpu {
                reserved: self.millis,
                max,
            }),
            _ => None,
        }
    }
}

/// Counts a task of `placement` starting (`starts`) or ending, for its owner and its group.
fn count_task(
    users: &mut HashMap<String, User>,
    groups: &mut HashMap<String, Load>,
    placement: &JobPlacement,
    starts: bool,
) {
    if let Some(u) = users.get_mut(&placement.owner) {
        u.load.count(placement.cpu_millis, starts);
    }
    let Some(group) = placement.group.as_deref() else {
        return;
    };
    match groups.get_mut(group) {
        Some(load) => {
            load.count(placement.cpu_millis, starts);
            if load.tasks == 0 {
                groups.remove(group);
            }
        }
        None if starts => {
            let mut load = Load::default();
            load.count(placement.cpu_millis, true);
            groups.insert(group.to_owned(), load);
        }
        None => {}
    }
}

/// A user's standing in the fair share.
#[derive(Debug, Default)]
struct User {
    /// Their registered jobs, in the order they are served: higher priority, then older.
    jobs: BTreeSet<(i64, u64)>,
    /// What their tasks running reserve.
    load: Load,
    /// Cores held, smoothed with the half-life.
    recent: f64,
    /// Core-seconds used, decayed with the half-life.
    usage: f64,
}

impl User {
    fn running_cores(&self) -> f64 {
        self.load.millis as f64 / 1000.0
    }

    fn key(&self) -> f64 {
        fair_share_rank(self.running_cores(), self.recent)
    }
}

/// Where a user holding `running_cores` now, and `recent_cores` recently, stands in the fair
/// share: the waiting user with the smallest is served first.
pub fn fair_share_rank(running_cores: f64, recent_cores: f64) -> f64 {
    (running_cores + 1.0) * recent_cores.max(MIN_RECENT_USAGE)
}

/// A user's share of one scheduler's pool, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The user.
    pub user: String,
    /// Cores their running tasks reserve now.
    pub running_cores: f64,
    /// Cores held recently (smoothed with the half-life): the lower, the sooner served.
    pub recent_cores: f64,
    /// Core-seconds used, decayed with the half-life.
    pub usage_core_seconds: f64,
    /// Tasks waiting.
    pub waiting: usize,
}

impl Share {
    /// Where the user stands: the waiting user with the smallest is served first.
    pub fn rank(&self) -> f64 {
        fair_share_rank(self.running_cores, self.recent_cores)
    }
}

/// The scheduler's state: agents and their reservations, jobs and their waiting tasks.
#[derive(Debug)]
pub struct Scheduler {
    agents: Vec<Option<Agent>>,
    index: HashMap<String, u32>,
    /// Slots of `agents` left by agents that went away.
    vacant: Vec<u32>,
    /// Agents with room for some task (accepting, a free slot, memory and CPU left), with the
    /// position of each in `roomy` for O(1) removal.
    roomy: Vec<u32>,
    roomy_at: Vec<Option<usize>>,
    /// Bumped when agents join, leave or change attributes: jobs rebuild their eligible lists.
    generation: u64,
    jobs: HashMap<u64, Job>,
    /// The users with jobs here, or whose recent usage has not yet decayed away.
    users: HashMap<String, User>,
    /// The half-life of users' recent usage.
    half_life: Duration,
    /// When usage was last brought up to date.
    clock: Option<Instant>,
    /// Scratch space for the order of jobs, kept to avoid allocating per decision.
    job_order: Vec<u64>,
    /// Users' quotas ([`EVERY_USER`]: everyone without their own).
    quotas: HashMap<String, Quota>,
    /// Groups' quotas, by the group's name.
    group_quotas: HashMap<String, Quota>,
    /// What the tasks of each group with some running reserve.
    groups: HashMap<String, Load>,
    /// Where each placed task runs, to release its reservation when it ends.
    running: HashMap<TaskId, u32>,
    rng: u64,
    /// Scratch space for candidates, kept to avoid allocating per decision.
    scratch: Vec<u32>,
    /// Agents holding each module compiled (entries of agents gone since are skipped).
    warm: HashMap<Digest, Vec<u32>>,
    /// Agents a waiting task should not go to when another can take it (it failed there).
    avoid: HashMap<TaskId, Vec<String>>,
    /// Agents a waiting task must not go to at all (they already ran it for a job whose
    /// results distinct agents must agree on).
    exclude: HashMap<TaskId, Vec<String>>,
}

impl Scheduler {
    /// An empty scheduler; `seed` drives every random choice.
    pub fn new(seed: u64) -> Self {
        Self {
            agents: Vec::new(),
            index: HashMap::new(),
            vacant: Vec::new(),
            roomy: Vec::new(),
            roomy_at: Vec::new(),
            generation: 1,
            jobs: HashMap::new(),
            users: HashMap::new(),
            half_life: DEFAULT_HALF_LIFE,
            clock: None,
            job_order: Vec::new(),
            quotas: HashMap::new(),
            group_quotas: HashMap::new(),
            groups: HashMap::new(),
            running: HashMap::new(),
            rng: seed | 1,
            scratch: Vec::new(),
            warm: HashMap::new(),
            avoid: HashMap::new(),
            exclude: HashMap::new(),
        }
    }

    /// Sets the half-life of users' recent usage (zero: only what they run now counts).
    pub fn set_half_life(&mut self, half_life: Duration) {
        self.half_life = half_life;
    }

    /// Sets every user's quota ([`EVERY_USER`] for everyone without their own) and every
    /// group's (keyed `@name`, [`GROUP_PREFIX`]), replacing the earlier ones. A task starts only
    /// when neither its owner's quota nor its job's group's is reached; running tasks over a
    /// new quota run on.
    pub fn set_quotas(&mut self, quotas: HashMap<String, Quota>) {
        let (groups, users): (HashMap<_, _>, HashMap<_, _>) = quotas
            .into_iter()
            .partition(|(who, _)| who.starts_with(GROUP_PREFIX));
        self.quotas = users;
        self.group_quotas = groups
            .into_iter()
            .map(|(g, q)| (g[GROUP_PREFIX.len_utf8()..].to_owned(), q))
            .collect();
    }

    /// What stops a task of `owner` in `group` reserving `cpu_millis` from starting now, when
    /// a quota does: whose quota (the group's when `true`) and the limit reached. No
    /// allocation: placements ask it.
    fn quota_block(
        &self,
        owner: &str,
        group: Option<&str>,
        cpu_millis: u32,
    ) -> Option<(bool, QuotaBlock)> {
        let user_quota = self
            .quotas
            .get(owner)
            .or_else(|| self.quotas.get(EVERY_USER));
        if let Some(quota) = user_quota {
            let load = self.users.get(owner).map(|u| u.load).unwrap_or_default();
            if let Some(block) = load.block(quota, cpu_millis) {
                return Some((false, block));
            }
        }
        let group = group?;
        let quota = self.group_quotas.get(group)?;
        let load = self.groups.get(group).copied().unwrap_or_default();
        load.block(quota, cpu_millis).map(|b| (true, b))
    }

    /// Why a task of `owner` in `group` reserving `cpu_millis` may not start now, when a
    /// quota stops it.
    pub fn quota_reason(
        &self,
        owner: &str,
        group: Option<&str>,
        cpu_millis: u32,
    ) -> Option<String> {
        let (of_group, block) = self.quota_block(owner, group, cpu_millis)?;
        let who = match (of_group, group) {
            (true, Some(g)) => format!("group {g} is at its quota"),
            _ => format!("{owner} is at their quota"),
        };
        Some(match block {
            QuotaBlock::Tasks { running, max } => {
                format!("{who}: {running} of {max} task(s) running")
            }
            QuotaBlock::Cpu { reserved, max } => format!(
                "{who}: {:.1} of {:.1} core(s) reserved",
                reserved as f64 / 1000.0,
                max as f64 / 1000.0
            ),
        })
    }

    /// Brings users' recent usage up to `now`: what they held since the last call, decayed.
    /// Call it as time passes (each report will do); placements use the usage as of the last
    /// call.
    pub fn advance(&mut self, now: Instant) {
        let Some(then) = self.clock.replace(now) else {
            return;
        };
        let dt = now.saturating_duration_since(then).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let keep = if self.half_life.is_zero() {
            0.0
        } else {
            0.5f64.powf(dt / self.half_life.as_secs_f64())
        };
        self.users.retain(|_, u| {
            let cores = u.running_cores();
            u.recent = u.recent * keep + (1.0 - keep) * cores;
            u.usage = u.usage * keep + cores * dt;
            !(u.jobs.is_empty() && u.load.millis == 0 && u.recent < 1e-3 && u.usage < 1e-3)
        });
    }

    /// Every user's share, most recent usage first.
    pub fn shares(&self) -> Vec<Share> {
        let mut shares: Vec<Share> = self
            .users
            .iter()
            .map(|(name, u)| Share {
                user: name.clone(),
                running_cores: u.running_cores(),
                recent_cores: u.recent,
                usage_core_seconds: u.usage,
                waiting: u
                    .jobs
                    .iter()
                    .filter_map(|(_, j)| self.jobs.get(j))
                    .map(|j| j.queue.len())
                    .sum(),
            })
            .collect();
        shares.sort_by(|a, b| {
            b.recent_cores
                .total_cmp(&a.recent_cores)
                .then_with(|| a.user.cmp(&b.user))
        });
        shares
    }

    /// An agent connected, or reported again: its attributes and limits are `capacity`; it
    /// takes new tasks only while `accepting`. Reservations of its running tasks are kept.
    pub fn agent_up(&mut self, id: &str, capacity: &Capacity, accepting: bool) {
        let i = match self.index.get(id) {
            Some(&i) => {
                let agent = self.agents[i as usize]
                    .as_mut()
                    .expect("indexed agents exist");
                if static_attributes_differ(&agent.capacity, capacity) {
                    self.generation += 1;
                }
                agent.capacity = capacity.clone();
                agent.accepting = accepting;
                i
            }
            None => {
                let agent = Agent {
                    id: id.to_owned(),
                    capacity: capacity.clone(),
                    accepting,
                    busy: 0,
                    memory_used: 0,
                    cpu_used: 0,
                    warm: HashSet::new(),
                };
                let i = match self.vacant.pop() {
                    Some(i) => {
                        self.agents[i as usize] = Some(agent);
                        i
                    }
                    None => {
                        self.agents.push(Some(agent));
                        self.roomy_at.push(None);
                        (self.agents.len() - 1) as u32
                    }
                };
                self.index.insert(id.to_owned(), i);
                self.generation += 1;
                i
            }
        };
        self.refresh_room(i);
    }

    /// An agent's policy changed its mind about taking work.
    pub fn agent_accepting(&mut self, id: &str, accepting: bool) {
        if let Some(&i) = self.index.get(id) {
            if let Some(a) = self.agents[i as usize].as_mut() {
                a.accepting = accepting;
            }
            self.refresh_room(i);
        }
    }

    /// An agent holds these modules compiled (it reported them, or ran them).
    pub fn agent_holds(&mut self, id: &str, modules: impl IntoIterator<Item = Digest>) {
        if let Some(&i) = self.index.get(id) {
            for m in modules {
                self.mark_warm(i, m);
            }
        }
    }

    /// An agent no longer holds these modules compiled (its cache dropped them).
    pub fn agent_drops(&mut self, id: &str, modules: impl IntoIterator<Item = Digest>) {
        let Some(&i) = self.index.get(id) else {
            return;
        };
        for m in modules {
            let held = self.agents[i as usize]
                .as_mut()
                .is_some_and(|a| a.warm.remove(&m));
            if held && let Some(list) = self.warm.get_mut(&m) {
                list.retain(|&a| a != i);
                if list.is_empty() {
                    self.warm.remove(&m);
                }
            }
        }
    }

    /// An agent went away: nothing more is placed on it, and its reservations are dropped
    /// (its tasks' fate is the coordinator's business: leases).
    pub fn agent_down(&mut self, id: &str) {
        let Some(i) = self.index.remove(id) else {
            return;
        };
        self.set_roomy(i, false);
        let gone_agent = self.agents[i as usize].take();
        self.vacant.push(i);
        self.generation += 1;
        let gone: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(_, a)| **a == i)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            self.running.remove(&t);
            if let Some(job) = self.jobs.get_mut(&t.job) {
                count_task(&mut self.users, &mut self.groups, &job.placement, false);
                let value = spread_value(job, gone_agent.as_ref());
                forget_one(job, i, value.as_deref());
            }
            self.prune(t.job);
        }
    }

    /// Whether a job is registered (it has waiting or running tasks here).
    pub fn has_job(&self, job: u64) -> bool {
        self.jobs.contains_key(&job)
    }

    /// Registers a job before its tasks are queued or reported running; `modules` is how many
    /// modules each task runs. Registering it again replaces its placement and keeps its
    /// tasks. A job is forgotten by itself once it has no task waiting or running here.
    pub fn add_job(&mut self, job: u64, placement: JobPlacement, modules: usize) {
        let module_memory = placement.per_module_memory(modules as u64);
        let rank = placement.serving_rank(job);
        match self.jobs.get_mut(&job) {
            Some(j) => {
                let old = j.placement.serving_rank(job);
                if let Some(u) = self.users.get_mut(&j.placement.owner) {
                    u.jobs.remove(&old);
                }
                self.users
                    .entry(placement.owner.clone())
                    .or_default()
                    .jobs
                    .insert(rank);
                j.placement = placement;
                j.module_memory = module_memory;
                j.eligible_gen = 0;
            }
            None => {
                self.users
                    .entry(placement.owner.clone())
                    .or_default()
                    .jobs
                    .insert(rank);
                self.jobs.insert(
                    job,
                    Job {
                        placement,
                        module_memory,
                        queue: VecDeque::new(),
                        eligible: Vec::new(),
                        is_eligible: Vec::new(),
                        eligible_gen: 0,
                        on_agent: HashMap::new(),
                        on_value: HashMap::new(),
                    },
                );
            }
        }
    }

    /// Drops these waiting tasks of a job (they will not run: they waited too long).
    pub fn remove_waiting(&mut self, job: u64, tasks: &HashSet<TaskId>) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.queue.retain(|t| !tasks.contains(t));
        }
        for t in tasks {
            self.avoid.remove(t);
            self.exclude.remove(t);
        }
        self.prune(job);
    }

    /// Drops a job's waiting tasks (it was cancelled); the reservations of its running tasks
    /// stay until they end.
    pub fn remove_job(&mut self, job: u64) {
        if let Some(j) = self.jobs.get_mut(&job) {
            for t in j.queue.drain(..) {
                self.avoid.remove(&t);
                self.exclude.remove(&t);
            }
        }
        self.prune(job);
    }

    /// Forgets a job with nothing waiting or running.
    fn prune(&mut self, job: u64) {
        if self
            .jobs
            .get(&job)
            .is_some_and(|j| j.queue.is_empty() && j.on_agent.is_empty())
            && let Some(j) = self.jobs.remove(&job)
            && let Some(u) = self.users.get_mut(&j.placement.owner)
        {
            u.jobs.remove(&j.placement.serving_rank(job));
        }
    }

    /// A task waits for an agent. Its job must have been added.
    pub fn task_queued(&mut self, task: TaskId) {
        if let Some(j) = self.jobs.get_mut(&task.job) {
            j.queue.push_back(task);
        }
    }

    /// The waiting `task` should go to an agent other than these (its earlier attempts failed
    /// there) when another can take it; only when none can may it go back to one of them.
    pub fn avoid(&mut self, task: TaskId, agents: Vec<String>) {
        if agents.is_empty() {
            self.avoid.remove(&task);
        } else {
            self.avoid.insert(task, agents);
        }
    }

    /// The waiting `task` must not go to these agents, even when no other can take it: it
    /// waits for another.
    pub fn exclude(&mut self, task: TaskId, agents: Vec<String>) {
        if agents.is_empty() {
            self.exclude.remove(&task);
        } else {
            self.exclude.insert(task, agents);
        }
    }

    /// A task runs on `agent` (after a coordinator restart or an agent's reconnect): its
    /// reservation is taken. Its job must have been added.
    pub fn task_running(&mut self, agent: &str, task: TaskId) {
        let Some(&i) = self.index.get(agent) else {
            return;
        };
        if self.running.contains_key(&task) || !self.jobs.contains_key(&task.job) {
            return;
        }
        self.reserve(i, task);
    }

    /// A task ended (or its placement was not carried out): its reservation is released.
    pub fn task_ended(&mut self, task: TaskId) {
        let Some(i) = self.running.remove(&task) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&task.job) else {
            return;
        };
        let (memory, cpu) = (job.placement.memory, u64::from(job.placement.cpu_millis));
        count_task(&mut self.users, &mut self.groups, &job.placement, false);
        let value = spread_value(job, self.agents[i as usize].as_ref());
        forget_one(job, i, value.as_deref());
        if let Some(a) = self.agents[i as usize].as_mut() {
            a.busy = a.busy.saturating_sub(1);
            a.memory_used = a.memory_used.saturating_sub(memory);
            a.cpu_used = a.cpu_used.saturating_sub(cpu);
        }
        self.refresh_room(i);
        self.prune(task.job);
    }

    /// Tasks waiting.
    pub fn queued(&self) -> usize {
        self.jobs.values().map(|j| j.queue.len()).sum()
    }

    /// Agents known.
    pub fn agents(&self) -> usize {
        self.index.len()
    }

    /// The next placement, or `None` when no waiting task fits any agent now. The task's
    /// reservation is taken on the agent; give it back with [`Scheduler::task_ended`] if the
    /// placement is not carried out.
    pub fn poll_placement(&mut self) -> Option<Placement> {
        if self.roomy.is_empty() {
            return None;
        }
        let mut order = std::mem::take(&mut self.job_order);
        self.serving_order(&mut order);
        let placed = self.place_first(&order);
        self.job_order = order;
        placed
    }

    /// The registered jobs in the order they are served: users by fair share, each user's
    /// jobs by priority and age.
    fn serving_order(&self, order: &mut Vec<u64>) {
        let mut users: Vec<&User> = self.users.values().filter(|u| !u.jobs.is_empty()).collect();
        // Ties (users below the floor of recent usage) go to the one who used less, then to
        // the one whose first job is the more urgent or older.
        users.sort_by(|a, b| {
            a.key()
                .total_cmp(&b.key())
                .then_with(|| a.recent.total_cmp(&b.recent))
                .then_with(|| a.usage.total_cmp(&b.usage))
                .then_with(|| a.jobs.first().cmp(&b.jobs.first()))
        });
        order.clear();
        order.extend(users.iter().flat_map(|u| u.jobs.iter().map(|(_, j)| *j)));
    }

    /// When nothing waiting fits anywhere: the first waiting task (in serving order) that
    /// running work stands in the way of, and the running tasks that could make room for it,
    /// the first the most deserving of eviction. A running task qualifies when it runs on an
    /// agent the waiting task may use and leaves room for it there once gone, and either
    /// belongs to another user who would still be served after the waiting one without it
    /// (fair share: evicting it cannot be undone by the same rule), or is of a lower-priority
    /// job of the waiting task's own user. Other users' tasks come first, the worst-served
    /// user's first; then the lowest priority. `None` when nothing waits or nothing qualifies.
    pub fn preemption(&mut self) -> Option<(TaskId, Vec<TaskId>)> {
        let mut order = Vec::new();
        self.serving_order(&mut order);
        // Each job looked at walks every running task: only the first few waiting ones are.
        let waiting = order
            .into_iter()
            .filter(|j| self.jobs.get(j).is_some_and(|j| !j.queue.is_empty()))
            .take(PREEMPTION_JOBS);
        let order: Vec<u64> = waiting.collect();
        for job_id in order {
            let Some(waiting) = self.next_waiting(job_id) else {
                continue;
            };
            let job = &self.jobs[&job_id];
            let Some(me) = self.users.get(&job.placement.owner) else {
                continue;
            };
            let my_rank = fair_share_rank(
                me.running_cores() + f64::from(job.placement.cpu_millis) / 1000.0,
                me.recent,
            );
            // (class: 0 another user's, 1 a lower priority of mine; then the order within it)
            let mut found: Vec<((u8, f64), TaskId)> = Vec::new();
            for (task, &i) in &self.running {
                if !job.is_eligible.get(i as usize).copied().unwrap_or(false) {
                    continue;
                }
                let (Some(victim), Some(agent)) =
                    (self.jobs.get(&task.job), self.agents[i as usize].as_ref())
                else {
                    continue;
                };
                let freed_memory = agent.memory_used.saturating_sub(victim.placement.memory);
                let freed_cpu = agent
                    .cpu_used
                    .saturating_sub(u64::from(victim.placement.cpu_millis));
                if freed_memory.saturating_add(job.placement.memory) > agent.capacity.memory_total
                    || freed_cpu + u64::from(job.placement.cpu_millis) > agent.cpu_total()
                {
                    continue;
                }
                if victim.placement.owner == job.placement.owner {
                    if victim.placement.priority < job.placement.priority {
                        found.push(((1, f64::from(victim.placement.priority)), *task));
                    }
                    continue;
                }
                let Some(them) = self.users.get(&victim.placement.owner) else {
                    continue;
                };
                let their_rank = fair_share_rank(
                    them.running_cores() - f64::from(victim.placement.cpu_millis) / 1000.0,
                    them.recent,
                );
                if their_rank > my_rank {
                    found.push(((0, -their_rank), *task));
                }
            }
            if found.is_empty() {
                continue;
            }
            found.sort_by(|(a, ta), (b, tb)| {
                a.0.cmp(&b.0)
                    .then_with(|| a.1.total_cmp(&b.1))
                    .then_with(|| tb.cmp(ta))
            });
            return Some((waiting, found.into_iter().map(|(_, t)| t).collect()));
        }
        None
    }

    /// The next waiting task of a job whose owner and group are below their quotas, its list
    /// of eligible agents brought up to date; `None` when nothing of it may start.
    fn next_waiting(&mut self, job_id: u64) -> Option<TaskId> {
        let job = self.jobs.get(&job_id)?;
        let task = job.queue.front().copied()?;
        let p = &job.placement;
        if !(self.quotas.is_empty() && self.group_quotas.is_empty())
            && self
                .quota_block(&p.owner, p.group.as_deref(), p.cpu_millis)
                .is_some()
        {
            return None;
        }
        self.refresh_eligible(job_id);
        Some(task)
    }

    /// The placement of the first task of the first of `order`'s jobs that fits somewhere.
    fn place_first(&mut self, order: &[u64]) -> Option<Placement> {
        for &job_id in order {
            let Some(task) = self.next_waiting(job_id) else {
                continue;
            };
            let Some(agent) = self.choose(job_id, task) else {
                continue;
            };
            self.avoid.remove(&task);
            self.exclude.remove(&task);
            if let Some(j) = self.jobs.get_mut(&job_id) {
                j.queue.pop_front();
            }
            self.reserve(agent, task);
            if self.jobs.get(&job_id).is_some_and(|j| j.queue.is_empty()) {
                // Its agent lists are rebuilt if tasks come back.
                if let Some(j) = self.jobs.get_mut(&job_id) {
                    j.eligible = Vec::new();
                    j.is_eligible = Vec::new();
                    j.eligible_gen = 0;
                }
            }
            if let Some(m) = self.jobs.get(&job_id).and_then(|j| j.placement.module) {
                self.mark_warm(agent, m);
            }
            let a = self.agents[agent as usize]
                .as_ref()
                .expect("chosen agents exist");
            return Some(Placement {
                task,
                agent: a.id.clone(),
            });
        }
        None
    }

    fn mark_warm(&mut self, i: u32, module: Digest) {
        if let Some(a) = self.agents[i as usize].as_mut()
            && a.warm.insert(module)
        {
            self.warm.entry(module).or_default().push(i);
        }
    }

    fn reserve(&mut self, i: u32, task: TaskId) {
        let Some(job) = self.jobs.get_mut(&task.job) else {
            return;
        };
        let Some(a) = self.agents[i as usize].as_mut() else {
            return;
        };
        a.busy += 1;
        a.memory_used = a.memory_used.saturating_add(job.placement.memory);
        a.cpu_used += u64::from(job.placement.cpu_millis);
        count_task(&mut self.users, &mut self.groups, &job.placement, true);
        *job.on_agent.entry(i).or_default() += 1;
        if let Some(v) = job
            .placement
            .spread
            .as_ref()
            .and_then(|attr| attr.value_of(&a.capacity))
        {
            *job.on_value.entry(v.into_owned()).or_default() += 1;
        }
        self.running.insert(task, i);
        self.refresh_room(i);
    }

    fn refresh_room(&mut self, i: u32) {
        let roomy = self.agents[i as usize]
            .as_ref()
            .is_some_and(Agent::has_room);
        self.set_roomy(i, roomy);
    }

    fn set_roomy(&mut self, i: u32, roomy: bool) {
        let at = self.roomy_at[i as usize];
        match (at, roomy) {
            (None, true) => {
                self.roomy_at[i as usize] = Some(self.roomy.len());
                self.roomy.push(i);
            }
            (Some(pos), false) => {
                self.roomy.swap_remove(pos);
                if let Some(&moved) = self.roomy.get(pos) {
                    self.roomy_at[moved as usize] = Some(pos);
                }
                self.roomy_at[i as usize] = None;
            }
            _ => {}
        }
    }

    fn refresh_eligible(&mut self, job_id: u64) {
        let generation = self.generation;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.eligible_gen == generation {
            return;
        }
        job.eligible.clear();
        job.is_eligible.clear();
        job.is_eligible.resize(self.agents.len(), false);
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(a) = a
                && a.capacity.max_task_memory >= job.module_memory
                && job
                    .placement
                    .constraints
                    .iter()
                    .all(|c| c.holds(&a.capacity))
            {
                job.eligible.push(i as u32);
                job.is_eligible[i] = true;
            }
        }
        job.eligible_gen = generation;
    }

    /// Picks the agent for the next task of `job_id`, or `None` when none is feasible.
    fn choose(&mut self, job_id: u64, task: TaskId) -> Option<u32> {
        let start = self.next_random();
        let roll = self.next_random();
        let job = self.jobs.get(&job_id)?;
        if job.eligible.is_empty() {
            return None;
        }
        let mut candidates = std::mem::take(&mut self.scratch);
        candidates.clear();
        let excluded: &[String] = self.exclude.get(&task).map_or(&[], Vec::as_slice);
        let allowed = |a: &Agent| !excluded.contains(&a.id);
        // Walk the shorter of the two lists: the job's eligible agents, or the agents with
        // room; collect feasible ones.
        let (walk, check_eligible): (&[u32], bool) = if job.eligible.len() <= self.roomy.len() {
            (&job.eligible, false)
        } else {
            (&self.roomy, true)
        };
        let n = walk.len();
        let offset = (start % n as u64) as usize;
        for k in 0..n {
            let i = walk[(offset + k) % n];
            if check_eligible && !job.is_eligible.get(i as usize).copied().unwrap_or(false) {
                continue;
            }
            let Some(a) = self.agents[i as usize].as_ref() else {
                continue;
            };
            if a.fits(job) && allowed(a) {
                candidates.push(i);
                if candidates.len() >= CANDIDATES {
                    break;
                }
            }
        }
        // Agents holding the module compiled, when the walk did not cover everyone: a bounded
        // look from a random point of the module's list.
        if candidates.len() >= CANDIDATES
            && let Some(list) = job.placement.module.and_then(|m| self.warm.get(&m))
            && !list.is_empty()
        {
            let module = job.placement.module.expect("checked above");
            let n = list.len();
            let offset = (roll % n as u64) as usize;
            let mut added = 0;
            for k in 0..n.min(4 * CANDIDATES) {
                let i = list[(offset + k) % n];
                let Some(a) = self.agents[i as usize].as_ref() else {
                    continue;
                };
                if job.is_eligible.get(i as usize).copied().unwrap_or(false)
                    && a.warm.contains(&module)
                    && a.fits(job)
                    && allowed(a)
                    && !candidates.contains(&i)
                {
                    candidates.push(i);
                    added += 1;
                    if added >= CANDIDATES {
                        break;
                    }
                }
            }
        }
        // Agents the task failed on only when nobody else can take it.
        if let Some(avoid) = self.avoid.get(&task) {
            let before = candidates.len();
            let agents = &self.agents;
            candidates.retain(|&i| {
                agents[i as usize]
                    .as_ref()
                    .is_some_and(|a| !avoid.contains(&a.id))
            });
            if candidates.is_empty() && before > 0 {
                // Walk again, keeping everyone.
                for k in 0..n {
                    let i = walk[(offset + k) % n];
                    if check_eligible && !job.is_eligible.get(i as usize).copied().unwrap_or(false)
                    {
                        continue;
                    }
                    if self.agents[i as usize]
                        .as_ref()
                        .is_some_and(|a| a.fits(job) && allowed(a))
                    {
                        candidates.push(i);
                        if candidates.len() >= CANDIDATES {
                            break;
                        }
                    }
                }
            }
        }
        let chosen = if candidates.is_empty() {
            None
        } else {
            self.pick(job, &candidates, roll)
        };
        self.scratch = candidates;
        chosen
    }

    fn pick(&self, job: &Job, candidates: &[u32], roll: u64) -> Option<u32> {
        let agent = |i: u32| self.agents[i as usize].as_ref().expect("candidates exist");
        let warm = |i: u32| {
            job.placement
                .module
                .is_some_and(|m| agent(i).warm.contains(&m))
        };
        match job.placement.strategy {
            // Every fitting agent is as good: no tie to break.
            Strategy::Random => Some(candidates[(roll % candidates.len() as u64) as usize]),
            Strategy::Binpack => {
                // The fullest after placing: the least memory left, then the least CPU left,
                // as fractions of the agent.
                let key = |i: u32| {
                    let a = agent(i);
                    let memory = a.capacity.memory_total - a.memory_used - job.placement.memory;
                    let cpu = a.cpu_total() - a.cpu_used - u64::from(job.placement.cpu_millis);
                    (
                        memory as f64 / a.capacity.memory_total.max(1) as f64,
                        cpu as f64 / a.cpu_total() as f64,
                        !warm(i),
                        i,
                    )
                };
                candidates
                    .iter()
                    .map(|&i| key(i))
                    .min_by(|x, y| {
                        x.0.total_cmp(&y.0)
                            .then(x.1.total_cmp(&y.1))
                            .then(x.2.cmp(&y.2))
                            .then(x.3.cmp(&y.3))
                    })
                    .map(|k| k.3)
            }
            Strategy::Spread => {
                // The fewest of this job's tasks (on the agent, or on its spread value), then
                // the emptiest.
                let key = |i: u32| {
                    let a = agent(i);
                    let count = match &job.placement.spread {
                        Some(attr) => attr
                            .value_of(&a.capacity)
                            .map(|v| job.on_value.get(v.as_ref()).copied().unwrap_or(0))
                            .unwrap_or(u32::MAX),
                        None => job.on_agent.get(&i).copied().unwrap_or(0),
                    };
                    let used = a.memory_used as f64 / a.capacity.memory_total.max(1) as f64
                        + a.cpu_used as f64 / a.cpu_total() as f64;
                    (count, used, !warm(i), i)
                };
                candidates
                    .iter()
                    .map(|&i| key(i))
                    .min_by(|x, y| {
                        x.0.cmp(&y.0)
                            .then(x.1.total_cmp(&y.1))
                            .then(x.2.cmp(&y.2))
                            .then(x.3.cmp(&y.3))
                    })
                    .map(|k| k.3)
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The value of `job`'s spread attribute on `agent`, if it spreads over one.
fn spread_value(job: &Job, agent: Option<&Agent>) -> Option<String> {
    let attr = job.placement.spread.as_ref()?;
    Some(attr.value_of(&agent?.capacity)?.into_owned())
}

/// Counts one task of `job` fewer on agent `i` (and on spread value `value`).
fn forget_one(job: &mut Job, i: u32, value: Option<&str>) {
    if let Some(n) = job.on_agent.get_mut(&i) {
        *n -= 1;
        if *n == 0 {
            job.on_agent.remove(&i);
        }
    }
    if let Some(v) = value
        && let Some(n) = job.on_value.get_mut(v)
    {
        *n -= 1;
        if *n == 0 {
            job.on_value.remove(v);
        }
    }
}

/// Whether two reports differ in what constraints can test.
fn static_attributes_differ(a: &Capacity, b: &Capacity) -> bool {
    a.os != b.os
        || a.arch != b.arch
        || a.cores != b.cores
        || a.memory_total != b.memory_total
        || a.wasmtime != b.wasmtime
        || a.labels != b.labels
        || a.max_task_memory != b.max_task_memory
}
