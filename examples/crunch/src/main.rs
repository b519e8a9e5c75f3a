//! `crunch`: a fixed amount of CPU-bound work, the same whether built for
//! WebAssembly or for the host, to compare how fast runtimes run it.
//!
//! `--scale N` (1 by default) runs N rounds of five kernels, each round with
//! its own seed:
//!
//! - `sieve`: the primes below 16 million (a byte array, sequential strides);
//! - `nbody`: 1.6 million steps of a five-body orbit simulation (f64
//!   arithmetic and square roots);
//! - `sort`: 3 million pseudo-random 64-bit integers, sorted;
//! - `hash`: 786,432 keys inserted into an open-addressing table, then as
//!   many looked up (random memory access);
//! - `crc`: CRC-32 of 24 MiB of pseudo-random bytes (table lookups on bytes).
//!
//! Standard output is one line per kernel with its checksum, identical on
//! every platform (only IEEE-exact float operations, no library maths);
//! standard error has each kernel's time, summed over the rounds, as
//! `crunch: time KERNEL SECONDS`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: crunch [--scale N]

Runs N rounds (default 1) of five CPU-bound kernels (sieve, nbody, sort,
hash, crc) and prints one checksum line per kernel on stdout and each
kernel's time on stderr.";

/// The largest `--scale`: a mistyped argument should not run for days.
const MAX_SCALE: u32 = 1000;

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Some(scale)) => {
            run(scale);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("crunch: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `--scale N` (also `--scale=N`); `Ok(None)` when help was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<u32>, String> {
    let mut scale = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--scale" => args.next().ok_or("--scale needs a value")?,
            other => match other.strip_prefix("--scale=") {
                Some(v) => v.to_string(),
                None => return Err(format!("unexpected argument '{other}'\n\n{USAGE}")),
            },
        };
        let n: u32 = value
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_SCALE).contains(n))
            .ok_or_else(|| format!("invalid --scale '{value}': expected 1..={MAX_SCALE}"))?;
        if scale.replace(n).is_some() {
            return Err("--scale given more than once".to_string());
        }
    }
    Ok(Some(scale.unwrap_or(1)))
}

type Kernel = fn(u64) -> u64;

const KERNELS: [(&str, Kernel); 5] = [
    ("sieve", |seed| sieve(16_000_000 + (seed % 7) as usize)),
    ("nbody", |seed| nbody(1_600_000, seed)),
    ("sort", |seed| sort(3_000_000, seed)),
    ("hash", |seed| hash(3 << 18, seed)),
    ("crc", |seed| crc(24 << 20, seed)),
];

fn run(scale: u32) {
    let mut sums = [0u64; KERNELS.len()];
    let mut times = [Duration::ZERO; KERNELS.len()];
    for round in 0..u64::from(scale) {
        for (k, (_, kernel)) in KERNELS.iter().enumerate() {
            let started = Instant::now();
            let sum = kernel(round + 1);
            times[k] += started.elapsed();
            sums[k] = mix(sums[k] ^ sum);
        }
    }
    for (k, (name, _)) in KERNELS.iter().enumerate() {
        println!("{name} {:016x}", sums[k]);
        eprintln!("crunch: time {name} {:.6}", times[k].as_secs_f64());
    }
}

/// A 64-bit finaliser (from SplitMix64): spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(mix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The count and the sum of the primes below `n`, mixed.
fn sieve(n: usize) -> u64 {
    let mut composite = vec![false; n];
    let (mut count, mut sum) = (0u64, 0u64);
    for i in 2..n {
        if composite[i] {
            continue;
        }
        count += 1;
        sum = sum.wrapping_add(i as u64);
        let mut j = i.saturating_mul(i);
        while j < n {
            composite[j] = true;
            j += i;
        }
    }
    mix(count) ^ sum
}

