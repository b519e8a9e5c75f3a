//! The load sampler on Windows, and the signals Windows gives: input idle, battery, low memory.
//!
//! CPU: `GetSystemTimes` gives the machine's idle, kernel (idle included) and user time of all
//! processors, `GetProcessTimes` this process's kernel and user time, all in 100 ns units, so
//! that `incumbent = (Δbusy − Δown) / Δtotal` and `guest = Δown / Δtotal` as on Linux, with
//! `busy = kernel + user − idle` and `total = kernel + user`. Windows updates these times at
//! each clock interrupt (15.6 ms by default), so a 20 ms sample resolves about one tick per
//! core. Available memory: `ullAvailPhys` of `GlobalMemoryStatusEx`, every fifth sample.
//!
//! - **Input idle**: `GetLastInputInfo`, the tick of the last keyboard or mouse input in the
//!   caller's session, against `GetTickCount` (both wrap after 49.7 days; the difference does
//!   not). A service runs in session 0, where no one types: there the figure is `None`, not an
//!   idle machine that never ends.
//! - **On battery**: `GetSystemPowerStatus` says the AC line is offline and the machine has a
//!   system battery.
//! - **Low memory**: the system's low-memory resource notification, which Windows signals when
//!   available physical memory runs low (the memory manager's own threshold, about 32 MiB per
//!   4 GiB), queried without waiting.

use std::io;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE};
use windows_sys::Win32::System::Memory::{
    CreateMemoryResourceNotification, LowMemoryResourceNotification,
    QueryMemoryResourceNotification,
};
use windows_sys::Win32::System::Power::{GetSystemPowerStatus, SYSTEM_POWER_STATUS};
use windows_sys::Win32::System::RemoteDesktop::ProcessIdToSessionId;
use windows_sys::Win32::System::SystemInformation::{
    GetTickCount, GlobalMemoryStatusEx, MEMORYSTATUSEX,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentProcessId, GetProcessTimes, GetSystemTimes,
};
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};

use super::{Load, OsSignals, ReadFailures, SignalCache};

/// Available memory is read on one sample in this many.
const MEMORY_EVERY: u32 = 5;

/// Machine and process CPU times, in 100 ns units.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    busy: u64,
    total: u64,
    own: u64,
}

