//! The Linux load sampler: procfs files held open and re-read in place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::idle::UserIdle;
use super::logind::{Bus, LogindIdle};
use super::parse::{self, CpuTimes, ParseError};
use super::power::PowerSupplies;
use super::{Load, OsSignals, ReadFailures};

/// How often `/proc/pressure/*` is re-read: the kernel recomputes `avg10` only every 2 s.
const PSI_EVERY: Duration = Duration::from_millis(500);

/// `/proc/meminfo` is read on one sample in this many (every 100 ms at 50 Hz): it costs about
/// a quarter of a sample, and memory is acted on by eviction, which takes far longer.
const MEMINFO_EVERY: u32 = 5;

/// A procfs file kept open and re-read from its start into a buffer allocated once.
#[derive(Debug)]
struct ProcFile {
    path: &'static str,
    file: File,
    buf: Box<[u8]>,
}

impl ProcFile {
    /// Opens `path`; each read returns at most its first `size` bytes.
    fn open(path: &'static str, size: usize) -> io::Result<Self> {
        let file =
            File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        Ok(Self {
            path,
            file,
            buf: vec![0; size].into_boxed_slice(),
        })
    }

    /// The file's current text (a prefix of it when longer than the buffer).
    ///
    /// One `pread(2)` at offset 0: procfs (seq_file) regenerates the text whenever a read starts
    /// elsewhere than where the previous one ended, exactly as after `lseek(0)` + `read(2)`, with
    /// one system call fewer. The whole text is generated even when only a prefix is read, so the
    /// prefix saves copying, not the kernel's work.
    fn read(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.file.read_at(&mut self.buf, 0) {
                Ok(n) => return Ok(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and parses; both kinds of failure as an `io::Error` naming the file.
    fn parse<T>(&mut self, parse: fn(&[u8]) -> Result<T, ParseError>) -> io::Result<T> {
        let path = self.path;
        let text = self.read()?;
        parse(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
    }
}

/// Samples `/proc/stat`, this process's CPU clock, `/proc/meminfo` and `/proc/pressure/*`, plus
/// the slower power and user-idle sources.
#[derive(Debug)]
pub(crate) struct ProcfsSampler {
    stat: ProcFile,
    /// USER_HZ: `/proc/stat` counts in 1/`ticks_per_s` of a second.
    ticks_per_s: f64,
    meminfo: ProcFile,
    psi_cpu: Option<ProcFile>,
    psi_memory: Option<ProcFile>,
    psi_read: Option<Instant>,
    /// Samples taken, for reading meminfo on one in [`MEMINFO_EVERY`].
    samples: u32,
    /// Machine CPU times at the last sample that moved the window forward.
    cpu: CpuTimes,
    /// This process's CPU time at that same sample, in (fractional) ticks.
    own_ticks: f64,
    /// The last values: returned again for any source that cannot be read this time.
    last: Load,
    signals: LinuxSignals,
    failures: ReadFailures,
}

impl ProcfsSampler {
    /// Opens the files and reads the starting point of the first window.
    pub(crate) fn open() -> io::Result<Self> {
        let mut stat = ProcFile::open("/proc/stat", 512)?;
        // SAFETY: no pointers.
        let ticks_per_s = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            n if n > 0 => n as f64,
            _ => 100.0,
        };
        // MemAvailable is the third line; 1 KiB also holds MemFree, Buffers and Cached for
        // kernels before 3.14.
        let mut meminfo = ProcFile::open("/proc/meminfo", 1024)?;
        let cpu = stat.parse(parse::proc_stat_cpu)?;
        let own_ticks = process_cpu_time()?.as_secs_f64() * ticks_per_s;
        let memory_available = meminfo.parse(parse::meminfo_available)?;
        let mut sampler = Self {
            stat,
            ticks_per_s,
            meminfo,
            psi_cpu: ProcFile::open("/proc/pressure/cpu", 256).ok(),
            psi_memory: ProcFile::open("/proc/pressure/memory", 256).ok(),
            psi_read: None,
            samples: 0,
            cpu,
            own_ticks,
            last: Load {
                memory_available,
                ..Load::default()
            },
            signals: LinuxSignals {
                power: PowerSupplies::new(),
                idle: UserIdle::new(),
                logind: None,
            },
            failures: ReadFailures::default(),
        };
        if sampler.psi_cpu.is_none() {
            tracing::debug!("/proc/pressure is not available: pressure figures will be absent");
        }
        // Settle the slow sources now rather than in the first sample.
        let now = Instant::now();
        sampler.read_psi(now);
        sampler.last.on_battery = sampler.signals.on_battery(now);
        sampler.last.user_idle = sampler.signals.user_idle(now);
        Ok(sampler)
    }

    /// One sample; see the module documentation of `sampler` for what each figure means.
    pub(crate) fn sample(&mut self) -> Load {
        let now = Instant::now();
        if let Err(e) = self.sample_cpu() {
            self.failures.note(&e);
        }
        self.samples = self.samples.wrapping_add(1);
        if self.samples.is_multiple_of(MEMINFO_EVERY) {
            match self.meminfo.parse(parse::meminfo_available) {
                Ok(bytes) => self.last.memory_available = bytes,
                Err(e) => self.failures.note(&e),
            }
        }
        if self
            .psi_read
            .is_none_or(|at| now.saturating_duration_since(at) >= PSI_EVERY)
        {
            self.read_psi(now);
        }
        self.last.on_battery = self.signals.on_battery(now);
        self.last.user_idle = self.signals.user_idle(now);
        self.last
    }

    /// Updates the CPU fractions over the window since the last sample that moved it.
    fn sample_cpu(&mut self) -> io::Result<()> {
        let own_ticks = process_cpu_time()?.as_secs_f64() * self.ticks_per_s;
        let cpu = self.stat.parse(parse::proc_stat_cpu)?;
        let total = cpu.total.saturating_sub(self.cpu.total);
        if total == 0 {
            // Within the same tick: nothing new to say. Keep the window open so that the next
            // sample covers both intervals, and repeat the last fractions.
            return Ok(());
        }
        let busy = cpu.busy.saturating_sub(self.cpu.busy) as f64;
        let mine = (own_ticks - self.own_ticks).max(0.0);
        let total = total as f64;
        self.last.incumbent_cpu = fraction(busy - mine, total);
        self.last.guest_cpu = fraction(mine, total);
        self.cpu = cpu;
        self.own_ticks = own_ticks;
        Ok(())
    }

    fn read_psi(&mut self, now: Instant) {
        self.psi_read = Some(now);
        self.last.cpu_pressure = psi(&mut self.psi_cpu);
        self.last.memory_pressure = psi(&mut self.psi_memory);
        self.last.memory_low = self.signals.memory_low(now);
    }
}

/// Linux's own signals: input devices and terminals (else logind's graphical sessions), power
/// supplies. Low memory is not among them: the pressure stall figures say more.
#[derive(Debug)]
struct LinuxSignals {
    power: PowerSupplies,
    idle: UserIdle,
    /// Started the first time the input devices cannot say.
    logind: Option<LogindIdle>,
}

impl OsSignals for LinuxSignals {
    fn user_idle(&mut self, now: Instant) -> Option<Duration> {
        self.idle.get(now).or_else(|| {
            self.logind
                .get_or_insert_with(|| LogindIdle::watch(Bus::System))
                .get(now)
        })
    }
    fn on_battery(&mut self, now: Instant) -> bool {
        self.power.on_battery(now)
    }
    fn memory_low(&mut self, _now: Instant) -> bool {
        false
    }
}

/// `some avg10` of an open pressure file; `None` when absent or unreadable (PSI disabled with
/// `psi=0` leaves the files in place but failing with `EOPNOTSUPP`).
fn psi(file: &mut Option<ProcFile>) -> Option<f64> {
    file.as_mut()?.parse(parse::psi_some_avg10).ok()
}

/// `part / whole`, clamped to `0.0..=1.0`; `whole` is above zero.
fn fraction(part: f64, whole: f64) -> f64 {
    (part / whole).clamp(0.0, 1.0)
}

/// The CPU time of this whole process, every thread together including those that have ended,
/// to the nanosecond (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu_time() -> io::Result<Duration> {
    read_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
        .map_err(|e| io::Error::new(e.kind(), format!("this process's CPU clock: {e}")))
}

/// Reads one of the kernel's clocks.
fn read_clock(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(d: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < d {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    #[test]
    fn pread_at_zero_returns_fresh_counters() {
        let mut stat = ProcFile::open("/proc/stat", 512).unwrap();
        let before = stat.parse(parse::proc_stat_cpu).unwrap();
        burn(Duration::from_millis(60));
        let after = stat.parse(parse::proc_stat_cpu).unwrap();
        assert!(
            after.busy > before.busy,
            "{before:?} -> {after:?}: the counters must move between reads"
        );
    }

    /// This thread's CPU time.
    fn thread_cpu_time() -> Duration {
        read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap()
    }

    #[test]
    fn the_process_clock_counts_this_process() {
        let before = process_cpu_time().unwrap();
        // Burn 30 ms of this thread's CPU, however long that takes on a busy machine.
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(30) {
            burn(Duration::from_millis(1));
        }
        let used = process_cpu_time().unwrap() - before;
        assert!(used >= Duration::from_millis(30), "{used:?}");
    }

    #[test]
    fn samples_are_sane() {
        let mut s = ProcfsSampler::open().unwrap();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            let l = s.sample();
            assert!((0.0..=1.0).contains(&l.incumbent_cpu), "{l:?}");
            assert!((0.0..=1.0).contains(&l.guest_cpu), "{l:?}");
            assert!(l.memory_available > 0, "{l:?}");
            if std::path::Path::new("/proc/pressure/cpu").exists() {
                assert!(l.cpu_pressure.is_some(), "{l:?}");
            }
        }
    }

    #[test]
    fn fractions_clamp() {
        assert_eq!(fraction(0.0, 4.0), 0.0);
        assert_eq!(fraction(2.0, 4.0), 0.5);
        assert_eq!(fraction(9.0, 4.0), 1.0);
        assert_eq!(fraction(-1.5, 4.0), 0.0);
    }
}
