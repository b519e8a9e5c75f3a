//! What a deterministic run sees instead of the host's clocks and randomness: clocks that start
//! at fixed times and move on by [`STEP`] at each reading, and random streams derived from the
//! task's seed. The same guest with the same inputs and seed then reads the same values on
//! every agent, so honest agents send the same result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::SeedableRng;
use rand_pcg::Lcg128Xsl64;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// How far the clocks move at each reading.
pub const STEP: Duration = Duration::from_millis(1);

/// Where the wall clock starts: 2000-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const WALL_START_SECS: u64 = 946_684_800;

/// Makes a run's clocks and randomness deterministic, from `seed`.
pub(super) fn apply(wasi: &mut WasiCtxBuilder, seed: u64) {
    wasi.wall_clock(SteppingWall::default())
        .monotonic_clock(SteppingMonotonic::default())
        .secure_random(stream(seed, b"random"))
        .insecure_random(stream(seed, b"insecure random"))
        .insecure_random_seed(u128::from_le_bytes(
            derive(seed, b"insecure seed")[..16]
                .try_into()
                .expect("16 bytes"),
        ));
}

/// 32 bytes derived from the seed for one use, so that the streams are independent.
fn derive(seed: u64, what: &[u8]) -> [u8; 32] {
    let mut hasher = lull_protocol::digest::Hasher::new();
    hasher.update(b"lull deterministic run v1\n");
    hasher.update(what);
    hasher.update(&seed.to_le_bytes());
    *hasher.finish().as_bytes()
}

/// A PCG generator (a published algorithm whose output does not change between releases),
/// seeded for one use.
fn stream(seed: u64, what: &[u8]) -> Lcg128Xsl64 {
    Lcg128Xsl64::from_seed(derive(seed, what))
}

/// Counts readings: the `n`th reading is `n` steps past the start.
#[derive(Default)]
struct Readings(AtomicU64);

impl Readings {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Default)]
struct SteppingWall(Readings);

impl HostWallClock for SteppingWall {
    fn resolution(&self) -> Duration {
        STEP
    }

    fn now(&self) -> Duration {
        let steps = u32::try_from(self.0.next()).unwrap_or(u32::MAX);
        Duration::from_secs(WALL_START_SECS).saturating_add(STEP.saturating_mul(steps))
    }
}

#[derive(Default)]
struct SteppingMonotonic(Readings);

impl HostMonotonicClock for SteppingMonotonic {
    fn resolution(&self) -> u64 {
        STEP.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        self.0.next().saturating_mul(STEP.as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn clocks_step_from_fixed_starts() {
        let wall = SteppingWall::default();
        assert_eq!(wall.now(), Duration::from_secs(WALL_START_SECS));
        assert_eq!(wall.now(), Duration::from_secs(WALL_START_SECS) + STEP);
        let mono = SteppingMonotonic::default();
        assert_eq!(mono.now(), 0);
        assert_eq!(mono.now(), 1_000_000);
    }

    #[test]
    fn streams_follow_the_seed() {
        let bytes = |seed, what: &[u8]| {
            let mut b = [0u8; 16];
            stream(seed, what).fill_bytes(&mut b);
            b
        };
        assert_eq!(bytes(7, b"random"), bytes(7, b"random"));
        assert_ne!(bytes(7, b"random"), bytes(8, b"random"));
        assert_ne!(bytes(7, b"random"), bytes(7, b"insecure random"));
    }
}