fn ticks(t: FILETIME) -> u64 {
    (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
}

fn times() -> io::Result<Times> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut idle, mut kernel, mut user) = (zero, zero, zero);
    // SAFETY: writes the three structs it is given.
    if unsafe { GetSystemTimes(&mut idle, &mut kernel, &mut user) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut created, mut exited, mut own_kernel, mut own_user) = (zero, zero, zero, zero);
    // SAFETY: the pseudo-handle of this process; writes the four structs it is given.
    if unsafe {
        GetProcessTimes(
            GetCurrentProcess(),
            &mut created,
            &mut exited,
            &mut own_kernel,
            &mut own_user,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let total = ticks(kernel).saturating_add(ticks(user));
    Ok(Times {
        busy: total.saturating_sub(ticks(idle)),
        total,
        own: ticks(own_kernel).saturating_add(ticks(own_user)),
    })
}

fn available_memory() -> io::Result<u64> {
    // SAFETY: plain data, filled in by the call once its length is set.
    let mut status: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
    status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
    // SAFETY: writes the struct it is given, whose length is set.
    if unsafe { GlobalMemoryStatusEx(&mut status) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status.ullAvailPhys)
}

/// Samples the machine's and this process's CPU times, available memory, and the signals.
#[derive(Debug)]
pub(crate) struct WindowsSampler {
    /// The times at the last sample that moved the window forward.
    times: Times,
    samples: u32,
    last: Load,
    signals: SignalCache<WindowsSignals>,
    failures: ReadFailures,
}

impl WindowsSampler {
    /// Reads the starting point of the first window.
    pub(crate) fn open() -> io::Result<Self> {
        let mut signals = SignalCache::new(WindowsSignals::new());
        let read = signals.get(Instant::now());
        Ok(Self {
            times: times()?,
            samples: 0,
            last: Load {
                memory_available: available_memory()?,
                user_idle: read.user_idle,
                on_battery: read.on_battery,
                memory_low: read.memory_low,
                ..Load::default()
            },
            signals,
            failures: ReadFailures::default(),
        })
    }

    /// One sample over the time since the previous one that moved the window.
    pub(crate) fn sample(&mut self) -> Load {
        match times() {
            Ok(now) => {
                let total = now.total.saturating_sub(self.times.total);
                // Within one clock tick nothing has moved: repeat the last fractions and keep
                // the window open.
                if total > 0 {
                    let busy = now.busy.saturating_sub(self.times.busy) as f64;
                    let own = now.own.saturating_sub(self.times.own) as f64;
                    let total = total as f64;
                    self.last.incumbent_cpu = ((busy - own) / total).clamp(0.0, 1.0);
                    self.last.guest_cpu = (own / total).clamp(0.0, 1.0);
                    self.times = now;
                }
            }
            Err(e) => self.failures.note(&e),
        }
        self.samples = self.samples.wrapping_add(1);
        if self.samples.is_multiple_of(MEMORY_EVERY) {
            match available_memory() {
                Ok(bytes) => self.last.memory_available = bytes,
                Err(e) => self.failures.note(&e),
            }
        }
        let read = self.signals.get(Instant::now());
        self.last.user_idle = read.user_idle;
        self.last.on_battery = read.on_battery;
        self.last.memory_low = read.memory_low;
        self.last
    }
}

/// `ACLineStatus` of an unplugged machine.
const AC_OFFLINE: u8 = 0;
/// `BatteryFlag` bits: no system battery, status unknown.
const NO_BATTERY: u8 = 128;
const BATTERY_UNKNOWN: u8 = 255;

/// Reads the Windows signals.
#[derive(Debug)]
pub(crate) struct WindowsSignals {
    /// Whether this process runs in an interactive session (not session 0, the services').
    interactive: bool,
    /// The low-memory notification object; null when it could not be made.
    low_memory: HANDLE,
}

// SAFETY: the handle is a kernel object handle, usable from any thread.
unsafe impl Send for WindowsSignals {}

impl WindowsSignals {
    /// Looks up the session and opens the low-memory notification.
    pub(crate) fn new() -> Self {
        let mut session = 0u32;
        // SAFETY: writes one u32 it is given.
        let found = unsafe { ProcessIdToSessionId(GetCurrentProcessId(), &mut session) } != 0;
        // SAFETY: no pointers; returns null on failure.
        let low_memory = unsafe { CreateMemoryResourceNotification(LowMemoryResourceNotification) };
        Self {
            interactive: found && session != 0,
            low_memory,
        }
    }
}

impl Drop for WindowsSignals {
    fn drop(&mut self) {
        if !self.low_memory.is_null() {
            // SAFETY: the handle is ours and closed once.
            unsafe { CloseHandle(self.low_memory) };
        }
    }
}

impl OsSignals for WindowsSignals {
    fn user_idle(&mut self, _now: Instant) -> Option<Duration> {
        if !self.interactive {
            return None;
        }
        let mut info = LASTINPUTINFO {
            cbSize: std::mem::size_of::<LASTINPUTINFO>() as u32,
            dwTime: 0,
        };
        // SAFETY: `info` is initialised with its size, as the call requires.
        if unsafe { GetLastInputInfo(&mut info) } == 0 {
            return None;
        }
        // SAFETY: no arguments.
        let ticks = unsafe { GetTickCount() };
        Some(Duration::from_millis(u64::from(
            ticks.wrapping_sub(info.dwTime),
        )))
    }

    fn on_battery(&mut self, _now: Instant) -> bool {
        // SAFETY: plain data, filled in by the call.
        let mut status: SYSTEM_POWER_STATUS = unsafe { std::mem::zeroed() };
        // SAFETY: writes the struct it is given.
        if unsafe { GetSystemPowerStatus(&mut status) } == 0 {
            return false;
        }
        status.ACLineStatus == AC_OFFLINE
            && status.BatteryFlag != BATTERY_UNKNOWN
            && status.BatteryFlag & NO_BATTERY == 0
    }

    fn memory_low(&mut self, _now: Instant) -> bool {
        if self.low_memory.is_null() {
            return false;
        }
        let mut state = 0;
        // SAFETY: the handle is open; writes one BOOL.
        unsafe { QueryMemoryResourceNotification(self.low_memory, &mut state) != 0 && state != 0 }
    }
}
