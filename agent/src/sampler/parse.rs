//! Pure parsers for the procfs and sysfs texts the Linux sampler reads: no IO, no allocation.
//!
//! Each takes the bytes (or text) exactly as the kernel prints them and returns an error, never
//! a panic, on anything it does not recognise. The caller then keeps its previous value.

/// Why a kernel text could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// A line or field that the format requires is absent (or cut off).
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field is present but is not a number of the expected kind.
    #[error("{0} is not a number")]
    NotANumber(&'static str),
    /// A field holds a word outside the documented set of values.
    #[error("unexpected value for {0}")]
    Unexpected(&'static str),
}

/// Cumulative CPU time of the whole machine, in USER_HZ ticks summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

/// Parses a decimal `u64` from ASCII digits; `what` names the field in the error.
fn number(field: &[u8], what: &'static str) -> Result<u64, ParseError> {
    if field.is_empty() {
        return Err(ParseError::NotANumber(what));
    }
    let mut n: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(ParseError::NotANumber(what));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ParseError::NotANumber(what))?;
    }
    Ok(n)
}

/// The whitespace-separated fields of `line`, without allocating.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

/// The first line of `text`, which must be terminated by a newline (so that a read cut short
/// cannot pass a truncated number for a whole one).
fn first_line<'a>(text: &'a [u8], what: &'static str) -> Result<&'a [u8], ParseError> {
    let end = text
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(ParseError::Missing(what))?;
    Ok(&text[..end])
}

/// `text` up to and including its last newline: the lines a prefix read holds in full.
fn complete_lines(text: &[u8]) -> &[u8] {
    match text.iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..=end],
        None => &[],
    }
}

/// The machine's CPU times from the first (`cpu `, all CPUs) line of `/proc/stat`:
///
/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
///
/// `guest` and `guest_nice` are already included in `user` and `nice`, so they are not added
/// again. Kernels older than 2.6.11 print fewer columns; the first four are required, the
/// others count as zero when absent.
pub(crate) fn proc_stat_cpu(text: &[u8]) -> Result<CpuTimes, ParseError> {
    let line = first_line(text, "the end of the cpu line")?;
    let mut it = fields(line);
    if it.next() != Some(b"cpu".as_slice()) {
        return Err(ParseError::Missing("the cpu line"));
    }
    const NAMES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut v = [0u64; 8];
    for (i, name) in NAMES.iter().enumerate() {
        match it.next() {
            Some(f) => v[i] = number(f, name)?,
            None if i < 4 => return Err(ParseError::Missing(name)),
            None => break,
        }
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
    let busy = [user, nice, system, irq, softirq, steal]
        .iter()
        .try_fold(0u64, |a, &x| a.checked_add(x))
        .ok_or(ParseError::NotANumber("cpu total"))?;
    let total = busy
        .checked_add(idle)
        .and_then(|t| t.checked_add(iowait))
        .ok_or(ParseError::NotANumber("cpu total"))?;
    Ok(CpuTimes { busy, total })
}

/// Available memory in bytes from `/proc/meminfo`: `MemAvailable`, or on kernels before 3.14
/// that lack it, the old estimate `MemFree + Buffers + Cached`. `text` may be a prefix of the
/// file; only complete lines count.
pub(crate) fn meminfo_available(text: &[u8]) -> Result<u64, ParseError> {
    let (mut free, mut buffers, mut cached) = (None, None, None);
    for line in complete_lines(text).split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, rest) = (&line[..colon], &line[colon + 1..]);
        let slot = match key {
            b"MemAvailable" => None,
            b"MemFree" => Some(&mut free),
            b"Buffers" => Some(&mut buffers),
            b"Cached" => Some(&mut cached),
            _ => continue,
        };
        let mut it = fields(rest);
        let kib = number(
            it.next().ok_or(ParseError::Missing(key_name(key)))?,
            key_name(key),
        )?;
        let unit = it.next();
        if unit.is_some_and(|u| u != b"kB") {
            return Err(ParseError::Unexpected("the meminfo unit"));
        }
        let bytes = kib
            .checked_mul(if unit.is_some() { 1024 } else { 1 })
            .ok_or(ParseError::NotANumber("MemAvailable"))?;
        match slot {
            None => return Ok(bytes),
            Some(s) => *s = Some(bytes),
        }
    }
    match (free, buffers, cached) {
        (Some(f), Some(b), Some(c)) => Ok(f.saturating_add(b).saturating_add(c)),
        _ => Err(ParseError::Missing("MemAvailable")),
    }
}

