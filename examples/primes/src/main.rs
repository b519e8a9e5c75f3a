//! primes: counts the primes below a limit, the long way — minutes of CPU for the default
//! limit — keeping a checkpoint every so often with `lull-guest`, so that a task evicted from
//! its machine (or whose machine vanishes) carries on elsewhere from where it was.
//!
//! ```text
//! primes [--limit N] [--every SECONDS]
//! ```
//!
//! Prints the count to stdout and writes it to `/output/primes.txt`. Each attempt logs where it
//! started (`starting at 2` or `resuming at N, K primes so far`) to stderr.

use std::time::Duration;

use lull_guest::{Checkpointer, Level};
use serde::{Deserialize, Serialize};

/// What the task has done: every number below `next` is counted.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    limit: u64,
    next: u64,
    count: u64,
}

/// Numbers per step: a step takes milliseconds, so a notice is answered at once.
const STEP: u64 = 20_000;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Counts the primes in `from..to`.
fn count(from: u64, to: u64) -> u64 {
    (from..to).filter(|&n| is_prime(n)).count() as u64
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let limit = arg(&args, "--limit").unwrap_or(400_000_000);
    let every = Duration::from_secs(arg(&args, "--every").unwrap_or(10));

    let mut state = match lull_guest::restore::<State>()? {
        Some(s) if s.limit == limit => {
            lull_guest::log(
                Level::Info,
                &format!("resuming at {}, {} primes so far", s.next, s.count),
            );
            s
        }
        _ => {
            lull_guest::log(Level::Info, "starting at 2");
            State {
                limit,
                next: 2,
                count: 0,
            }
        }
    };
    let mut checkpoints = Checkpointer::new(every);
    while state.next < limit {
        let to = (state.next + STEP).min(limit);
        state.count += count(state.next, to);
        state.next = to;
        lull_guest::progress(state.next as f64 / limit as f64);
        checkpoints.tick(&state)?;
    }
    println!("{}", state.count);
    std::fs::write("/output/primes.txt", format!("{}\n", state.count))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_the_known_values() {
        assert_eq!(count(0, 100), 25);
        assert_eq!(count(0, 1_000_000), 78_498);
        // In pieces, as the steps do.
        assert_eq!(count(0, 500_000) + count(500_000, 1_000_000), 78_498);
    }
}
