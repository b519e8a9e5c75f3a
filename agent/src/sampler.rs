//! What the machine offers and how busy it is.
//!
//! - [`Sampler`]: capacity figures for the coordinator (cores, memory, OS, architecture).
//! - [`LoadSampler`]: a [`Load`] reading, taken every 20 ms by the agent's driver thread, from
//!   which the policy decides when guests run, pause and leave.
//!
//! # What the Linux load sampler reads, and how often
//!
//! | figure | source | read |
//! |---|---|---|
//! | CPU, whole machine | first line of `/proc/stat` | every sample |
//! | CPU, this process (the agent and all its guest threads) | `/proc/self/stat`, `utime + stime` | every sample |
//! | `memory_available` | `MemAvailable` in `/proc/meminfo` | every 5th sample (100 ms) |
//! | `cpu_pressure`, `memory_pressure` | `some avg10` of `/proc/pressure/{cpu,memory}` | every 500 ms |
//! | `on_battery` | `/sys/class/power_supply/*/{type,online,status}` | every second |
//! | `user_idle` | `/dev/input/event*` (drained) and `/dev/pts/*` access times | every second |
//!
//! The procfs files stay open and are re-read from offset 0 into buffers allocated once, and
//! parsed in place without allocating. `/proc/meminfo` costs about a quarter of a sample (the
//! kernel computes it on each read) and memory is acted on by eviction, which takes seconds, so
//! it is read on one sample in five: 100 ms late at worst. Pressure averages are recomputed by
//! the kernel every 2 s, so reading them more often than every 500 ms would buy nothing. Power
//! and user idle change on a human time scale.
//!
//! The agent's own CPU time comes from the process's CPU clock (`CLOCK_PROCESS_CPUTIME_ID`): every
//! thread together, including threads that have already exited, to the nanosecond — the total
//! of `/proc/self/task/*/stat` in one system call, without losing the time of a guest thread that
//! ends between two samples, and without rounding.
//!
//! # CPU figures and their resolution
//!
//! Over the window since the previous sample, with `busy = user + nice + system + irq + softirq
//! + steal` and `total = busy + idle + iowait` of the machine (`guest` and `guest_nice` are
//! already inside `user` and `nice`), and `own` this process's CPU time in the same unit:
//!
//! - `incumbent_cpu = max(0, Δbusy − Δown) / Δtotal`, the share of the machine busy with
//!   anything but this process;
//! - `guest_cpu = Δown / Δtotal`.
//!
//! Both are clamped to `0.0..=1.0`. `/proc/stat` counts in USER_HZ clock ticks
//! (`sysconf(_SC_CLK_TCK)`, 100 per second on every mainstream Linux), and the tick sets the
//! resolution: a 20 ms window holds `0.02 × 100 × cores` ticks of machine time — 4 on a two-core
//! machine — so one sample resolves the incumbent's share to about `1 / (2 × cores)` (25 % on
//! two cores, 3 % on 16), and can be off by about a tick because every counter is rounded down to
//! whole ticks on its own. (Reading this process's time in ticks too, from `/proc/self/stat`,
//! doubled that error: with guests busy on every core, a quiet machine then read 50 % busy now
//! and then, which a policy acting on one sample must not see.) The errors do not accumulate:
//! over a longer window (or an average of consecutive samples) they shrink in proportion. When
//! no tick has passed at all since the previous sample (sampling faster than 100 Hz), the
//! previous fractions are repeated and the window is left open to include the next interval.
//!
//! A sample costs one `pread` and one `clock_gettime` (another `pread` one time in five, plus a few reads and a `stat` once a
//! second). Measured on a two-core VM, unoptimised build: about 9 µs of CPU per sample back to
//! back, 20-45 µs at 50 Hz when the caches have gone cold in between — 0.1-0.25 % of a core,
//! most of it the kernel generating `/proc/stat` (which grows with CPUs and interrupt lines).
//! The integration tests measure and print it.
//!
//! Sampled at 50 Hz against one core burned by another process on two cores, `incumbent_cpu`
//! averaged 0.52-0.55 with a per-sample standard deviation of 0.05-0.08.
//!
//! # User idle
//!
//! Without a display server (XScreenSaver), two sources are robust, both checked once a
//! second: the keyboards and pointers among `/dev/input/event*`,
//! held open and drained (any event is input; the contents are discarded unread; their inode
//! times do *not* move on input, so they cannot simply be stat'ed), and the newest access time
//! of `/dev/pts/*`, which the kernel sets when a program reads typed input, to within 8 s (SSH
//! sessions and terminal windows). Reading input devices needs root or the `input` group. The
//! figure is `None` when the machine has no keyboard or pointer (servers, containers) and when
//! the agent may not read them: terminal activity alone would call a desktop idle while its owner
//! works in a browser. Idle time counts from the agent's start until the first input is seen.
//! When the devices cannot say, systemd-logind's idle hints of the graphical sessions stand in
//! (`logind.rs`: coarser — a desktop says its user went away only after some minutes — but it
//! covers remote desktops and agents outside the `input` group).
//!
//! # Elsewhere
//!
//! Other systems use `sysinfo` for CPU and memory: global CPU usage minus this process's, and
//! its available memory; pressure figures are `None`. The signals each system gives its own
//! way — a person at the machine, battery, low memory — come through one trait, `OsSignals`,
//! read once a second:
//!
//! | signal | Linux | Windows | macOS |
//! |---|---|---|---|
//! | `user_idle` | input devices and terminals (above), else logind's graphical sessions | `GetLastInputInfo` (none in session 0, a service's) | `HIDIdleTime` of `IOHIDSystem` |
//! | `on_battery` | `/sys/class/power_supply` | `GetSystemPowerStatus` | `IOPSGetProvidingPowerSourceType` |
//! | `memory_low` | — (pressure stall information instead) | low-memory resource notification | `kern.memorystatus_vm_pressure_level` ≥ warning |
//!
//! Other Unix systems have none of them (`None`, `false`, `false`). Windows reads CPU and memory
//! itself too, as Linux does and without sysinfo's performance counters: the machine's busy time
//! from `GetSystemTimes`, this process's from `GetProcessTimes` (both in 100 ns units), and
//! available memory from `GlobalMemoryStatusEx` every fifth sample.