fn key_name(key: &[u8]) -> &'static str {
    match key {
        b"MemAvailable" => "MemAvailable",
        b"MemFree" => "MemFree",
        b"Buffers" => "Buffers",
        _ => "Cached",
    }
}

/// `avg10` of the `some` line of a `/proc/pressure/*` file, in percent:
///
/// `some avg10=1.23 avg60=0.50 avg300=0.10 total=123456`
pub(crate) fn psi_some_avg10(text: &[u8]) -> Result<f64, ParseError> {
    let line = complete_lines(text)
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"some "))
        .ok_or(ParseError::Missing("the some line"))?;
    let value = fields(line)
        .find_map(|f| f.strip_prefix(b"avg10="))
        .ok_or(ParseError::Missing("avg10"))?;
    let v: f64 = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError::NotANumber("avg10"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(ParseError::Unexpected("avg10"));
    }
    Ok(v)
}

/// The `type` of a `/sys/class/power_supply/*` entry, as far as the sampler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SupplyKind {
    /// `Mains`: the AC adapter.
    Mains,
    /// `Battery`: a battery, the machine's own or a peripheral's (see `scope`).
    Battery,
    /// `UPS`, `USB`, `Wireless`, ...: ignored.
    Other,
}

/// Reads a power supply's `type` attribute.
pub(crate) fn supply_kind(text: &str) -> SupplyKind {
    match text.trim() {
        "Mains" => SupplyKind::Mains,
        "Battery" => SupplyKind::Battery,
        _ => SupplyKind::Other,
    }
}

/// Reads a power supply's `online` attribute: `0` offline, `1` online, `2` (USB) online with a
/// programmable voltage.
pub(crate) fn supply_online(text: &str) -> Result<bool, ParseError> {
    Ok(number(text.trim().as_bytes(), "online")? > 0)
}

/// Whether a power supply's `scope` attribute says that it powers a peripheral (a wireless
/// mouse's battery) rather than the machine.
pub(crate) fn supply_is_peripheral(scope: &str) -> bool {
    scope.trim() == "Device"
}

/// A battery's `status` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatteryStatus {
    /// `Charging`.
    Charging,
    /// `Discharging`: the machine is drawing on it.
    Discharging,
    /// `Not charging`: plugged in but held (charge threshold reached).
    NotCharging,
    /// `Full`.
    Full,
    /// `Unknown`.
    Unknown,
}

/// Reads a battery's `status` attribute.
pub(crate) fn battery_status(text: &str) -> Result<BatteryStatus, ParseError> {
    Ok(match text.trim() {
        "Charging" => BatteryStatus::Charging,
        "Discharging" => BatteryStatus::Discharging,
        "Not charging" => BatteryStatus::NotCharging,
        "Full" => BatteryStatus::Full,
        "Unknown" => BatteryStatus::Unknown,
        _ => return Err(ParseError::Unexpected("battery status")),
    })
}

/// The machine runs on battery when it has an AC adapter (`Mains`), none is online, and one of
/// its own batteries is discharging. Machines without a Mains supply (servers, desktops) are
/// never on battery; peripheral batteries must already be left out of `batteries`.
pub(crate) fn on_battery(
    mains_online: impl IntoIterator<Item = bool>,
    batteries: impl IntoIterator<Item = BatteryStatus>,
) -> bool {
    let mut any_mains = false;
    for online in mains_online {
        if online {
            return false;
        }
        any_mains = true;
    }
    any_mains
        && batteries
            .into_iter()
            .any(|s| s == BatteryStatus::Discharging)
}

/// Whether bit `bit` is set in a sysfs input capability bitmap such as
/// `/sys/class/input/event3/device/capabilities/key`: hexadecimal words of the kernel's `long`
/// separated by spaces, most significant first, leading zero words omitted.
///
/// The word width is taken to be this build's pointer width, which is the kernel's `long` for
/// a native build.
pub(crate) fn bitmap_has(text: &str, bit: usize) -> Result<bool, ParseError> {
    let width = usize::BITS as usize;
    let (word_index, bit_in_word) = (bit / width, bit % width);
    let mut found = None;
    for (i, word) in text.split_ascii_whitespace().rev().enumerate() {
        let w = usize::from_str_radix(word, 16)
            .map_err(|_| ParseError::NotANumber("capability bitmap"))?;
        if i == word_index {
            found = Some(w);
        }
    }
    Ok(found.is_some_and(|w| w >> bit_in_word & 1 == 1))
}

