//! Leases: an assignment holds its task only while the agent keeps reporting. Pure: time comes
//! in as an argument.
//!
//! Leases live in memory. After a restart the coordinator grants every running attempt a fresh
//! lease, so agents that reconnect within the lease keep their work and the rest is requeued.
//!
//! Kept by attempt and by deadline: granting, renewing and releasing cost O(log n), finding the
//! next deadline O(log n), and the expired come out in deadline order, however many attempts
//! run.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use lull_protocol::message::AttemptId;

#[derive(Debug, Clone)]
struct Lease {
    agent: String,
    deadline: Instant,
}

/// The leases of running attempts.
#[derive(Debug)]
pub struct Leases {
    ttl: Duration,
    leases: HashMap<AttemptId, Lease>,
    /// The same leases by deadline.
    by_deadline: BTreeSet<(Instant, AttemptId)>,
}

impl Leases {
    /// Leases that last `ttl` without renewal.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            leases: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    /// Grants (or re-grants) a lease on `attempt` to `agent`.
    pub fn grant(&mut self, now: Instant, attempt: AttemptId, agent: &str) {
        self.grant_for(now, attempt, agent, self.ttl);
    }

    /// Grants a lease on `attempt` to `agent` that lasts `ttl` instead of the usual time: a
    /// lease put back after its loss could not be recorded, to expire (and be tried) again soon.
    pub fn grant_for(&mut self, now: Instant, attempt: AttemptId, agent: &str, ttl: Duration) {
        let deadline = now + ttl;
        if let Some(old) = self.leases.insert(
            attempt,
            Lease {
                agent: agent.to_owned(),
                deadline,
            },
        ) {
            self.by_deadline.remove(&(old.deadline, attempt));
        }
        self.by_deadline.insert((deadline, attempt));
    }

    /// Renews the lease when `agent` holds it; returns whether it does.
    pub fn renew(&mut self, now: Instant, attempt: AttemptId, agent: &str) -> bool {
        match self.leases.get_mut(&attempt) {
            Some(l) if l.agent == agent => {
                self.by_deadline.remove(&(l.deadline, attempt));
                l.deadline = now + self.ttl;
                self.by_deadline.insert((l.deadline, attempt));
                true
            }
            _ => false,
        }
    }

    /// Who holds a lease on `attempt`.
    pub fn holder(&self, attempt: &AttemptId) -> Option<&str> {
        self.leases.get(attempt).map(|l| l.agent.as_str())
    }

    /// The attempts whose leases `agent` holds.
    pub fn held_by(&self, agent: &str) -> Vec<AttemptId> {
        self.leases
            .iter()
            .filter(|(_, l)| l.agent == agent)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Ends a lease (the attempt ended).
    pub fn release(&mut self, attempt: &AttemptId) {
        if let Some(l) = self.leases.remove(attempt) {
            self.by_deadline.remove(&(l.deadline, *attempt));
        }
    }

    /// Removes and returns the leases past their deadline, the earliest first.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<(AttemptId, String)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, attempt)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(l) = self.leases.remove(&attempt) {
                expired.push((attempt, l.agent));
            }
        }
        expired
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// The attempts holding leases.
    pub fn attempts(&self) -> impl Iterator<Item = &AttemptId> {
        self.leases.keys()
    }

    /// How many leases are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::message::TaskId;

    fn att(i: u32) -> AttemptId {
        AttemptId {
            task: TaskId { job: 1, index: i },
            attempt: 1,
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // The test's start is its one reading of the clock.
    fn leases_expire_unless_renewed_by_their_holder() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_secs(30));
        l.grant(t0, att(0), "a");
        l.grant(t0, att(1), "a");
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert!(l.renew(t0 + Duration::from_secs(20), att(0), "a"));
        assert!(!l.renew(t0 + Duration::from_secs(20), att(1), "b"));
        let expired = l.poll_expired(t0 + Duration::from_secs(31));
        assert_eq!(expired, vec![(att(1), "a".to_string())]);
        assert_eq!(l.holder(&att(0)), Some("a"));
        l.grant(t0, att(2), "b");
        assert_eq!(l.held_by("a"), vec![att(0)]);
        assert_eq!(l.held_by("b"), vec![att(2)]);
        assert!(l.held_by("c").is_empty());
        l.release(&att(2));
        assert!(l.poll_expired(t0 + Duration::from_secs(49)).is_empty());
        assert_eq!(l.poll_expired(t0 + Duration::from_secs(50)).len(), 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // The test's start is its one reading of the clock.
    fn the_deadline_index_agrees_with_a_plain_map_whatever_happens() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut l = Leases::new(ttl);
        // The model: attempt -> (agent, deadline), scanned in full.
        let mut model: HashMap<AttemptId, (String, Instant)> = HashMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..20_000u64 {
            let now = t0 + Duration::from_millis(step * 10);
            let a = att(next(64) as u32);
            let agent = ["a", "b", "c"][next(3) as usize];
            match next(5) {
                0 => {
                    let short = Duration::from_millis(next(5_000));
                    l.grant_for(now, a, agent, short);
                    model.insert(a, (agent.to_owned(), now + short));
                }
                1 => {
                    let holds = model.get(&a).is_some_and(|(h, _)| h == agent);
                    assert_eq!(l.renew(now, a, agent), holds);
                    if holds {
                        model.insert(a, (agent.to_owned(), now + ttl));
                    }
                }
                2 => {
                    l.release(&a);
                    model.remove(&a);
                }
                3 => {
                    let mut expired = l.poll_expired(now);
                    let mut due: Vec<(AttemptId, String)> = model
                        .iter()
                        .filter(|(_, (_, d))| *d <= now)
                        .map(|(a, (h, _))| (*a, h.clone()))
                        .collect();
                    model.retain(|_, (_, d)| *d > now);
                    expired.sort();
                    due.sort();
                    assert_eq!(expired, due);
                }
                _ => {
                    l.grant(now, a, agent);
                    model.insert(a, (agent.to_owned(), now + ttl));
                }
            }
            assert_eq!(l.len(), model.len());
            assert_eq!(l.poll_timeout(), model.values().map(|(_, d)| *d).min());
        }
    }
}