use std::time::{Duration, Instant};

use lull_protocol::message::Capacity;

#[cfg(any(test, not(any(target_os = "linux", windows))))]
mod fallback;
#[cfg(target_os = "linux")]
mod idle;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod logind;
#[cfg(target_vendor = "apple")]
mod macos;
#[cfg(target_os = "linux")]
mod parse;
#[cfg(target_os = "linux")]
mod power;
#[cfg(windows)]
mod windows;

/// Reads the machine's capacity figures.
#[derive(Debug)]
pub struct Sampler {
    system: sysinfo::System,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler; reads memory once.
    pub fn new() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        Self { system }
    }

    /// Logical cores.
    pub fn cores(&self) -> u32 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    }

    /// Total memory in bytes.
    pub fn memory_total(&self) -> u64 {
        self.system.total_memory()
    }

    /// Fresh capacity figures; `slots`, cap and labels come from the configuration.
    pub fn capacity(
        &mut self,
        slots: u32,
        max_task_memory: u64,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Capacity {
        self.system.refresh_memory();
        Capacity {
            cores: self.cores(),
            memory_total: self.system.total_memory(),
            memory_available: self.system.available_memory(),
            slots,
            max_task_memory,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            labels: labels.clone(),
            wasmtime: crate::sandbox::WASMTIME_VERSION.to_owned(),
        }
    }
}

/// How busy the machine is: one reading of [`LoadSampler`].
///
/// CPU figures cover the time since the previous reading; the others are the latest known.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// Fraction of the whole machine (`0.0..=1.0`) busy with anything but this process (the
    /// agent and its guest threads): what the machine's own programs use.
    pub incumbent_cpu: f64,
    /// Fraction of the whole machine (`0.0..=1.0`) used by this process's threads.
    pub guest_cpu: f64,
    /// Memory available to new work without swapping, in bytes (`MemAvailable` on Linux).
    pub memory_available: u64,
    /// Share of time in which some task waited for a CPU, in percent over the last 10 s
    /// (`/proc/pressure/cpu`, `some avg10`); `None` where pressure stall information is absent.
    pub cpu_pressure: Option<f64>,
    /// Share of time in which some task stalled on memory, in percent over the last 10 s
    /// (`/proc/pressure/memory`, `some avg10`); `None` where absent.
    pub memory_pressure: Option<f64>,
    /// The operating system says physical memory runs low (Windows' low-memory notification,
    /// macOS's pressure level at warning or worse); always `false` on Linux, whose pressure
    /// figure says more.
    pub memory_low: bool,
    /// Time since the last keyboard, mouse or terminal input; `None` on machines without a
    /// keyboard or pointer, or whose input devices the agent may not read.
    pub user_idle: Option<Duration>,
    /// The machine has an AC adapter, it is unplugged, and a battery is discharging.
    pub on_battery: bool,
}

