//! Fuzzes the JSON of every message type in `lull_protocol::message` ([`AgentMessage`],
//! [`CoordinatorMessage`], [`BlobReply`], [`EnrollReply`], [`TaskResult`]) on arbitrary bytes.
//!
//! What must hold: whatever parses serializes, and parses back to an equal value, both from
//! bytes and through `serde_json::Value` (the coordinator stores some of them as JSON values);
//! the helpers read from a parsed value (a result's success, cause and blobs, the ids' and
//! outcomes' text) do not panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lull_protocol::job::JobSpec;
use lull_protocol::message::{
    AgentMessage, BlobReply, CoordinatorMessage, EnrollReply, TaskResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            if let Some(m) = round_trip::<AgentMessage>(json) {
                agent_message(&m);
            }
        }
        1 => {
            if let Some(m) = round_trip::<CoordinatorMessage>(json) {
                coordinator_message(&m);
            }
        }
        2 => {
            round_trip::<BlobReply>(json);
        }
        3 => {
            round_trip::<EnrollReply>(json);
        }
        _ => {
            if let Some(r) = round_trip::<TaskResult>(json) {
                task_result(&r, &any_job());
            }
        }
    }
});

/// Parses `json` as a `T`; when it parses, checks that it round-trips and returns it.
fn round_trip<T>(json: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(json).ok()?;
    let bytes = serde_json::to_vec(&value).expect("a parsed message serializes");
    let again: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{value:?} serialized as {} does not parse: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, value, "changed through JSON text");
    let tree = serde_json::to_value(&value).expect("to a JSON value");
    let from_tree: T = serde_json::from_value(tree).expect("from a JSON value");
    assert_eq!(from_tree, value, "changed through a JSON value");
    Some(value)
}

fn agent_message(m: &AgentMessage) {
    match m {
        AgentMessage::Result(r) => task_result(r, &any_job()),
        AgentMessage::Report { running, .. } | AgentMessage::Hello { running, .. } => {
            for a in running {
                let _ = a.to_string();
            }
        }
        AgentMessage::Checkpoint {
            attempt,
            digest,
            size,
            seq,
            ..
        } => {
            let sealed =
                lull_protocol::message::checkpoint_seal_message(*attempt, digest, *size, *seq);
            assert!(sealed.starts_with(b"lull-checkpoint-v1\n"));
        }
        _ => {}
    }
}

fn coordinator_message(m: &CoordinatorMessage) {
    if let CoordinatorMessage::Assign(assignment) = m {
        let blobs = assignment.blobs();
        let job_blobs = assignment.job.blobs().count();
        assert_eq!(
            blobs.len(),
            job_blobs + usize::from(assignment.checkpoint.is_some()),
            "an assignment's blobs are its job's and its checkpoint's"
        );
        let _ = assignment.job.check();
        assert_eq!(assignment.job.manifest().layers.len(), job_blobs);
    }
}

/// A job whose modules succeed with exit code 0 (a job without modules: each module of a result
/// is judged by the default codes).
fn any_job() -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "j", "count": 1, "modules": [],
        "resources": {"memory": 1048576, "timeout_ms": 1000},
        "max_attempts": 1,
    }))
    .expect("a job")
}

fn task_result(r: &TaskResult, job: &JobSpec) {
    let _ = r.attempt.to_string();
    let succeeded = r.succeeded(job);
    let cause = r.cause(job);
    assert_eq!(
        succeeded,
        !r.modules.is_empty() && cause.is_none(),
        "success and cause disagree: {cause:?}"
    );
    if r.evicted(job) {
        assert!(!succeeded);
    }
    let stored = r
        .modules
        .iter()
        .map(|m| usize::from(m.stdout.is_some()) + usize::from(m.stderr.is_some()))
        .sum::<usize>();
    assert_eq!(r.blobs().len(), r.outputs.len() + stored);
    for m in &r.modules {
        let _ = m.outcome.to_string();
    }
}
