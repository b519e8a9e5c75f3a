//! When guests may run, and how much: the scavenging policy.
//!
//! The policy is pure, in the shape of `quinn-proto`: the driver feeds it readings of the machine
//! ([`Policy::handle_sample`], every 20 ms by default), the owner's commands
//! ([`Policy::handle_owner`]), the number of guests alive ([`Policy::handle_guests`]) and expired
//! deadlines ([`Policy::handle_timeout`]); it answers with [`Action`]s ([`Policy::poll_action`]) and
//! the next instant it wants to be woken at without a sample ([`Policy::poll_timeout`]). It does no
//! IO, reads no clock and starts no thread: time is always the `now` it is given, so tests drive
//! hours of it in milliseconds.
//!
//! # States
//!
//! ```text
//!                     quiet for start_after_idle
//!   WaitingForIdle ──────────────────────────────────▶ Running ◀────────────────┐
//!         ▲                                            │     │                  │
//!         │                       busy for pause_after │     │ hot for          │ quiet for
//!         │                                            ▼     │ pause_after      │ resume_after
//!         │                                      Throttled   │                  │ (from Paused,
//!         │                       hot for pause_after │      ▼                  │  and from
//!         │                                           └──▶ Paused ──────────────┘  Throttled)
//!         │ all guests gone,
//!         │ or grace + margin over
//!      Evicting ◀── from Running, Throttled or Paused: available memory below the reserve,
//!                   memory pressure, battery, paused longer than max_pause, owner pause or stop
//! ```
//!
//! Each sample is classified by the incumbents' load (everything on the machine but the agent
//! and its guests):
//!
//! * **hot**: incumbent CPU above `pause_above`, or CPU pressure above `cpu_pressure_above`, or the
//!   owner touched keyboard or mouse within `owner_active_within` (consoles only);
//! * **quiet**: incumbent CPU below `resume_below` and nothing hot;
//! * **moderate**: neither (busy = moderate or hot).
//!
//! The **dwell**, the quiet time that brings guests back to `Running`, backs off: it is
//! `resume_after_min` after an isolated hot spell, so that a blip of some daemon costs a fraction
//! of a second of harvest, and doubles, up to `resume_after`, each time guests are paused or
//! throttled again less than `resume_after` after they came back, so that a bursty incumbent (a
//! build, a page load) is not interrupted again and again. `resume_after` of running undisturbed
//! brings it back down to `resume_after_min`.
//!
//! A condition "for D" means: every sample in the last D had it (each sample stands for the time
//! since the previous one, so with 20 ms samples, "busy for 40 ms" is two busy samples in a row).
//! "Hot for D" weighs the evidence: each hot sample counts for its time multiplied by how far
//! incumbent CPU is over `pause_above` (CPU pressure and the owner's input count 1:1). With the
//! defaults (30 ms, 30 %) a 20 ms sample at 45 % or more pauses at once, one at 35 % needs a
//! second hot sample: a load of a whole core is acted on at its first well-covered sample, while
//! a marginal reading, which on a small machine may be a clock tick's rounding, has to repeat.
//!
//! * [`State::WaitingForIdle`]: no guests. Starts here, and returns here after every eviction.
//!   Goes to `Running` once the machine has been quiet, with enough memory, off battery (when that
//!   matters), for `start_after_idle`, and on a console the owner has also been away that long.
//!   After the owner's `lull-agent pause` or `stop` it stays here until `lull-agent resume`.
//! * [`State::Running`]: guests get `cpu_cap` of each core. Hot for `pause_after` → `Paused`;
//!   busy for `pause_after` → `Throttled`.
//! * [`State::Throttled`]: guests get a share of each core that follows the incumbents' load (see
//!   [`Action::CpuShare`]). Hot for `pause_after` → `Paused`; quiet for the dwell → `Running`.
//! * [`State::Paused`]: guests are stopped at their next epoch check but kept. Quiet for the
//!   dwell → `Running` (moderate load keeps them paused: that band is the hysteresis).
//!   Paused for longer than `max_pause` → evict.
//! * [`State::Evicting`]: guests have been told to stop within `eviction_grace`. No new work.
//!   Ends when [`Policy::handle_guests`] reports none left, or `eviction_grace` +
//!   `eviction_margin` after it began, whichever comes first. Meanwhile the pause gate still
//!   follows the load (hot → [`Action::Pause`], quiet dwell → [`Action::Resume`]), without a
//!   state change, so the incumbents keep their millisecond reaction during a grace period.
//!
//! Evictions happen from `Running`, `Throttled` and `Paused`, at the first sample that shows
//! available memory below `memory_reserve`, memory pressure above `memory_pressure_above`, the
//! system's own low-memory signal (Windows, macOS), or the machine on battery (with `evict_on_battery`), or at the owner's `pause`/`stop`. When no guest
//! is alive there is nothing to notify: the policy goes straight to `WaitingForIdle`, with one
//! [`Action::StateChanged`] and no [`Action::Evict`].
//!
//! The owner's commands: `pause` and `stop` evict like trouble and hold the policy in
//! `WaitingForIdle` until `resume` (`stop` also makes [`Policy::stopping`] true, and the driver
//! exits once no guest is left); `snooze` is a `pause` that lifts itself after its time, the idle
//! time counting from then; `finish` takes no new work and evicts nothing, and the last guest
//! gone stops the agent as `stop` does. The owner's standing rules ([`crate::rules`]: time
//! windows, exclusive programs) come in through [`Policy::handle_rules`]: while one holds,
//! guests are evicted and none start; once none does, the idle time counts from then.
//!
//! Every change of state emits exactly one [`Action::StateChanged`] with its reason in words,
//! after the action that carries it out (a [`Action::Pause`] comes first, so the driver can act on
//! it before logging).
//!
//! # Driving it
//!
//! Call [`Policy::handle_sample`] for every reading, [`Policy::handle_guests`] whenever the
//! number of guests changes, [`Policy::handle_owner`] for each command, and
//! [`Policy::handle_timeout`] once [`Policy::poll_timeout`] has passed; after each, drain
//! [`Policy::poll_action`]. Only samples pause or throttle: a deadline never does, so a timer
//! cannot race the next sample into a pause that a single spike would not cause. Deadlines
//! complete the quiet dwells, the idle time before a start, `max_pause` and the eviction's grace,
//! taking the latest sample to still hold.
//!
//! # Defaults
//!
//! [`PolicyConfig::default`] suits a desktop; each field documents its default and why.
//!
//! | setting | default | | setting | default |
//! |---|---|---|---|---|
//! | `pause_above` | 0.3 | | `memory_reserve` | 512 MiB |
//! | `pause_after` | 30 ms | | `memory_pressure_above` | 40 % |
//! | `resume_below` | 0.15 | | `evict_on_battery` | true |
//! | `resume_after` | 3 s | | `pause_when_owner_active` | true |
//! | `resume_after_min` | 150 ms | | | |
//! | `start_after_idle` | 60 s | | `owner_active_within` | 10 s |
//! | `cpu_cap` | 1.0 | | `max_pause` | 10 min |
//! | `min_cpu_share` | 0.1 | | `eviction_grace` | 10 s |
//! | `cpu_pressure_above` | 20 % | | `eviction_margin` | 5 s |
//! | `idle_smoothing` | 10 s | | `quiet_smoothing` | 200 ms |
//!
//! Pausing acts on raw samples, so it is fast. Quiet is judged on incumbent CPU averaged over
//! `quiet_smoothing`: one 20 ms sample on a small machine resolves only a clock tick (25 % of a
//! 2-core machine), and a single tick of any process must not restart a wait of seconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lull_protocol::units;
use serde::{Deserialize, Serialize};

/// The share of a core below which a change of the throttled share is not worth sending.
const SHARE_STEP: f64 = 0.05;

/// One reading of the machine, every 20 ms by default: the sampler's [`Load`](crate::sampler::Load).
///
/// Fractions are of the whole machine: on 4 cores, one busy core is 0.25. CPU figures are
/// averages over the time since the previous sample. An `incumbent_cpu` outside 0..=1 is
/// clamped; one that is not a number counts as 1.0. `guest_cpu` is informational: the idle
/// estimate counts it as idle, since guests give it back on demand. System-wide `cpu_pressure`
/// includes the guests' own waiting for CPU; where guests run in a cgroup of their own, pass the
/// incumbents' pressure instead (e.g. `user.slice/cpu.pressure` on a desktop).
pub use crate::sampler::Load as LoadSample;

