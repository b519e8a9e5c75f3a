//! `cargo xtask demo`: the examples through a local development cluster, with their results.

use std::path::Path;

use anyhow::{Context, bail};

use crate::util::{self, Dev};

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    util::ensure_wasm_targets()?;
    util::build_examples()?;
    util::cargo(&["build", "-p", "lull", "--bins"])?;
    let dev = Dev::start(&["--agents", "2"], 2)?;
    let out_root = util::target_dir().join("demo");
    let _ = std::fs::remove_dir_all(&out_root);
    let mut dirs = Vec::new();
    for example in ["wordcount", "montecarlo", "mandelbrot"] {
        let job_file = util::root().join("examples").join(example).join("job.toml");
        let job_file = job_file.to_string_lossy();
        println!("\n== {example}: lull submit examples/{example}/job.toml");
        let out = dev.output(&["submit", &job_file, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let job = v["job"]
            .as_u64()
            .context("submit printed no job number")?
            .to_string();
        let status = dev.command().args(["status", &job, "--watch"]).status()?;
        if !status.success() {
            bail!("job {job} ({example}) did not succeed; see `lull status {job}`");
        }
        let dir = out_root.join(example);
        let dir_s = dir.to_string_lossy();
        print!("{}", dev.output(&["results", &job, "-o", &dir_s])?);
        dirs.push((example, dir));
    }
    workflow(&dev)?;
    evict_and_resume(&dev, &out_root)?;
    println!("\n== results");
    for (example, dir) in &dirs {
        match *example {
            "wordcount" => {
                let counts = std::fs::read_to_string(dir.join("0/output/counts.tsv"))?;
                println!(
                    "word count ({}):\n{counts}",
                    dir.join("0/output/counts.tsv").display()
                );
            }
            "montecarlo" => montecarlo(dir)?,
            "mandelbrot" => {
                let mut tiles: Vec<String> = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    let out = entry?.path().join("output");
                    for f in std::fs::read_dir(&out).into_iter().flatten().flatten() {
                        tiles.push(f.path().display().to_string());
                    }
                }
                tiles.sort();
                println!("mandelbrot tiles:");
                for t in tiles {
                    println!("  {t}");
                }
            }
            _ => {}
        }
    }
    println!("\nall results are under {}", out_root.display());
    drop(dev);
    Ok(())
}

/// The `wordfreq` workflow: a map over three shards of text, each task reading only its own,
/// then a reduce of the map's outputs. Submitted again, it keeps both jobs.
fn workflow(dev: &Dev) -> anyhow::Result<()> {
    let dir = util::root().join("examples/wordfreq");
    let file = dir.join("workflow.toml");
    let record = dir.join("workflow.run.json");
    // A run recorded by an earlier demo refers to another cluster's jobs.
    let _ = std::fs::remove_file(&record);
    println!(
        "\n== wordfreq: a map-reduce workflow: lull submit examples/wordfreq/workflow.toml --watch"
    );
    let status = dev
        .command()
        .args(["submit", &file.to_string_lossy(), "--watch"])
        .status()?;
    if !status.success() {
        bail!("the wordfreq workflow did not succeed; see `lull status`");
    }
    let run: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&record).with_context(|| format!("reading {}", record.display()))?,
    )?;
    let reduce = run["jobs"]["reduce"]["job"]
        .as_u64()
        .context("the run record names no reduce job")?;
    println!("\n== the reduce's answer: lull logs {reduce}/0");
    print!("{}", dev.output(&["logs", &format!("{reduce}/0")])?);
    println!("\n== submitted again: the jobs that succeeded are kept, nothing runs");
    print!("{}", dev.output(&["submit", &file.to_string_lossy()])?);
    Ok(())
}

