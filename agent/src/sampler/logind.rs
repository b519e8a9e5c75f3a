//! Idle time of the machine's graphical sessions, from systemd-logind over D-Bus: the user-idle
//! source for Linux desktops whose input devices the agent may not read (an agent outside the
//! `input` group, a remote desktop session, a compositor that grabs its devices).
//!
//! A thread of its own asks logind every [`POLL`] for the sessions (`ListSessions` on
//! `org.freedesktop.login1.Manager`) and, for each, its `Type`, `IdleHint` and
//! `IdleSinceHintMonotonic`; the sampler reads the last answer without waiting, so a slow or
//! absent bus never holds up a load sample. Only graphical sessions (`x11`, `wayland`, `mir`)
//! count: logind calls a terminal session busy for as long as 30 minutes after its last
//! keystroke, which on a server with SSH logins would keep guests away for no one.
//!
//! The answer: `None` without a graphical session or without logind; zero while one of them is
//! not idle (the desktop itself says when its user went away, typically after some minutes
//! without input: until then the owner counts as present); otherwise the time since the last of
//! them went idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::blocking::Connection;
use zbus::blocking::connection::Builder;
use zbus::zvariant::OwnedObjectPath;

/// How often logind is asked.
const POLL: Duration = Duration::from_secs(2);
/// How long to wait before trying a bus that could not be reached again.
const RETRY: Duration = Duration::from_secs(30);
/// The longest a call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Which bus logind is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`).
    System,
    /// A bus at this address (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Address(String),
}

/// One session as logind describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// `x11`, `wayland`, `mir`, `tty` or `unspecified`.
    pub kind: String,
    pub idle: bool,
    /// When it went idle (or busy), CLOCK_MONOTONIC in microseconds.
    pub since_us: u64,
}

/// The idle time of the graphical `sessions` at `now_us` (CLOCK_MONOTONIC, microseconds).
pub(crate) fn graphical_idle(sessions: &[Session], now_us: u64) -> Option<Duration> {
    let graphical: Vec<&Session> = sessions
        .iter()
        .filter(|s| matches!(s.kind.as_str(), "x11" | "wayland" | "mir"))
        .collect();
    if graphical.is_empty() {
        return None;
    }
    if graphical.iter().any(|s| !s.idle) {
        return Some(Duration::ZERO);
    }
    let last = graphical.iter().map(|s| s.since_us).max().unwrap_or(0);
    Some(Duration::from_micros(now_us.saturating_sub(last)))
}

/// CLOCK_MONOTONIC now, in microseconds: the clock of logind's `*Monotonic` times.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}

/// The last answer: the idle time as of the moment it was read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    idle: Option<Duration>,
}

/// Watches logind's sessions on a thread of its own, which ends when this is dropped.
#[derive(Debug)]
pub(crate) struct LogindIdle {
    last: Arc<Mutex<Option<Reading>>>,
    stop: Arc<AtomicBool>,
}

impl LogindIdle {
    /// Starts watching `bus`.
    pub(crate) fn watch(bus: Bus) -> Self {
        let last = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (last.clone(), stop.clone());
        let started = std::thread::Builder::new()
            .name("logind-idle".into())
            .spawn(move || watch(&bus, &l, &s));
        if let Err(e) = started {
            tracing::debug!("cannot start watching logind: {e}");
        }
        Self { last, stop }
    }

    /// The graphical sessions' idle time as of `now`; `None` when unknown.
    pub(crate) fn get(&self, now: Instant) -> Option<Duration> {
        let reading = (*self.last.lock().unwrap_or_else(|e| e.into_inner()))?;
        reading
            .idle
            .map(|d| d + now.saturating_duration_since(reading.at))
    }
}

