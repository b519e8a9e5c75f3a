//! Results checked by agreement: a task of a job with `verify = N` counts as done only when N
//! distinct agents sent the same result ([`TaskResult::digest`]). Pure: the core keeps each
//! unfinished task's replicas and asks [`tally`] what they add up to.
//!
//! [`TaskResult::digest`]: lull_protocol::message::TaskResult::digest

use std::collections::{BTreeMap, BTreeSet};

use lull_protocol::Digest;
use lull_protocol::message::TaskId;

/// A successful run of a task of a verified job, kept until the task is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The attempt's number.
    pub attempt: u32,
    /// The agent that ran it.
    pub agent: String,
    /// Whose machine that is (its lender); empty when no one is named.
    pub owner: String,
    /// The digest of its result.
    pub digest: Digest,
}

/// What a task's replicas add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `verify` distinct agents sent the result with this digest.
    Agreed {
        /// The agreed result's digest.
        digest: Digest,
        /// How many distinct agents sent it.
        agents: usize,
        /// The replicas whose results differ: their attempts and agents.
        dissenters: Vec<(u32, String)>,
    },
    /// No result has enough agents behind it yet.
    Short {
        /// The most distinct agents behind any one result.
        best: usize,
        /// How many different results were sent.
        results: usize,
    },
}

/// Adds up a task's replicas: agreed once `verify` distinct agents sent one result. An agent
/// that sent the same result twice counts once.
pub fn tally(verify: u32, replicas: &[Replica]) -> Verdict {
    let mut behind: BTreeMap<Digest, BTreeSet<&str>> = BTreeMap::new();
    for r in replicas {
        behind.entry(r.digest).or_default().insert(r.agent.as_str());
    }
    let need = verify.max(1) as usize;
    let agreed = behind
        .iter()
        .filter(|(_, agents)| agents.len() >= need)
        .max_by_key(|(_, agents)| agents.len());
    match agreed {
        Some((digest, agents)) => Verdict::Agreed {
            digest: *digest,
            agents: agents.len(),
            dissenters: replicas
                .iter()
                .filter(|r| r.digest != *digest)
                .map(|r| (r.attempt, r.agent.clone()))
                .collect(),
        },
        None => Verdict::Short {
            best: behind.values().map(BTreeSet::len).max().unwrap_or(0),
            results: behind.len(),
        },
    }
}

/// The seed of a verified task's randomness: the same wherever and however often it runs
/// (derived from the job and task alone), different for every task.
pub fn seed(task: TaskId) -> u64 {
    let mut hasher = lull_protocol::digest::Hasher::new();
    hasher.update(b"lull task seed v1\n");
    hasher.update(&task.job.to_le_bytes());
    hasher.update(&task.index.to_le_bytes());
    let digest = hasher.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(attempt: u32, agent: &str, result: &str) -> Replica {
        Replica {
            attempt,
            agent: agent.into(),
            owner: String::new(),
            digest: Digest::of(result.as_bytes()),
        }
    }

    #[test]
    fn agreement_needs_that_many_distinct_agents() {
        let one = [replica(1, "a", "x")];
        assert_eq!(
            tally(2, &one),
            Verdict::Short {
                best: 1,
                results: 1
            }
        );
        // The same agent twice is one voice.
        let twice = [replica(1, "a", "x"), replica(2, "a", "x")];
        assert!(matches!(tally(2, &twice), Verdict::Short { best: 1, .. }));
        let two = [replica(1, "a", "x"), replica(2, "b", "x")];
        assert_eq!(
            tally(2, &two),
            Verdict::Agreed {
                digest: Digest::of(b"x"),
                agents: 2,
                dissenters: vec![]
            }
        );
        // verify = 1: any result counts.
        assert!(matches!(tally(1, &one), Verdict::Agreed { agents: 1, .. }));
        assert!(matches!(tally(0, &one), Verdict::Agreed { agents: 1, .. }));
    }

    #[test]
    fn a_liar_is_outvoted_and_named() {
        let replicas = [
            replica(1, "liar", "forged"),
            replica(2, "a", "honest"),
            replica(3, "b", "honest"),
        ];
        assert_eq!(
            tally(2, &replicas),
            Verdict::Agreed {
                digest: Digest::of(b"honest"),
                agents: 2,
                dissenters: vec![(1, "liar".into())]
            }
        );
        // Before the third, two results stand one against one.
        assert_eq!(
            tally(2, &replicas[..2]),
            Verdict::Short {
                best: 1,
                results: 2
            }
        );
        // Three of three needed: the liar blocks agreement.
        assert!(matches!(
            tally(3, &replicas),
            Verdict::Short {
                best: 2,
                results: 2
            }
        ));
    }

    #[test]
    fn seeds_are_stable_and_differ_between_tasks() {
        let t = |job, index| TaskId { job, index };
        assert_eq!(seed(t(1, 0)), seed(t(1, 0)));
        assert_ne!(seed(t(1, 0)), seed(t(1, 1)));
        assert_ne!(seed(t(1, 0)), seed(t(2, 0)));
    }
}