/// What an input device is, for user-idle purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// A keyboard with letter keys.
    Keyboard,
    /// A mouse, touchpad, touchscreen or tablet.
    Pointer,
    /// Anything else: power buttons, lid switches, accelerometers, joysticks, ... whose events
    /// are not a person at the machine (or would fire without one).
    Other,
}

/// Classifies an input device from its `capabilities/{ev,key,rel,abs}` bitmaps, after udev's
/// `input_id` builtin: a keyboard has keys ESC through S (bits 1..=31 of `key`); a pointer has
/// relative X/Y and a left button (mouse), or absolute X/Y and a touch, finger, pen or left
/// button (touchpad, touchscreen, tablet). An accelerometer (absolute axes, no buttons) is not.
pub(crate) fn classify_input(
    ev: &str,
    key: &str,
    rel: &str,
    abs: &str,
) -> Result<InputKind, ParseError> {
    const EV_KEY: usize = 0x01;
    const EV_REL: usize = 0x02;
    const EV_ABS: usize = 0x03;
    const BTN_LEFT: usize = 0x110;
    const BTN_TOOL_PEN: usize = 0x140;
    const BTN_TOOL_FINGER: usize = 0x145;
    const BTN_TOUCH: usize = 0x14a;
    if !bitmap_has(ev, EV_KEY)? {
        return Ok(InputKind::Other);
    }
    let mut letters = true;
    for bit in 1..=31 {
        letters &= bitmap_has(key, bit)?;
    }
    if letters {
        return Ok(InputKind::Keyboard);
    }
    let xy = |bits: &str| -> Result<bool, ParseError> {
        Ok(bitmap_has(bits, 0)? && bitmap_has(bits, 1)?)
    };
    if bitmap_has(ev, EV_REL)? && xy(rel)? && bitmap_has(key, BTN_LEFT)? {
        return Ok(InputKind::Pointer);
    }
    if bitmap_has(ev, EV_ABS)? && xy(abs)? {
        for button in [BTN_TOUCH, BTN_TOOL_FINGER, BTN_TOOL_PEN, BTN_LEFT] {
            if bitmap_has(key, button)? {
                return Ok(InputKind::Pointer);
            }
        }
    }
    Ok(InputKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        let text = b"cpu  665200 48887 59054 181878 5156 7 853 329 11 13\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n";
        let t = proc_stat_cpu(text).unwrap();
        // guest (11) and guest_nice (13) are inside user and nice already.
        assert_eq!(t.busy, 665200 + 48887 + 59054 + 7 + 853 + 329);
        assert_eq!(t.total, t.busy + 181878 + 5156);
    }

    #[test]
    fn proc_stat_old_kernel_with_four_columns() {
        let t = proc_stat_cpu(b"cpu 10 20 30 40\n").unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 60,
                total: 100
            }
        );
    }

    #[test]
    fn proc_stat_malformed_is_an_error() {
        for bad in [
            &b""[..],
            b"\n",
            b"cpu0 1 2 3 4 5 6 7 8\n",
            b"cpu  1 2 3\n",
            b"cpu  1 2 x 4 5\n",
            b"cpu  1 2 3 4 -5\n",
            b"cpu  1 2 3 4 99999999999999999999999\n",
            b"cpu  18446744073709551615 1 0 0\n",
            b"cpu  1 2 3 4 5", // no newline: the read may have been cut
            b"intr 1 2 3\ncpu  1 2 3 4\n",
        ] {
            assert!(
                proc_stat_cpu(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn meminfo_reads_mem_available() {
        let text = b"MemTotal:       24684084 kB\nMemFree:        20529136 kB\nMemAvailable:   24080584 kB\nBuffers:  1 kB\n";
        assert_eq!(meminfo_available(text).unwrap(), 24080584 * 1024);
    }

    #[test]
    fn meminfo_without_mem_available_estimates() {
        let text =
            b"MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 2 kB\nCached: 30 kB\nSwapCached: 0 kB\n";
        assert_eq!(meminfo_available(text).unwrap(), 42 * 1024);
    }

    #[test]
    fn meminfo_malformed_is_an_error() {
        for bad in [
            &b""[..],
            b"MemTotal: 1 kB\n",
            b"MemAvailable: lots kB\n",
            b"MemAvailable: 12 MB\n",
            b"MemAvailable:\n",
            b"MemAvailable: 12", // cut off: not a complete line
            b"MemAvailable: 99999999999999999999 kB\n",
        ] {
            assert!(
                meminfo_available(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn psi_reads_some_avg10() {
        let text = b"some avg10=23.23 avg60=6.99 avg300=5.48 total=1205794597\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(psi_some_avg10(text).unwrap(), 23.23);
        let full_first =
            b"full avg10=9.00 avg60=0 avg300=0 total=0\nsome avg10=0.50 avg60=0 avg300=0 total=1\n";
        assert_eq!(psi_some_avg10(full_first).unwrap(), 0.5);
    }

    #[test]
    fn psi_malformed_is_an_error() {
        for bad in [
            &b""[..],
            b"full avg10=1.00\n",
            b"some avg60=1.00\n",
            b"some avg10=abc avg60=1\n",
            b"some avg10=-1 avg60=1\n",
            b"some avg10=NaN\n",
            b"some avg10=1.0", // cut off
            b"some avg10=\xff\n",
        ] {
            assert!(
                psi_some_avg10(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn power_supply_attributes() {
        assert_eq!(supply_kind("Mains\n"), SupplyKind::Mains);
        assert_eq!(supply_kind("Battery\n"), SupplyKind::Battery);
        assert_eq!(supply_kind("USB\n"), SupplyKind::Other);
        assert_eq!(supply_kind(""), SupplyKind::Other);
        assert_eq!(supply_online("1\n"), Ok(true));
        assert_eq!(supply_online("2\n"), Ok(true));
        assert_eq!(supply_online("0\n"), Ok(false));
        assert!(supply_online("").is_err());
        assert!(supply_online("yes\n").is_err());
        assert_eq!(
            battery_status("Discharging\n"),
            Ok(BatteryStatus::Discharging)
        );
        assert_eq!(
            battery_status("Not charging\n"),
            Ok(BatteryStatus::NotCharging)
        );
        assert!(battery_status("Exploding\n").is_err());
        assert!(supply_is_peripheral("Device\n"));
        assert!(!supply_is_peripheral("System\n"));
    }

    #[test]
    fn on_battery_needs_offline_mains_and_a_discharging_battery() {
        use BatteryStatus::*;
        assert!(on_battery([false], [Discharging]));
        assert!(on_battery([false, false], [Full, Discharging]));
        assert!(!on_battery([true], [Discharging]), "AC online");
        assert!(!on_battery([false, true], [Discharging]), "one AC online");
        assert!(!on_battery([false], [Charging]));
        assert!(!on_battery([false], []), "no battery");
        assert!(!on_battery([], [Discharging]), "no AC adapter at all");
        assert!(!on_battery([], []), "a server");
    }

    #[test]
    fn bitmaps() {
        assert!(bitmap_has("3", 0).unwrap());
        assert!(bitmap_has("3", 1).unwrap());
        assert!(!bitmap_has("3", 2).unwrap());
        assert!(!bitmap_has("0", 0).unwrap());
        assert!(!bitmap_has("", 5).unwrap());
        let w = usize::BITS as usize;
        assert!(bitmap_has("1 0", w).unwrap());
        assert!(!bitmap_has("1 0", 0).unwrap());
        assert!(!bitmap_has("1 0", 2 * w).unwrap());
        assert!(bitmap_has("zz", 0).is_err());
        assert!(bitmap_has("1 zz", 0).is_err());
    }

    /// Capabilities as a 64-bit kernel prints them for real devices.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn classifies_real_devices() {
        let keyboard = classify_input(
            "120013",
            "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe",
            "0",
            "0",
        );
        assert_eq!(keyboard, Ok(InputKind::Keyboard));
        // ImExPS/2 Generic Explorer Mouse
        let mouse = classify_input("7", "1f0000 0 0 0 0", "143", "0");
        assert_eq!(mouse, Ok(InputKind::Pointer));
        // SynPS/2 touchpad: ABS X/Y, BTN_TOUCH, BTN_TOOL_FINGER
        let touchpad = classify_input("b", "6420 30000 0 0 0 0", "0", "660800011000003");
        assert_eq!(touchpad, Ok(InputKind::Pointer));
        // QEMU USB tablet: ABS X/Y and BTN_LEFT
        let tablet = classify_input("1f", "1f0000 0 0 0 0", "900", "3");
        assert_eq!(tablet, Ok(InputKind::Pointer));
        // Power Button
        assert_eq!(
            classify_input("3", "10000000000000 0", "0", "0"),
            Ok(InputKind::Other)
        );
        // Lid Switch: EV_SW only
        assert_eq!(classify_input("21", "0", "0", "0"), Ok(InputKind::Other));
        // Accelerometer: ABS X/Y/Z, no keys
        assert_eq!(classify_input("9", "0", "0", "7"), Ok(InputKind::Other));
        assert!(classify_input("1z", "0", "0", "0").is_err());
    }
}
