//! The owner's standing rules, `[owner]` in `agent.toml`: the times guests may run at all
//! (`windows`), and the owner's programs that keep guests away while they run
//! (`exclusive_programs`, a game or a render).
//!
//! ```toml
//! [owner]
//! windows = ["Mon-Fri 19:00-07:00", "Sat-Sun"]
//! exclusive_programs = ["blender", "steam"]
//! ```
//!
//! A window is `DAYS`, `HH:MM-HH:MM` or both: days are `Mon` to `Sun`, ranges (`Mon-Fri`,
//! `Fri-Mon`) and lists (`Mon,Wed,Fri`); times are the machine's local time, and a window whose
//! end comes before its start runs past midnight into the next day (`Mon-Fri 19:00-07:00`
//! includes Saturday 06:00). No windows: any time. The scavenger checks the rules about once a
//! second and tells the policy ([`crate::policy::Policy::handle_rules`]), which evicts and
//! holds the guests while a rule stands in the way.

use serde::{Deserialize, Serialize};

/// `[owner]` of `agent.toml`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRules {
    /// When guests may run (local time); none: any time.
    #[serde(default)]
    pub windows: Vec<String>,
    /// Programs (by process name) that keep guests away while any of them runs.
    #[serde(default)]
    pub exclusive_programs: Vec<String>,
}

/// A moment of the week in the machine's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// 0 for Monday to 6 for Sunday.
    pub weekday: u8,
    /// Minutes since midnight.
    pub minute: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One time window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// The days it starts on (bit 0 Monday).
    days: u8,
    /// Start and end in minutes since midnight; `None`: the whole day.
    times: Option<(u16, u16)>,
}

impl Window {
    fn parse(text: &str) -> Result<Self, String> {
        let mut days = None;
        let mut times = None;
        for part in text.split_whitespace() {
            if part.contains(':') {
                if times.is_some() {
                    return Err(format!("{text:?}: two time ranges"));
                }
                times = Some(parse_times(part).map_err(|e| format!("{text:?}: {e}"))?);
            } else {
                if days.is_some() {
                    return Err(format!("{text:?}: two lists of days"));
                }
                days = Some(parse_days(part).map_err(|e| format!("{text:?}: {e}"))?);
            }
        }
        if days.is_none() && times.is_none() {
            return Err(format!(
                "{text:?}: give days, times or both, e.g. \"Mon-Fri 19:00-07:00\" or \"Sat-Sun\""
            ));
        }
        Ok(Window {
            days: days.unwrap_or(0x7f),
            times,
        })
    }

    fn contains(&self, at: LocalTime) -> bool {
        let on = |day: u8| self.days & (1 << day) != 0;
        match self.times {
            None => on(at.weekday),
            Some((start, end)) if start < end => {
                on(at.weekday) && (start..end).contains(&at.minute)
            }
            // Past midnight: the evening of a day it starts on, or the morning after one.
            Some((start, end)) => {
                (on(at.weekday) && at.minute >= start)
                    || (on((at.weekday + 6) % 7) && at.minute < end)
            }
        }
    }
}

