//! Recent history for the dashboard: each agent's CPU and memory over the last minutes, and
//! the CPU harvested per minute. Kept in memory by the coordinator the agents report to; it
//! starts empty when the coordinator starts.

use std::collections::{HashMap, VecDeque};

use lull_protocol::message::AgentState;
use serde::Serialize;

/// How far back each agent's samples go.
pub const AGENT_WINDOW_MS: i64 = 10 * 60 * 1000;
/// How far back the harvest per minute goes.
pub const HARVEST_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
const MINUTE_MS: i64 = 60 * 1000;

/// One agent report, as the dashboard draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the report arrived (ms since the Unix epoch).
    pub at_ms: i64,
    /// The fraction of the machine's CPU its own programs used.
    pub incumbent_cpu: f64,
    /// The fraction of the machine's CPU the guests used.
    pub guest_cpu: f64,
    /// The fraction of the machine's memory in use.
    pub memory_used: f64,
    /// The agent's state then.
    pub state: AgentState,
}

/// The CPU guests used in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Minute {
    /// The minute's start (ms since the Unix epoch).
    pub at_ms: i64,
    /// Core-seconds used in it.
    pub core_seconds: f64,
}

/// The history the hub keeps.
#[derive(Debug, Default)]
pub struct History {
    agents: HashMap<String, VecDeque<Sample>>,
    minutes: VecDeque<Minute>,
}

impl History {
    /// Records a report of `agent`, and the core-seconds its guests used since the last one.
    pub fn record(&mut self, agent: &str, sample: Sample, core_seconds: f64) {
        let now = sample.at_ms;
        let samples = self.agents.entry(agent.to_owned()).or_default();
        samples.push_back(sample);
        while samples
            .front()
            .is_some_and(|s| s.at_ms < now - AGENT_WINDOW_MS)
        {
            samples.pop_front();
        }
        let minute = now - now.rem_euclid(MINUTE_MS);
        match self.minutes.back_mut() {
            Some(m) if m.at_ms == minute => m.core_seconds += core_seconds,
            _ => {
                self.minutes.push_back(Minute {
                    at_ms: minute,
                    core_seconds,
                });
                // Once a minute, not on every report: drop what has aged out, and agents gone
                // for longer than the window.
                while self
                    .minutes
                    .front()
                    .is_some_and(|m| m.at_ms < now - HARVEST_WINDOW_MS)
                {
                    self.minutes.pop_front();
                }
                self.agents
                    .retain(|_, s| s.back().is_some_and(|s| s.at_ms >= now - AGENT_WINDOW_MS));
            }
        }
    }

    /// `agent`'s samples taken after `since_ms` and up to `until_ms`, oldest first.
    pub fn samples(&self, agent: &str, since_ms: i64, until_ms: i64) -> Vec<Sample> {
        self.agents
            .get(agent)
            .map(|s| {
                s.iter()
                    .filter(|s| s.at_ms > since_ms && s.at_ms <= until_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The harvest of the minutes that end after `since_ms`, oldest first.
    pub fn minutes(&self, since_ms: i64) -> Vec<Minute> {
        self.minutes
            .iter()
            .filter(|m| m.at_ms + MINUTE_MS > since_ms)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64) -> Sample {
        Sample {
            at_ms,
            incumbent_cpu: 0.25,
            guest_cpu: 0.5,
            memory_used: 0.4,
            state: AgentState::Running,
        }
    }

    #[test]
    fn samples_are_kept_for_the_window_and_filtered_by_time() {
        let mut h = History::default();
        let start = 1_000 * MINUTE_MS;
        for i in 0..20 {
            h.record("a", sample(start + i * MINUTE_MS), 1.0);
        }
        let all = h.samples("a", 0, i64::MAX);
        // Ten minutes back from the last sample, both ends included.
        assert_eq!(all.len(), 11);
        assert_eq!(all.first().unwrap().at_ms, start + 9 * MINUTE_MS);
        assert_eq!(h.samples("a", start + 18 * MINUTE_MS, i64::MAX).len(), 1);
        assert_eq!(h.samples("a", start, start + 12 * MINUTE_MS).len(), 4);
        assert!(h.samples("b", 0, i64::MAX).is_empty());
    }

    #[test]
    fn harvest_adds_up_per_minute() {
        let mut h = History::default();
        let start = 1_000 * MINUTE_MS;
        h.record("a", sample(start + 1_000), 1.5);
        h.record("b", sample(start + 2_000), 2.0);
        h.record("a", sample(start + MINUTE_MS + 5), 4.0);
        let minutes = h.minutes(0);
        assert_eq!(
            minutes,
            vec![
                Minute {
                    at_ms: start,
                    core_seconds: 3.5
                },
                Minute {
                    at_ms: start + MINUTE_MS,
                    core_seconds: 4.0
                }
            ]
        );
        // A minute still running counts as new for a client that last looked inside it.
        assert_eq!(h.minutes(start + MINUTE_MS + 1).len(), 1);
        assert_eq!(h.minutes(start + 30_000).len(), 2);
    }

    #[test]
    fn agents_gone_for_the_window_are_forgotten() {
        let mut h = History::default();
        h.record("gone", sample(0), 0.0);
        h.record("here", sample(AGENT_WINDOW_MS + 1), 0.0);
        assert!(h.samples("gone", -1, i64::MAX).is_empty());
        assert_eq!(h.samples("here", -1, i64::MAX).len(), 1);
    }
}