/// The `primes` example, drained off its agent mid-run: it keeps a checkpoint and leaves, and
/// finishes on the other agent from that checkpoint. Prints what it saved.
fn evict_and_resume(dev: &Dev, out_root: &Path) -> anyhow::Result<()> {
    const LIMIT: u64 = 60_000_000;
    let dir = out_root.join("primes-job");
    std::fs::create_dir_all(&dir)?;
    let module = util::root().join("examples/target/wasm32-wasip2/release/primes.wasm");
    std::fs::copy(&module, dir.join("primes.wasm"))
        .with_context(|| format!("copying {}", module.display()))?;
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "name = \"primes\"\n[[module]]\npath = \"primes.wasm\"\nargs = [\"--limit\", \"{LIMIT}\", \"--every\", \"2\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
    )?;
    println!("\n== primes: a long task, evicted mid-run, finishes elsewhere from its checkpoint");
    let out = dev.output(&["submit", &dir.join("job.toml").to_string_lossy(), "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let job = v["job"].as_u64().context("submit printed no job number")?;
    // Wait for a checkpoint a good way in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let (agent, kept) = loop {
        let t = dev.get_json(&format!("/api/v1/jobs/{job}/tasks/0"))?;
        if let (Some(agent), Some(p)) = (
            t["task"]["agent"].as_str(),
            t["checkpoint"]["progress"].as_f64(),
        ) && p >= 0.3
        {
            break (agent.to_owned(), p);
        }
        if std::time::Instant::now() > deadline {
            bail!("the primes task kept no checkpoint within 5 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    println!(
        "task 0 runs on {agent} and kept a checkpoint at {:.0}%: draining {agent}",
        kept * 100.0
    );
    print!("{}", dev.output(&["drain", &agent, "--deadline", "30s"])?);
    let status = dev
        .command()
        .args(["status", &job.to_string(), "--watch"])
        .status()?;
    print!("{}", dev.output(&["drain", &agent, "--off"])?);
    if !status.success() {
        bail!("job {job} (primes) did not succeed; see `lull status {job}`");
    }
    let t = dev.get_json(&format!("/api/v1/jobs/{job}/tasks/0"))?;
    let attempts = t["attempts"].as_array().context("no attempts")?;
    let results = out_root.join("primes");
    dev.output(&[
        "results",
        &job.to_string(),
        "-o",
        &results.to_string_lossy(),
    ])?;
    let stderr = std::fs::read_to_string(results.join("0/stderr")).unwrap_or_default();
    let stdout = std::fs::read_to_string(results.join("0/stdout")).unwrap_or_default();
    // "resuming at N, K primes so far": the resumed attempt skipped N of LIMIT numbers.
    let resumed_at = stderr
        .lines()
        .find_map(|l| l.split("resuming at ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    match (attempts.as_slice(), resumed_at) {
        ([first, second], Some(at)) => {
            let skipped = at as f64 / LIMIT as f64;
            let ran_ms = |a: &serde_json::Value| {
                (a["finished_ms"].as_i64().unwrap_or(0) - a["started_ms"].as_i64().unwrap_or(0))
                    .max(0) as f64
            };
            // The second attempt ran the rest: at its pace, the part it skipped would have
            // taken this long.
            let saved_s = ran_ms(second) * skipped / (1.0 - skipped).max(0.01) / 1000.0;
            println!(
                "attempt 1 on {} was {}; attempt 2 on {} resumed from its checkpoint at {:.0}% and \
                 finished: about {saved_s:.1} s of work saved. Primes below {LIMIT}: {}",
                first["agent"].as_str().unwrap_or("?"),
                first["outcome"].as_str().unwrap_or("?"),
                second["agent"].as_str().unwrap_or("?"),
                skipped * 100.0,
                stdout.trim()
            );
        }
        _ => println!(
            "the task finished without resuming from a checkpoint ({} attempt(s)); see `lull status {job}`",
            attempts.len()
        ),
    }
    Ok(())
}

fn montecarlo(dir: &Path) -> anyhow::Result<()> {
    let (mut inside, mut samples, mut tasks) = (0u64, 0u64, 0);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path().join("output/partial.json");
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        inside += v["inside"].as_u64().context("partial.json has no inside")?;
        samples += v["samples"]
            .as_u64()
            .context("partial.json has no samples")?;
        tasks += 1;
    }
    let pi = 4.0 * inside as f64 / samples as f64;
    println!(
        "monte carlo: {tasks} tasks, {inside} of {samples} points inside the quarter circle: pi ~= {pi:.6} (error {:.2e})",
        (pi - std::f64::consts::PI).abs()
    );
    Ok(())
}