/// Every threshold of the policy, as the `[policy]` part of `agent.toml` would hold it.
///
/// Fractions are of the whole machine (0.0..=1.0), pressures are percent (0..=100), durations are
/// strings such as `"40ms"`, `"3s"`, `"10m"`, sizes strings such as `"512MiB"` or byte counts.
/// Every field may be left out; [`PolicyConfig::default`] suits a desktop. On a server with a
/// steady base load, raise `resume_below` and `pause_above` above that load, or guests never start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Incumbent CPU above which guests pause. Default 0.3: on a 2-core desktop an incumbent
    /// using 60 % of one core; on 4 cores, more than one busy core.
    pub pause_above: f64,
    /// How long incumbent CPU (or CPU pressure, or the owner) must stay hot before guests pause,
    /// each sample weighted by how far incumbent CPU is over `pause_above` (see the module docs).
    /// Default 30 ms: two samples just over `pause_above`, or one at 1.5 times it. A load of a
    /// whole core on a 2-core machine is then acted on at the first sample that covers it well,
    /// one or two samples after it began, which leaves the sandbox time to stop guests within the 50 ms
    /// reaction goal, while a single marginal sample (on two cores one clock tick is 25 % of a
    /// 20 ms sample) does not pause. Raise it to ride out longer spikes at the cost of a slower reaction (guests yield
    /// cores at once anyway, at idle priority; the pause takes them out of the caches and the
    /// memory bandwidth too).
    #[serde(with = "duration_text")]
    pub pause_after: Duration,
    /// Incumbent CPU below which the machine counts as quiet: guests resume, go back from
    /// throttled to full speed, or start. Default 0.15, half of `pause_above`: the band between
    /// the two is the hysteresis that keeps a load near one threshold from flapping.
    pub resume_below: f64,
    /// The longest the machine must stay quiet before paused or throttled guests get their full
    /// share back: the dwell starts at `resume_after_min` and doubles up to this while pauses keep
    /// coming (see the module docs). Default 3 s: slow to come back to bursty incumbents (a build,
    /// a page load), so they are not interrupted again a moment later. Any sample that is not
    /// quiet restarts the dwell.
    #[serde(with = "duration_text")]
    pub resume_after: Duration,
    /// The dwell after an isolated hot spell: how long the machine must stay quiet before guests
    /// come back when they had not been paused or throttled in the `resume_after` before.
    /// Default 150 ms: a daemon waking up for a few tens of milliseconds every few seconds (there
    /// is always one) then costs a few percent of the harvest instead of most of it. Set it to
    /// `resume_after` for a fixed dwell.
    #[serde(with = "duration_text")]
    pub resume_after_min: Duration,
    /// How long the machine must be quiet (and, on a console, the owner away) before guests
    /// start. Default 60 s, as screen savers and BOINC's "in use" detection count it.
    #[serde(with = "duration_text")]
    pub start_after_idle: Duration,
    /// The share of each core guests may use when running (1.0 = no cap), enforced by the
    /// sandbox's millisecond duty cycle. Default 1.0: guests run on idle-priority threads, which
    /// already yield to incumbents; lower it to keep fans quiet or laptops cool.
    pub cpu_cap: f64,
    /// The least share of each core a throttled guest gets. Default 0.1, so throttled work
    /// still progresses; below that it should rather be paused.
    pub min_cpu_share: f64,
    /// CPU pressure (PSI cpu "some avg10", percent) above which the machine counts as hot.
    /// Default 20 %: tasks waited for a CPU a fifth of the time. 100 turns it off.
    pub cpu_pressure_above: f64,
    /// Memory pressure (PSI memory "some avg10", percent) above which guests are evicted, as for
    /// low memory: pausing a guest does not give its memory back. Default 40 %: the machine
    /// already stalls on memory for much of the time. 100 turns it off.
    pub memory_pressure_above: f64,
    /// Available memory below which guests are evicted and do not start. Default 512 MiB: room
    /// for the owner to open a browser tab or two before the system swaps.
    #[serde(with = "size_text")]
    pub memory_reserve: u64,
    /// Whether guests pause while the owner uses keyboard or mouse (consoles only; servers
    /// report no user idle time and are unaffected). Default true.
    pub pause_when_owner_active: bool,
    /// The owner counts as active for this long after their last input. Default 10 s: typing
    /// pauses come from the same person at the desk, not from a cat on the keyboard.
    #[serde(with = "duration_text")]
    pub owner_active_within: Duration,
    /// Whether running on battery evicts guests (and keeps them from starting). Default true:
    /// the owner's battery is not ours to spend.
    pub evict_on_battery: bool,
    /// Paused longer than this, guests are evicted, so their tasks can run elsewhere rather than
    /// hold leases and memory on a machine that is busy again. Default 10 min.
    #[serde(with = "duration_text")]
    pub max_pause: Duration,
    /// How long evicted guests have to checkpoint and stop before they are stopped. Default 10 s.
    #[serde(with = "duration_text")]
    pub eviction_grace: Duration,
    /// How long after the grace the policy still waits for the guests to be reported gone before
    /// it stops waiting. Default 5 s.
    #[serde(with = "duration_text")]
    pub eviction_margin: Duration,
    /// Time constant of the idle estimate's moving average. Default 10 s: steady enough for the
    /// scheduler, recent enough to follow the owner's day.
    #[serde(with = "duration_text")]
    pub idle_smoothing: Duration,
    /// Time constant of the average of incumbent CPU on which quiet is judged (resuming,
    /// leaving throttled, starting). Default 200 ms, ten samples: a single sample is too coarse
    /// on a small machine (one clock tick is 25 % of a 2-core machine over 20 ms), and one tick
    /// of any process must not restart a wait of seconds. Pausing still acts on raw samples.
    #[serde(with = "duration_text")]
    pub quiet_smoothing: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            pause_above: 0.3,
            pause_after: Duration::from_millis(30),
            resume_below: 0.15,
            resume_after: Duration::from_secs(3),
            resume_after_min: Duration::from_millis(150),
            start_after_idle: Duration::from_secs(60),
            cpu_cap: 1.0,
            min_cpu_share: 0.1,
            cpu_pressure_above: 20.0,
            memory_pressure_above: 40.0,
            memory_reserve: 512 << 20,
            pause_when_owner_active: true,
            owner_active_within: Duration::from_secs(10),
            evict_on_battery: true,
            max_pause: Duration::from_secs(600),
            eviction_grace: Duration::from_secs(10),
            eviction_margin: Duration::from_secs(5),
            idle_smoothing: Duration::from_secs(10),
            quiet_smoothing: Duration::from_millis(200),
        }
    }
}

/// A [`PolicyConfig`] value that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("policy setting {field}: {problem}")]
pub struct InvalidPolicyConfig {
    /// The field's name in `agent.toml`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl PolicyConfig {
    /// Checks that the thresholds are in range and consistent; call it after reading the file.
    pub fn validate(&self) -> Result<(), InvalidPolicyConfig> {
        let bad = |field, problem: String| Err(InvalidPolicyConfig { field, problem });
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        if !fraction(self.pause_above) {
            return bad(
                "pause_above",
                format!("{} is not in 0.0..=1.0", self.pause_above),
            );
        }
        if !fraction(self.resume_below) || self.resume_below > self.pause_above {
            return bad(
                "resume_below",
                format!(
                    "{} is not in 0.0..=pause_above ({})",
                    self.resume_below, self.pause_above
                ),
            );
        }
        if !(self.cpu_cap > 0.0 && self.cpu_cap <= 1.0) {
            return bad("cpu_cap", format!("{} is not in (0.0, 1.0]", self.cpu_cap));
        }
        if !(self.min_cpu_share > 0.0 && self.min_cpu_share <= self.cpu_cap) {
            return bad(
                "min_cpu_share",
                format!(
                    "{} is not in (0.0, cpu_cap ({})]",
                    self.min_cpu_share, self.cpu_cap
                ),
            );
        }
        for (field, value) in [
            ("cpu_pressure_above", self.cpu_pressure_above),
            ("memory_pressure_above", self.memory_pressure_above),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return bad(field, format!("{value} is not a percentage in 0..=100"));
            }
        }
        if self.resume_after_min > self.resume_after {
            return bad(
                "resume_after_min",
                format!(
                    "{} is longer than resume_after ({})",
                    human_duration(self.resume_after_min),
                    human_duration(self.resume_after)
                ),
            );
        }
        if self.pause_after.is_zero() {
            return bad("pause_after", "must be longer than zero".into());
        }
        Ok(())
    }
}

/// The reason a dedicated machine's agent gives while it runs guests.
pub const DEDICATED: &str = "dedicated machine: no scavenging policy";

/// What the policy has decided about the guests: the state the agent reports, as the
/// coordinator reads it.
pub use lull_protocol::message::AgentState as State;

/// What the driver must do; read them with [`Policy::poll_action`], in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop guests at their next epoch check; keep them (their leases hold).
    Pause,
    /// Let paused guests continue.
    Resume,
    /// Guests may use this share of each core (1.0 = no cap); sent whenever it changes.
    ///
    /// Running, it is `cpu_cap` (always sent on entering `Running` from `WaitingForIdle`).
    /// Throttled, it is `cpu_cap × (1 − incumbent CPU)`, rounded to whole percent and clamped to
    /// `min_cpu_share..=cpu_cap`: what the incumbents leave, roughly. It follows every sample,
    /// quiet ones during the dwell back to `Running` included, but is only sent again when the
    /// load moves it by 5 % of a core or more, or to a bound, so jitter does not chatter.
    CpuShare(f64),
    /// Give every running guest notice: it must stop within `grace`, after which it is stopped.
    Evict {
        /// Why, in words (e.g. "available memory 300 MiB < reserve 512 MiB").
        reason: String,
        /// How long guests have to checkpoint and stop.
        grace: Duration,
    },
    /// The state changed (for the log and the coordinator).
    StateChanged {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
        /// Why, in words (e.g. "incumbent CPU 87 % > 30 % for 40 ms").
        reason: String,
    },
}

/// The owner's commands: `lull-agent pause`, `snooze`, `resume`, `finish`, `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerCommand {
    /// Evict guests and take no work until [`OwnerCommand::Resume`].
    Pause,
    /// [`OwnerCommand::Pause`] for this long, then take work again (under the usual idle
    /// rules) by itself; `Resume` ends it sooner.
    Snooze(Duration),
    /// Take no new work, let the running tasks end (or leave after a checkpoint when evicted,
    /// as ever), then stop as [`OwnerCommand::Stop`] does; `Resume` cancels it.
    Finish,
    /// Take work again (under the usual idle rules); also cancels a `Stop` not yet carried out.
    Resume,
    /// Evict guests; the driver exits once they are gone ([`Policy::stopping`]).
    Stop,
}

/// Why a sample is hot (the first that applies).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hot {
    Cpu(f64),
    Pressure(f64),
    Owner(Duration),
}

/// Why guests must give the machine back at once.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trouble {
    Memory(u64),
    MemoryPressure(f64),
    MemoryLow,
    Battery,
}

/// The latest sample and what it means.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    incumbent: f64,
    user_idle: Option<Duration>,
    hot: Option<Hot>,
    /// Incumbent CPU below `resume_below` and nothing hot.
    quiet: bool,
    /// Quiet as far as the CPU goes (the owner aside), with no trouble: counts towards a start.
    ready: bool,
    trouble: Option<Trouble>,
}

/// An eviction under way.
#[derive(Debug, Clone)]
struct Eviction {
    reason: String,
    deadline: Instant,
}

/// The scavenging policy: decides from samples and commands when guests run, pause and leave.
///
/// See the [module documentation](self) for the states and transitions.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    state: State,
    /// When the current state began.
    since: Instant,
    reason: String,
    actions: VecDeque<Action>,
    seen: Option<Seen>,
    /// The time of the latest sample that was not hot (or of `new`).
    last_not_hot: Instant,
    /// The hot spell so far, each sample weighted by incumbent CPU over `pause_above`; zero
    /// after a sample that is not hot. Guests pause once it reaches `pause_after`.
    hot_evidence: Duration,
    /// The time of the latest sample that was quiet (or of `new`).
    last_quiet: Instant,
    /// The time of the latest sample that was not quiet (or of `new`).
    last_not_quiet: Instant,
    /// The time of the latest sample that was not ready to start (or of the latest reset).
    last_not_ready: Instant,
    eviction: Option<Eviction>,
    guests: usize,
    /// Whether the last gate command sent was [`Action::Pause`].
    gate_paused: bool,
    /// The last [`Action::CpuShare`] sent; `None` after an eviction.
    share: Option<f64>,
    /// The owner paused or stopped the agent and has not resumed it.
    owner_held: bool,
    stopping: bool,
    /// When the owner's snooze ends (the hold is lifted by itself).
    snoozed_until: Option<Instant>,
    /// The owner asked to finish: no new work, and a stop once no guest is left.
    finishing: bool,
    /// Why the owner's standing rules keep guests away now, if they do.
    ruled_out: Option<String>,
    idle: Option<f64>,
    /// Incumbent CPU averaged over `quiet_smoothing`.
    settled: Option<f64>,
    /// The current dwell: quiet for this long brings guests back to `Running`.
    dwell: Duration,
    /// When guests last came back to `Running` from `Paused` or `Throttled`.
    back_at: Option<Instant>,
    /// A dedicated machine's policy ([`Policy::dedicated`]).
    dedicated: bool,
}

