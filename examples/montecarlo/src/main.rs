//! `montecarlo`: estimates pi by Monte Carlo sampling, one array-job task at a
//! time.
//!
//! Each task draws `--samples N` points uniformly in the unit square from a
//! PRNG seeded with `--seed S`, counts the points inside the quarter circle
//! `x² + y² <= 1` and writes `/output/partial.json`:
//!
//! ```json
//! {"index":3,"inside":15707963,"samples":20000000}
//! ```
//!
//! where `index` is the task index from `LULL_TASK_INDEX` (0 when unset).
//! Summing `inside` and `samples` over all tasks gives `pi ~= 4 * inside /
//! samples`. The work is plain CPU: a xorshift64* generator and f64 math, no
//! shortcuts, so it is a good stand-in for a compute-bound batch job.
//!
//! With the guest SDK (`lull-guest`) it reports its progress and keeps a
//! checkpoint (the generator's state and the counts so far) every `--every`
//! seconds (10 by default), and at once when the agent announces an eviction:
//! an evicted task carries on elsewhere from there, with the same final
//! result as an uninterrupted one.

use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use lull_guest::{Checkpointer, Level};
use serde::{Deserialize, Serialize};

const OUTPUT_FILE: &str = "/output/partial.json";
const USAGE: &str = "usage: montecarlo --samples N --seed S [--every SECONDS]

Samples N points in the unit square with a PRNG seeded from S, counts those
inside the quarter circle and writes {\"index\":I,\"inside\":X,\"samples\":N} to
/output/partial.json (I is $LULL_TASK_INDEX, default 0).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("montecarlo: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let index = task_index()?;

    let inside = sample(&args)?;

    let json = partial_json(index, inside, args.samples);
    fs::write(OUTPUT_FILE, &json).map_err(|e| format!("cannot write {OUTPUT_FILE}: {e}"))?;
    println!(
        "task {index}: {inside} of {} inside, pi ~= {:.6}",
        args.samples,
        4.0 * inside as f64 / args.samples as f64
    );
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    samples: u64,
    seed: u64,
    /// Seconds between checkpoints.
    every: u64,
}

/// Points per step between checkpointer ticks: a few milliseconds of work.
const STEP: u64 = 1_000_000;

/// What a task has done so far: its checkpoint.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Progress {
    /// The arguments it was started with (a checkpoint of other ones is not used).
    samples: u64,
    seed: u64,
    /// Points drawn and counted.
    done: u64,
    inside: u64,
    /// The generator's state after `done` points.
    rng: u64,
}

/// Draws the task's points, restoring an earlier attempt's checkpoint and keeping new ones;
/// returns how many fell inside.
fn sample(args: &Args) -> Result<u64, String> {
    let restored = lull_guest::restore::<Progress>().map_err(|e| e.to_string())?;
    let mut p = match restored {
        Some(p) if p.samples == args.samples && p.seed == args.seed => {
            lull_guest::log(
                Level::Info,
                &format!("resuming at {} of {} samples", p.done, p.samples),
            );
            p
        }
        _ => Progress {
            samples: args.samples,
            seed: args.seed,
            done: 0,
            inside: 0,
            rng: XorShift64Star::from_seed(args.seed).state,
        },
    };
    let mut checkpoints = Checkpointer::new(Duration::from_secs(args.every));
    let mut rng = XorShift64Star { state: p.rng };
    while p.done < p.samples {
        let n = STEP.min(p.samples - p.done);
        p.inside += count_inside(&mut rng, n);
        p.done += n;
        p.rng = rng.state;
        lull_guest::progress(p.done as f64 / p.samples as f64);
        checkpoints.tick(&p).map_err(|e| e.to_string())?;
    }
    Ok(p.inside)
}

/// Parses `--samples N --seed S [--every SECONDS]` (also `--samples=N`).
/// `Ok(None)` means help was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut samples = None;
    let mut seed = None;
    let mut every = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--samples" => &mut samples,
            "--seed" => &mut seed,
            "--every" => &mut every,
            other => return Err(format!("unexpected argument '{other}'\n\n{USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let n: u64 = value.trim().parse().map_err(|_| {
            format!("invalid value '{value}' for {flag}: expected a non-negative integer")
        })?;
        if slot.replace(n).is_some() {
            return Err(format!("{flag} given more than once"));
        }
    }
    let samples = samples.ok_or_else(|| format!("missing --samples\n\n{USAGE}"))?;
    let seed = seed.ok_or_else(|| format!("missing --seed\n\n{USAGE}"))?;
    if samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    Ok(Some(Args {
        samples,
        seed,
        every: every.unwrap_or(10),
    }))
}