/// A star and four planets on near-circular orbits (solar masses, AU and
/// years), stepped `steps` times; the seed turns the planets' starting
/// points. The bits of the final energy and positions, mixed.
// The components of several vectors at once read best indexed.
#[allow(clippy::needless_range_loop)]
fn nbody(steps: u32, seed: u64) -> u64 {
    // G times the star's mass, in AU^3 / year^2.
    const GM: f64 = 4.0 * std::f64::consts::PI * std::f64::consts::PI;
    const DT: f64 = 0.01;
    // Position, velocity, mass (as G times the mass).
    let mut bodies = [([0.0f64; 3], [0.0f64; 3], GM); 5];
    let orbits = [(5.2, 1e-3), (9.5, 3e-4), (19.2, 4e-5), (30.1, 5e-5)];
    for (k, &(radius, mass)) in orbits.iter().enumerate() {
        // A point of the unit circle with rational coordinates (no sin or cos, which differ
        // between maths libraries): t = tan(angle / 2).
        let t = ((seed.wrapping_add(k as u64 * 7)) % 13) as f64 / 5.0 - 1.2;
        let (c, s) = ((1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t));
        let speed = (GM / radius).sqrt();
        let tilt = (k as f64 - 1.5) * 0.01;
        bodies[k + 1] = (
            [radius * c, radius * s, radius * tilt],
            [-speed * s, speed * c, 0.0],
            GM * mass,
        );
    }
    // The star moves so that the total momentum is zero.
    let mut momentum = [0.0; 3];
    for body in &bodies[1..] {
        for d in 0..3 {
            momentum[d] += body.1[d] * body.2;
        }
    }
    for d in 0..3 {
        bodies[0].1[d] = -momentum[d] / GM;
    }
    for _ in 0..steps {
        for i in 0..bodies.len() {
            for j in i + 1..bodies.len() {
                let mut delta = [0.0; 3];
                for d in 0..3 {
                    delta[d] = bodies[i].0[d] - bodies[j].0[d];
                }
                let distance_sq = delta[0] * delta[0] + delta[1] * delta[1] + delta[2] * delta[2];
                let magnitude = DT / (distance_sq * distance_sq.sqrt());
                let (mi, mj) = (bodies[i].2, bodies[j].2);
                for d in 0..3 {
                    bodies[i].1[d] -= delta[d] * mj * magnitude;
                    bodies[j].1[d] += delta[d] * mi * magnitude;
                }
            }
        }
        for body in &mut bodies {
            for d in 0..3 {
                body.0[d] += DT * body.1[d];
            }
        }
    }
    let mut energy = 0.0;
    for (i, a) in bodies.iter().enumerate() {
        let speed_sq = a.1[0] * a.1[0] + a.1[1] * a.1[1] + a.1[2] * a.1[2];
        energy += 0.5 * a.2 * speed_sq;
        for b in &bodies[i + 1..] {
            let mut distance_sq = 0.0;
            for d in 0..3 {
                distance_sq += (a.0[d] - b.0[d]) * (a.0[d] - b.0[d]);
            }
            energy -= a.2 * b.2 / distance_sq.sqrt();
        }
    }
    let mut sum = mix(energy.to_bits());
    for body in &bodies {
        for d in 0..3 {
            sum = mix(sum ^ body.0[d].to_bits());
        }
    }
    sum
}

/// `n` pseudo-random integers, sorted; a mix of every 1000th and of the order.
fn sort(n: usize, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut values: Vec<u64> = (0..n).map(|_| rng.next() >> (rng.next() % 24)).collect();
    values.sort_unstable();
    let mut sum = mix(values.windows(2).filter(|w| w[0] <= w[1]).count() as u64);
    for v in values.iter().step_by(1000) {
        sum = mix(sum ^ v);
    }
    sum
}

/// `n` keys into a table of 2n slots (linear probing), then `n` lookups of
/// which about half hit: the hits, the probes and the stored values, mixed.
fn hash(n: usize, seed: u64) -> u64 {
    let slots = (2 * n).next_power_of_two();
    let mask = slots - 1;
    let mut keys = vec![0u64; slots];
    let mut values = vec![0u32; slots];
    let mut rng = Rng::new(seed);
    let mut inserted = Vec::with_capacity(n);
    for i in 0..n {
        let key = rng.next() | 1;
        inserted.push(key);
        let mut at = (mix(key) & mask as u64) as usize;
        while keys[at] != 0 && keys[at] != key {
            at = (at + 1) & mask;
        }
        keys[at] = key;
        values[at] = values[at].wrapping_add(i as u32);
    }
    let (mut hits, mut probes, mut total) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let key = if i % 2 == 0 {
            inserted[(rng.next() % n as u64) as usize]
        } else {
            rng.next() | 1
        };
        let mut at = (mix(key) & mask as u64) as usize;
        loop {
            probes += 1;
            if keys[at] == key {
                hits += 1;
                total = total.wrapping_add(u64::from(values[at]));
                break;
            }
            if keys[at] == 0 {
                break;
            }
            at = (at + 1) & mask;
        }
    }
    mix(hits) ^ mix(probes.rotate_left(21)) ^ total
}

/// CRC-32 (IEEE, reflected, table-driven) of `len` pseudo-random bytes.
fn crc(len: usize, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let data: Vec<u8> = (0..len / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    u64::from(crc32(&crc_table(), &data))
}

fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    table
}

fn crc32(table: &[u32; 256], data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &byte in data {
        c = table[((c ^ u32::from(byte)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<u32>, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_args() {
        assert_eq!(args(&[]), Ok(Some(1)));
        assert_eq!(args(&["--scale", "3"]), Ok(Some(3)));
        assert_eq!(args(&["--scale=4"]), Ok(Some(4)));
        assert_eq!(args(&["-h"]), Ok(None));
        assert!(args(&["--scale", "0"]).unwrap_err().contains("1..="));
        assert!(args(&["--scale", "x"]).unwrap_err().contains("invalid"));
        assert!(args(&["--scale"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--fast"]).unwrap_err().contains("unexpected"));
        assert!(args(&["--scale", "1", "--scale", "2"]).is_err());
    }

    #[test]
    fn kernels_compute_known_values() {
        // 25 primes below 100, summing to 1060.
        assert_eq!(sieve(100), mix(25) ^ 1060);
        // The standard check value of CRC-32.
        assert_eq!(crc32(&crc_table(), b"123456789"), 0xcbf4_3926);
        assert_eq!(crc(0, 1), 0);
    }

    #[test]
    fn kernels_depend_on_their_seed_alone() {
        assert_eq!(sort(1000, 3), sort(1000, 3));
        assert_ne!(sort(1000, 3), sort(1000, 4));
        assert_eq!(hash(1000, 3), hash(1000, 3));
        assert_ne!(hash(1000, 3), hash(1000, 4));
        assert_eq!(nbody(100, 3), nbody(100, 3));
        assert_ne!(nbody(100, 3), nbody(100, 4));
        assert_eq!(crc(4096, 3), crc(4096, 3));
    }
}