impl Drop for LogindIdle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleeps `d` in short steps, returning early (false) once `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

fn watch(bus: &Bus, last: &Mutex<Option<Reading>>, stop: &AtomicBool) {
    let store = |idle: Option<Duration>| {
        *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reading {
            at: Instant::now(),
            idle,
        });
    };
    let mut noted = false;
    while !stop.load(Ordering::Relaxed) {
        let connection = match connect(bus) {
            Ok(c) => c,
            Err(e) => {
                if !noted {
                    tracing::debug!(
                        "logind is not reachable over D-Bus ({e}); asking again every {RETRY:?}"
                    );
                    noted = true;
                }
                store(None);
                if !nap(RETRY, stop) {
                    return;
                }
                continue;
            }
        };
        loop {
            match sessions(&connection) {
                Ok(sessions) => store(graphical_idle(&sessions, monotonic_us())),
                Err(e) => {
                    tracing::debug!("asking logind for its sessions: {e}");
                    store(None);
                    break;
                }
            }
            if !nap(POLL, stop) {
                return;
            }
        }
    }
}

fn connect(bus: &Bus) -> zbus::Result<Connection> {
    let builder = match bus {
        Bus::System => Builder::system()?,
        Bus::Address(address) => Builder::address(address.as_str())?,
    };
    builder.method_timeout(CALL_TIMEOUT).build()
}

const LOGIND: &str = "org.freedesktop.login1";

/// Every session with its type and idle hint.
fn sessions(connection: &Connection) -> zbus::Result<Vec<Session>> {
    let manager = zbus::blocking::Proxy::new(
        connection,
        LOGIND,
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
    )?;
    let listed: Vec<(String, u32, String, String, OwnedObjectPath)> =
        manager.call("ListSessions", &())?;
    let mut sessions = Vec::with_capacity(listed.len());
    for (_, _, _, _, path) in listed {
        let session = zbus::blocking::proxy::Builder::<zbus::blocking::Proxy<'_>>::new(connection)
            .destination(LOGIND)?
            .path(path)?
            .interface("org.freedesktop.login1.Session")?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()?;
        sessions.push(Session {
            kind: session.get_property("Type")?,
            idle: session.get_property("IdleHint")?,
            since_us: session.get_property("IdleSinceHintMonotonic")?,
        });
    }
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    fn session(kind: &str, idle: bool, since_us: u64) -> Session {
        Session {
            kind: kind.into(),
            idle,
            since_us,
        }
    }

    #[test]
    fn only_graphical_sessions_count_and_a_busy_one_means_someone_is_there() {
        let s = 1_000_000;
        assert_eq!(graphical_idle(&[], 100 * s), None);
        assert_eq!(graphical_idle(&[session("tty", false, 0)], 100 * s), None);
        assert_eq!(
            graphical_idle(
                &[
                    session("wayland", true, 40 * s),
                    session("tty", false, 99 * s)
                ],
                100 * s
            ),
            Some(Duration::from_secs(60))
        );
        // The last to go idle sets the time.
        assert_eq!(
            graphical_idle(
                &[
                    session("x11", true, 40 * s),
                    session("wayland", true, 70 * s)
                ],
                100 * s
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            graphical_idle(
                &[
                    session("x11", true, 40 * s),
                    session("wayland", false, 70 * s)
                ],
                100 * s
            ),
            Some(Duration::ZERO)
        );
    }

    /// A bus of the test's own: Debian's dbus-daemon with the session configuration.
    struct TestBus {
        daemon: Child,
        address: String,
    }

    impl TestBus {
        fn start() -> TestBus {
            let mut daemon = Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--print-address=1"])
                .stdout(Stdio::piped())
                // It says it may not raise its file limit, which a test does not need.
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "starting dbus-daemon (Debian's dbus-daemon; cargo xtask test installs it)",
                );
            let mut address = String::new();
            BufReader::new(daemon.stdout.take().expect("stdout"))
                .read_line(&mut address)
                .expect("dbus-daemon's address");
            TestBus {
                daemon,
                address: address.trim().to_owned(),
            }
        }
    }

    impl Drop for TestBus {
        fn drop(&mut self) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }

    /// Sessions a fake logind serves, changed by the test.
    type Shared = Arc<Mutex<Vec<Session>>>;

    struct FakeManager(Shared);

    #[zbus::interface(name = "org.freedesktop.login1.Manager")]
    impl FakeManager {
        fn list_sessions(&self) -> Vec<(String, u32, String, String, OwnedObjectPath)> {
            let count = self.0.lock().unwrap().len();
            (0..count)
                .map(|i| {
                    (
                        i.to_string(),
                        1000,
                        "owner".into(),
                        "seat0".into(),
                        OwnedObjectPath::try_from(format!("/org/freedesktop/login1/session/_{i}"))
                            .unwrap(),
                    )
                })
                .collect()
        }
    }

    struct FakeSession(Shared, usize);

    #[zbus::interface(name = "org.freedesktop.login1.Session")]
    impl FakeSession {
        #[zbus(property, name = "Type")]
        fn kind(&self) -> String {
            self.0.lock().unwrap()[self.1].kind.clone()
        }
        #[zbus(property)]
        fn idle_hint(&self) -> bool {
            self.0.lock().unwrap()[self.1].idle
        }
        #[zbus(property)]
        fn idle_since_hint_monotonic(&self) -> u64 {
            self.0.lock().unwrap()[self.1].since_us
        }
    }

    fn wait_for(idle: &LogindIdle, what: &str, ok: impl Fn(Option<Duration>) -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let got = idle.get(Instant::now());
            if ok(got) {
                return;
            }
            assert!(Instant::now() < until, "{what}: still {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn reads_a_real_bus_and_follows_the_sessions() {
        let bus = TestBus::start();
        let shared: Shared = Arc::new(Mutex::new(vec![
            session("tty", false, 0),
            session("wayland", true, monotonic_us() - 90_000_000),
        ]));
        let _logind = Builder::address(bus.address.as_str())
            .unwrap()
            .name(LOGIND)
            .unwrap()
            .serve_at("/org/freedesktop/login1", FakeManager(shared.clone()))
            .unwrap()
            .serve_at(
                "/org/freedesktop/login1/session/_0",
                FakeSession(shared.clone(), 0),
            )
            .unwrap()
            .serve_at(
                "/org/freedesktop/login1/session/_1",
                FakeSession(shared.clone(), 1),
            )
            .unwrap()
            .build()
            .expect("serving the fake logind");
        let idle = LogindIdle::watch(Bus::Address(bus.address.clone()));
        wait_for(&idle, "the idle wayland session", |d| {
            d.is_some_and(|d| d >= Duration::from_secs(90) && d < Duration::from_secs(120))
        });
        // The owner comes back: the desktop says its session is busy.
        shared.lock().unwrap()[1].idle = false;
        // (Present as of the last answer: the time since grows until the next.)
        let now_present = |d: Option<Duration>| d.is_some_and(|d| d <= POLL + CALL_TIMEOUT);
        wait_for(&idle, "the busy session", now_present);
        // Only a terminal session left: unknown, as on a server.
        shared.lock().unwrap()[1].kind = "tty".into();
        wait_for(&idle, "no graphical session", |d| d.is_none());
        // The bus goes away: unknown again, not the last answer kept.
        shared.lock().unwrap()[1] = session("x11", false, 0);
        wait_for(&idle, "the busy x11 session", now_present);
        drop(bus);
        wait_for(&idle, "no bus", |d| d.is_none());
    }
}
