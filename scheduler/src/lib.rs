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
//! Jobs are served first come, first served; a job none of whose tasks fits anywhere does not
//! hold up the jobs behind it.
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

use std::collections::{HashMap, HashSet, VecDeque};

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
        })
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
    /// Jobs in arrival order (with waiting tasks or not; pruned as they empty).
    order: VecDeque<u64>,
    /// Where each placed task runs, to release its reservation when it ends.
    running: HashMap<TaskId, u32>,
    rng: u64,
    /// Scratch space for candidates, kept to avoid allocating per decision.
    scratch: Vec<u32>,
    /// Agents holding each module compiled (entries of agents gone since are skipped).
    warm: HashMap<Digest, Vec<u32>>,
    /// Agents a waiting task should not go to when another can take it (it failed there).
    avoid: HashMap<TaskId, Vec<String>>,
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
            order: VecDeque::new(),
            running: HashMap::new(),
            rng: seed | 1,
            scratch: Vec::new(),
            warm: HashMap::new(),
            avoid: HashMap::new(),
        }
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
        match self.jobs.get_mut(&job) {
            Some(j) => {
                j.placement = placement;
                j.module_memory = module_memory;
                j.eligible_gen = 0;
            }
            None => {
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
                self.order.push_back(job);
            }
        }
    }

    /// Drops a job's waiting tasks (it was cancelled); the reservations of its running tasks
    /// stay until they end.
    pub fn remove_job(&mut self, job: u64) {
        if let Some(j) = self.jobs.get_mut(&job) {
            for t in j.queue.drain(..) {
                self.avoid.remove(&t);
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
        {
            self.jobs.remove(&job);
            self.order.retain(|j| *j != job);
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
        let mut n = 0;
        while n < self.order.len() {
            let job_id = self.order[n];
            n += 1;
            let Some(task) = self
                .jobs
                .get(&job_id)
                .and_then(|j| j.queue.front().copied())
            else {
                continue;
            };
            self.refresh_eligible(job_id);
            let Some(agent) = self.choose(job_id, task) else {
                continue;
            };
            self.avoid.remove(&task);
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
            if a.fits(job) {
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
                        .is_some_and(|a| a.fits(job))
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
