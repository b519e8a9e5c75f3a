//! Whether the machine runs on battery, from `/sys/class/power_supply`.
//!
//! The list of supplies and their `type`/`scope` (which do not change) is read once a minute;
//! the AC adapters' `online` at most once a second, and the batteries' `status` only when no AC
//! adapter is online. Reading a laptop battery's attributes can mean a slow firmware (ACPI EC)
//! query, so a plugged-in laptop never pays for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::parse::{self, SupplyKind};

const CHECK_EVERY: Duration = Duration::from_secs(1);
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The machine's power supplies and the last answer.
#[derive(Debug)]
pub(crate) struct PowerSupplies {
    root: PathBuf,
    /// Directories of the AC adapters (`type` Mains).
    mains: Vec<PathBuf>,
    /// Directories of the machine's own batteries (not a peripheral's).
    batteries: Vec<PathBuf>,
    scanned: Option<Instant>,
    checked: Option<(Instant, bool)>,
}

impl PowerSupplies {
    /// Watches `/sys/class/power_supply`.
    pub(crate) fn new() -> Self {
        Self::with_root(Path::new("/sys/class/power_supply"))
    }

    /// Watches the supplies described under `root`.
    pub(crate) fn with_root(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            mains: Vec::new(),
            batteries: Vec::new(),
            scanned: None,
            checked: None,
        }
    }

    /// Whether the machine runs on battery as of `now` (cached for a second).
    pub(crate) fn on_battery(&mut self, now: Instant) -> bool {
        if let Some((at, answer)) = self.checked
            && now.saturating_duration_since(at) < CHECK_EVERY
        {
            return answer;
        }
        if self
            .scanned
            .is_none_or(|at| now.saturating_duration_since(at) >= RESCAN_EVERY)
        {
            self.scan();
            self.scanned = Some(now);
        }
        // Unreadable attributes count as absent. Both iterators are lazy: batteries are read
        // only when no adapter is online.
        let mains = self
            .mains
            .iter()
            .filter_map(|m| parse::supply_online(&read(m, "online")?).ok());
        let batteries = self
            .batteries
            .iter()
            .filter_map(|b| parse::battery_status(&read(b, "status")?).ok());
        let answer = parse::on_battery(mains, batteries);
        self.checked = Some((now, answer));
        answer
    }

    fn scan(&mut self) {
        self.mains.clear();
        self.batteries.clear();
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let dir = entry.path();
            match read(&dir, "type").map(|t| parse::supply_kind(&t)) {
                Some(SupplyKind::Mains) => self.mains.push(dir),
                Some(SupplyKind::Battery)
                    if !read(&dir, "scope").is_some_and(|s| parse::supply_is_peripheral(&s)) =>
                {
                    self.batteries.push(dir)
                }
                _ => {}
            }
        }
    }
}

fn read(dir: &Path, attr: &str) -> Option<String> {
    fs::read_to_string(dir.join(attr)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        for (attr, text) in attrs {
            fs::write(dir.join(attr), format!("{text}\n")).unwrap();
        }
    }

    #[test]
    fn laptop_unplugged_then_plugged() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        supply(r, "AC", &[("type", "Mains"), ("online", "0")]);
        supply(r, "BAT0", &[("type", "Battery"), ("status", "Discharging")]);
        supply(
            r,
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
            ],
        );
        let mut power = PowerSupplies::with_root(r);
        let t0 = Instant::now();
        assert!(power.on_battery(t0));
        fs::write(r.join("AC/online"), "1\n").unwrap();
        fs::write(r.join("BAT0/status"), "Charging\n").unwrap();
        assert!(
            power.on_battery(t0 + Duration::from_millis(500)),
            "cached for a second"
        );
        assert!(!power.on_battery(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn peripheral_batteries_do_not_count() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        supply(r, "AC", &[("type", "Mains"), ("online", "0")]);
        supply(
            r,
            "mouse",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
            ],
        );
        assert!(!PowerSupplies::with_root(r).on_battery(Instant::now()));
    }

    #[test]
    fn servers_and_garbage_are_not_on_battery() {
        let root = tempfile::tempdir().unwrap();
        assert!(!PowerSupplies::with_root(root.path()).on_battery(Instant::now()));
        assert!(!PowerSupplies::with_root(Path::new("/nonexistent")).on_battery(Instant::now()));
        let r = root.path();
        supply(r, "AC", &[("type", "Mains"), ("online", "banana")]);
        supply(r, "BAT0", &[("type", "Battery"), ("status", "Discharging")]);
        assert!(
            !PowerSupplies::with_root(r).on_battery(Instant::now()),
            "unreadable AC = absent"
        );
    }
}
