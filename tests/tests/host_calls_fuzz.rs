//! The `host_calls` fuzz target's properties, played on the stable toolchain in every
//! `cargo xtask test`: its seeds (`fuzz/corpus/host_calls/`), then random inputs and mutations
//! of the seeds for a few seconds (`LULL_HOST_CALLS_SECONDS`, default 5; at least
//! [`MIN_RANDOM`] inputs however slow the machine). The guest, the fixture and the properties
//! are the target's own (`fuzz/src/host_calls.rs`, compiled here as a module), so a property
//! that breaks here breaks there.
//!
//! What this does not have is libFuzzer's coverage guidance and AddressSanitizer: building
//! wasmtime with their instrumentation takes about ten minutes on two cores, which CI cannot
//! spend on every run. `cargo xtask fuzz` runs the instrumented target; `fuzz/README.md` has
//! its recorded runs.
//!
//! A failing input is written under the test's temporary directory and named in the failure,
//! with the command that replays it under the fuzzer. `LULL_HOST_CALLS_SEED` repeats a run's
//! random inputs (each run prints its seed).

#[allow(dead_code)]
#[path = "../../fuzz/src/script.rs"]
mod script;

#[path = "../../fuzz/src/host_calls.rs"]
mod host_calls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random inputs played however long they take.
const MIN_RANDOM: usize = 200;

#[test]
fn host_calls_hold_their_properties_on_seeds_and_random_inputs() {
    let seconds: u64 = std::env::var("LULL_HOST_CALLS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("LULL_HOST_CALLS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("host_calls: seed {seed} (LULL_HOST_CALLS_SEED repeats it), {seconds} s");

    let seeds_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/host_calls");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&seeds_dir)
        .unwrap_or_else(|e| panic!("reading the seeds in {}: {e}", seeds_dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 4,
        "the host_calls seeds are missing from {}",
        seeds_dir.display()
    );

    // Sandbox::run lowers its thread to idle priority for good: a thread of its own.
    let played = std::thread::spawn(move || {
        let started = Instant::now();
        for input in &seeds {
            play(input);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let deadline = started + Duration::from_secs(seconds);
        let mut random = 0;
        while random < MIN_RANDOM || Instant::now() < deadline {
            let input = if random % 2 == 0 {
                fresh(&mut rng)
            } else {
                let seed = rng.gen_range(0..seeds.len());
                mutated(&mut rng, &seeds[seed])
            };
            play(&input);
            random += 1;
        }
        (seeds.len(), random, started.elapsed())
    })
    .join();
    let (seeds, random, took) = match played {
        Ok(counts) => counts,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    eprintln!(
        "host_calls: {seeds} seeds and {random} random inputs in {:.1} s",
        took.as_secs_f64()
    );
}

/// Plays one input; when a property breaks, keeps the input and fails naming it.
fn play(input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| host_calls::run(input));
    if let Err(panic) = outcome {
        let path = keep_failure(input);
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "a host_calls input broke a property ({what}); the input is {} \
             (replay: cargo +nightly fuzz run host_calls {})",
            path.display(),
            path.display()
        );
    }
}

fn keep_failure(input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("host_calls-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "crash-{}",
        lull_protocol::Digest::of(input)
            .to_string()
            .replace(':', "-")
    ));
    std::fs::write(&path, input).unwrap();
    path
}

/// A random input: the 7 bytes of flags, with graces mostly short enough to end in the run,
/// then a script of random calls.
fn fresh(rng: &mut StdRng) -> Vec<u8> {
    let mut input = vec![0u8; 7];
    input[0] = rng.r#gen();
    let cap: u16 = match rng.gen_range(0..4) {
        0 => 0,
        1 => rng.gen_range(0..64),
        2 => rng.gen_range(0..4096),
        _ => u16::MAX,
    };
    input[1..3].copy_from_slice(&cap.to_le_bytes());
    let grace: u32 = match rng.gen_range(0..3) {
        0 => 0,
        1 => rng.gen_range(0..50),
        _ => rng.gen_range(0..2000),
    };
    input[3..7].copy_from_slice(&grace.to_le_bytes());
    let calls = rng.gen_range(0..24);
    for _ in 0..calls {
        let op: u8 = rng.gen_range(0..10);
        // Any byte with this remainder is the same opcode.
        input.push(op + 10 * rng.gen_range(0..25));
        let operands = script::SIZES[usize::from(op)] - 1;
        for _ in 0..operands {
            input.push(rng.r#gen());
        }
    }
    if rng.gen_ratio(1, 4) {
        // Cut anywhere: the last call is not made.
        let keep = rng.gen_range(0..=input.len());
        input.truncate(keep);
    }
    input
}

/// A seed with a few bytes flipped, inserted or removed, or with a random tail.
fn mutated(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        match rng.gen_range(0..4) {
            0 if !input.is_empty() => {
                let at = rng.gen_range(0..input.len());
                input[at] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let at = rng.gen_range(0..=input.len());
                input.insert(at, rng.r#gen());
            }
            2 if !input.is_empty() => {
                let at = rng.gen_range(0..input.len());
                input.remove(at);
            }
            _ => {
                let tail = fresh(rng);
                input.extend_from_slice(tail.get(7..).unwrap_or_default());
            }
        }
    }
    input
}