impl Policy {
    /// A policy for a dedicated machine: it starts `Running` and takes every sample for one of
    /// an idle machine, so only the owner's commands move it: `lull-agent pause` and `stop`
    /// evict the guests as anywhere else, and `resume` lets them back at once.
    pub fn dedicated(config: PolicyConfig, now: Instant) -> Self {
        let mut policy = Self::new(
            PolicyConfig {
                start_after_idle: Duration::ZERO,
                ..config
            },
            now,
        );
        policy.state = State::Running;
        policy.reason = DEDICATED.to_owned();
        policy.dedicated = true;
        policy
    }

    /// A policy in [`State::WaitingForIdle`]; the idle time counts from `now`.
    pub fn new(config: PolicyConfig, now: Instant) -> Self {
        let dwell = config_dwell_min(&config);
        let reason = format!(
            "started; waiting for {} of idle",
            human_duration(config.start_after_idle)
        );
        Self {
            config,
            state: State::WaitingForIdle,
            since: now,
            reason,
            actions: VecDeque::new(),
            seen: None,
            last_not_hot: now,
            hot_evidence: Duration::ZERO,
            last_quiet: now,
            last_not_quiet: now,
            last_not_ready: now,
            eviction: None,
            guests: 0,
            gate_paused: false,
            share: None,
            owner_held: false,
            stopping: false,
            snoozed_until: None,
            finishing: false,
            ruled_out: None,
            idle: None,
            settled: None,
            dwell,
            back_at: None,
            dedicated: false,
        }
    }

    /// Takes in one reading of the machine, taken at `now`.
    pub fn handle_sample(&mut self, now: Instant, sample: &LoadSample) {
        // A dedicated machine is an idle one as far as its policy knows: the machine as it is,
        // with no incumbent, memory to spare, on mains, no one at the console.
        let idle;
        let sample = if self.dedicated {
            idle = LoadSample {
                incumbent_cpu: 0.0,
                memory_available: u64::MAX,
                cpu_pressure: None,
                memory_pressure: None,
                memory_low: false,
                user_idle: None,
                on_battery: false,
                ..*sample
            };
            &idle
        } else {
            sample
        };
        let c = &self.config;
        let incumbent = if sample.incumbent_cpu.is_nan() {
            1.0
        } else {
            sample.incumbent_cpu.clamp(0.0, 1.0)
        };
        let cpu_pressure = sample.cpu_pressure.filter(|p| *p > c.cpu_pressure_above);
        let owner_active = sample
            .user_idle
            .filter(|idle| c.pause_when_owner_active && *idle < c.owner_active_within);
        let hot = if incumbent > c.pause_above {
            Some(Hot::Cpu(incumbent))
        } else if let Some(p) = cpu_pressure {
            Some(Hot::Pressure(p))
        } else {
            owner_active.map(Hot::Owner)
        };
        let ewma = |old: Option<f64>, value: f64, tau: Duration| match (old, &self.seen) {
            (Some(old), Some(prev)) => {
                let dt = now.saturating_duration_since(prev.at).as_secs_f64();
                let tau = tau.as_secs_f64();
                let alpha = if tau > 0.0 {
                    1.0 - (-dt / tau).exp()
                } else {
                    1.0
                };
                old + alpha * (value - old)
            }
            _ => value,
        };
        let settled = ewma(self.settled, incumbent, c.quiet_smoothing);
        let cpu_quiet = settled < c.resume_below && cpu_pressure.is_none();
        let trouble = if sample.memory_available < c.memory_reserve {
            Some(Trouble::Memory(sample.memory_available))
        } else if let Some(p) = sample
            .memory_pressure
            .filter(|p| *p > c.memory_pressure_above)
        {
            Some(Trouble::MemoryPressure(p))
        } else if sample.memory_low {
            Some(Trouble::MemoryLow)
        } else if sample.on_battery && c.evict_on_battery {
            Some(Trouble::Battery)
        } else {
            None
        };
        let seen = Seen {
            at: now,
            incumbent,
            user_idle: sample.user_idle,
            hot,
            quiet: cpu_quiet && hot.is_none(),
            ready: cpu_quiet && trouble.is_none(),
            trouble,
        };

        // The evidence of a hot spell: each hot sample counts for the time it stands for, scaled
        // by how far incumbent CPU is over `pause_above`.
        let step = self.seen.as_ref().map_or(Duration::ZERO, |prev| {
            now.saturating_duration_since(prev.at)
        });
        self.hot_evidence = match hot {
            None => Duration::ZERO,
            Some(Hot::Cpu(x)) if c.pause_above > 0.0 => {
                self.hot_evidence + step.mul_f64((x / c.pause_above).min(100.0))
            }
            Some(_) => self.hot_evidence + step,
        };

        self.idle = Some(ewma(self.idle, 1.0 - incumbent, c.idle_smoothing));
        self.settled = Some(settled);

        if seen.hot.is_none() {
            self.last_not_hot = now;
        }
        if seen.quiet {
            self.last_quiet = now;
        } else {
            self.last_not_quiet = now;
        }
        if !seen.ready {
            self.last_not_ready = now;
        }
        self.seen = Some(seen);
        self.evaluate(now, true);
    }

    /// Takes in one of the owner's commands.
    pub fn handle_owner(&mut self, now: Instant, cmd: OwnerCommand) {
        let why = match cmd {
            OwnerCommand::Pause => {
                self.snoozed_until = None;
                "the owner ran lull-agent pause".to_owned()
            }
            OwnerCommand::Snooze(d) => {
                self.snoozed_until = Some(now + d);
                format!("the owner snoozed the agent for {}", human_duration(d))
            }
            OwnerCommand::Stop => "the owner ran lull-agent stop".to_owned(),
            OwnerCommand::Resume => {
                self.release(now, "the owner ran lull-agent resume");
                return;
            }
            OwnerCommand::Finish => {
                self.finishing = true;
                if self.guests == 0 {
                    self.stopping = true;
                    match self.state {
                        State::WaitingForIdle => {
                            self.reason = self.held_reason("the owner ran lull-agent finish")
                        }
                        State::Evicting => {}
                        _ => self.wait_for_idle(
                            now,
                            "the owner ran lull-agent finish, with no task running".to_owned(),
                        ),
                    }
                } else {
                    self.reason = format!(
                        "the owner ran lull-agent finish: no new work; stopping when the {} running task(s) end",
                        self.guests
                    );
                }
                return;
            }
        };
        let why = why.as_str();
        self.owner_held = true;
        if cmd == OwnerCommand::Stop {
            self.stopping = true;
        }
        match self.state {
            State::Running | State::Throttled | State::Paused => self.evict(now, why.to_owned()),
            State::WaitingForIdle => self.reason = self.held_reason(why),
            // The eviction under way goes on and ends in the owner's hold.
            State::Evicting => {}
        }
    }

    /// Takes in how many guests are running or paused now; call it whenever the number changes.
    /// Eviction only matters when it is above zero; when an eviction's guests are all gone,
    /// `Evicting` ends. When the owner asked to finish, the last guest gone stops the agent.
    pub fn handle_guests(&mut self, now: Instant, guests: usize) {
        self.guests = guests;
        if guests == 0 && self.finishing && !self.stopping {
            self.stopping = true;
            if matches!(
                self.state,
                State::Running | State::Throttled | State::Paused
            ) {
                self.wait_for_idle(
                    now,
                    "the owner ran lull-agent finish and the last task ended".to_owned(),
                );
                return;
            }
        }
        if guests == 0 && self.state == State::Evicting {
            self.end_eviction(now, "all guests gone".to_owned());
        }
    }

    /// Takes in what the owner's standing rules ([`crate::rules`]) say now: `Some(why)` while
    /// guests may not run (outside the time windows, an exclusive program running), `None`
    /// when nothing stands in the way. Guests that run are evicted, and none start, while a
    /// rule holds; once none does, the usual idle time counts from then.
    pub fn handle_rules(&mut self, now: Instant, hold: Option<String>) {
        if hold == self.ruled_out {
            return;
        }
        match hold {
            Some(why) => {
                self.ruled_out = Some(why.clone());
                match self.state {
                    State::Running | State::Throttled | State::Paused => self.evict(now, why),
                    State::WaitingForIdle if !self.owner_held && !self.stopping => {
                        self.reason = format!("{why}; waiting while it holds");
                    }
                    _ => {}
                }
            }
            None => {
                let why = self.ruled_out.take().unwrap_or_default();
                if self.state == State::WaitingForIdle && !self.owner_held && !self.stopping {
                    self.last_not_ready = now;
                    self.reason = format!(
                        "no longer {why}; waiting for {} of idle",
                        human_duration(self.config.start_after_idle)
                    );
                }
            }
        }
    }

    /// Lifts the owner's hold (pause, snooze, stop or finish not yet carried out) for `why`.
    fn release(&mut self, now: Instant, why: &str) {
        let held = self.owner_held || self.stopping || self.finishing;
        self.owner_held = false;
        self.stopping = false;
        self.finishing = false;
        self.snoozed_until = None;
        if held && self.state == State::WaitingForIdle {
            self.last_not_ready = now;
            self.reason = format!(
                "{why}; waiting for {} of idle",
                human_duration(self.config.start_after_idle)
            );
        } else if held {
            self.reason = format!("{why}; taking work again");
        }
    }

