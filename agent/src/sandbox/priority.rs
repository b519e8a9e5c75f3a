//! The CPU priority of guest threads: as low as the OS offers, so that the machine's own programs
//! always run first.
//!
//! - Linux: `SCHED_IDLE`, per thread (with pid 0, `sched_setscheduler` applies to the calling
//!   thread). A `SCHED_IDLE` thread gets a core only when nothing else wants it: two such CPU
//!   hogs slowed a two-core incumbent by ~1 % here, two nice-0 hogs by 97 %.
//! - macOS: the calling thread's background policy (`setpriority(PRIO_DARWIN_THREAD, 0,
//!   PRIO_DARWIN_BG)`), the thread-scoped equivalent there.
//! - Other Unix systems: `nice 19` with `setpriority(PRIO_PROCESS, 0, 19)`. On most of them that
//!   applies to the whole process, not only the calling thread.
//! - Windows: `THREAD_PRIORITY_IDLE` for the calling thread (`SetThreadPriority`): the lowest
//!   priority of a normal process, below every program at normal priority. A pausing guest is
//!   raised to `THREAD_PRIORITY_NORMAL` and lowered again as on Linux (no privilege needed for
//!   a thread of one's own process).
//! - Elsewhere: nothing; guests run at normal priority.
//!
//! Threads inherit their creator's policy: only guest threads may be lowered, never the async
//! runtime's workers nor the epoch ticker.
//!
//! On Linux a guest thread asked to pause is raised for the moment it needs to reach its epoch
//! check ([`boost`]): to `SCHED_OTHER` at nice 0 where the agent may (root, or `CAP_SYS_NICE`, or
//! an `RLIMIT_NICE` of 20), else at nice 19 (an `RLIMIT_NICE` of at least 1), else not at all. At
//! idle priority, beside incumbents that keep every core busy, a guest thread waits for a slice
//! for hundreds of milliseconds; raised, it runs within a scheduler slice, reaches its check
//! within one epoch tick and parks, lowering itself first ([`lower_thread`]). Windows does the
//! same with thread priorities; elsewhere both do nothing.

use std::sync::Once;

/// Lowers the calling thread's CPU priority for good (see the module docs). A failure is logged
/// once per process as a warning, and the guest runs anyway.
pub(crate) fn lower_current_thread() {
    if let Err(error) = lower() {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                %error,
                "cannot lower guest threads to idle priority; guests run at normal priority"
            );
        });
    }
}

/// Whether the calling thread runs at the idle priority that
/// [`Sandbox::run`](super::Sandbox::run) sets: `SCHED_IDLE` on Linux, the background policy on
/// macOS, nice 19 on other Unix systems; always `false` elsewhere.
pub fn current_thread_is_idle_priority() -> bool {
    is_idle()
}

/// An OS thread that [`boost`] and [`lower`] can name from another thread (a Linux or Windows
/// thread ID).
pub(crate) type ThreadId = i32;

/// The calling thread's ID, where the OS has one that [`boost`] can use (Linux, Windows);
/// `None` elsewhere.
pub(crate) fn current_thread_id() -> Option<ThreadId> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no arguments; gettid cannot fail.
        Some(unsafe { libc::gettid() })
    }
    #[cfg(windows)]
    {
        // SAFETY: no arguments; cannot fail.
        ThreadId::try_from(unsafe { windows_sys::Win32::System::Threading::GetCurrentThreadId() })
            .ok()
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        None
    }
}

/// Sets the priority of thread `thread` of this process (Windows).
#[cfg(windows)]
fn set_thread_priority(thread: ThreadId, priority: i32) -> bool {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{
        OpenThread, SetThreadPriority, THREAD_SET_LIMITED_INFORMATION,
    };
    let Ok(id) = u32::try_from(thread) else {
        return false;
    };
    // SAFETY: no pointers; the handle is closed before returning.
    unsafe {
        let handle = OpenThread(THREAD_SET_LIMITED_INFORMATION, 0, id);
        if handle.is_null() {
            return false;
        }
        let set = SetThreadPriority(handle, priority) != 0;
        CloseHandle(handle);
        set
    }
}

/// Raises guest thread `thread` from idle to normal priority, as far as the agent may (see the
/// module docs), so that it reaches its next epoch check without waiting for an idle core. The
/// thread must belong to this process and call [`lower_thread`] (or be lowered) once it got there.
/// Failures are not errors: the thread then stays at idle priority and parks later.
pub(crate) fn boost(thread: ThreadId) {
    #[cfg(target_os = "linux")]
    {
        for nice in [0, LOWEST_NICE] {
            // Set the nice value first: leaving SCHED_IDLE is allowed only for a nice value
            // within RLIMIT_NICE, and SCHED_OTHER keeps the thread's nice value.
            if set_nice(thread, nice) && set_policy(thread, libc::SCHED_OTHER) {
                return;
            }
        }
        static NOTED: Once = Once::new();
        NOTED.call_once(|| {
            tracing::debug!(
                "may not raise a pausing guest's priority (no CAP_SYS_NICE, RLIMIT_NICE 0): on a \
                 saturated machine guests park later"
            );
        });
    }
    #[cfg(windows)]
    set_thread_priority(
        thread,
        windows_sys::Win32::System::Threading::THREAD_PRIORITY_NORMAL,
    );
    #[cfg(not(any(target_os = "linux", windows)))]
    let _ = thread;
}

