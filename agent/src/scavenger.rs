//! The scavenger: the thread that drives the [`policy`](crate::policy) with the
//! [`sampler`](crate::sampler)'s readings and carries out its decisions on the running guests.
//!
//! It runs on its own OS thread at normal priority, never on tokio's threads and never at the
//! guests' idle priority, so it keeps sampling every 20 ms whatever the guests and the network
//! do. Each tick: read the machine, feed the policy, apply its actions to every running task's
//! [`TaskControl`], publish the status the agent reports, and forward state changes to the
//! coordinator. Tasks that start later get the current pause and CPU share at once.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lull_protocol::message::{AgentStatus, AttemptId};

use crate::policy::{Action, LoadSample, OwnerCommand, Policy, PolicyConfig, State};
use crate::sampler::{Load, LoadSampler};
use crate::sandbox::TaskControl;
use lull_protocol::sync::lock;

/// What every task's guests must do now; applied to tasks as they start.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Whether guests are paused.
    pub paused: bool,
    /// The share of each core guests may use.
    pub cpu_share: f64,
    /// An eviction in force: reason and deadline.
    pub evicting: Option<(String, Instant)>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            paused: false,
            cpu_share: 1.0,
            evicting: None,
        }
    }
}

impl Gate {
    /// Applies the gate to a task that is starting.
    pub fn apply(&self, control: &TaskControl) {
        if self.cpu_share < 1.0 {
            control.set_cpu_share(self.cpu_share);
        }
        if let Some((reason, deadline)) = &self.evicting {
            control.evict(
                reason.clone(),
                deadline.saturating_duration_since(Instant::now()),
            );
        }
        if self.paused {
            control.pause();
        }
    }
}

/// What the scavenger shares with the rest of the agent.
#[derive(Debug, Default)]
pub struct Shared {
    /// The controls of running tasks.
    pub running: Mutex<HashMap<AttemptId, TaskControl>>,
    /// What new tasks must do.
    pub gate: Mutex<Gate>,
    /// The status the agent reports.
    pub status: Mutex<AgentStatus>,
}

/// Where the scavenger sends what the coordinator and the agent must hear.
pub trait Events: Send + 'static {
    /// The policy changed state.
    fn state_changed(&self, from: State, to: State, reason: &str, attempts: Vec<AttemptId>);
    /// The owner asked to stop and the guests are gone: the agent should exit.
    fn stop(&self);
}

/// How the scavenger runs.
#[derive(Debug, Clone)]
pub struct ScavengerConfig {
    /// The policy's thresholds.
    pub policy: PolicyConfig,
    /// How often the machine is read.
    pub sample_interval: Duration,
    /// A dedicated machine ([`Policy::dedicated`]): the machine's load never pauses or evicts
    /// guests; only the owner's commands do.
    pub dedicated: bool,
    /// The owner's standing rules, checked every [`RULES_EVERY`].
    pub rules: crate::rules::Rules,
}

/// How often the owner's standing rules are checked.
pub const RULES_EVERY: Duration = Duration::from_secs(1);

/// Starts the scavenger thread. It runs until `owner` is closed.
pub fn start(
    config: ScavengerConfig,
    shared: Arc<Shared>,
    owner: Receiver<OwnerCommand>,
    events: impl Events,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut sampler = LoadSampler::new()?;
    std::thread::Builder::new()
        .name("scavenger".into())
        .spawn(move || run(config, shared, owner, events, &mut sampler))
}

fn run(
    config: ScavengerConfig,
    shared: Arc<Shared>,
    owner: Receiver<OwnerCommand>,
    events: impl Events,
    sampler: &mut LoadSampler,
) {
    let mut policy = if config.dedicated {
        Policy::dedicated(config.policy.clone(), Instant::now())
    } else {
        Policy::new(config.policy.clone(), Instant::now())
    };
    let mut next_sample = Instant::now();
    let mut next_rules = Instant::now();
    let mut smoothed = Load::default();
    loop {
        let now = Instant::now();
        let wake = policy
            .poll_timeout()
            .map_or(next_sample, |t| t.min(next_sample));
        match owner.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(cmd) => {
                policy.handle_owner(Instant::now(), cmd);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if now >= next_sample {
            // A fixed rate: waking late does not push every later sample back (each sample
            // stands for the time since the previous one, and the policy's reaction is counted
            // in samples). After a long stall, start afresh.
            next_sample += config.sample_interval;
            if next_sample <= now {
                next_sample = now + config.sample_interval;
            }
            let load = sampler.sample();
            // For people and reports, a smoothed view (about a second).
            let a = 0.05;
            smoothed.incumbent_cpu += a * (load.incumbent_cpu - smoothed.incumbent_cpu);
            smoothed.guest_cpu += a * (load.guest_cpu - smoothed.guest_cpu);
            policy.handle_sample(now, &sample_of(&load));
        }
        if !config.rules.is_empty() && now >= next_rules {
            next_rules = now + RULES_EVERY;
            let programs = if config.rules.watches_programs() {
                crate::rules::running_programs()
            } else {
                Vec::new()
            };
            let hold = config.rules.hold(
                crate::rules::local_now(),
                programs.iter().map(String::as_str),
            );
            policy.handle_rules(now, hold);
        }
        let guests = lock(&shared.running).len();
        policy.handle_guests(now, guests);
        if policy.poll_timeout().is_some_and(|t| t <= now) {
            policy.handle_timeout(now);
        }
        while let Some(action) = policy.poll_action() {
            apply(&shared, action, &events);
        }
        {
            let mut status = lock(&shared.status);
            status.accepting = policy.accepting();
            status.state = policy.state();
            if config.dedicated {
                status.reason = policy.reason().to_owned();
                status.idle_cpu = 1.0 - smoothed.incumbent_cpu;
            } else {
                status.reason = match policy.waiting_detail(now) {
                    Some(detail) => format!("{} (now: {detail})", policy.reason()),
                    None => policy.reason().to_owned(),
                };
                status.idle_cpu = policy.idle_estimate();
            }
            status.incumbent_cpu = smoothed.incumbent_cpu;
            status.guest_cpu = smoothed.guest_cpu;
        }
        if policy.stopping() && guests == 0 {
            events.stop();
        }
    }
}

/// The policy's input from a reading. System-wide CPU pressure is left out: it counts the
/// guests' own waits for a CPU, and would make guests pause themselves.
fn sample_of(load: &Load) -> LoadSample {
    LoadSample {
        cpu_pressure: None,
        ..*load
    }
}

fn apply(shared: &Shared, action: Action, events: &impl Events) {
    let running = lock(&shared.running);
    let mut gate = lock(&shared.gate);
    match action {
        Action::Pause => {
            gate.paused = true;
            for c in running.values() {
                c.pause();
            }
        }
        Action::Resume => {
            gate.paused = false;
            for c in running.values() {
                c.resume();
            }
        }
        Action::CpuShare(share) => {
            gate.cpu_share = share;
            for c in running.values() {
                c.set_cpu_share(share);
            }
        }
        Action::Evict { reason, grace } => {
            gate.evicting = Some((reason.clone(), Instant::now() + grace));
            for c in running.values() {
                c.evict(reason.clone(), grace);
            }
        }
        Action::StateChanged { from, to, reason } => {
            if from == State::Evicting {
                gate.evicting = None;
            }
            tracing::info!(%from, %to, %reason, "state changed");
            let attempts = running.keys().copied().collect();
            drop(gate);
            drop(running);
            events.state_changed(from, to, &reason, attempts);
        }
    }
}