    /// Lets dwells, the pause limit and the eviction's grace complete at `now` without a new
    /// sample; the latest sample is taken to still hold. Call it at [`Policy::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.evaluate(now, false);
    }

    /// Ends a snooze whose time is up.
    fn end_snooze(&mut self, now: Instant) {
        if self.snoozed_until.is_some_and(|t| now >= t) {
            self.release(now, "the owner's snooze ended");
        }
    }

    /// The next action for the driver, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant at which a dwell, the pause limit or an eviction's grace completes if no
    /// sample says otherwise; `None` when only a sample can change anything.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.state_timeout();
        match (due, self.snoozed_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state_timeout(&self) -> Option<Instant> {
        let quiet_done = self
            .seen
            .as_ref()
            .filter(|s| s.quiet)
            .map(|_| self.last_not_quiet + self.dwell);
        match self.state {
            State::WaitingForIdle => self.start_deadline(),
            State::Running => None,
            State::Throttled => quiet_done,
            State::Paused => Some(match quiet_done {
                Some(t) => t.min(self.since + self.config.max_pause),
                None => self.since + self.config.max_pause,
            }),
            State::Evicting => {
                let end = self.eviction.as_ref().map(|e| e.deadline);
                match (end, quiet_done.filter(|_| self.gate_paused)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether new tasks may start now (`Running` or `Throttled`, and not stopped by the owner).
    pub fn accepting(&self) -> bool {
        matches!(self.state, State::Running | State::Throttled)
            && !self.owner_held
            && !self.stopping
            && !self.finishing
            && self.ruled_out.is_none()
    }

    /// Smoothed estimate (EWMA over `idle_smoothing`) of the machine's idle CPU fraction
    /// (1 − incumbent CPU; the guests' own use counts as idle), for the capacity report.
    /// 0.0 before the first sample.
    pub fn idle_estimate(&self) -> f64 {
        self.idle.unwrap_or(0.0)
    }

    /// The reason for the current state, in words, e.g. "incumbent CPU 87 % > 30 % for 40 ms".
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// While waiting for idle, what stands in the way now, in words: "incumbent CPU 87 % >= 15 %",
    /// "on battery", "owner active 3 s ago", or how much of the idle time has passed
    /// ("idle for 12 s of 60 s"). The state's [`reason`](Policy::reason) says why it was
    /// entered; this follows the samples. `None` in other states, or while the owner holds the
    /// agent.
    pub fn waiting_detail(&self, now: Instant) -> Option<String> {
        if self.state != State::WaitingForIdle
            || self.owner_held
            || self.stopping
            || self.ruled_out.is_some()
        {
            return None;
        }
        let seen = self.seen.as_ref()?;
        let c = &self.config;
        if let Some(trouble) = seen.trouble {
            return Some(self.describe_trouble(trouble));
        }
        if !seen.ready {
            let settled = self.settled.unwrap_or(seen.incumbent);
            return Some(if settled >= c.resume_below {
                format!(
                    "incumbent CPU {} >= {}",
                    percent(settled),
                    percent(c.resume_below)
                )
            } else {
                "CPU pressure".to_owned()
            });
        }
        let idle = now.saturating_duration_since(self.last_not_ready);
        if let Some(owner) = self.owner_idle(seen, now)
            && owner < c.start_after_idle
            && idle >= c.start_after_idle
        {
            return Some(format!("owner active {} ago", human_duration(owner)));
        }
        Some(format!(
            "idle for {} of {}",
            human_duration(idle.min(c.start_after_idle)),
            human_duration(c.start_after_idle)
        ))
    }

    /// Whether the owner asked the agent to stop (the driver exits once guests are gone).
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The policy's settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    // ---- decisions ----

    /// Applies every rule that the latest sample (`fresh`) or the passing of time allows.
    fn evaluate(&mut self, now: Instant, fresh: bool) {
        self.end_snooze(now);
        let Some(seen) = self.seen.clone() else {
            return;
        };
        let c = &self.config;
        match self.state {
            State::WaitingForIdle => {
                if self.start_deadline().is_some_and(|t| now >= t) {
                    if self.dedicated {
                        self.run(now, DEDICATED.to_owned());
                        return;
                    }
                    let mut reason = format!(
                        "idle for {}: incumbent CPU {} < {}",
                        human_duration(c.start_after_idle),
                        percent(seen.incumbent),
                        percent(c.resume_below)
                    );
                    if let Some(idle) = self.owner_idle(&seen, now) {
                        reason += &format!(", owner away {}", human_duration(idle));
                    }
                    self.run(now, reason);
                }
            }
            State::Running | State::Throttled | State::Paused => {
                if let Some(trouble) = seen.trouble {
                    let reason = self.describe_trouble(trouble);
                    self.evict(now, reason);
                } else if self.state == State::Paused && now >= self.since + c.max_pause {
                    let reason = format!(
                        "paused for {}, the most allowed (max_pause)",
                        human_duration(now - self.since)
                    );
                    self.evict(now, reason);
                } else if fresh
                    && self.state != State::Paused
                    && let Some(hot) = seen.hot
                    && self.hot_evidence >= c.pause_after
                {
                    let reason = self.describe_hot(hot, now - self.last_not_hot);
                    self.set_gate(true);
                    self.transition(now, State::Paused, reason);
                } else if fresh
                    && self.state == State::Running
                    && !seen.quiet
                    && now - self.last_quiet >= c.pause_after
                {
                    let share = self.target_share(seen.incumbent);
                    let reason = format!(
                        "incumbent CPU {} >= {} for {}: guests get {} of each core",
                        percent(seen.incumbent),
                        percent(c.resume_below),
                        human_duration(now - self.last_quiet),
                        percent(share)
                    );
                    self.set_share(share);
                    self.transition(now, State::Throttled, reason);
                } else if self.state != State::Running && self.quiet_done(now) {
                    let reason = format!(
                        "incumbent CPU below {} for {}",
                        percent(c.resume_below),
                        human_duration(now - self.last_not_quiet)
                    );
                    self.run(now, reason);
                } else if fresh && self.state == State::Throttled {
                    let target = self.target_share(seen.incumbent);
                    let current = self.share.unwrap_or(c.cpu_cap);
                    let at_bound = target == c.cpu_cap || target == c.min_cpu_share.min(c.cpu_cap);
                    if target != current && ((target - current).abs() >= SHARE_STEP || at_bound) {
                        self.set_share(target);
                    }
                }
            }
            State::Evicting => {
                if let Some(e) = &self.eviction
                    && now >= e.deadline
                {
                    let why = format!(
                        "grace of {} and margin of {} over with {} guest(s) still reported",
                        human_duration(c.eviction_grace),
                        human_duration(c.eviction_margin),
                        self.guests
                    );
                    self.end_eviction(now, why);
                } else if fresh
                    && !self.gate_paused
                    && seen.hot.is_some()
                    && self.hot_evidence >= c.pause_after
                {
                    self.set_gate(true);
                } else if self.gate_paused && self.quiet_done(now) {
                    self.set_gate(false);
                }
            }
        }
    }

    /// Whether the machine has been quiet for the dwell up to `now`.
    fn quiet_done(&self, now: Instant) -> bool {
        self.seen.as_ref().is_some_and(|s| s.quiet) && now >= self.last_not_quiet + self.dwell
    }

    /// The dwell that brings guests back to `Running` now: quiet for this long.
    pub fn dwell(&self) -> Duration {
        self.dwell
    }

    /// When guests may start if samples stay as the latest; `None` while they may not.
    fn start_deadline(&self) -> Option<Instant> {
        let seen = self.seen.as_ref()?;
        if !seen.ready || self.owner_held || self.stopping || self.ruled_out.is_some() {
            return None;
        }
        let c = &self.config;
        let idle_done = self.last_not_ready + c.start_after_idle;
        match seen.user_idle {
            Some(idle) if c.pause_when_owner_active => {
                Some(idle_done.max(seen.at + c.start_after_idle.saturating_sub(idle)))
            }
            _ => Some(idle_done),
        }
    }

    /// The owner's idle time at `now`, on a console where it matters.
    fn owner_idle(&self, seen: &Seen, now: Instant) -> Option<Duration> {
        let idle = seen
            .user_idle
            .filter(|_| self.config.pause_when_owner_active)?;
        Some(idle + now.saturating_duration_since(seen.at))
    }

    fn target_share(&self, incumbent: f64) -> f64 {
        let c = &self.config;
        let raw = (c.cpu_cap * (1.0 - incumbent) * 100.0).round() / 100.0;
        raw.clamp(c.min_cpu_share.min(c.cpu_cap), c.cpu_cap)
    }

    // ---- carrying them out ----

    /// Enters `Running`: opens the gate, restores the full share.
    fn run(&mut self, now: Instant, reason: String) {
        self.set_gate(false);
        self.set_share(self.config.cpu_cap);
        self.transition(now, State::Running, reason);
    }

    /// Starts an eviction, or, with no guest to notify, goes straight to `WaitingForIdle`.
    fn evict(&mut self, now: Instant, reason: String) {
        if self.guests == 0 {
            let reason = format!("{reason} (no guests to evict)");
            self.wait_for_idle(now, reason);
            return;
        }
        let grace = self.config.eviction_grace;
        self.actions.push_back(Action::Evict {
            reason: reason.clone(),
            grace,
        });
        self.eviction = Some(Eviction {
            reason: reason.clone(),
            deadline: now + grace + self.config.eviction_margin,
        });
        self.transition(now, State::Evicting, reason);
    }

    fn end_eviction(&mut self, now: Instant, why: String) {
        let cause = self
            .eviction
            .take()
            .map(|e| e.reason)
            .unwrap_or_else(|| "eviction".to_owned());
        self.wait_for_idle(now, format!("evicted ({cause}): {why}"));
    }

    /// Enters `WaitingForIdle`; the idle time counts again from `now`.
    fn wait_for_idle(&mut self, now: Instant, reason: String) {
        self.eviction = None;
        self.share = None;
        self.last_not_ready = now;
        let reason = if self.owner_held || self.stopping {
            self.held_reason(&reason)
        } else if self.ruled_out.is_some() {
            format!("{reason}; waiting while it holds")
        } else {
            format!(
                "{reason}; waiting for {} of idle",
                human_duration(self.config.start_after_idle)
            )
        };
        self.transition(now, State::WaitingForIdle, reason);
    }

    fn held_reason(&self, why: &str) -> String {
        if self.stopping {
            format!("{why}; stopping")
        } else if self.snoozed_until.is_some() {
            format!("{why}; held until then, or until lull-agent resume")
        } else {
            format!("{why}; held until lull-agent resume")
        }
    }

    fn set_gate(&mut self, paused: bool) {
        if self.gate_paused != paused {
            self.gate_paused = paused;
            self.actions.push_back(if paused {
                Action::Pause
            } else {
                Action::Resume
            });
        }
    }

    fn set_share(&mut self, share: f64) {
        if self.share != Some(share) {
            self.share = Some(share);
            self.actions.push_back(Action::CpuShare(share));
        }
    }

    fn transition(&mut self, now: Instant, to: State, reason: String) {
        let from = self.state;
        let c = &self.config;
        match (from, to) {
            (State::Running, State::Paused | State::Throttled) => {
                // Back off while pauses keep coming; start afresh after a calm spell.
                self.dwell = match self.back_at {
                    Some(back) if now.saturating_duration_since(back) < c.resume_after => {
                        (self.dwell * 2).clamp(config_dwell_min(c), c.resume_after)
                    }
                    _ => config_dwell_min(c),
                };
            }
            (State::Paused | State::Throttled, State::Running) => self.back_at = Some(now),
            (_, State::WaitingForIdle) => {
                self.back_at = None;
                self.dwell = config_dwell_min(c);
            }
            _ => {}
        }
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        self.actions
            .push_back(Action::StateChanged { from, to, reason });
    }

    fn describe_hot(&self, hot: Hot, held: Duration) -> String {
        let c = &self.config;
        match hot {
            Hot::Cpu(x) => format!(
                "incumbent CPU {} > {} for {}",
                percent(x),
                percent(c.pause_above),
                human_duration(held)
            ),
            Hot::Pressure(p) => format!(
                "CPU pressure {p:.0} % > {:.0} % for {}",
                c.cpu_pressure_above,
                human_duration(held)
            ),
            Hot::Owner(idle) => format!(
                "owner active {} ago (< {})",
                human_duration(idle),
                human_duration(c.owner_active_within)
            ),
        }
    }

    fn describe_trouble(&self, trouble: Trouble) -> String {
        let c = &self.config;
        match trouble {
            Trouble::Memory(bytes) => format!(
                "available memory {} < reserve {}",
                units::format_size(bytes),
                units::format_size(c.memory_reserve)
            ),
            Trouble::MemoryPressure(p) => format!(
                "memory pressure {p:.0} % > {:.0} %",
                c.memory_pressure_above
            ),
            Trouble::MemoryLow => "the system reports low memory".to_owned(),
            Trouble::Battery => "on battery".to_owned(),
        }
    }
}

/// A fraction as whole percent, e.g. "87 %".
fn percent(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// The shortest dwell `config` allows (`resume_after_min`, never above `resume_after`).
fn config_dwell_min(config: &PolicyConfig) -> Duration {
    config.resume_after_min.min(config.resume_after)
}

/// A duration for people: "40 ms", "3 s", "1.5 s", "10 min", "2 h".
fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        if ms.is_multiple_of(1000) {
            format!("{} s", ms / 1000)
        } else {
            format!("{:.1} s", d.as_secs_f64())
        }
    } else if ms < 7_200_000 {
        if ms.is_multiple_of(60_000) {
            format!("{} min", ms / 60_000)
        } else {
            format!("{:.1} min", d.as_secs_f64() / 60.0)
        }
    } else {
        format!("{:.1} h", d.as_secs_f64() / 3600.0)
    }
}

/// Durations in `agent.toml` as text: `"40ms"`, `"3s"`, `"10m"`, `"1h30m"`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let text = if !d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}s", d.as_secs_f64())
        } else {
            let ms = d.as_millis();
            if ms == 0 {
                "0s".to_owned()
            } else if ms.is_multiple_of(3_600_000) {
                format!("{}h", ms / 3_600_000)
            } else if ms.is_multiple_of(60_000) {
                format!("{}m", ms / 60_000)
            } else if ms.is_multiple_of(1000) {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        };
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        lull_protocol::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Sizes in `agent.toml`: `"512MiB"`, `"1GiB"` or a byte count.
mod size_text {
    use std::fmt;

    use lull_protocol::units;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = units::format_size(*bytes).replace(' ', "");
        if units::parse_size(&text) == Ok(*bytes) {
            s.serialize_str(&text)
        } else {
            s.serialize_u64(*bytes)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct Size;
        impl Visitor<'_> for Size {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MiB\" or a byte count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a size")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                units::parse_size(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults, with quiet judged on raw samples, so tests can time transitions exactly.
    /// The defaults without smoothing and with a fixed 3 s dwell, so that each sample and each
    /// dwell is exactly what a test feeds.
    fn raw() -> PolicyConfig {
        PolicyConfig {
            quiet_smoothing: Duration::ZERO,
            resume_after_min: PolicyConfig::default().resume_after,
            ..PolicyConfig::default()
        }
    }

    /// The driver's sampling period.
    const STEP: Duration = Duration::from_millis(20);
    const GIB: u64 = 1 << 30;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A server at rest: 2 % incumbent CPU, 8 GiB available, no PSI, no console, on mains.
    fn quiet() -> LoadSample {
        load(0.02)
    }

    fn load(incumbent_cpu: f64) -> LoadSample {
        LoadSample {
            incumbent_cpu,
            guest_cpu: 0.0,
            memory_available: 8 * GIB,
            cpu_pressure: None,
            memory_pressure: None,
            memory_low: false,
            user_idle: None,
            on_battery: false,
        }
    }

    /// Owns time, feeds the policy samples every 20 ms and fires its deadlines, as the driver does;
    /// keeps every action with the time it appeared and checks that each state change is announced
    /// exactly once.
    struct Sim {
        policy: Policy,
        start: Instant,
        now: Instant,
        log: Vec<(Duration, Action)>,
        /// The state as told by `StateChanged` actions.
        told: State,
    }

    impl Sim {
        fn new(config: PolicyConfig) -> Self {
            let start = Instant::now();
            Self {
                policy: Policy::new(config, start),
                start,
                now: start,
                log: Vec::new(),
                told: State::WaitingForIdle,
            }
        }

        /// A simulator already in `Running`, with `guests` guests and an empty log.
        fn running(config: PolicyConfig, guests: usize) -> Self {
            let idle = config.start_after_idle;
            let mut sim = Self::new(config);
            sim.feed(quiet(), idle);
            assert_eq!(sim.policy.state(), State::Running);
            sim.guests(guests);
            sim.log.clear();
            sim
        }

        /// A simulator in `Paused`, with one guest; the last hot sample was at `sim.at()`.
        fn paused(config: PolicyConfig) -> Self {
            let mut sim = Self::running(config, 1);
            sim.feed(load(0.9), STEP);
            assert_eq!(sim.policy.state(), State::Paused);
            sim.log.clear();
            sim
        }

        /// Time since the simulation began.
        fn at(&self) -> Duration {
            self.now - self.start
        }

        /// Feeds the same sample every 20 ms for `how_long`.
        fn feed(&mut self, sample: LoadSample, how_long: Duration) {
            self.feed_with(how_long, |_| sample);
        }

        /// Feeds `sample(time since the simulation began)` every 20 ms for `how_long`, firing
        /// deadlines that fall before each sample first.
        fn feed_with(
            &mut self,
            how_long: Duration,
            mut sample: impl FnMut(Duration) -> LoadSample,
        ) {
            let end = self.now + how_long;
            while self.now + STEP <= end {
                let next = self.now + STEP;
                self.fire_timeouts(next);
                self.now = next;
                let s = sample(self.at());
                self.policy.handle_sample(self.now, &s);
                self.drain();
            }
        }

        /// Lets `how_long` pass without samples, firing deadlines as they come.
        fn wait(&mut self, how_long: Duration) {
            let end = self.now + how_long;
            self.fire_timeouts(end);
            self.now = end;
        }

        fn fire_timeouts(&mut self, until: Instant) {
            for _ in 0..1000 {
                match self.policy.poll_timeout() {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        self.policy.handle_timeout(self.now);
                        self.drain();
                    }
                    _ => return,
                }
            }
            panic!("poll_timeout keeps returning past deadlines");
        }

        fn guests(&mut self, n: usize) {
            self.policy.handle_guests(self.now, n);
            self.drain();
        }

        fn owner(&mut self, cmd: OwnerCommand) {
            self.policy.handle_owner(self.now, cmd);
            self.drain();
        }

        fn rules(&mut self, hold: Option<&str>) {
            self.policy.handle_rules(self.now, hold.map(str::to_owned));
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(action) = self.policy.poll_action() {
                if let Action::StateChanged { from, to, reason } = &action {
                    assert_eq!(
                        *from, self.told,
                        "StateChanged from the wrong state: {reason}"
                    );
                    assert_ne!(from, to, "StateChanged without a change: {reason}");
                    assert!(!reason.is_empty());
                    self.told = *to;
                }
                self.log.push((self.at(), action));
            }
            assert_eq!(
                self.told,
                self.policy.state(),
                "a state change was not announced"
            );
        }

        /// The actions since the log was last taken.
        fn take(&mut self) -> Vec<Action> {
            self.log.drain(..).map(|(_, a)| a).collect()
        }

        /// The state changes in the log, as (from, to).
        fn transitions(&self) -> Vec<(State, State)> {
            self.log
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::StateChanged { from, to, .. } => Some((*from, *to)),
                    _ => None,
                })
                .collect()
        }

        /// When the first action matching `f` appeared.
        fn when(&self, f: impl Fn(&Action) -> bool) -> Option<Duration> {
            self.log.iter().find(|(_, a)| f(a)).map(|(t, _)| *t)
        }

        /// When guests were first let run again (a change to `Running`), since the start.
        fn started_running(&self) -> Option<Duration> {
            self.when(|a| {
                matches!(
                    a,
                    Action::StateChanged {
                        to: State::Running,
                        ..
                    }
                )
            })
        }

        fn reasons(&self) -> Vec<String> {
            self.log
                .iter()
                .filter_map(|(_, a)| match a {
                    Action::StateChanged { reason, .. } => Some(reason.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    fn changed(from: State, to: State, reason: &str) -> Action {
        Action::StateChanged {
            from,
            to,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn waiting_for_idle_says_what_stands_in_the_way_now() {
        let mut sim = Sim::new(raw());
        sim.feed(load(0.87), secs(1));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.waiting_detail(sim.now).as_deref(),
            Some("incumbent CPU 87 % >= 15 %")
        );
        sim.feed(quiet(), secs(12));
        assert_eq!(
            sim.policy.waiting_detail(sim.now).as_deref(),
            Some("idle for 12 s of 60 s")
        );
        sim.feed(
            LoadSample {
                on_battery: true,
                ..quiet()
            },
            STEP,
        );
        assert_eq!(
            sim.policy.waiting_detail(sim.now).as_deref(),
            Some("on battery")
        );
        // Running: nothing to add to the state's reason.
        sim.feed(quiet(), secs(61));
        assert_eq!(sim.policy.state(), State::Running);
        assert_eq!(sim.policy.waiting_detail(sim.now), None);
    }

    #[test]
    fn pauses_at_the_first_hot_sample() {
        let mut sim = Sim::running(raw(), 1);
        let began = sim.at();
        sim.feed(load(0.87), ms(200));
        let paused = sim.when(|a| *a == Action::Pause).expect("paused");
        assert!(paused - began <= STEP, "took {:?}", paused - began);
        assert_eq!(
            sim.take(),
            vec![
                Action::Pause,
                changed(
                    State::Running,
                    State::Paused,
                    "incumbent CPU 87 % > 30 % for 20 ms"
                ),
            ]
        );
        assert_eq!(sim.policy.reason(), "incumbent CPU 87 % > 30 % for 20 ms");
        assert!(!sim.policy.accepting());
    }

    #[test]
    fn spikes_shorter_than_pause_after_do_not_pause() {
        // A spike of 10 ms on one core of two reads 25 % over its 20 ms sample: below pause_above,
        // and too short to move the smoothed load on which quiet is judged out of quiet.
        let mut sim = Sim::running(PolicyConfig::default(), 1);
        sim.feed(load(0.25), STEP);
        sim.feed(quiet(), secs(5));
        assert_eq!(sim.take(), vec![]);
        assert_eq!(sim.policy.state(), State::Running);
        assert!(sim.policy.accepting());

        // A marginal sample just over pause_above is not enough on its own...
        let mut sim = Sim::running(raw(), 1);
        sim.feed(load(0.35), STEP);
        sim.feed(quiet(), secs(5));
        assert_eq!(sim.take(), vec![]);
        assert_eq!(sim.policy.state(), State::Running);
        // ... two in a row are.
        sim.feed(load(0.35), 2 * STEP);
        assert_eq!(sim.policy.state(), State::Paused);
        assert_eq!(sim.policy.reason(), "incumbent CPU 35 % > 30 % for 40 ms");
    }

    #[test]
    fn alternating_spikes_do_not_flap() {
        // 20 ms on, 40 ms off, for 10 s: the first spike pauses, and the quiet gaps never last
        // the 3 s dwell, so the guests stay paused rather than flap.
        let mut sim = Sim::running(raw(), 1);
        for _ in 0..(10_000 / 60) {
            sim.feed(load(0.9), ms(20));
            sim.feed(quiet(), ms(40));
        }
        assert_eq!(sim.transitions(), vec![(State::Running, State::Paused)]);

        // Marginal spikes, never two in a row, never pause at all.
        let mut sim = Sim::running(raw(), 1);
        for _ in 0..(10_000 / 60) {
            sim.feed(load(0.4), ms(20));
            sim.feed(quiet(), ms(40));
        }
        assert_eq!(sim.transitions(), vec![]);

        // Sustained bursts (40 ms on, 40 ms off) pause once and stay paused: the quiet gaps never
        // last the 3 s dwell.
        let mut sim = Sim::running(raw(), 1);
        for _ in 0..(10_000 / 80) {
            sim.feed(load(0.9), ms(40));
            sim.feed(quiet(), ms(40));
        }
        assert_eq!(sim.transitions(), vec![(State::Running, State::Paused)]);

        // Load hovering around resume_below throttles once, not at every crossing.
        let mut sim = Sim::running(raw(), 1);
        for _ in 0..(10_000 / 80) {
            sim.feed(load(0.17), ms(40));
            sim.feed(load(0.13), ms(40));
        }
        assert_eq!(sim.transitions(), vec![(State::Running, State::Throttled)]);
    }

    #[test]
    fn resumes_only_after_the_quiet_dwell() {
        let mut sim = Sim::paused(raw());
        let last_hot = sim.at();
        // Moderate load is not quiet: the dwell does not start.
        sim.feed(load(0.2), secs(5));
        assert_eq!(sim.take(), vec![]);
        let quiet_from = sim.at();
        sim.feed(quiet(), secs(3) - STEP);
        assert_eq!(sim.take(), vec![]);
        assert_eq!(sim.policy.state(), State::Paused);
        sim.feed(quiet(), STEP);
        assert_eq!(sim.at() - quiet_from, secs(3));
        assert_eq!(
            sim.take(),
            vec![
                Action::Resume,
                changed(
                    State::Paused,
                    State::Running,
                    "incumbent CPU below 15 % for 3 s"
                ),
            ]
        );
        assert!(sim.at() - last_hot > secs(3));
        assert!(sim.policy.accepting());
    }

    #[test]
    fn single_clock_ticks_of_noise_do_not_hold_guests_back() {
        // On a 2-core machine one 20 ms sample resolves a clock tick: 25 %. An idle machine shows
        // such a sample now and then; with the default smoothing they must not restart waits.
        let noisy = |at: Duration| {
            if (at.as_millis() / 20).is_multiple_of(25) {
                load(0.25)
            } else {
                quiet()
            }
        };
        let mut sim = Sim::paused(PolicyConfig::default());
        sim.feed_with(secs(5), noisy);
        let actions = sim.take();
        assert!(
            actions.contains(&Action::Resume),
            "a paused guest resumes on a noisy but idle machine: {actions:?}"
        );
        assert_eq!(sim.policy.state(), State::Running);

        let mut sim = Sim::new(PolicyConfig {
            start_after_idle: secs(5),
            ..PolicyConfig::default()
        });
        sim.feed_with(secs(7), noisy);
        assert_eq!(
            sim.policy.state(),
            State::Running,
            "{}",
            sim.policy.reason()
        );
        // Real load still pauses within two samples.
        sim.take();
        sim.feed(load(0.9), STEP * 2);
        assert!(sim.take().contains(&Action::Pause));
    }

    /// The defaults without smoothing: the dwell backs off from 150 ms.
    fn backing_off() -> PolicyConfig {
        PolicyConfig {
            quiet_smoothing: Duration::ZERO,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn an_isolated_blip_costs_a_short_dwell() {
        let mut sim = Sim::running(backing_off(), 1);
        sim.feed(quiet(), secs(5));
        sim.feed(load(0.7), STEP);
        let blip = sim.at();
        assert_eq!(sim.policy.state(), State::Paused);
        sim.feed(quiet(), secs(1));
        assert_eq!(sim.when(|a| *a == Action::Resume), Some(blip + ms(150)));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn the_dwell_doubles_while_pauses_keep_coming_and_resets_after_a_calm_spell() {
        let mut sim = Sim::running(backing_off(), 1);
        // A 40 ms burst every 600 ms: back after 150 ms, 300 ms, then the dwell (600 ms) is
        // longer than the gaps and the guests stay paused.
        let mut dwells = Vec::new();
        for _ in 0..10 {
            sim.feed(load(0.9), 2 * STEP);
            dwells.push(sim.policy.dwell());
            sim.feed(quiet(), ms(560));
        }
        assert_eq!(&dwells[..4], &[ms(150), ms(300), ms(600), ms(600)]);
        let back = |sim: &Sim| {
            sim.transitions()
                .iter()
                .filter(|t| t.1 == State::Running)
                .count()
        };
        assert_eq!(back(&sim), 2, "{:?}", sim.transitions());
        assert_eq!(sim.policy.state(), State::Paused);

        // Quiet again: back after the long dwell; after a calm spell of resume_after the next
        // blip costs the short dwell again.
        sim.feed(quiet(), secs(1));
        assert_eq!(sim.policy.state(), State::Running);
        sim.feed(quiet(), secs(3));
        sim.feed(load(0.9), STEP);
        assert_eq!(sim.policy.dwell(), ms(150));

        // Each time guests come back, a burst: the dwell doubles up to resume_after, no further.
        let mut dwells = Vec::new();
        for _ in 0..7 {
            let dwell = sim.policy.dwell();
            sim.feed(quiet(), dwell + 2 * STEP);
            assert_eq!(sim.policy.state(), State::Running);
            sim.feed(load(0.9), STEP);
            dwells.push(sim.policy.dwell());
        }
        assert_eq!(
            dwells,
            [300, 600, 1200, 2400, 3000, 3000, 3000].map(ms).to_vec()
        );
    }

    #[test]
    fn a_spike_during_the_dwell_restarts_it() {
        let mut sim = Sim::paused(raw());
        sim.feed(quiet(), secs(2));
        sim.feed(load(0.9), STEP);
        let spike = sim.at();
        sim.feed(quiet(), secs(3) - STEP);
        assert_eq!(sim.policy.state(), State::Paused);
        sim.feed(quiet(), secs(1));
        assert_eq!(sim.when(|a| *a == Action::Resume), Some(spike + secs(3)));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn throttled_share_follows_moderate_load() {
        let mut sim = Sim::running(raw(), 1);
        sim.feed(load(0.22), ms(40));
        assert_eq!(
            sim.take(),
            vec![
                Action::CpuShare(0.78),
                changed(
                    State::Running,
                    State::Throttled,
                    "incumbent CPU 22 % >= 15 % for 40 ms: guests get 78 % of each core"
                ),
            ]
        );
        assert!(sim.policy.accepting());
        // Jitter within 5 % of a core sends nothing.
        sim.feed(load(0.25), secs(1));
        sim.feed(load(0.19), secs(1));
        assert_eq!(sim.take(), vec![]);
        // A real change follows the load.
        sim.feed(load(0.28), ms(100));
        assert_eq!(sim.take(), vec![Action::CpuShare(0.72)]);
        // Back to quiet: the share follows at once, Running (and the cap) after the dwell.
        sim.feed(quiet(), secs(3) - STEP);
        assert_eq!(sim.take(), vec![Action::CpuShare(0.98)]);
        assert_eq!(sim.policy.state(), State::Throttled);
        sim.feed(quiet(), STEP);
        assert_eq!(
            sim.take(),
            vec![
                Action::CpuShare(1.0),
                changed(
                    State::Throttled,
                    State::Running,
                    "incumbent CPU below 15 % for 3 s"
                ),
            ]
        );
    }

    #[test]
    fn throttled_share_is_clamped_and_scaled_by_the_cap() {
        let config = PolicyConfig {
            cpu_cap: 0.5,
            pause_above: 0.95,
            ..raw()
        };
        let mut sim = Sim::running(config, 1);
        sim.feed(load(0.2), ms(40));
        assert_eq!(sim.take()[0], Action::CpuShare(0.4));
        sim.feed(load(0.93), ms(40));
        assert_eq!(sim.take(), vec![Action::CpuShare(0.1)]);
        sim.feed(load(0.94), secs(1));
        assert_eq!(sim.take(), vec![]);
    }

    #[test]
    fn cpu_cap_is_sent_on_entering_running() {
        let config = PolicyConfig {
            cpu_cap: 0.5,
            ..raw()
        };
        let mut sim = Sim::new(config);
        sim.feed(quiet(), secs(60));
        assert_eq!(
            sim.take(),
            vec![
                Action::CpuShare(0.5),
                changed(
                    State::WaitingForIdle,
                    State::Running,
                    "idle for 60 s: incumbent CPU 2 % < 15 %"
                ),
            ]
        );
        // Paused and resumed: the cap is unchanged, so not sent again.
        sim.feed(load(0.9), ms(40));
        sim.feed(quiet(), secs(3));
        assert_eq!(
            sim.take()
                .iter()
                .filter(|a| matches!(a, Action::CpuShare(_)))
                .count(),
            0
        );
        // After an eviction it is sent again on the next start.
        sim.guests(1);
        sim.feed(
            LoadSample {
                on_battery: true,
                ..quiet()
            },
            STEP,
        );
        sim.guests(0);
        sim.feed(quiet(), secs(60));
        assert!(sim.take().contains(&Action::CpuShare(0.5)));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn starts_only_after_the_machine_has_been_idle() {
        let mut sim = Sim::new(raw());
        assert!(!sim.policy.accepting());
        sim.feed(quiet(), secs(30));
        // Moderate load restarts the idle time.
        sim.feed(load(0.2), STEP);
        let busy = sim.at();
        sim.feed(quiet(), secs(60) - STEP);
        assert_eq!(sim.take(), vec![]);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        sim.feed(quiet(), STEP);
        assert_eq!(
            sim.when(|a| matches!(a, Action::StateChanged { .. })),
            Some(busy + secs(60))
        );
        assert_eq!(sim.policy.state(), State::Running);
        assert!(sim.policy.accepting());
    }

    #[test]
    fn low_memory_and_battery_keep_guests_from_starting() {
        let mut sim = Sim::new(raw());
        sim.feed(
            LoadSample {
                memory_available: 100 << 20,
                ..quiet()
            },
            secs(120),
        );
        sim.feed(
            LoadSample {
                on_battery: true,
                ..quiet()
            },
            secs(120),
        );
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        sim.feed(quiet(), secs(60));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn owner_activity_delays_the_start() {
        // The owner touched the mouse 30 s in; before that they had been away long.
        let mut sim = Sim::new(raw());
        let console = |t: Duration| LoadSample {
            user_idle: Some(if t < secs(30) {
                t + secs(100)
            } else {
                t - secs(30)
            }),
            ..quiet()
        };
        sim.feed_with(secs(89), console);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        sim.feed_with(secs(2), console);
        // 60 s after the owner's last touch.
        assert_eq!(
            sim.when(|a| matches!(a, Action::StateChanged { .. })),
            Some(secs(90))
        );
        assert_eq!(
            sim.reasons(),
            vec!["idle for 60 s: incumbent CPU 2 % < 15 %, owner away 60 s".to_owned()]
        );
    }

    #[test]
    fn owner_activity_pauses_on_a_console_not_on_a_server() {
        let mut sim = Sim::running(raw(), 1);
        let typing = LoadSample {
            user_idle: Some(ms(300)),
            ..quiet()
        };
        sim.feed(typing, ms(40));
        assert_eq!(sim.policy.state(), State::Paused);
        assert_eq!(sim.policy.reason(), "owner active 300 ms ago (< 10 s)");

        let config = PolicyConfig {
            pause_when_owner_active: false,
            ..raw()
        };
        let mut sim = Sim::running(config, 1);
        sim.feed(typing, secs(1));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn cpu_pressure_pauses() {
        let mut sim = Sim::running(raw(), 1);
        sim.feed(
            LoadSample {
                cpu_pressure: Some(35.0),
                ..quiet()
            },
            ms(40),
        );
        assert_eq!(sim.policy.state(), State::Paused);
        assert_eq!(sim.policy.reason(), "CPU pressure 35 % > 20 % for 40 ms");
        sim.feed(
            LoadSample {
                cpu_pressure: Some(5.0),
                ..quiet()
            },
            secs(3),
        );
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn low_memory_evicts_with_the_grace_then_waits_for_idle() {
        let mut sim = Sim::running(raw(), 2);
        let low = LoadSample {
            memory_available: 300 << 20,
            ..quiet()
        };
        sim.feed(low, STEP);
        let reason = "available memory 300 MiB < reserve 512 MiB";
        assert_eq!(
            sim.take(),
            vec![
                Action::Evict {
                    reason: reason.to_owned(),
                    grace: secs(10),
                },
                changed(State::Running, State::Evicting, reason),
            ]
        );
        assert!(!sim.policy.accepting());
        sim.feed(quiet(), secs(2));
        sim.guests(1);
        assert_eq!(sim.policy.state(), State::Evicting);
        sim.guests(0);
        assert_eq!(
            sim.take(),
            vec![changed(
                State::Evicting,
                State::WaitingForIdle,
                "evicted (available memory 300 MiB < reserve 512 MiB): all guests gone; \
                 waiting for 60 s of idle"
            )]
        );
        // Idle counts from the end of the eviction.
        let gone = sim.at();
        sim.feed(quiet(), secs(60));
        assert_eq!(
            sim.when(|a| matches!(a, Action::StateChanged { .. })),
            Some(gone + secs(60))
        );
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn an_eviction_ends_after_grace_and_margin_without_word_from_the_guests() {
        let mut sim = Sim::running(raw(), 1);
        sim.feed(
            LoadSample {
                memory_pressure: Some(60.0),
                ..quiet()
            },
            STEP,
        );
        let began = sim.at();
        assert_eq!(sim.policy.poll_timeout(), Some(sim.now + secs(15)));
        sim.wait(secs(20));
        assert_eq!(
            sim.transitions(),
            vec![
                (State::Running, State::Evicting),
                (State::Evicting, State::WaitingForIdle)
            ]
        );
        assert_eq!(
            sim.when(|a| matches!(
                a,
                Action::StateChanged {
                    to: State::WaitingForIdle,
                    ..
                }
            )),
            Some(began + secs(15))
        );
    }

    #[test]
    fn memory_pressure_evicts() {
        let mut sim = Sim::running(raw(), 1);
        sim.feed(
            LoadSample {
                memory_pressure: Some(30.0),
                ..quiet()
            },
            secs(1),
        );
        assert_eq!(sim.policy.state(), State::Running);
        sim.feed(
            LoadSample {
                memory_pressure: Some(55.0),
                ..quiet()
            },
            STEP,
        );
        assert_eq!(
            sim.take()[0],
            Action::Evict {
                reason: "memory pressure 55 % > 40 %".to_owned(),
                grace: secs(10)
            }
        );
        assert_eq!(sim.policy.state(), State::Evicting);
    }

    #[test]
    fn battery_evicts_unless_told_not_to() {
        let battery = LoadSample {
            on_battery: true,
            ..quiet()
        };
        let mut sim = Sim::running(raw(), 1);
        sim.feed(battery, STEP);
        assert_eq!(sim.policy.state(), State::Evicting);
        assert_eq!(sim.policy.reason(), "on battery");

        let config = PolicyConfig {
            evict_on_battery: false,
            ..raw()
        };
        let mut sim = Sim::running(config, 1);
        sim.feed(battery, secs(5));
        assert_eq!(sim.take(), vec![]);
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn the_systems_low_memory_signal_evicts_and_holds_off_new_work() {
        let low = LoadSample {
            memory_low: true,
            ..quiet()
        };
        let mut sim = Sim::running(raw(), 1);
        sim.feed(low, STEP);
        assert_eq!(sim.policy.state(), State::Evicting);
        assert_eq!(sim.policy.reason(), "the system reports low memory");
        sim.guests(0);
        sim.feed(low, secs(120));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.waiting_detail(sim.now).as_deref(),
            Some("the system reports low memory")
        );
        sim.feed(quiet(), secs(60));
        assert_eq!(sim.policy.state(), State::Running);
    }

    #[test]
    fn paused_longer_than_max_pause_evicts() {
        let mut sim = Sim::paused(raw());
        let paused = sim.at();
        sim.feed(load(0.9), secs(600) - STEP);
        assert_eq!(sim.policy.state(), State::Paused);
        sim.feed(load(0.9), STEP);
        assert_eq!(
            sim.take(),
            vec![
                Action::Evict {
                    reason: "paused for 10 min, the most allowed (max_pause)".to_owned(),
                    grace: secs(10)
                },
                changed(
                    State::Paused,
                    State::Evicting,
                    "paused for 10 min, the most allowed (max_pause)"
                ),
            ]
        );
        assert_eq!(sim.at() - paused, secs(600));
    }

    #[test]
    fn the_gate_follows_the_load_during_an_eviction() {
        let mut sim = Sim::running(raw(), 1);
        sim.owner(OwnerCommand::Stop);
        sim.take();
        sim.feed(load(0.9), ms(40));
        sim.feed(quiet(), secs(3));
        assert_eq!(sim.take(), vec![Action::Pause, Action::Resume]);
        assert_eq!(sim.policy.state(), State::Evicting);
    }

    #[test]
    fn owner_pause_evicts_and_holds_until_owner_resume() {
        let mut sim = Sim::running(raw(), 2);
        sim.owner(OwnerCommand::Pause);
        let reason = "the owner ran lull-agent pause";
        assert_eq!(
            sim.take(),
            vec![
                Action::Evict {
                    reason: reason.to_owned(),
                    grace: secs(10)
                },
                changed(State::Running, State::Evicting, reason),
            ]
        );
        sim.guests(0);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.reason(),
            "evicted (the owner ran lull-agent pause): all guests gone; held until lull-agent resume"
        );
        assert!(!sim.policy.stopping());
        sim.feed(quiet(), secs(300));
        assert_eq!(sim.policy.poll_timeout(), None);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert!(!sim.policy.accepting());
        sim.owner(OwnerCommand::Resume);
        sim.take();
        // Still the usual idle rule after resuming.
        let resumed = sim.at();
        sim.feed(quiet(), secs(60));
        assert_eq!(
            sim.when(|a| matches!(a, Action::StateChanged { .. })),
            Some(resumed + secs(60))
        );
        assert!(sim.policy.accepting());
    }

    #[test]
    fn a_snooze_evicts_holds_and_ends_by_itself() {
        let mut sim = Sim::running(raw(), 1);
        sim.owner(OwnerCommand::Snooze(secs(3600)));
        let reason = "the owner snoozed the agent for 60 min";
        assert_eq!(
            sim.take()[0],
            Action::Evict {
                reason: reason.to_owned(),
                grace: secs(10)
            }
        );
        sim.guests(0);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.reason(),
            format!(
                "evicted ({reason}): all guests gone; held until then, or until lull-agent resume"
            )
        );
        let snoozed = sim.at();
        // Idle all along, it stays held for the whole snooze...
        sim.feed(quiet(), secs(3590));
        assert!(!sim.policy.accepting());
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        // ...then takes work again after the usual idle time, counted from the snooze's end.
        sim.feed(quiet(), secs(10) + STEP);
        assert_eq!(
            sim.policy.reason(),
            "the owner's snooze ended; waiting for 60 s of idle"
        );
        sim.feed(quiet(), secs(61));
        assert_eq!(sim.started_running(), Some(snoozed + secs(3600 + 60)));
        assert!(sim.policy.accepting());
        // A snooze ends sooner at the owner's resume, and without samples at its own time.
        let mut sim = Sim::new(raw());
        sim.owner(OwnerCommand::Snooze(secs(5)));
        let end = sim.now + secs(5);
        assert_eq!(sim.policy.poll_timeout(), Some(end));
        sim.owner(OwnerCommand::Resume);
        assert!(sim.policy.poll_timeout().is_none_or(|t| t != end));
    }

    #[test]
    fn the_owners_rules_evict_and_hold_while_they_stand_then_the_idle_time_counts() {
        let mut sim = Sim::running(raw(), 1);
        let why = "outside the owner's time windows (Mon-Fri 19:00-07:00)";
        sim.rules(Some(why));
        assert_eq!(
            sim.take()[0],
            Action::Evict {
                reason: why.to_owned(),
                grace: secs(10)
            }
        );
        assert!(!sim.policy.accepting());
        sim.rules(Some(why));
        assert_eq!(sim.take(), vec![], "the same rule again changes nothing");
        sim.guests(0);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.reason(),
            format!("evicted ({why}): all guests gone; waiting while it holds")
        );
        sim.feed(quiet(), secs(300));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(sim.policy.poll_timeout(), None);
        sim.rules(None);
        assert_eq!(
            sim.policy.reason(),
            format!("no longer {why}; waiting for 60 s of idle")
        );
        let lifted = sim.at();
        sim.feed(quiet(), secs(61));
        assert_eq!(sim.started_running(), Some(lifted + secs(60)));
        // While waiting, a rule holds without a change of state, and a program closing lets
        // the idle time count from then.
        let mut sim = Sim::new(raw());
        sim.feed(quiet(), secs(30));
        let program = "the owner's program blender is running (exclusive_programs)";
        sim.rules(Some(program));
        sim.feed(quiet(), secs(120));
        assert_eq!(sim.take(), vec![]);
        assert_eq!(
            sim.policy.reason(),
            format!("{program}; waiting while it holds")
        );
        sim.rules(None);
        let lifted = sim.at();
        sim.feed(quiet(), secs(61));
        assert_eq!(sim.started_running(), Some(lifted + secs(60)));
    }

    #[test]
    fn finish_takes_no_new_work_lets_running_tasks_end_then_stops() {
        let mut sim = Sim::running(raw(), 2);
        sim.owner(OwnerCommand::Finish);
        assert_eq!(sim.take(), vec![], "nothing is evicted");
        assert!(!sim.policy.accepting());
        assert!(!sim.policy.stopping());
        assert_eq!(
            sim.policy.reason(),
            "the owner ran lull-agent finish: no new work; stopping when the 2 running task(s) end"
        );
        sim.feed(quiet(), secs(30));
        assert_eq!(sim.policy.state(), State::Running);
        sim.guests(1);
        assert!(!sim.policy.stopping());
        sim.guests(0);
        assert!(sim.policy.stopping());
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert_eq!(
            sim.policy.reason(),
            "the owner ran lull-agent finish and the last task ended; stopping"
        );
        // Load meanwhile pauses the guests as ever; the end is the same.
        let mut sim = Sim::running(raw(), 1);
        sim.owner(OwnerCommand::Finish);
        sim.feed(load(0.9), ms(100));
        assert_eq!(sim.policy.state(), State::Paused);
        sim.feed(quiet(), secs(10));
        sim.guests(0);
        assert!(sim.policy.stopping());
        // Resumed before its tasks end, the agent goes on as before.
        let mut sim = Sim::running(raw(), 1);
        sim.owner(OwnerCommand::Finish);
        sim.owner(OwnerCommand::Resume);
        assert!(sim.policy.accepting());
        sim.guests(0);
        assert!(!sim.policy.stopping());
        // With nothing running, it stops at once.
        let mut sim = Sim::new(raw());
        sim.owner(OwnerCommand::Finish);
        assert!(sim.policy.stopping());
        assert_eq!(
            sim.policy.reason(),
            "the owner ran lull-agent finish; stopping"
        );
    }

    #[test]
    fn owner_pause_while_waiting_holds_without_a_state_change() {
        let mut sim = Sim::new(raw());
        sim.feed(quiet(), secs(30));
        sim.owner(OwnerCommand::Pause);
        sim.feed(quiet(), secs(120));
        assert_eq!(sim.take(), vec![]);
        assert_eq!(
            sim.policy.reason(),
            "the owner ran lull-agent pause; held until lull-agent resume"
        );
    }

    #[test]
    fn owner_stop_evicts_and_sets_stopping() {
        let mut sim = Sim::running(raw(), 1);
        sim.owner(OwnerCommand::Stop);
        assert!(sim.policy.stopping());
        assert!(!sim.policy.accepting());
        assert_eq!(
            sim.take()[0],
            Action::Evict {
                reason: "the owner ran lull-agent stop".to_owned(),
                grace: secs(10)
            }
        );
        sim.guests(0);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        assert!(sim.policy.stopping());
        sim.feed(quiet(), secs(120));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
    }

    #[test]
    fn a_dedicated_machine_runs_at_once_and_moves_only_for_its_owner() {
        let start = Instant::now();
        let mut sim = Sim {
            policy: Policy::dedicated(raw(), start),
            start,
            now: start,
            log: Vec::new(),
            told: State::Running,
        };
        assert_eq!(sim.policy.state(), State::Running);
        assert!(sim.policy.accepting());
        sim.guests(1);
        // A busy machine, short of memory, on battery, with its owner at the console: a
        // scavenging policy would evict at once; a dedicated one does nothing.
        sim.feed(
            LoadSample {
                memory_available: GIB / 4,
                on_battery: true,
                user_idle: Some(ms(10)),
                ..load(0.95)
            },
            secs(30),
        );
        assert_eq!(sim.policy.state(), State::Running);
        assert_eq!(sim.take(), vec![]);
        // The owner's pause evicts, holds, and resume lets guests back at once.
        sim.owner(OwnerCommand::Pause);
        assert_eq!(
            sim.take()[0],
            Action::Evict {
                reason: "the owner ran lull-agent pause".to_owned(),
                grace: secs(10)
            }
        );
        sim.guests(0);
        sim.feed(quiet(), secs(5));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        sim.owner(OwnerCommand::Resume);
        sim.feed(quiet(), STEP);
        assert_eq!(sim.policy.state(), State::Running);
        assert_eq!(sim.policy.reason(), DEDICATED);
        // Stop evicts and stops.
        sim.guests(1);
        sim.owner(OwnerCommand::Stop);
        assert!(sim.policy.stopping());
        sim.guests(0);
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
    }

    #[test]
    fn an_eviction_without_guests_changes_state_without_an_evict() {
        let mut sim = Sim::running(raw(), 0);
        sim.feed(
            LoadSample {
                memory_available: GIB / 4,
                ..quiet()
            },
            STEP,
        );
        assert_eq!(
            sim.take(),
            vec![changed(
                State::Running,
                State::WaitingForIdle,
                "available memory 256 MiB < reserve 512 MiB (no guests to evict); \
                 waiting for 60 s of idle"
            )]
        );
    }

    #[test]
    fn poll_timeout_drives_a_dwell_without_samples() {
        let mut sim = Sim::paused(raw());
        let last_hot = sim.now;
        sim.feed(quiet(), secs(1));
        let deadline = sim.policy.poll_timeout().expect("a deadline");
        assert_eq!(deadline, last_hot + secs(3));
        // No sample arrives; the driver sleeps until the deadline.
        sim.now = deadline;
        sim.policy.handle_timeout(deadline);
        sim.drain();
        assert_eq!(sim.policy.state(), State::Running);
        assert_eq!(sim.take()[0], Action::Resume);
        assert_eq!(sim.policy.poll_timeout(), None);

        // Starting, too: one quiet sample, then only deadlines.
        let mut sim = Sim::new(raw());
        sim.feed(quiet(), STEP);
        sim.wait(secs(59));
        assert_eq!(sim.policy.state(), State::WaitingForIdle);
        sim.wait(secs(1));
        assert_eq!(sim.policy.state(), State::Running);
        assert_eq!(
            sim.when(|a| matches!(a, Action::StateChanged { .. })),
            Some(secs(60))
        );
    }

    #[test]
    fn idle_estimate_follows_the_load_smoothly() {
        let mut sim = Sim::new(raw());
        assert_eq!(sim.policy.idle_estimate(), 0.0);
        sim.feed(load(0.1), secs(60));
        assert!((sim.policy.idle_estimate() - 0.9).abs() < 1e-6);
        // One spike barely moves it; a minute of load brings it along.
        sim.feed(load(0.9), STEP);
        assert!(sim.policy.idle_estimate() > 0.89);
        sim.feed(load(0.6), secs(60));
        assert!((sim.policy.idle_estimate() - 0.4).abs() < 0.01);
    }

    #[test]
    fn odd_samples_err_on_the_side_of_the_incumbents() {
        let mut sim = Sim::running(raw(), 1);
        sim.feed(load(f64::NAN), ms(40));
        assert_eq!(sim.policy.state(), State::Paused);
        assert_eq!(sim.policy.reason(), "incumbent CPU 100 % > 30 % for 20 ms");
    }

    #[test]
    fn config_round_trips_through_toml() {
        let default = PolicyConfig::default();
        let text = toml::to_string(&default).unwrap();
        assert!(text.contains("pause_after = \"30ms\""), "{text}");
        assert!(text.contains("max_pause = \"10m\""), "{text}");
        assert!(text.contains("memory_reserve = \"512MiB\""), "{text}");
        assert_eq!(toml::from_str::<PolicyConfig>(&text).unwrap(), default);

        let odd = PolicyConfig {
            pause_after: Duration::from_micros(1500),
            resume_after: ms(2500),
            memory_reserve: 1_234_567,
            cpu_cap: 0.75,
            ..default.clone()
        };
        let text = toml::to_string(&odd).unwrap();
        assert_eq!(toml::from_str::<PolicyConfig>(&text).unwrap(), odd);

        let partial: PolicyConfig =
            toml::from_str("pause_above = 0.5\nmemory_reserve = \"1GiB\"\nmax_pause = \"1h30m\"")
                .unwrap();
        assert_eq!(partial.pause_above, 0.5);
        assert_eq!(partial.memory_reserve, GIB);
        assert_eq!(partial.max_pause, secs(5400));
        assert_eq!(partial.resume_after, default.resume_after);
        let inverted = PolicyConfig {
            resume_after_min: secs(5),
            ..default.clone()
        };
        assert_eq!(
            inverted.validate().unwrap_err().field,
            "resume_after_min",
            "{:?}",
            inverted.validate()
        );
        assert_eq!(
            toml::from_str::<PolicyConfig>("memory_reserve = 1048576")
                .unwrap()
                .memory_reserve,
            1 << 20
        );
        assert_eq!(toml::from_str::<PolicyConfig>("").unwrap(), default);
        assert_eq!(default.validate(), Ok(()));
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_values() {
        let err = toml::from_str::<PolicyConfig>("pause_abov = 0.5").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(toml::from_str::<PolicyConfig>("pause_after = \"soon\"").is_err());
        assert!(toml::from_str::<PolicyConfig>("memory_reserve = \"lots\"").is_err());
        assert!(toml::from_str::<PolicyConfig>("memory_reserve = -1").is_err());

        let inverted = PolicyConfig {
            resume_below: 0.5,
            pause_above: 0.3,
            ..raw()
        };
        assert_eq!(inverted.validate().unwrap_err().field, "resume_below");
        let capless = PolicyConfig {
            cpu_cap: 0.0,
            ..raw()
        };
        assert_eq!(capless.validate().unwrap_err().field, "cpu_cap");
    }
}
