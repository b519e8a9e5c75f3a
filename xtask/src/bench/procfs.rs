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

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in seconds.
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// What a sampler's tick costs on this machine, in µs of this thread's CPU: waking from a
/// `period` sleep (`n` times, at a fixed rate, nothing else done), and reading each of `files`
/// from its start (`n` times back to back, one `pread` each, as the agent's sampler reads).
/// Files that do not exist are left out.
pub fn tick_costs(
    period: std::time::Duration,
    n: u32,
    files: &[&str],
) -> anyhow::Result<Vec<(String, f64)>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let started = thread_cpu_s();
    let mut next = std::time::Instant::now();
    for _ in 0..n {
        next += period;
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    out.push((
        "wake_up".to_owned(),
        (thread_cpu_s() - started) * 1e6 / f64::from(n),
    ));
    let mut buf = vec![0u8; 4096];
    for path in files {
        let Ok(file) = fs::File::open(path) else {
            continue;
        };
        let started = thread_cpu_s();
        for _ in 0..n {
            file.read_at(&mut buf, 0)
                .with_context(|| format!("reading {path}"))?;
        }
        out.push((
            path.to_string(),
            (thread_cpu_s() - started) * 1e6 / f64::from(n),
        ));
    }
    Ok(out)
}

/// The median time, in ms, to write a few hundred bytes to a file in `dir` and sync it, over
/// `n` syncs: what one durable write costs the disk under the benches.
pub fn sync_ms(dir: &std::path::Path, n: u32) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("sync-probe");
    let mut file = fs::File::create(&path)?;
    let mut times = Vec::new();
    for _ in 0..n {
        file.write_all(&[b'x'; 300])?;
        let started = std::time::Instant::now();
        file.sync_all()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    fs::remove_file(&path)?;
    Ok(super::median(&mut times))
}
