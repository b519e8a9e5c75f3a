//! The scheduler's promises, checked on generated clusters and jobs:
//!
//! - it never over-commits an agent (slots, memory, CPU, the agent's per-task cap);
//! - every placement satisfies its job's constraints, and agents not accepting get nothing;
//! - when it stops placing, no waiting task fits anywhere (nothing is left behind);
//! - `spread` keeps a job's tasks even within one across agents, or across a label's values;
//! - `binpack` uses the fewest agents;
//! - ties go to agents holding the module compiled; `random` repeats for a seed and spreads
//!   over every agent.

use std::collections::{BTreeMap, HashMap};

use lull_protocol::Digest;
use lull_protocol::constraint::{Attribute, Constraint};
use lull_protocol::job::Strategy as Kind;
use lull_protocol::message::{Capacity, TaskId};
use lull_scheduler::{JobPlacement, Placement, Scheduler};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Debug, Clone)]
struct AgentDef {
    capacity: Capacity,
    accepting: bool,
}

#[derive(Debug, Clone)]
struct JobDef {
    count: u32,
    memory: u64,
    cpu_millis: u32,
    strategy: Kind,
    constraints: Vec<String>,
}

fn capacity(cores: u32, slots: u32, memory: u64, os: &str, site: Option<&str>) -> Capacity {
    Capacity {
        cores,
        slots,
        memory_total: memory,
        memory_available: memory,
        max_task_memory: memory.min(4 * GIB),
        os: os.into(),
        arch: "x86_64".into(),
        labels: site
            .map(|s| BTreeMap::from([("site".to_owned(), s.to_owned())]))
            .unwrap_or_default(),
        wasmtime: "48.0.8".into(),
    }
}

fn placement(job: &JobDef) -> JobPlacement {
    JobPlacement {
        memory: job.memory,
        cpu_millis: job.cpu_millis,
        strategy: job.strategy,
        spread: None,
        constraints: job.constraints.iter().map(|c| c.parse().unwrap()).collect(),
        module: Some(Digest::of(job.memory.to_string().as_bytes())),
        owner: String::new(),
        priority: 0,
        group: None,
    }
}

fn agent_strategy() -> impl Strategy<Value = AgentDef> {
    (
        1u32..=8,
        1u32..=8,
        1u64..=16,
        prop::sample::select(vec!["linux", "macos"]),
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::bool::weighted(0.85),
    )
        .prop_map(|(cores, slots, gib, os, site, accepting)| AgentDef {
            capacity: capacity(cores, slots, gib * GIB, os, site),
            accepting,
        })
}

fn job_strategy() -> impl Strategy<Value = JobDef> {
    let constraint = prop::sample::select(vec![
        "os == linux",
        "os != linux",
        "memory >= 8GiB",
        "cores <= 4",
        "label.site in a, b",
        "label.site =~ ^c$",
        "label.site != a",
    ]);
    (
        1u32..=40,
        prop::sample::select(vec![64 * MIB, 512 * MIB, GIB, 3 * GIB]),
        prop::sample::select(vec![250u32, 1000, 2000]),
        prop::sample::select(vec![Kind::Binpack, Kind::Spread, Kind::Random]),
        prop::collection::vec(constraint, 0..=2),
    )
        .prop_map(
            |(count, memory, cpu_millis, strategy, constraints)| JobDef {
                count,
                memory,
                cpu_millis,
                strategy,
                constraints: constraints.into_iter().map(str::to_owned).collect(),
            },
        )
}

/// A scheduler over `agents` (named `a0`, `a1`, ...) and `jobs` (numbered from 1), all tasks
/// queued.
fn setup(agents: &[AgentDef], jobs: &[JobDef], seed: u64) -> Scheduler {
    let mut s = Scheduler::new(seed);
    for (i, a) in agents.iter().enumerate() {
        s.agent_up(&format!("a{i}"), &a.capacity, a.accepting);
    }
    for (j, job) in jobs.iter().enumerate() {
        let id = j as u64 + 1;
        s.add_job(id, placement(job), 1);
        for index in 0..job.count {
            s.task_queued(TaskId { job: id, index });
        }
    }
    s
}

fn drain(s: &mut Scheduler) -> Vec<Placement> {
    std::iter::from_fn(|| s.poll_placement()).collect()
}

fn agent_index(p: &Placement) -> usize {
    p.agent[1..].parse().unwrap()
}

