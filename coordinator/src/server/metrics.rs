//! `/metrics`: the coordinator's figures in Prometheus' text format, every series prefixed
//! `lull_`.
//!
//! Counters and the dispatch histogram live in memory ([`Metrics`], fed by the hub as agents
//! report) and start from zero when the coordinator starts; gauges are read when scraped.

use lull_protocol::sync::lock;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the dispatch latency histogram's buckets, in seconds.
const DISPATCH_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// What the hub counts as things happen.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// Observations per bucket of [`DISPATCH_BUCKETS`] (not cumulative), then above the last.
    dispatch: Vec<u64>,
    dispatch_sum: f64,
    dispatch_count: u64,
    /// Agents' pauses, by the kind of reason.
    pauses: BTreeMap<String, u64>,
    /// Evicted attempts, by the kind of reason.
    evictions: BTreeMap<String, u64>,
    /// Core-seconds of CPU the agents' guests used, from their reports.
    harvested_core_seconds: f64,
}

/// The kind of a pause or eviction reason, for a label with few values: the reason's first
/// words up to a number or punctuation (`incumbent CPU 87 % > 50 %` is `incumbent CPU`).
pub fn reason_kind(reason: &str) -> String {
    let mut words = Vec::new();
    for w in reason.split_whitespace() {
        if w.chars()
            .any(|c| c.is_ascii_digit() || ":%>,;()".contains(c))
            || words.len() == 4
        {
            break;
        }
        words.push(w);
    }
    if words.is_empty() {
        "other".into()
    } else {
        words.join(" ")
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        lock(&self.0)
    }

    /// An assignment reached its guest running after `seconds`.
    pub fn dispatched(&self, seconds: f64) {
        let mut c = self.lock();
        if c.dispatch.is_empty() {
            c.dispatch = vec![0; DISPATCH_BUCKETS.len() + 1];
        }
        let i = DISPATCH_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(DISPATCH_BUCKETS.len());
        c.dispatch[i] += 1;
        c.dispatch_sum += seconds;
        c.dispatch_count += 1;
    }

    /// An agent paused its guests for `reason`.
    pub fn paused(&self, reason: &str) {
        *self.lock().pauses.entry(reason_kind(reason)).or_default() += 1;
    }

    /// An attempt was evicted for `reason`.
    pub fn evicted(&self, reason: &str) {
        *self
            .lock()
            .evictions
            .entry(reason_kind(reason))
            .or_default() += 1;
    }

    /// Guests used this many core-seconds.
    pub fn harvested(&self, core_seconds: f64) {
        if core_seconds.is_finite() && core_seconds > 0.0 {
            self.lock().harvested_core_seconds += core_seconds;
        }
    }

    /// The core-seconds harvested so far.
    pub fn harvested_total(&self) -> f64 {
        self.lock().harvested_core_seconds
    }

    /// The counters and histogram in the text format, after `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let c = self.lock();
        let mut out = String::new();
        family(
            &mut out,
            "agents",
            "gauge",
            "Connected agents, by scavenging state.",
        );
        for (state, n) in &gauges.agents {
            let _ = writeln!(out, "lull_agents{{state=\"{}\"}} {n}", escape(state));
        }
        family(&mut out, "tasks", "gauge", "Tasks, by state.");
        for (state, n) in &gauges.tasks {
            let _ = writeln!(out, "lull_tasks{{state=\"{}\"}} {n}", escape(state));
        }
        family(
            &mut out,
            "blob_store_bytes",
            "gauge",
            "Bytes of blobs stored.",
        );
        let _ = writeln!(out, "lull_blob_store_bytes {}", gauges.blob_bytes);
        family(
            &mut out,
            "dispatch_latency_seconds",
            "histogram",
            "From an assignment reaching its agent to its guest running.",
        );
        let mut cumulative = 0;
        for (i, bound) in DISPATCH_BUCKETS.iter().enumerate() {
            cumulative += c.dispatch.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "lull_dispatch_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "lull_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}\nlull_dispatch_latency_seconds_sum {}\nlull_dispatch_latency_seconds_count {}",
            c.dispatch_count, c.dispatch_sum, c.dispatch_count
        );
        for (name, help, by_reason) in [
            (
                "pauses_total",
                "Agents pausing their guests, by reason.",
                &c.pauses,
            ),
            (
                "evictions_total",
                "Attempts evicted, by reason.",
                &c.evictions,
            ),
        ] {
            family(&mut out, name, "counter", help);
            for (reason, n) in by_reason {
                let _ = writeln!(out, "lull_{name}{{reason=\"{}\"}} {n}", escape(reason));
            }
        }
        family(
            &mut out,
            "harvested_core_seconds_total",
            "counter",
            "CPU core-seconds the agents' guests used.",
        );
        let _ = writeln!(
            out,
            "lull_harvested_core_seconds_total {}",
            c.harvested_core_seconds
        );
        out
    }
}

/// A family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP lull_{name} {help}\n# TYPE lull_{name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Figures read when scraped.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Connected agents by state.
    pub agents: BTreeMap<String, u64>,
    /// Tasks by state.
    pub tasks: BTreeMap<String, u64>,
    /// Bytes of blobs stored.
    pub blob_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_few_kinds() {
        assert_eq!(
            reason_kind("incumbent CPU 87 % > 50 % for 40 ms"),
            "incumbent CPU"
        );
        assert_eq!(
            reason_kind("the agent is being drained"),
            "the agent is being"
        );
        assert_eq!(reason_kind("low memory: 3 % available"), "low");
        assert_eq!(reason_kind(""), "other");
    }

    #[test]
    fn renders_every_family_with_cumulative_buckets() {
        let m = Metrics::default();
        m.dispatched(0.000_2);
        m.dispatched(0.003);
        m.dispatched(60.0);
        m.evicted("the agent is being drained");
        m.paused("incumbent CPU 90 % > 50 %");
        m.harvested(1.5);
        let mut gauges = Gauges::default();
        gauges.agents.insert("running".into(), 2);
        gauges.tasks.insert("succeeded".into(), 7);
        gauges.blob_bytes = 1234;
        let text = m.render(&gauges);
        for line in [
            "lull_agents{state=\"running\"} 2",
            "lull_tasks{state=\"succeeded\"} 7",
            "lull_blob_store_bytes 1234",
            "lull_dispatch_latency_seconds_bucket{le=\"0.0005\"} 1",
            "lull_dispatch_latency_seconds_bucket{le=\"0.005\"} 2",
            "lull_dispatch_latency_seconds_bucket{le=\"30\"} 2",
            "lull_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3",
            "lull_dispatch_latency_seconds_count 3",
            "lull_evictions_total{reason=\"the agent is being\"} 1",
            "lull_pauses_total{reason=\"incumbent CPU\"} 1",
            "lull_harvested_core_seconds_total 1.5",
            "# TYPE lull_dispatch_latency_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
