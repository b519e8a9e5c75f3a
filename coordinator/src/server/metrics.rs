//! `/metrics`: the coordinator's figures in Prometheus' text format, every series prefixed
//! `lull_`.
//!
//! Counters and the latency histograms live in memory ([`Metrics`], fed by the hub as agents
//! report) and start from zero when the coordinator starts; gauges are read when scraped.

use lull_protocol::sync::lock;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histograms' buckets, in seconds: each about twice the last,
/// from 100 µs, so that a quantile read from them is within a factor of two.
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0,
];

/// A histogram of durations over [`BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), then above the last.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// The family `lull_{name}` in the text format, buckets cumulative.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "lull_{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "lull_{name}_bucket{{le=\"+Inf\"}} {}\nlull_{name}_sum {}\nlull_{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// What the hub counts as things happen.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// From an assignment reaching its agent to its guest running.
    dispatch: Histogram,
    /// From a job accepted to its tasks' first attempts running.
    submit_to_start: Histogram,
    /// From a result read off its agent's connection to it being stored.
    result_durable: Histogram,
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
        self.lock().dispatch.observe(seconds);
    }

    /// A task's first attempt started running this long after its job was accepted.
    pub fn submitted_to_started(&self, seconds: f64) {
        self.lock().submit_to_start.observe(seconds);
    }

    /// A result was stored this long after it was read from its agent.
    pub fn result_stored(&self, seconds: f64) {
        self.lock().result_durable.observe(seconds);
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
        c.dispatch.render(
            &mut out,
            "dispatch_latency_seconds",
            "From an assignment reaching its agent to its guest running.",
        );
        c.submit_to_start.render(
            &mut out,
            "submit_to_start_seconds",
            "From a job accepted to each of its tasks' first attempts running (jobs accepted since the coordinator started).",
        );
        c.result_durable.render(
            &mut out,
            "result_durable_seconds",
            "From a result read off its agent's connection to it being stored (and acknowledged).",
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
        if let Some(accounting) = &gauges.accounting {
            for (name, label, help, totals) in [
                (
                    "user_core_seconds_total",
                    "user",
                    "Core-seconds of guest CPU the user's tasks used (kept across restarts).",
                    &accounting.users,
                ),
                (
                    "lender_core_seconds_total",
                    "lender",
                    "Core-seconds of guest CPU the lender's agents gave (kept across restarts).",
                    &accounting.lenders,
                ),
            ] {
                family(&mut out, name, "counter", help);
                for u in totals {
                    let _ = writeln!(
                        out,
                        "lull_{name}{{{label}=\"{}\"}} {}",
                        escape(&u.name),
                        u.core_seconds
                    );
                }
            }
        }
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
    /// Core-seconds harvested per user and per lender (totals kept in the store).
    pub accounting: Option<lull_protocol::api::Accounting>,
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
        m.submitted_to_started(0.05);
        m.result_stored(0.000_05);
        let mut gauges = Gauges::default();
        gauges.agents.insert("running".into(), 2);
        gauges.tasks.insert("succeeded".into(), 7);
        gauges.blob_bytes = 1234;
        let text = m.render(&gauges);
        for line in [
            "lull_agents{state=\"running\"} 2",
            "lull_tasks{state=\"succeeded\"} 7",
            "lull_blob_store_bytes 1234",
            "lull_dispatch_latency_seconds_bucket{le=\"0.0002\"} 1",
            "lull_dispatch_latency_seconds_bucket{le=\"0.002\"} 1",
            "lull_dispatch_latency_seconds_bucket{le=\"0.005\"} 2",
            "lull_dispatch_latency_seconds_bucket{le=\"30\"} 2",
            "lull_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3",
            "lull_dispatch_latency_seconds_count 3",
            "lull_evictions_total{reason=\"the agent is being\"} 1",
            "lull_pauses_total{reason=\"incumbent CPU\"} 1",
            "lull_harvested_core_seconds_total 1.5",
            "# TYPE lull_dispatch_latency_seconds histogram",
            "lull_submit_to_start_seconds_bucket{le=\"0.02\"} 0",
            "lull_submit_to_start_seconds_bucket{le=\"0.05\"} 1",
            "lull_result_durable_seconds_bucket{le=\"0.0001\"} 1",
            "lull_result_durable_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
