//! Leases: an assignment holds its task only while the agent keeps reporting. Pure: time comes
//! in as an argument.
//!
//! Leases live in memory. After a restart the coordinator grants every running attempt a fresh
//! lease, so agents that reconnect within the lease keep their work and the rest is requeued.

use std::collections::HashMap;
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
}

impl Leases {
    /// Leases that last `ttl` without renewal.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            leases: HashMap::new(),
        }
    }

    /// How long a lease lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Grants (or re-grants) a lease on `attempt` to `agent`.
    pub fn grant(&mut self, now: Instant, attempt: AttemptId, agent: &str) {
        self.grant_for(now, attempt, agent, self.ttl);
    }

    /// Grants a lease on `attempt` to `agent` that lasts `ttl` instead of the usual time: a
    /// lease put back after its loss could not be recorded, to expire (and be tried) again soon.
    pub fn grant_for(&mut self, now: Instant, attempt: AttemptId, agent: &str, ttl: Duration) {
        self.leases.insert(
            attempt,
            Lease {
                agent: agent.to_owned(),
                deadline: now + ttl,
            },
        );
    }

    /// Renews the lease when `agent` holds it; returns whether it does.
    pub fn renew(&mut self, now: Instant, attempt: AttemptId, agent: &str) -> bool {
        match self.leases.get_mut(&attempt) {
            Some(l) if l.agent == agent => {
                l.deadline = now + self.ttl;
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
        self.leases.remove(attempt);
    }

    /// Removes and returns the leases past their deadline.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<(AttemptId, String)> {
        let expired: Vec<AttemptId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(a, _)| *a)
            .collect();
        expired
            .into_iter()
            .filter_map(|a| self.leases.remove(&a).map(|l| (a, l.agent)))
            .collect()
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
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
}