/// Checks every promise about the placements now running (`running`: task -> agent index) and
/// the tasks still waiting.
fn check(
    agents: &[AgentDef],
    jobs: &[JobDef],
    running: &HashMap<TaskId, usize>,
    waiting: &[TaskId],
) {
    let mut slots = vec![0u32; agents.len()];
    let mut memory = vec![0u64; agents.len()];
    let mut cpu = vec![0u64; agents.len()];
    for (task, &a) in running {
        let job = &jobs[task.job as usize - 1];
        let agent = &agents[a];
        assert!(
            agent.accepting,
            "{task} placed on a{a}, which does not accept work"
        );
        for c in &job.constraints {
            let c: Constraint = c.parse().unwrap();
            assert!(c.holds(&agent.capacity), "{task} on a{a} breaks {c}");
        }
        assert!(agent.capacity.max_task_memory >= job.memory);
        slots[a] += 1;
        memory[a] += job.memory;
        cpu[a] += u64::from(job.cpu_millis);
    }
    for (a, agent) in agents.iter().enumerate() {
        assert!(
            slots[a] <= agent.capacity.slots,
            "a{a}: {} tasks in {} slots",
            slots[a],
            agent.capacity.slots
        );
        assert!(
            memory[a] <= agent.capacity.memory_total,
            "a{a}: memory over-committed"
        );
        assert!(
            cpu[a] <= u64::from(agent.capacity.cores) * 1000,
            "a{a}: CPU over-committed"
        );
    }
    // Nothing waits that would fit somewhere.
    for task in waiting {
        let job = &jobs[task.job as usize - 1];
        for (a, agent) in agents.iter().enumerate() {
            let fits = agent.accepting
                && slots[a] < agent.capacity.slots
                && memory[a] + job.memory <= agent.capacity.memory_total
                && cpu[a] + u64::from(job.cpu_millis) <= u64::from(agent.capacity.cores) * 1000
                && agent.capacity.max_task_memory >= job.memory
                && job
                    .constraints
                    .iter()
                    .all(|c| c.parse::<Constraint>().unwrap().holds(&agent.capacity));
            assert!(!fits, "{task} waits although a{a} has room for it");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn placements_respect_capacity_and_constraints_and_leave_nothing_behind(
        agents in prop::collection::vec(agent_strategy(), 1..12),
        jobs in prop::collection::vec(job_strategy(), 1..5),
        ends in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        seed in any::<u64>(),
    ) {
        let mut s = setup(&agents, &jobs, seed);
        let mut running: HashMap<TaskId, usize> = HashMap::new();
        let mut placed = 0;
        for p in drain(&mut s) {
            running.insert(p.task, agent_index(&p));
            placed += 1;
        }
        let total: u32 = jobs.iter().map(|j| j.count).sum();
        let waiting = |running: &HashMap<TaskId, usize>, done: &[TaskId]| -> Vec<TaskId> {
            jobs.iter().enumerate().flat_map(|(j, job)| {
                (0..job.count).map(move |index| TaskId { job: j as u64 + 1, index })
            })
            .filter(|t| !running.contains_key(t) && !done.contains(t))
            .collect()
        };
        check(&agents, &jobs, &running, &waiting(&running, &[]));
        prop_assert_eq!(s.queued() + placed, total as usize);

        // Some tasks end; the freed room is used again, still within every promise.
        let mut done = Vec::new();
        for e in ends {
            if running.is_empty() {
                break;
            }
            let mut keys: Vec<TaskId> = running.keys().copied().collect();
            keys.sort();
            let t = keys[e.index(keys.len())];
            running.remove(&t);
            s.task_ended(t);
            done.push(t);
            for p in drain(&mut s) {
                prop_assert!(running.insert(p.task, agent_index(&p)).is_none(), "placed twice");
            }
            check(&agents, &jobs, &running, &waiting(&running, &done));
        }
    }

    #[test]
    fn spread_keeps_a_job_even_within_one(
        agents in 1usize..10,
        count in 1u32..60,
        seed in any::<u64>(),
    ) {
        let defs: Vec<AgentDef> = (0..agents)
            .map(|_| AgentDef { capacity: capacity(64, 64, 64 * GIB, "linux", None), accepting: true })
            .collect();
        let job = JobDef { count, memory: 64 * MIB, cpu_millis: 100, strategy: Kind::Spread, constraints: vec![] };
        let mut s = setup(&defs, std::slice::from_ref(&job), seed);
        let mut per_agent = vec![0u32; agents];
        // After every placement, not only at the end.
        while let Some(p) = s.poll_placement() {
            per_agent[agent_index(&p)] += 1;
            let (lo, hi) = (per_agent.iter().min().unwrap(), per_agent.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "uneven: {:?}", per_agent);
        }
        prop_assert_eq!(per_agent.iter().sum::<u32>(), count);
    }

    #[test]
    fn spread_over_a_label_keeps_its_values_even_within_one(
        per_site in prop::collection::vec(1usize..4, 2..4),
        count in 1u32..40,
        seed in any::<u64>(),
    ) {
        let sites = ["a", "b", "c"];
        let mut defs = Vec::new();
        let mut site_of = Vec::new();
        for (s, &n) in per_site.iter().enumerate() {
            for _ in 0..n {
                defs.push(AgentDef { capacity: capacity(64, 64, 64 * GIB, "linux", Some(sites[s])), accepting: true });
                site_of.push(s);
            }
        }
        let mut s = Scheduler::new(seed);
        for (i, a) in defs.iter().enumerate() {
            s.agent_up(&format!("a{i}"), &a.capacity, true);
        }
        let mut p = placement(&JobDef { count, memory: 64 * MIB, cpu_millis: 100, strategy: Kind::Spread, constraints: vec![] });
        p.spread = Some("label.site".parse::<Attribute>().unwrap());
        s.add_job(1, p, 1);
        for index in 0..count {
            s.task_queued(TaskId { job: 1, index });
        }
        let mut per_site_count = vec![0u32; per_site.len()];
        while let Some(p) = s.poll_placement() {
            per_site_count[site_of[agent_index(&p)]] += 1;
            let (lo, hi) = (per_site_count.iter().min().unwrap(), per_site_count.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "uneven across sites: {:?}", per_site_count);
        }
    }

    #[test]
    fn binpack_uses_the_fewest_agents(
        agents in 1usize..10,
        slots in 1u32..8,
        count in 1u32..60,
        seed in any::<u64>(),
    ) {
        let defs: Vec<AgentDef> = (0..agents)
            .map(|_| AgentDef { capacity: capacity(slots, slots, 64 * GIB, "linux", None), accepting: true })
            .collect();
        let job = JobDef { count, memory: 64 * MIB, cpu_millis: 1000, strategy: Kind::Binpack, constraints: vec![] };
        let mut s = setup(&defs, std::slice::from_ref(&job), seed);
        let placed = drain(&mut s);
        let used: std::collections::HashSet<usize> = placed.iter().map(agent_index).collect();
        let fit = (count as usize).min(agents * slots as usize);
        prop_assert_eq!(placed.len(), fit);
        prop_assert_eq!(used.len(), fit.div_ceil(slots as usize));
    }
}

#[test]
fn binpack_fills_the_fullest_agent_by_memory_first() {
    let mut s = Scheduler::new(1);
    s.agent_up("roomy", &capacity(8, 8, 16 * GIB, "linux", None), true);
    s.agent_up("half", &capacity(8, 8, 16 * GIB, "linux", None), true);
    let big = JobDef {
        count: 1,
        memory: 4 * GIB,
        cpu_millis: 100,
        strategy: Kind::Binpack,
        constraints: vec![],
    };
    s.add_job(1, placement(&big), 1);
    s.task_running("half", TaskId { job: 1, index: 0 });
    let small = JobDef {
        count: 3,
        memory: 256 * MIB,
        cpu_millis: 100,
        strategy: Kind::Binpack,
        constraints: vec![],
    };
    s.add_job(2, placement(&small), 1);
    for index in 0..3 {
        s.task_queued(TaskId { job: 2, index });
    }
    let agents: Vec<String> = drain(&mut s).into_iter().map(|p| p.agent).collect();
    assert_eq!(agents, ["half", "half", "half"]);
}

#[test]
fn ties_go_to_agents_holding_the_module_compiled() {
    for strategy in [Kind::Spread, Kind::Binpack] {
        let mut s = Scheduler::new(3);
        for id in ["cold-1", "warm", "cold-2"] {
            s.agent_up(id, &capacity(4, 4, 8 * GIB, "linux", None), true);
        }
        let job = JobDef {
            count: 1,
            memory: 64 * MIB,
            cpu_millis: 100,
            strategy,
            constraints: vec![],
        };
        let p = placement(&job);
        s.agent_holds("warm", p.module);
        s.add_job(1, p, 1);
        s.task_queued(TaskId { job: 1, index: 0 });
        assert_eq!(s.poll_placement().unwrap().agent, "warm", "{strategy:?}");
    }
}

#[test]
fn a_module_an_agent_dropped_no_longer_draws_its_tasks() {
    let mut s = Scheduler::new(3);
    for id in ["a", "b"] {
        s.agent_up(id, &capacity(4, 4, 8 * GIB, "linux", None), true);
    }
    let job = JobDef {
        count: 2,
        memory: 64 * MIB,
        cpu_millis: 100,
        strategy: Kind::Binpack,
        constraints: vec![],
    };
    let p = placement(&job);
    let module = p.module;
    // Were "a" still warm, the tie would go to it (it joined first).
    s.agent_holds("a", module);
    s.agent_drops("a", module);
    s.agent_holds("b", module);
    s.add_job(1, p, 1);
    s.task_queued(TaskId { job: 1, index: 0 });
    assert_eq!(s.poll_placement().unwrap().agent, "b");
    // Dropping what was never held, or for an unknown agent, changes nothing.
    s.agent_drops("b", module);
    s.agent_drops("nobody", module);
}

#[test]
fn random_repeats_for_a_seed_and_uses_every_agent() {
    let run = |seed| {
        let defs: Vec<AgentDef> = (0..3)
            .map(|_| AgentDef {
                capacity: capacity(64, 100, 64 * GIB, "linux", None),
                accepting: true,
            })
            .collect();
        let job = JobDef {
            count: 60,
            memory: MIB,
            cpu_millis: 1,
            strategy: Kind::Random,
            constraints: vec![],
        };
        let mut s = setup(&defs, std::slice::from_ref(&job), seed);
        drain(&mut s)
            .into_iter()
            .map(|p| p.agent)
            .collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
    for id in ["a0", "a1", "a2"] {
        let n = a.iter().filter(|x| *x == id).count();
        assert!((5..=40).contains(&n), "{id} got {n} of 60: {a:?}");
    }
}

#[test]
fn a_job_that_fits_nowhere_does_not_hold_up_the_next() {
    let mut s = Scheduler::new(1);
    s.agent_up("small", &capacity(2, 2, 2 * GIB, "linux", None), true);
    let huge = JobDef {
        count: 1,
        memory: 3 * GIB,
        cpu_millis: 100,
        strategy: Kind::Spread,
        constraints: vec![],
    };
    let mac = JobDef {
        count: 1,
        memory: MIB,
        cpu_millis: 100,
        strategy: Kind::Spread,
        constraints: vec!["os == macos".into()],
    };
    let fine = JobDef {
        count: 1,
        memory: MIB,
        cpu_millis: 100,
        strategy: Kind::Spread,
        constraints: vec![],
    };
    for (i, j) in [huge, mac, fine].iter().enumerate() {
        s.add_job(i as u64 + 1, placement(j), 1);
        s.task_queued(TaskId {
            job: i as u64 + 1,
            index: 0,
        });
    }
    let p = s.poll_placement().unwrap();
    assert_eq!(p.task.job, 3);
    assert_eq!(s.poll_placement(), None);
    assert_eq!(s.queued(), 2);
}

#[test]
fn agents_not_accepting_or_gone_get_nothing_and_reservations_come_back() {
    let mut s = Scheduler::new(1);
    s.agent_up("desk", &capacity(1, 1, GIB, "linux", None), false);
    let job = JobDef {
        count: 2,
        memory: MIB,
        cpu_millis: 1000,
        strategy: Kind::Spread,
        constraints: vec![],
    };
    s.add_job(1, placement(&job), 1);
    s.task_queued(TaskId { job: 1, index: 0 });
    s.task_queued(TaskId { job: 1, index: 1 });
    assert_eq!(s.poll_placement(), None);
    s.agent_accepting("desk", true);
    let first = s.poll_placement().unwrap();
    assert_eq!(s.poll_placement(), None, "one core, one slot");
    s.task_ended(first.task);
    assert_eq!(s.poll_placement().unwrap().task.index, 1);
    s.agent_down("desk");
    assert_eq!(s.agents(), 0);
    s.remove_job(1);
    assert_eq!(s.queued(), 0);
}

#[test]
fn a_task_avoids_the_agents_it_failed_on_unless_nobody_else_can_take_it() {
    let mut s = Scheduler::new(5);
    for id in ["first", "second", "third"] {
        s.agent_up(id, &capacity(2, 2, 8 * GIB, "linux", None), true);
    }
    let job = JobDef {
        count: 1,
        memory: 64 * MIB,
        cpu_millis: 100,
        strategy: Kind::Binpack,
        constraints: vec![],
    };
    s.add_job(1, placement(&job), 1);
    let task = TaskId { job: 1, index: 0 };
    s.task_queued(task);
    s.avoid(task, vec!["first".into()]);
    // Binpack on identical empty agents would take "first" (the earliest); it is avoided.
    assert_eq!(s.poll_placement().unwrap().agent, "second");
    s.task_ended(task);
    // Nothing of the job was left, so it was forgotten: the coordinator adds it again.
    assert!(!s.has_job(1));
    s.add_job(1, placement(&job), 1);
    s.task_queued(task);
    s.avoid(task, vec!["first".into(), "second".into()]);
    assert_eq!(s.poll_placement().unwrap().agent, "third");
    s.task_ended(task);
    // Everyone avoided: it goes anyway rather than wait.
    s.add_job(1, placement(&job), 1);
    s.task_queued(task);
    s.avoid(task, vec!["first".into(), "second".into(), "third".into()]);
    assert!(s.poll_placement().is_some());
}

#[test]
fn an_excluded_agent_never_takes_the_task_even_when_nobody_else_can() {
    let mut s = Scheduler::new(5);
    for id in ["first", "second"] {
        s.agent_up(id, &capacity(2, 2, 8 * GIB, "linux", None), true);
    }
    let job = JobDef {
        count: 2,
        memory: 64 * MIB,
        cpu_millis: 100,
        strategy: Kind::Binpack,
        constraints: vec![],
    };
    s.add_job(1, placement(&job), 1);
    let (task, other) = (TaskId { job: 1, index: 0 }, TaskId { job: 1, index: 1 });
    s.task_queued(task);
    s.task_queued(other);
    // Excluded from one, avoided on the other: the avoided one takes it.
    s.exclude(task, vec!["first".into()]);
    s.avoid(task, vec!["second".into()]);
    let placed = s.poll_placement().unwrap();
    assert_eq!((placed.task, placed.agent.as_str()), (task, "second"));
    s.task_ended(task);
    // Excluded from both: the job's other task goes, this one waits.
    s.task_queued(task);
    s.exclude(task, vec!["first".into(), "second".into()]);
    let next = s.poll_placement();
    assert!(
        next.as_ref().is_none_or(|p| p.task != task),
        "an excluded agent took the task: {next:?}"
    );
    // A new agent may take it.
    s.agent_up("third", &capacity(2, 2, 8 * GIB, "linux", None), true);
    let mut placed = Vec::new();
    while let Some(p) = s.poll_placement() {
        placed.push((p.task, p.agent));
    }
    assert!(
        placed.contains(&(task, "third".to_string())),
        "the task went to the newcomer: {placed:?}"
    );
}

/// A one-core task placement of `owner`'s job.
fn owned(owner: &str, priority: i32) -> JobPlacement {
    JobPlacement {
        owner: owner.into(),
        priority,
        ..placement(&JobDef {
            count: 1,
            memory: MIB,
            cpu_millis: 1000,
            strategy: Kind::Binpack,
            constraints: vec![],
        })
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // The test's start is its one real clock reading.
fn recent_usage_rises_and_decays_with_the_half_life_and_orders_the_users() {
    let start = std::time::Instant::now();
    let mut s = Scheduler::new(1);
    s.set_half_life(std::time::Duration::from_secs(10));
    s.advance(start);
    s.agent_up("a", &capacity(4, 4, 8 * GIB, "linux", None), true);
    s.add_job(1, owned("alice", 0), 1);
    for index in 0..4 {
        s.task_queued(TaskId { job: 1, index });
    }
    for _ in 0..4 {
        assert!(s.poll_placement().is_some());
    }
    // Four cores for one half-life: half of the way to 4.
    s.advance(start + std::time::Duration::from_secs(10));
    let alice = &s.shares()[0];
    assert_eq!(alice.user, "alice");
    assert!((alice.recent_cores - 2.0).abs() < 1e-9, "{alice:?}");
    assert!((alice.usage_core_seconds - 40.0).abs() < 1e-9, "{alice:?}");
    // Her tasks end; another half-life halves it.
    for index in 0..4 {
        s.task_ended(TaskId { job: 1, index });
    }
    s.advance(start + std::time::Duration::from_secs(20));
    let alice = &s.shares()[0];
    assert!((alice.recent_cores - 1.0).abs() < 1e-9, "{alice:?}");
    assert_eq!(alice.running_cores, 0.0);

    // Bob, new, goes before her; her higher-priority job does not change that.
    s.add_job(2, owned("alice", 100), 1);
    s.add_job(3, owned("bob", 0), 1);
    s.task_queued(TaskId { job: 2, index: 0 });
    s.task_queued(TaskId { job: 3, index: 0 });
    assert_eq!(s.poll_placement().unwrap().task.job, 3);
    assert_eq!(s.poll_placement().unwrap().task.job, 2);
    let users: Vec<String> = s.shares().into_iter().map(|sh| sh.user).collect();
    assert_eq!(users, ["alice", "bob"], "most recent usage first");
}