/// Puts guest thread `thread` (of this process) back at idle priority after a [`boost`].
/// Lowering is always allowed; a failure (the thread is gone) is ignored.
pub(crate) fn lower_thread(thread: ThreadId) {
    #[cfg(target_os = "linux")]
    set_policy(thread, libc::SCHED_IDLE);
    #[cfg(windows)]
    set_thread_priority(
        thread,
        windows_sys::Win32::System::Threading::THREAD_PRIORITY_IDLE,
    );
    #[cfg(not(any(target_os = "linux", windows)))]
    let _ = thread;
}

/// The lowest `nice` value: where guests are boosted to on Linux when nice 0 is not allowed, and
/// their priority on other Unix systems.
#[cfg(all(unix, not(target_vendor = "apple")))]
const LOWEST_NICE: libc::c_int = 19;

#[cfg(target_os = "linux")]
fn set_nice(thread: ThreadId, nice: libc::c_int) -> bool {
    let Ok(who) = libc::id_t::try_from(thread) else {
        return false;
    };
    // SAFETY: no pointers; on Linux PRIO_PROCESS with a thread ID applies to that thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) == 0 }
}

/// `sched_setscheduler(2)` with priority 0 for thread `thread` (0: the calling thread), made
/// directly: musl's wrapper fails with ENOSYS on purpose (the system call sets one thread's
/// policy, where POSIX speaks of a process), and the static agent is built with musl.
#[cfg(target_os = "linux")]
fn sched_setscheduler(thread: ThreadId, policy: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain data; all zero is priority 0 (and, in musl's larger struct, no
    // sporadic-server budget).
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: the system call reads `param`, which outlives it; no other pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            libc::c_long::from(thread),
            libc::c_long::from(policy),
            &param as *const libc::sched_param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn set_policy(thread: ThreadId, policy: libc::c_int) -> bool {
    sched_setscheduler(thread, policy).is_ok()
}

#[cfg(target_os = "linux")]
fn lower() -> std::io::Result<()> {
    sched_setscheduler(0, libc::SCHED_IDLE)
}

#[cfg(target_os = "linux")]
fn is_idle() -> bool {
    // SAFETY: no pointers; 0 is the calling thread. Made directly, as above.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0 as libc::c_long) };
    policy == libc::c_long::from(libc::SCHED_IDLE)
}

#[cfg(target_vendor = "apple")]
fn lower() -> std::io::Result<()> {
    // SAFETY: no pointers; who 0 is the calling thread for PRIO_DARWIN_THREAD.
    let rc = unsafe { libc::setpriority(libc::PRIO_DARWIN_THREAD, 0, libc::PRIO_DARWIN_BG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_vendor = "apple")]
fn is_idle() -> bool {
    // SAFETY: no pointers; who 0 is the calling thread for PRIO_DARWIN_THREAD, for which the
    // result is positive when the thread is in the background, 0 when not (-1 on error).
    unsafe { libc::getpriority(libc::PRIO_DARWIN_THREAD, 0) > 0 }
}

#[cfg(all(unix, not(target_os = "linux"), not(target_vendor = "apple")))]
fn lower() -> std::io::Result<()> {
    // SAFETY: no pointers; who 0 is the calling process.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOWEST_NICE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(all(unix, not(target_os = "linux"), not(target_vendor = "apple")))]
fn is_idle() -> bool {
    // SAFETY: no pointers; who 0 is the calling process. (-1 is also how it reports an error;
    // either way it is not the lowest priority.)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) >= LOWEST_NICE }
}

#[cfg(windows)]
fn lower() -> std::io::Result<()> {
    use windows_sys::Win32::System::Threading::{
        GetCurrentThread, SetThreadPriority, THREAD_PRIORITY_IDLE,
    };
    // SAFETY: the calling thread's pseudo-handle; no pointers.
    if unsafe { SetThreadPriority(GetCurrentThread(), THREAD_PRIORITY_IDLE) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(windows)]
fn is_idle() -> bool {
    use windows_sys::Win32::System::Threading::{
        GetCurrentThread, GetThreadPriority, THREAD_PRIORITY_IDLE,
    };
    // SAFETY: the calling thread's pseudo-handle; no pointers.
    unsafe { GetThreadPriority(GetCurrentThread()) == THREAD_PRIORITY_IDLE }
}

#[cfg(not(any(unix, windows)))]
fn lower() -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn is_idle() -> bool {
    false
}
