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

/// Many tasks of a trivial guest through `lull dev` on loopback: how long from an assignment
/// reaching the agent to its guest running (`setup_us`, measured by the agent), and how many
/// tasks per second the whole loop completes. `--tasks N` (2000), `--agents N` (2) and
/// `--slots N` (2 per agent) change the load.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let option = |name: &str, default: u32| -> anyhow::Result<u32> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args
                .get(i + 1)
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))?),
            None => Ok(default),
        }
    };
    let tasks = option("--tasks", 2000)?;
    let agents = option("--agents", 2)?;
    let slots = option("--slots", 2)?;
    util::cargo(&["build", "--release", "-p", "lull", "--bins"])?;
    let dir = tempfile_dir()?;
    std::fs::write(dir.join("trivial.wasm"), wat::parse_str(TRIVIAL)?)?;
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"dispatch-bench\"\ncount = {tasks}\n[[module]]\npath = \"trivial.wasm\"\n[resources]\nmemory = \"1MiB\"\n"
        ),
    )?;
    let dev = Dev::start_release(agents as usize, slots)?;
    let job_file = dir.join("job.toml");
    let started = Instant::now();
    let out = dev.output(&["submit", &job_file.to_string_lossy(), "--json", "--watch"])?;
    let elapsed = started.elapsed();
    let detail: serde_json::Value = serde_json::from_str(&out)?;
    if detail["state"] != "succeeded" {
        bail!("the benchmark job did not succeed: {}", detail["state"]);
    }
    let job = detail["id"].as_u64().context("no job id")?;
    let mut setup_us: Vec<f64> = Vec::new();
    for i in 0..tasks {
        let v = dev.get_json(&format!("/api/v1/jobs/{job}/tasks/{i}"))?;
        for a in v["attempts"].as_array().into_iter().flatten() {
            if let Some(us) = a["setup_us"].as_f64() {
                setup_us.push(us);
            }
        }
    }
    setup_us.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| setup_us[((setup_us.len() as f64 - 1.0) * p).round() as usize] / 1000.0;
    let figures = serde_json::json!({
        "tasks": tasks,
        "agents": agents,
        "slots_per_agent": slots,
        "dispatch_p50_ms": round3(pct(0.50)),
        "dispatch_p99_ms": round3(pct(0.99)),
        "tasks_per_s": round3(tasks as f64 / elapsed.as_secs_f64()),
    });
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{figures}");
    Ok(())
}