fn parse_day(text: &str) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower == *d)
        .map(|d| d as u8)
        .ok_or_else(|| format!("{text:?} is not a day: Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

fn parse_days(text: &str) -> Result<u8, String> {
    let mut days = 0u8;
    for item in text.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (mut d, to) = (parse_day(from)?, parse_day(to)?);
                loop {
                    days |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << parse_day(item)?,
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_times(text: &str) -> Result<(u16, u16), String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a range of times, e.g. 19:00-07:00"))?;
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    if start == end {
        return Err(format!("{text:?} is empty: its start and end are the same"));
    }
    Ok((start, end))
}

/// The rules, read and checked.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    windows: Vec<Window>,
    /// The windows as written, for reasons.
    written: Vec<String>,
    exclusive: Vec<String>,
}

/// The longest process name Linux keeps (`/proc/PID/comm`): longer names are compared by
/// their first 15 bytes.
const COMM_LEN: usize = 15;

impl Rules {
    /// Reads `[owner]`; an error names the entry and why.
    pub fn new(rules: &OwnerRules) -> Result<Self, String> {
        let windows = rules
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| Window::parse(w).map_err(|e| format!("owner.windows[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        for (i, p) in rules.exclusive_programs.iter().enumerate() {
            if p.is_empty() || p.contains(['/', '\\', '\0']) {
                return Err(format!(
                    "owner.exclusive_programs[{i}]: {p:?} is not a program name (a process name such as \"blender\", no path)"
                ));
            }
        }
        Ok(Self {
            windows,
            written: rules.windows.clone(),
            exclusive: rules.exclusive_programs.clone(),
        })
    }

    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.exclusive.is_empty()
    }

    /// Whether the rules watch programs.
    pub fn watches_programs(&self) -> bool {
        !self.exclusive.is_empty()
    }

    /// Why guests may not run now, if a rule says so: the time `at` is outside every window,
    /// or one of the exclusive programs is among `running` (process names).
    pub fn hold<'a>(
        &self,
        at: LocalTime,
        running: impl IntoIterator<Item = &'a str>,
    ) -> Option<String> {
        if !self.windows.is_empty() && !self.windows.iter().any(|w| w.contains(at)) {
            return Some(format!(
                "outside the owner's time windows ({})",
                self.written.join(", ")
            ));
        }
        if self.exclusive.is_empty() {
            return None;
        }
        // Windows' program names are not case-sensitive; Linux keeps only the first 15 bytes.
        let same = |p: &str, name: &str| {
            if cfg!(windows) {
                program_name(p).eq_ignore_ascii_case(name)
            } else {
                p == name
            }
        };
        let wanted = |name: &str| {
            self.exclusive.iter().find(|p| {
                same(p, name)
                    || (cfg!(target_os = "linux")
                        && name.len() == COMM_LEN
                        && p.as_bytes().starts_with(name.as_bytes()))
            })
        };
        running.into_iter().find_map(|name| {
            wanted(name).map(|p| format!("the owner's program {p} is running (exclusive_programs)"))
        })
    }
}

/// The machine's local time now.
pub fn local_now() -> LocalTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    local_time(secs)
}

#[cfg(unix)]
fn local_time(secs: u64) -> LocalTime {
    // The libc crate marks musl's `time_t` deprecated because it will widen: what localtime_r
    // takes.
    #[allow(deprecated)]
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: localtime_r only writes the struct it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return utc(secs);
    }
    LocalTime {
        // tm_wday counts from Sunday.
        weekday: ((tm.tm_wday + 6) % 7) as u8,
        minute: (tm.tm_hour * 60 + tm.tm_min) as u16,
    }
}

#[cfg(windows)]
fn local_time(_secs: u64) -> LocalTime {
    use windows_sys::Win32::System::SystemInformation::GetLocalTime;
    // SAFETY: plain data, filled in by the call.
    let mut t: windows_sys::Win32::Foundation::SYSTEMTIME = unsafe { std::mem::zeroed() };
    // SAFETY: writes the struct it is given.
    unsafe { GetLocalTime(&mut t) };
    LocalTime {
        // wDayOfWeek counts from Sunday.
        weekday: ((t.wDayOfWeek + 6) % 7) as u8,
        minute: t.wHour * 60 + t.wMinute,
    }
}

#[cfg(not(any(unix, windows)))]
fn local_time(secs: u64) -> LocalTime {
    utc(secs)
}

/// The time in UTC (1970-01-01 was a Thursday).
#[cfg_attr(windows, allow(dead_code))]
fn utc(secs: u64) -> LocalTime {
    let days = secs / 86_400;
    LocalTime {
        weekday: ((days + 3) % 7) as u8,
        minute: ((secs % 86_400) / 60) as u16,
    }
}

/// The names of the processes running on this machine: `/proc/PID/comm` on Linux; elsewhere
/// the process list `sysinfo` reads, without Windows' `.exe`.
pub fn running_programs() -> Vec<String> {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        system
            .processes()
            .values()
            .map(|p| program_name(&p.name().to_string_lossy()).to_owned())
            .collect()
    }
}

