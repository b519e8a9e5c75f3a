//! The load sampler for systems other than Linux: CPU and memory over `sysinfo`, the other
//! signals from the system's [`OsSignals`], read once a second.
//!
//! Coarser than the procfs one: sysinfo computes CPU usage over the time between refreshes (it
//! documents 200 ms as the shortest meaningful interval), and pressure figures do not exist
//! (`None`; the system's own low-memory signal stands in for memory pressure). Built on Linux
//! only for its tests.

use std::io;
use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::{Load, OsSignals, SignalCache};

/// Global CPU usage minus this process's, and available memory, from `sysinfo`; the rest from
/// `S`.
#[derive(Debug)]
pub(crate) struct SysinfoSampler<S> {
    system: System,
    pid: Pid,
    cores: f64,
    signals: SignalCache<S>,
}

impl<S: OsSignals> SysinfoSampler<S> {
    /// Takes the starting point of the first window.
    pub(crate) fn open(signals: S) -> io::Result<Self> {
        let pid = sysinfo::get_current_pid().map_err(io::Error::other)?;
        let mut system = System::new();
        system.refresh_cpu_usage();
        let cores = system.cpus().len().max(1) as f64;
        let mut sampler = Self {
            system,
            pid,
            cores,
            signals: SignalCache::new(signals),
        };
        sampler.refresh();
        Ok(sampler)
    }

    fn refresh(&mut self) {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu(),
        );
    }

    /// One sample over the time since the previous one.
    pub(crate) fn sample(&mut self) -> Load {
        self.refresh();
        let machine = f64::from(self.system.global_cpu_usage()) / 100.0;
        // Percent of one core, so up to 100 × cores.
        let own = self
            .system
            .process(self.pid)
            .map_or(0.0, |p| f64::from(p.cpu_usage()) / 100.0 / self.cores);
        let clamp = |x: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        let signals = self.signals.get(Instant::now());
        Load {
            incumbent_cpu: clamp(machine - own),
            guest_cpu: clamp(own),
            memory_available: self.system.available_memory(),
            cpu_pressure: None,
            memory_pressure: None,
            memory_low: signals.memory_low,
            user_idle: signals.user_idle,
            on_battery: signals.on_battery,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::NoSignals;
    use std::time::Duration;

    /// Signals that count how often they are read.
    #[derive(Debug, Default)]
    struct Counted {
        reads: u32,
    }

    impl OsSignals for Counted {
        fn user_idle(&mut self, _: Instant) -> Option<Duration> {
            self.reads += 1;
            Some(Duration::from_secs(7))
        }
        fn on_battery(&mut self, _: Instant) -> bool {
            true
        }
        fn memory_low(&mut self, _: Instant) -> bool {
            true
        }
    }

    #[test]
    fn the_systems_signals_are_read_once_a_second_and_idle_grows_between() {
        let mut s = SysinfoSampler::open(Counted::default()).unwrap();
        let t0 = Instant::now();
        let first = s.signals.get(t0);
        assert_eq!(
            (first.user_idle, first.on_battery, first.memory_low),
            (Some(Duration::from_secs(7)), true, true)
        );
        assert_eq!(
            s.signals.get(t0 + Duration::from_millis(400)).user_idle,
            Some(Duration::from_millis(7400))
        );
        assert_eq!(s.signals.inner().reads, 1);
        s.signals.get(t0 + SignalCache::<Counted>::EVERY);
        assert_eq!(s.signals.inner().reads, 2);
        let l = s.sample();
        assert!(l.on_battery && l.memory_low, "{l:?}");
    }

    #[test]
    fn sees_this_process_burning_as_guest() {
        let mut s = SysinfoSampler::open(NoSignals).unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        s.sample();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(400) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let l = s.sample();
        assert!(l.memory_available > 0, "{l:?}");
        assert!((0.0..=1.0).contains(&l.incumbent_cpu), "{l:?}");
        // One busy thread is 1/cores of the machine; on a shared machine busy with other work it
        // may get only a part of its core, hence 0.2 of its share.
        assert!(l.guest_cpu > 0.2 / s.cores, "{l:?}");
        assert_eq!(
            (l.cpu_pressure, l.user_idle, l.on_battery, l.memory_low),
            (None, None, false, false)
        );
    }
}
