//! Fuzzes job definitions (`lull_protocol::job`): [`JobFile::parse`] on arbitrary UTF-8 text, a
//! [`JobSpec`] from arbitrary JSON through [`JobSpec::check`], and the size and duration
//! readers of `lull_protocol::units` that job files use.
//!
//! What must hold, besides never panicking:
//!
//! - a job file that parses has a name, 1 to `MAX_COUNT` tasks, a valid cluster ID, at least
//!   one module each with exactly one of path and digest, a memory cap of 64 KiB to 4 GiB, a
//!   timeout longer than zero, a CPU reservation and attempts in range, and constraints that
//!   parse; it writes back to TOML that parses to an equal file; and it resolves (modules by
//!   digest, as `lull submit` does) to a job definition that [`JobSpec::check`] accepts;
//! - a job definition that passes its check has the same invariants, input paths that stay
//!   inside `/input`, a manifest with one layer per blob, and an equal, still valid copy after
//!   a trip through JSON;
//! - a size or duration that reads is finite and reads the same with spaces around it;
//! - a workflow file that parses orders its jobs so that each comes after the jobs it names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lull_protocol::Digest;
use lull_protocol::constraint;
use lull_protocol::job::{
    self, JobFile, JobSpec, MAX_COUNT, MAX_CPU_MILLIS, MAX_MEMORY, ModuleSpec, Resources,
};
use lull_protocol::units;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                job_file(text);
            }
        }
        1 => job_spec(rest),
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                workflow(text);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                units_(text);
            }
        }
    }
});

fn job_file(text: &str) {
    let Ok(file) = JobFile::parse(text) else {
        return;
    };
    assert!(!file.name.trim().is_empty());
    assert!((1..=MAX_COUNT).contains(&file.count.unwrap_or(1)));
    job::check_cluster_id(&file.cluster).expect("cluster");
    assert!(!file.modules.is_empty(), "a parsed job has modules");
    for m in &file.modules {
        assert!(
            m.path.is_some() != m.digest.is_some(),
            "exactly one of path and digest"
        );
    }
    let memory = file.memory().expect("memory");
    assert!((64 << 10..=MAX_MEMORY).contains(&memory), "{memory}");
    let timeout = file.timeout().expect("timeout");
    assert!(!timeout.is_zero());
    let cpu = file.cpu_millis().expect("cpu");
    assert!((1..=MAX_CPU_MILLIS).contains(&cpu));
    let attempts = file.max_attempts().expect("max_attempts");
    assert!((1..=100).contains(&attempts));
    constraint::parse_all(&file.placement.constraints).expect("constraints");

    let written = toml::to_string(&file).expect("a parsed job file writes as TOML");
    let again = JobFile::parse(&written)
        .unwrap_or_else(|e| panic!("{file:?} written as\n{written}\ndoes not parse: {e}"));
    assert_eq!(again, file, "changed through TOML:\n{written}");

    // What `lull submit` makes of it, with every module named by a digest and no files.
    let spec = JobSpec {
        name: file.name.clone(),
        cluster: file.cluster.clone(),
        count: file.count.unwrap_or(1),
        modules: file
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| ModuleSpec {
                name: format!("module{i}"),
                digest: m.digest.unwrap_or_else(|| Digest::of(b"")),
                size: 0,
                signature: None,
                args: m.args.clone(),
                env: m.env.clone(),
                stdin: None,
                inputs: Vec::new(),
                success_exit_codes: m.success_exit_codes.clone(),
                env_extra: m.env_extra,
                mounts: Vec::new(),
            })
            .collect(),
        resources: Resources {
            memory,
            timeout_ms: u64::try_from(timeout.as_millis()).expect("the timeout fits in u64 ms"),
            cpu_millis: cpu,
        },
        placement: file.placement.clone(),
        max_attempts: attempts,
        retry_on: file.retry_on(),
        priority: file.priority,
        owner: String::new(),
        verify: file.verify,
        group: file.group.clone(),
        queue_timeout_ms: file
            .queue_timeout()
            .expect("checked")
            .map(|d| d.as_millis() as u64),
        deadline_ms: file.deadline().expect("checked").map(|d| d.as_millis() as u64),
        cache: file.cache,
        items: None,
        after: vec![],
    };
    if let Err(e) = spec.check() {
        panic!("a job file that parses resolves to a job the coordinator refuses: {e}\n{text}");
    }
}

fn job_spec(json: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<JobSpec>(json) else {
        return;
    };
    if spec.check().is_err() {
        return;
    }
    assert!(!spec.name.trim().is_empty());
    assert!((1..=MAX_COUNT).contains(&spec.count));
    job::check_cluster_id(&spec.cluster).expect("cluster");
    assert!(!spec.modules.is_empty(), "a checked job has modules");
    assert!((64 << 10..=MAX_MEMORY).contains(&spec.resources.memory));
    assert!(spec.resources.timeout_ms > 0);
    assert!((1..=MAX_CPU_MILLIS).contains(&spec.resources.cpu_millis));
    assert!((1..=100).contains(&spec.max_attempts));
    constraint::parse_all(&spec.placement.constraints).expect("constraints");
    for m in &spec.modules {
        for f in &m.inputs {
            assert!(
                !f.path.is_empty() && !f.path.starts_with('/'),
                "{:?}",
                f.path
            );
            assert!(
                f.path
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != ".."),
                "{:?} leaves /input",
                f.path
            );
        }
        let args = job::expand_args(&m.args, spec.count - 1, &job::NO_VALUES);
        assert_eq!(args.len(), m.args.len());
    }
    let blobs = spec.blobs().count();
    assert_eq!(spec.manifest().layers.len(), blobs);
    assert_eq!(
        blobs,
        spec.modules
            .iter()
            .map(|m| 1 + usize::from(m.stdin.is_some()) + m.inputs.len())
            .sum::<usize>()
    );

    let bytes = serde_json::to_vec(&spec).expect("serializes");
    let again: JobSpec = serde_json::from_slice(&bytes).expect("parses back");
    assert_eq!(again, spec, "changed through JSON");
    again
        .check()
        .expect("still valid after a trip through JSON");
}

fn units_(text: &str) {
    if let Ok(bytes) = units::parse_size(text) {
        assert_eq!(units::parse_size(&format!(" {text} ")), Ok(bytes));
        let _ = units::format_size(bytes);
    }
    if let Ok(d) = units::parse_duration(text) {
        assert_eq!(units::parse_duration(&format!(" {text}\t")), Ok(d));
    }
}

fn workflow(text: &str) {
    let Ok(file) = lull_protocol::workflow::WorkflowFile::parse(text) else {
        return;
    };
    let order = file.order().expect("a parsed workflow has an order");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..file.jobs.len()).collect::<Vec<_>>(), "each job once");
    for (at, &i) in order.iter().enumerate() {
        for parent in &file.jobs[i].after {
            let p = file.jobs.iter().position(|j| &j.name == parent).expect("named");
            assert!(order[..at].contains(&p), "{parent} comes before {}", file.jobs[i].name);
        }
    }
}
