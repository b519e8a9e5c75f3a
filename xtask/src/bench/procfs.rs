//! What `/proc` says of a process and of the machine, for the benches (Linux only).

use std::fs;

use anyhow::Context;

/// A field of `/proc/PID/status` (the number before any unit).
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

/// `utime + stime` of `/proc/PID/stat`, in seconds: every thread's, living and gone.
pub fn process_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // After the command name (which may hold spaces) in parentheses: state is field 3, utime
    // field 14, stime field 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: {text:?}"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / ticks_per_s())
}

/// The machine's busy and total CPU time in clock ticks, from the first line of `/proc/stat`.
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user and nice).
    anyhow::ensure!(v.len() >= 8, "/proc/stat: {line:?}");
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok((busy, busy + v[3] + v[4]))
}

/// [`machine_ticks`] in seconds: busy and total CPU time since boot, over all cores.
pub fn machine_cpu_s() -> anyhow::Result<(f64, f64)> {
    let (busy, total) = machine_ticks()?;
    let hz = ticks_per_s();
    Ok((busy as f64 / hz, total as f64 / hz))
}

/// Clock ticks a second (`_SC_CLK_TCK`), the unit of `/proc`'s CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: no pointers.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}
