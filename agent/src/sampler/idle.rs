//! Time since a person last used the machine, on Linux, without D-Bus or a display server.
//!
//! Two sources, both checked at most once a second:
//!
//! - **Keyboards and pointers**: each `/dev/input/eventN` that `capabilities` says is a keyboard
//!   or a mouse/touchpad/touchscreen/tablet is held open non-blocking, and every check drains
//!   what it queued: any event means input since the last check. The event bytes are discarded
//!   unread. This sees every physical input whatever runs on top (X11, Wayland, text console),
//!   but needs read access to the devices (root, or the `input` group). The inode times of these
//!   devices are *not* updated by input, so they cannot be used instead.
//! - **Terminals**: the access time of each `/dev/pts/N`, which the kernel's tty layer sets when
//!   a program reads typed input, to within 8 seconds (deliberately coarse: finer times would leak
//!   keystroke timing). `w` and logind read tty idleness the same way. This adds SSH sessions and
//!   terminal emulators on the machine; it needs no privileges.
//!
//! The answer is `None` — unknown — when the machine has no keyboard or pointer (servers, most
//! containers), and when it has some but none can be opened: terminal activity alone would then
//! call a desktop idle while its owner works in a browser. Not covered: input grabbed exclusively
//! by another program (`EVIOCGRAB`), remote desktops (their input is not a device), and activity a
//! desktop counts without input (a playing video). Input before the first check is not known:
//! the idle time counts from the moment the devices were first opened.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::parse::{self, InputKind};

/// How often the sources are looked at; between checks the idle time grows with the clock.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// An open input device.
#[derive(Debug)]
struct InputDevice {
    /// `eventN`.
    name: OsString,
    file: File,
}

/// Tracks the time since the last keyboard, mouse or terminal input.
#[derive(Debug)]
pub(crate) struct UserIdle {
    sys_input: PathBuf,
    dev_input: PathBuf,
    dev_pts: PathBuf,
    devices: Vec<InputDevice>,
    /// The last scan found keyboards or pointers, opened or not.
    console: bool,
    /// `/dev/input`'s modification time at the last scan: devices come and go with it.
    dev_input_mtime: Option<SystemTime>,
    /// A device vanished: scan again at the next check.
    rescan: bool,
    /// The last check that saw input, or the moment the devices were first opened.
    last_input: Option<Instant>,
    /// The last check and its answer.
    checked: Option<(Instant, Option<Duration>)>,
    /// Whether the "cannot read the input devices" notice was logged.
    warned: bool,
}

impl UserIdle {
    /// Watches the system's devices.
    pub(crate) fn new() -> Self {
        Self::with_roots(
            Path::new("/sys/class/input"),
            Path::new("/dev/input"),
            Path::new("/dev/pts"),
        )
    }

    /// Watches devices described under `sys_input` (like `/sys/class/input`), opened from
    /// `dev_input` (like `/dev/input`), and terminals in `dev_pts` (like `/dev/pts`).
    pub(crate) fn with_roots(sys_input: &Path, dev_input: &Path, dev_pts: &Path) -> Self {
        Self {
            sys_input: sys_input.to_owned(),
            dev_input: dev_input.to_owned(),
            dev_pts: dev_pts.to_owned(),
            devices: Vec::new(),
            console: false,
            dev_input_mtime: None,
            rescan: true,
            last_input: None,
            checked: None,
            warned: false,
        }
    }

    /// Time since the last input as of `now`; looks at the devices at most once a second.
    pub(crate) fn get(&mut self, now: Instant) -> Option<Duration> {
        if let Some((at, idle)) = self.checked {
            let age = now.saturating_duration_since(at);
            if age < CHECK_EVERY {
                return idle.map(|d| d + age);
            }
        }
        let idle = self.check(now);
        self.checked = Some((now, idle));
        idle
    }

    fn check(&mut self, now: Instant) -> Option<Duration> {
        let mtime = fs::metadata(&self.dev_input)
            .and_then(|m| m.modified())
            .ok();
        if self.rescan || mtime != self.dev_input_mtime {
            self.dev_input_mtime = mtime;
            self.rescan = false;
            self.scan(now);
        }
        let (mut active, mut gone) = (false, false);
        self.devices.retain_mut(|d| match drain(&mut d.file) {
            Ok(saw) => {
                active |= saw;
                true
            }
            Err(_) => {
                gone = true;
                false
            }
        });
        self.rescan |= gone;
        if active {
            self.last_input = Some(now);
        }
        if !self.console || self.devices.is_empty() {
            return None;
        }
        let since_input = now.saturating_duration_since(self.last_input?);
        let since_typing =
            newest_access(&self.dev_pts).and_then(|t| SystemTime::now().duration_since(t).ok());
        Some(since_typing.map_or(since_input, |t| t.min(since_input)))
    }

