//! The `start` bench: how fast a task starts, cold and warm, and what travels.
//!
//! - **Warm instantiate** (this process): the `mandelbrot` example (a core module) and the
//!   `montecarlo` example (a component) compiled once, then instantiated again and again the way
//!   the agent starts a guest (a store with the task's WASI context and limits), in the pooling
//!   allocator and, side by side, with memory allocated per run. The guests are not run.
//!   `--warm-only` stops after this part.
//! - **Cold start** (`lull dev`, release build, loopback): tasks whose module no agent has seen
//!   (the example with a distinct custom section each, so a distinct digest): the agent's
//!   `setup_us`, from the assignment's arrival to the guest running, covers fetching the module,
//!   checking its signature, compiling and instantiating.
//! - **Bytes and fetches**: a 1,000-task job submitted, then submitted again unchanged: the
//!   module bytes each `lull submit` sent, and how many blobs each agent downloaded for it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lull_agent::sandbox::{RunSpec, Sandbox, SandboxConfig};
use lull_protocol::message::Outcome;

use super::{round3, tempfile_dir};
use crate::util::{self, Dev};

/// The module with a custom section `lull-bench` holding `nonce`: the same code under a
/// different digest.
fn with_nonce(module: &[u8], nonce: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"lull-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(nonce.as_bytes());
    let mut out = module.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Instantiations per second of a compiled program: sorted microseconds of `n` runs.
fn instantiate_us(
    sandbox: &Sandbox,
    module: &[u8],
    pooled: bool,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let program = sandbox
        .compile(module)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile_dir()?.join(if pooled { "pooled" } else { "on-demand" });
    let (output, scratch) = (dir.join("output"), dir.join("scratch"));
    std::fs::create_dir_all(&output)?;
    std::fs::create_dir_all(&scratch)?;
    let spec = RunSpec {
        name: "montecarlo".into(),
        args: vec!["--samples".into(), "1000".into()],
        env: vec![("LULL_TASK_INDEX".into(), "0".into())],
        stdin: vec![],
        input_dir: None,
        mounts: Vec::new(),
        output_dir: output,
        scratch_dir: scratch,
        memory_limit: 64 << 20,
        timeout: Duration::from_secs(60),
        pooled,
        hooks: None,
        seed: None,
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let outcome = sandbox.instantiate_only(&program, &spec);
        let us = started.elapsed().as_secs_f64() * 1e6;
        if outcome != (Outcome::Exited { code: 0 }) {
            bail!("instantiating the benchmark module failed: {outcome:?}");
        }
        // The first tenth warms the pool's slots and the caches up.
        if i >= n / 10 {
            times.push(us);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Submits a job file with `lull submit --json`; returns the job number and the module bytes
/// sent.
fn submit(dev: &Dev, job: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let out = dev.output(&["submit", &job.to_string_lossy(), "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let id = v["job"]
        .as_u64()
        .context("lull submit printed no job number")?;
    let bytes = v["upload"]["module_bytes"]
        .as_u64()
        .context("lull submit printed no upload figures")?;
    Ok((id, bytes))
}

/// Follows a job to its end; fails unless it succeeded.
fn finish(dev: &Dev, job: u64) -> anyhow::Result<serde_json::Value> {
    let out = dev.output(&["status", &job.to_string(), "--watch", "--json"])?;
    let detail: serde_json::Value = serde_json::from_str(&out)?;
    if detail["state"] != "succeeded" {
        bail!("benchmark job {job} did not succeed: {}", detail["state"]);
    }
    Ok(detail)
}

/// Blobs each agent has downloaded, by agent ID.
fn served(dev: &Dev) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let agents = dev.get_json("/api/v1/agents")?;
    Ok(agents
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or("?").to_owned(),
                a["blobs_served"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn write_job(
    dir: &std::path::Path,
    name: &str,
    module: &[u8],
    count: u32,
) -> anyhow::Result<std::path::PathBuf> {
    let job_dir = dir.join(name);
    std::fs::create_dir_all(&job_dir)?;
    std::fs::write(job_dir.join("m.wasm"), module)?;
    let job = job_dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"m.wasm\"\nargs = [\"--samples\", \"1000\", \"--seed\", \"{{index}}\"]\n[resources]\nmemory = \"64MiB\"\n"
        ),
    )?;
    Ok(job)
}

/// Runs the bench; `--quick` measures fewer of everything.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let (instantiations, cold_tasks, job_tasks) = if quick {
        (500, 4, 200)
    } else {
        (5000, 12, 1000)
    };
    let warm_only = args.iter().any(|a| a == "--warm-only");
    util::build_examples()?;
    let read = |rel: &str| {
        let path = util::root().join("examples/target").join(rel);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    // A core module (WASI preview 1) and a component (preview 2), both Rust programs.
    let core_module = read("wasm32-wasip1/release/mandelbrot.wasm")?;
    let module = read("wasm32-wasip2/release/montecarlo.wasm")?;

    // Warm instantiation, pooled and not, side by side.
    let sandbox = Sandbox::new(SandboxConfig {
        pooled_guests: 7,
        pooled_memory: 1 << 30,
        ..SandboxConfig::default()
    })?;
    let pooled = instantiate_us(&sandbox, &core_module, true, instantiations)?;
    let on_demand = instantiate_us(&sandbox, &core_module, false, instantiations)?;
    let component_pooled = instantiate_us(&sandbox, &module, true, instantiations)?;
    let component_on_demand = instantiate_us(&sandbox, &module, false, instantiations)?;
    drop(sandbox);
    let warm = serde_json::json!({
        "core_module_bytes": core_module.len(),
        "component_bytes": module.len(),
        "warm_instantiate_p50_us": round3(percentile(&pooled, 0.50)),
        "warm_instantiate_p99_us": round3(percentile(&pooled, 0.99)),
        "on_demand_instantiate_p50_us": round3(percentile(&on_demand, 0.50)),
        "on_demand_instantiate_p99_us": round3(percentile(&on_demand, 0.99)),
        "component_warm_instantiate_p50_us": round3(percentile(&component_pooled, 0.50)),
        "component_warm_instantiate_p99_us": round3(percentile(&component_pooled, 0.99)),
        "component_on_demand_instantiate_p50_us": round3(percentile(&component_on_demand, 0.50)),
        "component_on_demand_instantiate_p99_us": round3(percentile(&component_on_demand, 0.99)),
        "instantiations": pooled.len(),
    });
    if warm_only {
        println!("{warm}");
        return Ok(());
    }
    util::cargo(&["build", "--release", "-p", "lull", "--bins"])?;

    // The system: two agents of four slots in one `lull dev`.
    let dir = tempfile_dir()?;
    let dev = Dev::start_release(2, 4)?;

    // Cold starts: a module no agent holds, one task at a time.
    let mut cold_ms = Vec::new();
    for i in 0..cold_tasks {
        let job = write_job(
            &dir,
            &format!("cold-{i}"),
            &with_nonce(&module, &format!("cold-{i}")),
            1,
        )?;
        let (id, _) = submit(&dev, &job)?;
        finish(&dev, id)?;
        let task = dev.get_json(&format!("/api/v1/jobs/{id}/tasks/0"))?;
        let us = task["attempts"][0]["setup_us"]
            .as_f64()
            .context("a cold task recorded no setup time")?;
        cold_ms.push(us / 1000.0);
    }
    cold_ms.sort_by(f64::total_cmp);

    // A big job of a module new to everyone, then the same job again.
    let before = served(&dev)?;
    let job = write_job(&dir, "fetch", &with_nonce(&module, "fetch"), job_tasks)?;
    let (first_id, first_bytes) = submit(&dev, &job)?;
    finish(&dev, first_id)?;
    let (second_id, second_bytes) = submit(&dev, &job)?;
    finish(&dev, second_id)?;
    let after = served(&dev)?;
    let fetches: Vec<u64> = after
        .iter()
        .map(|(id, n)| n - before.get(id).copied().unwrap_or(0))
        .collect();
    let agents_used = fetches.iter().filter(|&&n| n > 0).count();
    let warm_runs = {
        // The counts alone, not the job's tasks.
        let detail = dev.get_json(&format!("/api/v1/jobs/{second_id}?limit=0"))?;
        detail["counts"]["succeeded"].as_u64().unwrap_or(0)
    };
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);

    let mut figures = warm;
    let system = serde_json::json!({
        "cold_start_p50_ms": round3(percentile(&cold_ms, 0.50)),
        "cold_start_max_ms": round3(*cold_ms.last().unwrap_or(&0.0)),
        "cold_tasks": cold_ms.len(),
        "first_submit_module_bytes": first_bytes,
        "resubmit_module_bytes": second_bytes,
        "job_tasks": job_tasks,
        "tasks_resubmitted": warm_runs,
        "module_fetches_per_agent": fetches.iter().copied().max().unwrap_or(0),
        "agents_that_fetched": agents_used,
    });
    if let (Some(all), Some(more)) = (figures.as_object_mut(), system.as_object()) {
        all.extend(more.clone());
    }
    println!("{figures}");
    Ok(())
}
