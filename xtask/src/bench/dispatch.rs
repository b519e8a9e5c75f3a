//! The `dispatch` bench: many trivial tasks through `lull dev` on loopback.

use std::time::Instant;

use anyhow::{Context, bail};

use super::{round3, tempfile_dir};
use crate::util::{self, Dev};

/// A guest that does nothing and exits 0.
const TRIVIAL: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 0))))"#;

/// Many tasks of a trivial guest through `lull dev` on loopback: how many tasks per second the
/// whole loop completes; how long from an assignment reaching the agent to its guest running
/// (`setup_us`, measured by the agent); from the job accepted to each task running, and from a
/// result read to it being stored (the coordinator's histograms in `/metrics`); and the CPU the
/// process used per task. `--tasks N` (2000), `--agents N` (2) and `--slots N` (2 per agent)
/// change the load; `--postgres` keeps the state in a fresh PostgreSQL server (fsync on)
/// instead of SQLite.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let option = |name: &str, default: u32| super::number_option(args, name, default);
    let tasks = option("--tasks", 2000)?;
    let agents = option("--agents", 2)?;
    let slots = option("--slots", 2)?;
    let postgres = args.iter().any(|a| a == "--postgres");
    // `--lull PATH`: another build of `lull` (an earlier commit's, to compare side by side).
    let lull = match args.iter().position(|a| a == "--lull") {
        Some(i) => Some(std::path::PathBuf::from(
            args.get(i + 1)
                .context("--lull needs the path of a lull binary")?,
        )),
        None => {
            util::cargo(&["build", "--release", "-p", "lull", "--bins"])?;
            None
        }
    };
    let server = if postgres {
        Some(crate::postgres::Server::start_in("postgres-bench", true)?)
    } else {
        None
    };
    let dir = tempfile_dir()?;
    // What one durable write costs here, for reading the latencies below.
    let sync_ms = super::procfs::sync_ms(&dir, 50)?;
    std::fs::write(dir.join("trivial.wasm"), wat::parse_str(TRIVIAL)?)?;
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"dispatch-bench\"\ncount = {tasks}\n[[module]]\npath = \"trivial.wasm\"\n[resources]\nmemory = \"1MiB\"\n"
        ),
    )?;
    let database: Vec<&str> = match &server {
        Some(s) => vec!["--database", &s.url],
        None => vec![],
    };
    let dev = match &lull {
        Some(bin) => Dev::start_sized(bin.clone(), agents as usize, slots, &database)?,
        None => Dev::start_release_with(agents as usize, slots, &database)?,
    };
    let job_file = dir.join("job.toml");
    let cpu_before = super::procfs::process_cpu_s(dev.pid())?;
    let started = Instant::now();
    let out = dev.output(&["submit", &job_file.to_string_lossy(), "--json", "--watch"])?;
    let elapsed = started.elapsed();
    let cpu = super::procfs::process_cpu_s(dev.pid())? - cpu_before;
    let metrics = dev.get("/metrics")?;
    let detail: serde_json::Value = serde_json::from_str(&out)?;
    if detail["state"] != "succeeded" {
        bail!("the benchmark job did not succeed: {}", detail["state"]);
    }
    let job = detail["id"].as_u64().context("no job id")?;
    let mut setup_us: Vec<f64> = Vec::new();
    // At most about 2,000 tasks' details are read: enough for a p99.
    let step = (tasks / 2000).max(1) as usize;
    for i in (0..tasks).step_by(step) {
        let v = dev.get_json(&format!("/api/v1/jobs/{job}/tasks/{i}"))?;
        for a in v["attempts"].as_array().into_iter().flatten() {
            if let Some(us) = a["setup_us"].as_f64() {
                setup_us.push(us);
            }
        }
    }
    setup_us.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| setup_us[((setup_us.len() as f64 - 1.0) * p).round() as usize] / 1000.0;
    // A histogram an earlier build does not have is `null`.
    let quantile_ms = |name: &str, q: f64| -> anyhow::Result<serde_json::Value> {
        if !metrics.contains(&format!("{name}_bucket")) {
            return Ok(serde_json::Value::Null);
        }
        Ok(round3(histogram_quantile(&metrics, name, q)? * 1000.0).into())
    };
    let figures = serde_json::json!({
        "tasks": tasks,
        "agents": agents,
        "slots_per_agent": slots,
        "database": if postgres { "postgresql" } else { "sqlite" },
        "dispatch_p50_ms": round3(pct(0.50)),
        "dispatch_p99_ms": round3(pct(0.99)),
        "submit_to_start_p50_ms": quantile_ms("lull_submit_to_start_seconds", 0.50)?,
        "submit_to_start_p99_ms": quantile_ms("lull_submit_to_start_seconds", 0.99)?,
        "result_to_durable_p50_ms": quantile_ms("lull_result_durable_seconds", 0.50)?,
        "result_to_durable_p99_ms": quantile_ms("lull_result_durable_seconds", 0.99)?,
        "cpu_ms_per_task": round3(cpu * 1000.0 / f64::from(tasks)),
        "tasks_per_s": round3(tasks as f64 / elapsed.as_secs_f64()),
        "file_sync_p50_ms": round3(sync_ms),
    });
    drop(dev);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{figures}");
    Ok(())
}

/// The `q` quantile of a Prometheus histogram `name` in `text`, interpolated linearly within
/// its bucket as Prometheus' `histogram_quantile` does: within a factor of the bucket's width.
fn histogram_quantile(text: &str, name: &str, q: f64) -> anyhow::Result<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (le, count) = rest.split_once("\"} ").context("malformed bucket")?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        buckets.push((le, count.trim().parse()?));
    }
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total == 0.0 {
        bail!("{name} has no observations");
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Ok(lower);
            }
            return Ok(lower + (le - lower) * (rank - below) / (count - below).max(1.0));
        }
        (lower, below) = (le, count);
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_are_read_from_cumulative_buckets() {
        let text = "x_bucket{le=\"0.001\"} 50\nx_bucket{le=\"0.002\"} 90\nx_bucket{le=\"0.01\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        let q = |q| super::histogram_quantile(text, "x", q).unwrap();
        assert!((q(0.5) - 0.001).abs() < 1e-9);
        assert!((q(0.7) - 0.0015).abs() < 1e-9);
        assert!((q(0.95) - 0.006).abs() < 1e-9);
        assert!(super::histogram_quantile("", "x", 0.5).is_err());
    }
}