    /// Lists the keyboards and pointers and opens the ones not open yet.
    fn scan(&mut self, now: Instant) {
        let mut console = false;
        let mut denied = false;
        let entries = fs::read_dir(&self.sys_input)
            .into_iter()
            .flatten()
            .flatten();
        for entry in entries {
            let name = entry.file_name();
            if !name.to_str().is_some_and(|n| n.starts_with("event")) {
                continue;
            }
            let caps = entry.path().join("device/capabilities");
            let read = |attr: &str| fs::read_to_string(caps.join(attr)).unwrap_or_default();
            let kind = parse::classify_input(&read("ev"), &read("key"), &read("rel"), &read("abs"));
            if !matches!(kind, Ok(InputKind::Keyboard | InputKind::Pointer)) {
                continue;
            }
            console = true;
            if self.devices.iter().any(|d| d.name == name) {
                continue;
            }
            let opened = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(self.dev_input.join(&name));
            match opened {
                Ok(file) => {
                    self.last_input.get_or_insert(now);
                    self.devices.push(InputDevice { name, file });
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied = true,
                Err(e) => tracing::debug!("user idle: cannot open {name:?}: {e}"),
            }
        }
        self.console = console;
        if console && denied && self.devices.is_empty() && !self.warned {
            self.warned = true;
            tracing::info!(
                "user idle unknown: no permission to read the keyboards and pointers in {} \
                 (run the agent as root or in the `input` group)",
                self.dev_input.display()
            );
        }
    }
}

/// Reads and discards everything queued on a non-blocking device; whether there was anything.
/// An error other than "nothing queued" means the device is gone.
fn drain(device: &mut impl Read) -> io::Result<bool> {
    // 64 evdev events of 24 bytes; a flood is bounded by the loop, the rest waits a second.
    let mut buf = [0u8; 24 * 64];
    let mut saw = false;
    for _ in 0..64 {
        match device.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => saw = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(saw)
}

/// The newest access time of the numbered entries of `dir` (`/dev/pts/0`, `/dev/pts/1`, ...;
/// not `ptmx`, whose time moves with terminal *output*).
fn newest_access(dir: &Path) -> Option<SystemTime> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| e.metadata().ok()?.accessed().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;

    const KEYBOARD: [(&str, &str); 4] = [
        ("ev", "120013\n"),
        (
            "key",
            "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe\n",
        ),
        ("rel", "0\n"),
        ("abs", "0\n"),
    ];
    const POWER_BUTTON: [(&str, &str); 4] = [
        ("ev", "3\n"),
        ("key", "10000000000000 0\n"),
        ("rel", "0\n"),
        ("abs", "0\n"),
    ];

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["sys", "dev", "pts"] {
                fs::create_dir(dir.path().join(sub)).unwrap();
            }
            Self { dir }
        }
        fn path(&self, sub: &str) -> PathBuf {
            self.dir.path().join(sub)
        }
        /// An input device whose node is a FIFO: writing to it is "input".
        fn device(&self, name: &str, caps: [(&str, &str); 4]) -> PathBuf {
            let c = self.path("sys").join(name).join("device/capabilities");
            fs::create_dir_all(&c).unwrap();
            for (attr, text) in caps {
                fs::write(c.join(attr), text).unwrap();
            }
            let node = self.path("dev").join(name);
            let cpath = CString::new(node.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
            node
        }
        fn idle(&self) -> UserIdle {
            UserIdle::with_roots(&self.path("sys"), &self.path("dev"), &self.path("pts"))
        }
    }

    #[test]
    fn counts_from_the_last_input_event() {
        let fake = Fake::new();
        let node = fake.device("event0", KEYBOARD);
        let mut idle = fake.idle();
        let t0 = Instant::now();
        assert_eq!(idle.get(t0), Some(Duration::ZERO), "watching starts now");
        assert_eq!(
            idle.get(t0 + Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
        let mut input = OpenOptions::new().write(true).open(&node).unwrap();
        input.write_all(&[0u8; 48]).unwrap();
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(idle.get(t2), Some(Duration::ZERO), "the event was seen");
        assert_eq!(
            idle.get(t2 + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn newest_terminal_input_counts_too() {
        let fake = Fake::new();
        fake.device("event0", KEYBOARD);
        let now = SystemTime::now();
        for (name, ago) in [("0", 3600), ("1", 120), ("ptmx", 0)] {
            let f = File::create(fake.path("pts").join(name)).unwrap();
            let when = now - Duration::from_secs(ago);
            f.set_times(fs::FileTimes::new().set_accessed(when))
                .unwrap();
        }
        assert_eq!(
            newest_access(&fake.path("pts")),
            Some(now - Duration::from_secs(120))
        );
        let mut idle = fake.idle();
        // Input devices were opened just now, so they say 0; terminals say 120 s: the least wins.
        let t0 = Instant::now();
        assert_eq!(idle.get(t0), Some(Duration::ZERO));
        let later = idle.get(t0 + Duration::from_secs(1000)).unwrap();
        assert!(
            later >= Duration::from_secs(119) && later <= Duration::from_secs(200),
            "{later:?}"
        );
    }

    #[test]
    fn unknown_without_a_console() {
        let fake = Fake::new();
        fake.device("event0", POWER_BUTTON);
        let mut idle = fake.idle();
        assert_eq!(idle.get(Instant::now()), None);
    }

    #[test]
    fn unknown_when_the_devices_cannot_be_opened() {
        let fake = Fake::new();
        let node = fake.device("event0", KEYBOARD);
        fs::remove_file(node).unwrap();
        let mut idle = fake.idle();
        assert_eq!(idle.get(Instant::now()), None);
    }

    #[test]
    fn unknown_without_sysfs() {
        let mut idle = UserIdle::with_roots(
            Path::new("/nonexistent/sys"),
            Path::new("/nonexistent/dev"),
            Path::new("/nonexistent/pts"),
        );
        assert_eq!(idle.get(Instant::now()), None);
    }

    #[test]
    fn drain_reports_queued_bytes_once() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut reader = File::from(std::os::fd::OwnedFd::from(reader));
        {
            use std::os::fd::AsRawFd;
            let fd = reader.as_raw_fd();
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK), 0);
            }
        }
        assert!(!drain(&mut reader).unwrap());
        writer.write_all(&[1u8; 5000]).unwrap();
        assert!(drain(&mut reader).unwrap());
        assert!(!drain(&mut reader).unwrap());
    }

    #[test]
    fn drain_reports_a_broken_device() {
        struct Gone;
        impl Read for Gone {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENODEV))
            }
        }
        assert!(drain(&mut Gone).is_err());
    }
}
