//! The signals macOS gives: input idle, battery, memory pressure.
//!
//! - **Input idle**: the `HIDIdleTime` property of the `IOHIDSystem` service in the I/O Registry,
//!   nanoseconds since the last keyboard, mouse or trackpad event of any user. It is readable by
//!   a launchd daemon, so the agent sees the owner as a system service.
//! - **On battery**: `IOPSGetProvidingPowerSourceType` of the power sources' snapshot is
//!   "Battery Power".
//! - **Low memory**: the kernel's memory pressure level (`kern.memorystatus_vm_pressure_level`:
//!   1 normal, 2 warning, 4 critical), low from warning on — the level at which macOS itself
//!   asks applications to free memory.
//!
//! The I/O Kit and Core Foundation calls are declared here; they are few and stable since
//! macOS 10.0.

use std::ffi::{CStr, c_char, c_void};
use std::time::{Duration, Instant};

use super::OsSignals;

type CFTypeRef = *const c_void;
type CFStringRef = *const c_void;
type IoService = u32;

const UTF8: u32 = 0x0800_0100;
const SINT64: isize = 4;
/// `kIOMainPortDefault`: the default main port (MACH_PORT_NULL).
const MAIN_PORT_DEFAULT: u32 = 0;

#[link(name = "IOKit", kind = "framework")]
unsafe extern "C" {
    fn IOServiceMatching(name: *const c_char) -> *mut c_void;
    fn IOServiceGetMatchingService(main_port: u32, matching: *mut c_void) -> IoService;
    fn IORegistryEntryCreateCFProperty(
        entry: IoService,
        key: CFStringRef,
        allocator: *const c_void,
        options: u32,
    ) -> CFTypeRef;
    fn IOObjectRelease(object: IoService) -> i32;
    fn IOPSCopyPowerSourcesInfo() -> CFTypeRef;
    fn IOPSGetProvidingPowerSourceType(snapshot: CFTypeRef) -> CFStringRef;
}

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    fn CFStringCreateWithCString(
        allocator: *const c_void,
        text: *const c_char,
        encoding: u32,
    ) -> CFStringRef;
    fn CFStringGetCString(text: CFStringRef, buf: *mut c_char, size: isize, encoding: u32) -> u8;
    fn CFNumberGetValue(number: CFTypeRef, kind: isize, value: *mut c_void) -> u8;
    fn CFGetTypeID(object: CFTypeRef) -> usize;
    fn CFNumberGetTypeID() -> usize;
    fn CFRelease(object: CFTypeRef);
}

/// Reads the macOS signals.
#[derive(Debug)]
pub(crate) struct MacSignals {
    /// The `IOHIDSystem` service; 0 when absent.
    hid: IoService,
    /// The string `HIDIdleTime`; null when it could not be made.
    idle_key: CFStringRef,
}

// SAFETY: an I/O Kit object reference and an immutable CFString may be used from any thread.
unsafe impl Send for MacSignals {}

impl MacSignals {
    /// Finds the `IOHIDSystem` service.
    pub(crate) fn new() -> Self {
        // SAFETY: the name is a C string; IOServiceGetMatchingService takes (releases) the
        // matching dictionary.
        let hid = unsafe {
            let matching = IOServiceMatching(c"IOHIDSystem".as_ptr());
            if matching.is_null() {
                0
            } else {
                IOServiceGetMatchingService(MAIN_PORT_DEFAULT, matching)
            }
        };
        // SAFETY: a C string in UTF-8.
        let idle_key =
            unsafe { CFStringCreateWithCString(std::ptr::null(), c"HIDIdleTime".as_ptr(), UTF8) };
        Self { hid, idle_key }
    }
}

impl Drop for MacSignals {
    fn drop(&mut self) {
        // SAFETY: each was obtained once above and is released once.
        unsafe {
            if self.hid != 0 {
                IOObjectRelease(self.hid);
            }
            if !self.idle_key.is_null() {
                CFRelease(self.idle_key);
            }
        }
    }
}

impl OsSignals for MacSignals {
    fn user_idle(&mut self, _now: Instant) -> Option<Duration> {
        if self.hid == 0 || self.idle_key.is_null() {
            return None;
        }
        // SAFETY: the service and key are valid; the property is released after reading, and
        // read only when it is a CFNumber.
        unsafe {
            let value =
                IORegistryEntryCreateCFProperty(self.hid, self.idle_key, std::ptr::null(), 0);
            if value.is_null() {
                return None;
            }
            let mut nanos: i64 = 0;
            let ok = CFGetTypeID(value) == CFNumberGetTypeID()
                && CFNumberGetValue(value, SINT64, (&mut nanos as *mut i64).cast()) != 0;
            CFRelease(value);
            ok.then(|| Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
        }
    }

    fn on_battery(&mut self, _now: Instant) -> bool {
        // SAFETY: the snapshot is released after use; the type string belongs to it and is
        // copied out before.
        unsafe {
            let snapshot = IOPSCopyPowerSourcesInfo();
            if snapshot.is_null() {
                return false;
            }
            let kind = IOPSGetProvidingPowerSourceType(snapshot);
            let mut buf = [0 as c_char; 32];
            let read = !kind.is_null()
                && CFStringGetCString(kind, buf.as_mut_ptr(), buf.len() as isize, UTF8) != 0;
            CFRelease(snapshot);
            read && CStr::from_ptr(buf.as_ptr()).to_bytes() == b"Battery Power"
        }
    }

    fn memory_low(&mut self, _now: Instant) -> bool {
        let mut level: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>();
        // SAFETY: the name is a C string; writes at most `size` bytes into `level`.
        let read = unsafe {
            libc::sysctlbyname(
                c"kern.memorystatus_vm_pressure_level".as_ptr(),
                (&mut level as *mut libc::c_int).cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        } == 0;
        read && level >= 2
    }
}
