//! The load sampler for systems other than Linux, over `sysinfo`.
//!
//! Coarser than the procfs one: sysinfo computes CPU usage over the time between refreshes (it
//! documents 200 ms as the shortest meaningful interval), pressure figures do not exist, and
//! battery and user idle are not read (`false` and `None`). Built on Linux only for its tests.

use std::io;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::Load;

/// Global CPU usage minus this process's, and available memory, from `sysinfo`.
#[derive(Debug)]
pub(crate) struct SysinfoSampler {
    system: System,
    pid: Pid,
    cores: f64,
}

impl SysinfoSampler {
    /// Takes the starting point of the first window.
    pub(crate) fn open() -> io::Result<Self> {
        let pid = sysinfo::get_current_pid().map_err(io::Error::other)?;
        let mut system = System::new();
        system.refresh_cpu_usage();
        let cores = system.cpus().len().max(1) as f64;
        let mut sampler = Self { system, pid, cores };
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
        Load {
            incumbent_cpu: clamp(machine - own),
            guest_cpu: clamp(own),
            memory_available: self.system.available_memory(),
            cpu_pressure: None,
            memory_pressure: None,
            user_idle: None,
            on_battery: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn sees_this_process_burning_as_guest() {
        let mut s = SysinfoSampler::open().unwrap();
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
            (l.cpu_pressure, l.user_idle, l.on_battery),
            (None, None, false)
        );
    }
}