/// The array-job task index from `LULL_TASK_INDEX`, 0 when it is not set.
fn task_index() -> Result<u64, String> {
    match std::env::var("LULL_TASK_INDEX") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("LULL_TASK_INDEX is '{v}', expected a non-negative integer")),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(e) => Err(format!("LULL_TASK_INDEX: {e}")),
    }
}

fn partial_json(index: u64, inside: u64, samples: u64) -> String {
    format!("{{\"index\":{index},\"inside\":{inside},\"samples\":{samples}}}")
}

/// One step of SplitMix64 (Steele, Lea & Flood): turns any seed, including
/// small consecutive ones like task indices, into a well-mixed 64-bit value.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Marsaglia's xorshift64 with Vigna's multiplicative output scrambler
/// (xorshift64*). Small, fast and plenty good for Monte Carlo pi.
#[derive(Debug, Clone)]
pub struct XorShift64Star {
    state: u64,
}

impl XorShift64Star {
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = seed;
        let mut state = splitmix64(&mut sm);
        while state == 0 {
            // xorshift's one forbidden state; splitmix64 is a bijection so
            // this is vanishingly rare, but never loop on zero.
            state = splitmix64(&mut sm);
        }
        Self { state }
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline(always)]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Draws `samples` points in the unit square, returns how many fall inside
/// the quarter circle.
pub fn count_inside(rng: &mut XorShift64Star, samples: u64) -> u64 {
    let mut inside = 0u64;
    for _ in 0..samples {
        let x = rng.next_f64();
        let y = rng.next_f64();
        inside += (x * x + y * y <= 1.0) as u64;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn prng_is_deterministic_and_seed_dependent() {
        let a: Vec<u64> = {
            let mut r = XorShift64Star::from_seed(1);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = XorShift64Star::from_seed(1);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = XorShift64Star::from_seed(2);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Seed 0 must not produce the all-zero stream.
        assert_ne!(XorShift64Star::from_seed(0).next_u64(), 0);
    }

    #[test]
    fn splitmix64_matches_reference() {
        // First outputs of the reference splitmix64.c for seed 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn floats_are_in_unit_interval() {
        let mut r = XorShift64Star::from_seed(7);
        for _ in 0..100_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn estimates_pi() {
        let n = 1_000_000;
        let mut r = XorShift64Star::from_seed(42);
        let inside = count_inside(&mut r, n);
        let pi = 4.0 * inside as f64 / n as f64;
        // Standard error is about 0.0016 at 1e6 samples.
        assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi ~= {pi}");
        // Same seed, same count.
        assert_eq!(count_inside(&mut XorShift64Star::from_seed(42), n), inside);
    }

    #[test]
    fn counting_in_steps_from_a_kept_state_gives_the_same_count() {
        // What a resumed task does: carry on from the generator's kept state.
        let whole = count_inside(&mut XorShift64Star::from_seed(7), 3 * STEP);
        let mut rng = XorShift64Star::from_seed(7);
        let mut inside = count_inside(&mut rng, STEP);
        let kept = rng.state;
        let mut resumed = XorShift64Star { state: kept };
        inside += count_inside(&mut resumed, 2 * STEP);
        assert_eq!(inside, whole);
    }

    #[test]
    fn parses_args() {
        assert_eq!(
            args(&["--samples", "100", "--seed", "3"]),
            Ok(Some(Args {
                samples: 100,
                seed: 3,
                every: 10
            }))
        );
        assert_eq!(
            args(&["--seed=9", "--samples=5", "--every", "2"]),
            Ok(Some(Args {
                samples: 5,
                seed: 9,
                every: 2
            }))
        );
        assert_eq!(args(&["--help"]), Ok(None));
        assert!(
            args(&["--samples", "100"])
                .unwrap_err()
                .contains("missing --seed")
        );
        assert!(
            args(&["--samples", "-1", "--seed", "1"])
                .unwrap_err()
                .contains("invalid value '-1'")
        );
        assert!(
            args(&["--samples", "0", "--seed", "1"])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(args(&["--samples"]).unwrap_err().contains("needs a value"));
        assert!(
            args(&["--bogus", "1"])
                .unwrap_err()
                .contains("unexpected argument '--bogus'")
        );
        assert!(
            args(&["--seed", "1", "--seed", "2", "--samples", "1"])
                .unwrap_err()
                .contains("more than once")
        );
    }

    #[test]
    fn json_is_exact() {
        assert_eq!(
            partial_json(3, 15, 20),
            r#"{"index":3,"inside":15,"samples":20}"#
        );
    }
}