/// A process name as the owner writes it: without the `.exe` of Windows programs.
#[cfg_attr(all(target_os = "linux", not(test)), allow(dead_code))]
fn program_name(name: &str) -> &str {
    match name.len().checked_sub(4) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(".exe") => {
            &name[..cut]
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(weekday: u8, hh: u16, mm: u16) -> LocalTime {
        LocalTime {
            weekday,
            minute: hh * 60 + mm,
        }
    }

    fn rules(windows: &[&str], exclusive: &[&str]) -> Rules {
        Rules::new(&OwnerRules {
            windows: windows.iter().map(|s| s.to_string()).collect(),
            exclusive_programs: exclusive.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn windows_hold_their_days_and_hours_and_run_past_midnight() {
        let r = rules(&["Mon-Fri 19:00-07:00", "Sat-Sun"], &[]);
        let (mon, fri, sat, sun) = (0, 4, 5, 6);
        assert_eq!(r.hold(at(mon, 19, 0), []), None);
        assert_eq!(
            r.hold(at(sat, 3, 0), []),
            None,
            "Friday night, and Saturday is in"
        );
        assert_eq!(r.hold(at(sun, 12, 0), []), None);
        assert!(
            r.hold(at(mon, 6, 59), []).is_some(),
            "Sunday's whole day ends at midnight"
        );
        assert!(
            r.hold(at(fri, 12, 0), []).is_some(),
            "a working day's afternoon"
        );
        let r = rules(&["Mon-Fri 19:00-07:00"], &[]);
        assert!(
            r.hold(at(mon, 6, 59), []).is_some(),
            "no window started on Sunday"
        );
        assert_eq!(r.hold(at(sat, 6, 59), []), None);
        assert_eq!(
            r.hold(at(sat, 7, 0), []).as_deref(),
            Some("outside the owner's time windows (Mon-Fri 19:00-07:00)")
        );
        let r = rules(&["09:00-17:00"], &[]);
        assert_eq!(r.hold(at(sun, 9, 0), []), None, "times alone: every day");
        assert!(r.hold(at(sun, 17, 0), []).is_some(), "the end is not in it");
        let r = rules(&["Fri-Mon", "wed"], &[]);
        for (day, inside) in [
            (0, true),
            (1, false),
            (2, true),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
        ] {
            assert_eq!(r.hold(at(day, 12, 0), []).is_none(), inside, "day {day}");
        }
        assert!(
            rules(&[], &[]).hold(at(2, 3, 4), []).is_none(),
            "no windows: any time"
        );
    }

    #[test]
    fn bad_windows_and_programs_are_named() {
        for (w, why) in [
            ("Mon-Fry", "\"Fry\" is not a day"),
            ("25:00-07:00", "is not a time of day"),
            ("19:00", "is not a range of times"),
            ("08:00-08:00", "is empty"),
            ("", "give days, times or both"),
            ("Mon Tue", "two lists of days"),
        ] {
            let e = Rules::new(&OwnerRules {
                windows: vec![w.into()],
                ..OwnerRules::default()
            })
            .unwrap_err();
            assert!(
                e.starts_with("owner.windows[0]: ") && e.contains(why),
                "{w}: {e}"
            );
        }
        let e = Rules::new(&OwnerRules {
            exclusive_programs: vec!["/usr/bin/blender".into()],
            ..OwnerRules::default()
        })
        .unwrap_err();
        assert!(e.contains("exclusive_programs[0]"), "{e}");
    }

    #[test]
    fn windows_program_names_lose_their_exe() {
        assert_eq!(program_name("blender.exe"), "blender");
        assert_eq!(program_name("Steam.EXE"), "Steam");
        assert_eq!(program_name("exe"), "exe");
        assert_eq!(program_name(".exe"), "");
        assert_eq!(program_name("blender"), "blender");
        assert_eq!(program_name("€abc"), "€abc");
    }

    #[test]
    fn an_exclusive_program_holds_while_it_runs_long_names_by_their_first_15_bytes() {
        let r = rules(&[], &["blender", "steamwebhelper-x"]);
        assert_eq!(r.hold(at(0, 0, 0), ["bash", "sshd"]), None);
        assert_eq!(
            r.hold(at(0, 0, 0), ["bash", "blender"]).as_deref(),
            Some("the owner's program blender is running (exclusive_programs)")
        );
        assert!(r.hold(at(0, 0, 0), ["steamwebhelper-"]).is_some());
        assert!(r.hold(at(0, 0, 0), ["blend"]).is_none());
    }

    #[test]
    fn the_local_time_is_a_moment_of_the_week() {
        assert_eq!(utc(0), at(3, 0, 0), "1970-01-01 00:00 UTC was a Thursday");
        assert_eq!(utc(4 * 86_400 + 3_600 + 120), at(0, 1, 2));
        let now = local_now();
        assert!(now.weekday < 7 && now.minute < 24 * 60);
        assert!(
            !running_programs().is_empty(),
            "this test runs in a process"
        );
    }
}