/// The signals each operating system reads its own way. Each is asked at most once a second
/// (the Linux sources keep their own cadence); an answer that cannot be had is `None` or
/// `false`, never an error.
pub(crate) trait OsSignals {
    /// Time since the last keyboard or pointer input of a person at the machine; `None` when
    /// it cannot be known.
    fn user_idle(&mut self, now: Instant) -> Option<Duration>;
    /// The machine runs on its battery.
    fn on_battery(&mut self, now: Instant) -> bool;
    /// The system says physical memory runs low.
    fn memory_low(&mut self, now: Instant) -> bool;
}

/// A system without any of the signals.
#[derive(Debug, Default)]
#[cfg_attr(
    not(any(
        test,
        all(unix, not(target_os = "linux"), not(target_vendor = "apple"))
    )),
    allow(dead_code)
)]
pub(crate) struct NoSignals;

impl OsSignals for NoSignals {
    fn user_idle(&mut self, _: Instant) -> Option<Duration> {
        None
    }
    fn on_battery(&mut self, _: Instant) -> bool {
        false
    }
    fn memory_low(&mut self, _: Instant) -> bool {
        false
    }
}

/// Logs a source that cannot be read: the first time at warn level, then at debug level (a
/// sampler reads 50 times a second).
#[derive(Debug, Default)]
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
pub(crate) struct ReadFailures {
    warned: bool,
}

#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
impl ReadFailures {
    pub(crate) fn note(&mut self, e: &std::io::Error) {
        if self.warned {
            tracing::debug!("load sampler: {e}; keeping the previous value");
        } else {
            self.warned = true;
            tracing::warn!("load sampler: {e}; keeping the previous value");
        }
    }
}

/// An [`OsSignals`] read at most once a second; in between, the idle time grows with the clock.
#[derive(Debug)]
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) struct SignalCache<S> {
    signals: S,
    /// When the signals were last read, and what they said.
    read: Option<(Instant, Signals)>,
}

/// One reading of an [`OsSignals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Signals {
    pub user_idle: Option<Duration>,
    pub on_battery: bool,
    pub memory_low: bool,
}

#[cfg_attr(target_os = "linux", allow(dead_code))]
impl<S: OsSignals> SignalCache<S> {
    /// How often the signals are read.
    pub(crate) const EVERY: Duration = Duration::from_secs(1);

    pub(crate) fn new(signals: S) -> Self {
        Self {
            signals,
            read: None,
        }
    }

    /// The signals as of `now`.
    pub(crate) fn get(&mut self, now: Instant) -> Signals {
        if let Some((at, read)) = self.read {
            let age = now.saturating_duration_since(at);
            if age < Self::EVERY {
                return Signals {
                    user_idle: read.user_idle.map(|d| d + age),
                    ..read
                };
            }
        }
        let read = Signals {
            user_idle: self.signals.user_idle(now),
            on_battery: self.signals.on_battery(now),
            memory_low: self.signals.memory_low(now),
        };
        self.read = Some((now, read));
        read
    }

    /// The signals themselves.
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &S {
        &self.signals
    }
}

#[cfg(target_os = "linux")]
type Backend = linux::ProcfsSampler;
#[cfg(windows)]
type Backend = windows::WindowsSampler;
#[cfg(target_vendor = "apple")]
type Backend = fallback::SysinfoSampler<macos::MacSignals>;
#[cfg(not(any(target_os = "linux", windows, target_vendor = "apple")))]
type Backend = fallback::SysinfoSampler<NoSignals>;

/// Reads the machine's load; each [`sample`](Self::sample) covers the time since the previous.
///
/// Meant to be called from one thread at a steady cadence (every 20 ms in the agent). See the
/// [module documentation](self) for the sources, cadences and resolution.
#[derive(Debug)]
pub struct LoadSampler {
    backend: Backend,
}

impl LoadSampler {
    /// Opens the sources and reads the starting point of the first window.
    ///
    /// Fails on Linux when `/proc/stat`, `/proc/self/stat` or `/proc/meminfo` cannot be opened
    /// or parsed (procfs not mounted); every other source is optional.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(target_os = "linux")]
        let backend = Backend::open()?;
        #[cfg(windows)]
        let backend = Backend::open()?;
        #[cfg(target_vendor = "apple")]
        let backend = Backend::open(macos::MacSignals::new())?;
        #[cfg(not(any(target_os = "linux", windows, target_vendor = "apple")))]
        let backend = Backend::open(NoSignals)?;
        Ok(Self { backend })
    }

    /// A reading over the time since the previous call (or since [`new`](Self::new)).
    ///
    /// Cheap — a few system calls — and never panics: a source that cannot be read this time
    /// keeps its previous value.
    pub fn sample(&mut self) -> Load {
        self.backend.sample()
    }
}
