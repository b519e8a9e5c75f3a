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
