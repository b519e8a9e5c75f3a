//! Placement: which agent runs which pending task. Pure logic, no IO and no clock.
//!
//! The server feeds it agents (`handle_agent_*`) and tasks (`handle_task_*`) and drains
//! placements with [`Scheduler::poll_placement`]. Randomness comes in as a seed, so tests and
//! benchmarks are repeatable.

use std::collections::{HashMap, VecDeque};

use lull_protocol::job::Strategy;
use lull_protocol::message::{Capacity, TaskId};

/// A task waiting for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedTask {
    /// The task.
    pub task: TaskId,
    /// Memory it needs per module, in bytes.
    pub memory: u64,
    /// How to choose among agents that fit.
    pub strategy: Strategy,
}

/// A decision: run `task` on `agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The task.
    pub task: QueuedTask,
    /// The agent's ID.
    pub agent: String,
}

#[derive(Debug, Clone)]
struct AgentSlots {
    slots: u32,
    busy: u32,
    max_task_memory: u64,
    accepting: bool,
}

impl AgentSlots {
    fn free(&self) -> u32 {
        if self.accepting {
            self.slots.saturating_sub(self.busy)
        } else {
            0
        }
    }
    fn fits(&self, t: &QueuedTask) -> bool {
        self.free() > 0 && self.max_task_memory >= t.memory
    }
}

/// The scheduler's state: connected agents' free slots and the queue of pending tasks.
#[derive(Debug)]
pub struct Scheduler {
    agents: HashMap<String, AgentSlots>,
    queue: VecDeque<QueuedTask>,
    rng: u64,
}

impl Scheduler {
    /// An empty scheduler; `seed` drives the `random` strategy.
    pub fn new(seed: u64) -> Self {
        Self {
            agents: HashMap::new(),
            queue: VecDeque::new(),
            rng: seed | 1,
        }
    }

    /// An agent connected (or reported new capacity) with `busy` tasks running; it takes new
    /// tasks only while `accepting` (its owner's policy says the machine is idle enough).
    pub fn handle_agent_up(&mut self, id: &str, capacity: &Capacity, busy: u32, accepting: bool) {
        self.agents.insert(
            id.to_owned(),
            AgentSlots {
                slots: capacity.slots,
                busy,
                max_task_memory: capacity.max_task_memory,
                accepting,
            },
        );
    }

    /// An agent disconnected: nothing more is placed on it.
    pub fn handle_agent_down(&mut self, id: &str) {
        self.agents.remove(id);
    }

    /// A task on `agent` ended, freeing a slot.
    pub fn handle_task_ended(&mut self, agent: &str) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.busy = a.busy.saturating_sub(1);
        }
    }

    /// A task is waiting for an agent.
    pub fn handle_task_queued(&mut self, task: QueuedTask) {
        self.queue.push_back(task);
    }

    /// Drops queued tasks of a job (it was cancelled).
    pub fn handle_job_cancelled(&mut self, job: u64) {
        self.queue.retain(|t| t.task.job != job);
    }

    /// Tasks waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The next placement, or `None` when no waiting task fits any agent with a free slot.
    pub fn poll_placement(&mut self) -> Option<Placement> {
        if !self.agents.values().any(|a| a.free() > 0) {
            return None;
        }
        let pos = self
            .queue
            .iter()
            .position(|t| self.agents.values().any(|a| a.fits(t)))?;
        let task = self.queue.remove(pos)?;
        let agent = self.choose(&task)?;
        if let Some(a) = self.agents.get_mut(&agent) {
            a.busy += 1;
        }
        Some(Placement { task, agent })
    }

    fn choose(&mut self, task: &QueuedTask) -> Option<String> {
        let roll = match task.strategy {
            Strategy::Random => self.next_random(),
            _ => 0,
        };
        let mut fitting: Vec<(&String, &AgentSlots)> =
            self.agents.iter().filter(|(_, a)| a.fits(task)).collect();
        // Deterministic order whatever the hash map's.
        fitting.sort_by(|a, b| a.0.cmp(b.0));
        let chosen = match task.strategy {
            Strategy::Spread => fitting.iter().max_by_key(|(_, a)| a.free()),
            Strategy::Binpack => fitting.iter().min_by_key(|(_, a)| a.free()),
            Strategy::Random => {
                if fitting.is_empty() {
                    None
                } else {
                    let i = (roll % fitting.len() as u64) as usize;
                    fitting.get(i)
                }
            }
        };
        chosen.map(|(id, _)| (*id).clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(slots: u32, max_mem: u64) -> Capacity {
        Capacity {
            cores: slots,
            slots,
            max_task_memory: max_mem,
            ..Capacity::default()
        }
    }

    fn task(index: u32, memory: u64, strategy: Strategy) -> QueuedTask {
        QueuedTask {
            task: TaskId { job: 1, index },
            memory,
            strategy,
        }
    }

    #[test]
    fn nothing_is_placed_without_agents() {
        let mut s = Scheduler::new(1);
        s.handle_task_queued(task(0, 1 << 20, Strategy::Spread));
        assert_eq!(s.poll_placement(), None);
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn spread_alternates_and_slots_are_respected() {
        let mut s = Scheduler::new(1);
        s.handle_agent_up("a", &cap(2, 1 << 30), 0, true);
        s.handle_agent_up("b", &cap(2, 1 << 30), 0, true);
        for i in 0..5 {
            s.handle_task_queued(task(i, 1 << 20, Strategy::Spread));
        }
        let mut placed: Vec<String> = std::iter::from_fn(|| s.poll_placement())
            .map(|p| p.agent)
            .collect();
        placed.sort();
        assert_eq!(placed, vec!["a", "a", "b", "b"]);
        assert_eq!(s.queued(), 1);
        s.handle_task_ended("b");
        assert_eq!(s.poll_placement().unwrap().agent, "b");
    }

    #[test]
    fn binpack_fills_one_agent_first() {
        let mut s = Scheduler::new(1);
        s.handle_agent_up("a", &cap(4, 1 << 30), 0, true);
        s.handle_agent_up("b", &cap(4, 1 << 30), 1, true);
        for i in 0..3 {
            s.handle_task_queued(task(i, 1 << 20, Strategy::Binpack));
        }
        let placed: Vec<String> = std::iter::from_fn(|| s.poll_placement())
            .map(|p| p.agent)
            .collect();
        assert_eq!(placed, vec!["b", "b", "b"]);
    }

    #[test]
    fn a_task_too_big_for_every_agent_waits_without_blocking_others() {
        let mut s = Scheduler::new(1);
        s.handle_agent_up("small", &cap(2, 256 << 20), 0, true);
        s.handle_task_queued(task(0, 1 << 30, Strategy::Spread));
        s.handle_task_queued(task(1, 64 << 20, Strategy::Spread));
        let p = s.poll_placement().unwrap();
        assert_eq!(p.task.task.index, 1);
        assert_eq!(s.poll_placement(), None);
        assert_eq!(s.queued(), 1);
    }

    #[test]
    fn random_is_repeatable_for_a_seed_and_uses_every_agent() {
        let run = |seed| {
            let mut s = Scheduler::new(seed);
            for id in ["a", "b", "c"] {
                s.handle_agent_up(id, &cap(100, 1 << 30), 0, true);
            }
            for i in 0..60 {
                s.handle_task_queued(task(i, 1, Strategy::Random));
            }
            std::iter::from_fn(|| s.poll_placement())
                .map(|p| p.agent)
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        for id in ["a", "b", "c"] {
            assert!(a.iter().any(|x| x == id));
        }
    }

    #[test]
    fn an_agent_not_accepting_gets_nothing() {
        let mut s = Scheduler::new(1);
        s.handle_agent_up("busy-desktop", &cap(4, 1 << 30), 0, false);
        s.handle_task_queued(task(0, 1, Strategy::Spread));
        assert_eq!(s.poll_placement(), None);
        s.handle_agent_up("busy-desktop", &cap(4, 1 << 30), 0, true);
        assert_eq!(s.poll_placement().unwrap().agent, "busy-desktop");
    }

    #[test]
    fn agent_down_and_cancel_remove_work() {
        let mut s = Scheduler::new(1);
        s.handle_agent_up("a", &cap(1, 1 << 30), 0, true);
        s.handle_agent_down("a");
        s.handle_task_queued(task(0, 1, Strategy::Spread));
        assert_eq!(s.poll_placement(), None);
        s.handle_job_cancelled(1);
        assert_eq!(s.queued(), 0);
    }
}
