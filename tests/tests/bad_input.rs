//! Bad input is refused where it enters, with a message that names it and says why, and
//! leaves nothing behind; hostile peers are cut off without disturbing anyone else.

use std::fs;
use std::path::Path;
use std::time::Duration;

use lull_agent::link::read_frame;
use lull_protocol::PROTOCOL_VERSION;
use lull_protocol::frame::{DEFAULT_MAX_FRAME, to_bytes};
use lull_protocol::message::{AgentMessage, Capacity, CoordinatorMessage};
use lull_tests::{AgentOptions, Cluster, WAIT, guests, summarize, wait_for};

/// A job file around one module `guest.wasm`; `extra` is appended to the file.
fn one_module_job(extra: &str) -> String {
    format!(
        "name = \"bad\"\n[[module]]\npath = \"guest.wasm\"\n[resources]\nmemory = \"16MiB\"\n{extra}"
    )
}

/// Submits `job` (signed with the cluster's key unless `signed` is false) and checks that the
/// CLI refuses it: a non-zero exit, every one of `expected` in its stderr, no job and no blob
/// stored.
#[track_caller]
fn assert_refused(cluster: &Cluster, job: &Path, signed: bool, expected: &[&str]) {
    let job = job.to_str().unwrap();
    let key = cluster.key().to_str().unwrap();
    let out = if signed {
        cluster.lull(&["submit", job, "--key", key])
    } else {
        cluster.lull(&["submit", job])
    };
    assert!(!out.success(), "the job was accepted:\n{out}");
    for piece in expected {
        assert!(
            out.stderr.contains(piece),
            "stderr does not contain {piece:?}:\n{out}"
        );
    }
    assert_eq!(
        cluster.jobs(),
        Vec::<serde_json::Value>::new(),
        "no job is stored"
    );
    assert_eq!(
        cluster.stored_blobs(),
        Vec::<std::path::PathBuf>::new(),
        "no blob is stored"
    );
}

#[test]
fn a_job_file_with_a_syntax_error_is_refused_with_its_line_and_column() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "syntax",
        "name = \"bad\"\ncount = = 3\n[[module]]\npath = \"guest.wasm\"\n",
        &[("guest.wasm", &guests::hello(0))],
    );
    assert_refused(&cluster, &job, true, &["job.toml", "line 2", "column"]);
}

#[test]
fn a_missing_module_file_is_named() {
    let cluster = Cluster::start();
    let job = cluster.write_job("missing", &one_module_job(""), &[]);
    assert_refused(&cluster, &job, true, &["guest.wasm", "module[0].path"]);
}

#[test]
fn a_missing_module_file_is_named_before_the_coordinator_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, one_module_job("")).unwrap();
    // Nothing listens on port 9: only a check made before any request can name the module.
    let out = std::process::Command::new(lull_tests::binary("lull"))
        .args(["--coordinator", "http://127.0.0.1:9", "submit"])
        .arg(&job)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("module[0].path") && stderr.contains("guest.wasm"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn an_inputs_glob_that_matches_nothing_is_named() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "glob",
        "name = \"bad\"\n[[module]]\npath = \"guest.wasm\"\ninputs = [\"data/*.csv\"]\n",
        &[
            ("guest.wasm", &guests::hello(0)),
            ("data/notes.txt", b"not a csv"),
        ],
    );
    assert_refused(&cluster, &job, true, &["\"data/*.csv\"", "matches no file"]);
}

#[test]
fn a_file_that_is_not_webassembly_is_refused() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "not-wasm",
        &one_module_job(""),
        &[("guest.wasm", b"#!/bin/sh\necho hello\n")],
    );
    assert_refused(
        &cluster,
        &job,
        true,
        &["guest.wasm", "not a WebAssembly file"],
    );
}

#[test]
fn a_module_importing_env_printf_is_refused_with_the_import_named() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "printf",
        &one_module_job(""),
        &[("guest.wasm", &guests::imports_printf())],
    );
    assert_refused(&cluster, &job, true, &["guest.wasm", "env::printf"]);
}

#[test]
fn count_zero_is_refused_naming_count() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "count-zero",
        "name = \"bad\"\ncount = 0\n[[module]]\npath = \"guest.wasm\"\n",
        &[("guest.wasm", &guests::hello(0))],
    );
    assert_refused(&cluster, &job, true, &["count", "at least 1"]);
}

#[test]
fn an_unsigned_module_without_a_key_is_refused_saying_how_to_sign_it() {
    let cluster = Cluster::start();
    let job = cluster.write_job(
        "unsigned",
        &one_module_job(""),
        &[("guest.wasm", &guests::hello(0))],
    );
    assert_refused(
        &cluster,
        &job,
        false,
        &["guest.wasm", "is not signed", "lull sign", "--key"],
    );
}

#[test]
fn a_job_asking_more_memory_than_any_agent_allows_waits_and_says_why() {
    let mut cluster = Cluster::start();
    cluster.start_agent(
        "small",
        AgentOptions {
            slots: Some(1),
            max_task_memory: Some("64MiB".into()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["small"]);
    let job = cluster.write_job(
        "big",
        "name = \"big\"\n[[module]]\npath = \"guest.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"128MiB\"\n",
        &[("guest.wasm", &guests::hello(0))],
    );
    let id = cluster.submit(&job);

    let reason = "no connected agent accepts tasks of 128 MiB (the largest cap is 64 MiB)";
    cluster.wait_for_job(id, "to wait for an agent with a larger cap", WAIT, |j| {
        j["state"] == "pending" && j["waiting_reason"] == reason
    });
    // Several of the agent's reports later, nothing has moved.
    std::thread::sleep(Duration::from_secs(3));
    let job = cluster.job(id);
    assert_eq!(job["state"], "pending", "{}", summarize(&job));
    assert_eq!(job["waiting_reason"], reason, "{}", summarize(&job));
    assert_eq!(
        job["tasks"][0]["attempt"],
        0,
        "no attempt was made: {}",
        summarize(&job)
    );
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_refused_by_the_agent() {
    let mut cluster = Cluster::start();
    let job = cluster.write_job(
        "tampered",
        &one_module_job("[retry]\nmax_attempts = 1\n"),
        &[("guest.wasm", &guests::hello(0))],
    );
    let id = cluster.submit(&job);
    let digest = cluster.job(id)["spec"]["modules"][0]["digest"]
        .as_str()
        .expect("the module's digest")
        .to_owned();
    let blob = cluster.blob_path(&digest);
    assert!(blob.is_file(), "the module's blob is at {}", blob.display());
    fs::write(&blob, guests::trap()).expect("overwriting the module's blob");

    cluster.start_agent("careful", AgentOptions::slots(1));
    cluster.wait_for_agents(&["careful"]);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    let cause = done["tasks"][0]["cause"].as_str().unwrap_or_default();
    for piece in ["refused by the agent", &digest, "hash to", "refusing it"] {
        assert!(
            cause.contains(piece),
            "the cause {cause:?} does not contain {piece:?}"
        );
    }

    // The agent carries on.
    std::thread::sleep(Duration::from_secs(2));
    assert!(cluster.agent_is_running("careful"), "the agent exited");
    assert!(
        cluster.agents().iter().any(|a| a["name"] == "careful"),
        "the agent is still connected: {:?}",
        cluster.agents()
    );
}

/// Submits a small job and checks that it succeeds: the cluster still works.
fn assert_a_good_job_succeeds(cluster: &Cluster, name: &str) {
    let job = cluster.write_job(
        name,
        "name = \"good\"\n[[module]]\npath = \"guest.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("guest.wasm", &guests::hello(0))],
    );
    let out = cluster.submit_and_watch(&job);
    out.assert_success();
    assert_eq!(out.json()["state"], "succeeded", "{out}");
}

#[test]
fn a_four_gib_length_prefix_closes_the_connection_and_the_coordinator_keeps_serving() {
    let cluster = Cluster::with_agents(&["honest"], 1);
    let pin = cluster
        .coordinator_key()
        .parse()
        .expect("the coordinator's key");
    let addr = cluster.quic_addr().to_string();

    let closed = cluster.block_on(async move {
        let dialer = lull_tests::stranger_dialer(pin);
        let conn = dialer.connect(&addr).await.expect("connecting");
        let (mut send, _recv) = conn.open_bi().await.expect("opening a stream");
        send.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
        send.write_all(b"and then some bytes").await.unwrap();
        let closed = tokio::time::timeout(WAIT, conn.closed())
            .await
            .expect("the coordinator closes the connection");
        // Nothing more can be done on it.
        assert!(conn.open_bi().await.is_err(), "the connection is closed");
        closed
    });
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.reason.as_ref(), b"malformed frame", "{close:?}");
        }
        other => panic!("expected the coordinator to close the connection, got {other:?}"),
    }

    assert!(
        cluster.agents().iter().any(|a| a["name"] == "honest"),
        "the honest agent is still listed"
    );
    assert_a_good_job_succeeds(&cluster, "after-the-big-frame");
}

#[test]
fn an_agent_of_another_protocol_version_is_refused_with_both_versions_named() {
    let cluster = Cluster::with_agents(&["current"], 1);
    let pin = cluster
        .coordinator_key()
        .parse()
        .expect("the coordinator's key");
    let addr = cluster.quic_addr().to_string();

    let reply = cluster.block_on(async move {
        let dialer = lull_tests::stranger_dialer(pin);
        let conn = dialer.connect(&addr).await.expect("connecting");
        let (mut send, mut recv) = conn.open_bi().await.expect("opening a stream");
        let hello = AgentMessage::Hello {
            protocol_version: 99,
            agent_id: "a-from-the-future".into(),
            name: "future".into(),
            capacity: Capacity::default(),
            running: vec![],
            status: Default::default(),
            compiled: vec![],
        };
        send.write_all(&to_bytes(&hello, DEFAULT_MAX_FRAME).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, read_frame::<CoordinatorMessage>(&mut recv))
            .await
            .expect("a reply in time")
            .expect("a readable reply")
    });
    match reply {
        Some(CoordinatorMessage::Refused { reason }) => {
            assert!(
                reason.contains(&format!("version {PROTOCOL_VERSION}")) && reason.contains("99"),
                "the reason names both versions: {reason:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let agents = cluster.agents();
    assert!(
        agents.iter().all(|a| a["name"] != "future"),
        "the refused agent is not listed: {agents:?}"
    );
    wait_for("the current agent to stay listed", WAIT, || {
        cluster
            .agents()
            .iter()
            .any(|a| a["name"] == "current")
            .then_some(())
    });
    assert_a_good_job_succeeds(&cluster, "after-the-refusal");
}

/// A module of a job definition as the API takes it, named `name`.
fn api_module(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "digest": lull_protocol::Digest::of(b"not uploaded").to_string(),
        "size": 12,
    })
}

#[test]
fn names_lists_and_sizes_that_break_out_of_their_place_are_refused_by_the_api() {
    let cluster = Cluster::start();
    let mut with_nul_arg = api_module("main");
    with_nul_arg["args"] = serde_json::json!(["ok", "a\u{0}b"]);
    let mut huge = api_module("main");
    huge["args"] = serde_json::json!(vec!["x".repeat(2048); 1000]);
    let many: Vec<serde_json::Value> = (0..17).map(|i| api_module(&format!("m{i}"))).collect();
    for (modules, says) in [
        (
            vec![api_module("main"), api_module("x/../../victim/keep.txt")],
            "modules[1].name: \"x/../../victim/keep.txt\" is not a module name",
        ),
        (vec![api_module("a\u{0}b")], "modules[0].name"),
        (vec![api_module("..")], "modules[0].name"),
        (
            vec![api_module("a"), api_module("a")],
            "\"a\" names two modules",
        ),
        (
            vec![with_nul_arg],
            "modules[0].args[1]: must not contain a NUL",
        ),
        (many, "modules: has 17 entries; the most is 16"),
        (vec![huge], "as JSON; the most is 1 MiB"),
    ] {
        let spec = serde_json::json!({
            "name": "hostile",
            "count": 1,
            "modules": modules,
            "resources": {"memory": 16 << 20, "timeout_ms": 60_000},
            "max_attempts": 1,
        });
        let (status, body) = cluster.request("/api/v1/jobs", |c, u| c.post(u).json(&spec));
        assert_eq!(status, 400, "{says}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message:?} does not say {says:?}");
    }
    assert_eq!(
        cluster.jobs(),
        Vec::<serde_json::Value>::new(),
        "no job is stored"
    );
}

#[test]
fn an_agent_result_whose_names_climb_out_fails_its_attempt_and_nothing_is_written_outside() {
    use lull_protocol::message::{AgentMessage, ModuleResult, Outcome, OutputFile, TaskResult};
    use lull_tests::rogue::{Facts, Rogue};
    let cluster = Cluster::start();
    let facts = Facts::of(&cluster);
    let job = cluster.write_job(
        "hostile",
        "name = \"hostile\"\ncount = 2\n[[module]]\npath = \"a.wasm\"\n[[module]]\npath = \"b.wasm\"\n[resources]\nmemory = \"16MiB\"\n[placement]\nconstraints = [\"label.role == rogue\"]\n[retry]\nmax_attempts = 1\n",
        &[("a.wasm", &guests::hello(0)), ("b.wasm", &guests::hello(1))],
    );
    let job_id = cluster.block_on(async move {
        let mut rogue = Rogue::join(&facts, "a-rogue").await;
        let mut assignment = rogue.take(&facts, &job).await;
        let blob = lull_protocol::Digest::of(b"");
        for round in 0..2 {
            let index = assignment.attempt.task.index;
            let module = |name: &str| ModuleResult {
                name: name.into(),
                outcome: Outcome::Exited { code: 0 },
                stdout: None,
                stderr: None,
            };
            // Task 0 names a module that climbs out; task 1 an output file that does.
            let (second, outputs) = if index == 0 {
                (module("../../../victim/keep.txt"), vec![])
            } else {
                let escape = OutputFile {
                    path: "../../../victim/out.txt".into(),
                    digest: blob,
                    size: 0,
                };
                (module("b"), vec![escape])
            };
            let result = TaskResult {
                attempt: assignment.attempt,
                modules: vec![module("a"), second],
                outputs,
                elapsed_ms: 1,
                outputs_truncated: false,
            };
            rogue.say(&AgentMessage::Result(result)).await;
            // Acknowledged (the agent may forget it), then the next task comes.
            loop {
                match rogue.next().await {
                    Some(lull_protocol::message::CoordinatorMessage::ResultAck { attempt })
                        if attempt == assignment.attempt =>
                    {
                        break;
                    }
                    Some(_) => {}
                    None => panic!("the coordinator ended the control stream"),
                }
            }
            if round == 0 {
                match rogue.next().await {
                    Some(lull_protocol::message::CoordinatorMessage::Assign(a)) => assignment = *a,
                    other => panic!("expected the second task, got {other:?}"),
                }
            }
        }
        assignment.attempt.task.job
    });
    let done = cluster.wait_for_job_end(job_id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    for t in done["tasks"].as_array().unwrap() {
        let cause = t["cause"].as_str().unwrap_or_default();
        assert!(
            cause.contains(
                "its result could not be reported: agent a-rogue sent a result that is not valid"
            ),
            "{cause:?}"
        );
    }
    let causes: Vec<&str> = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["cause"].as_str())
        .collect();
    let causes = causes.join("\n");
    assert!(
        causes.contains("where the job has module \"b\""),
        "{causes}"
    );
    assert!(
        causes.contains("output file \"../../../victim/out.txt\""),
        "{causes}"
    );
    // `lull results` writes the statuses, inside its folder only.
    let out = cluster.root().join("deep/down/results");
    cluster
        .lull(&["results", &job_id.to_string(), "-o", out.to_str().unwrap()])
        .assert_success();
    let mut stack = vec![cluster.root().to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            assert!(
                !path.to_string_lossy().contains("victim"),
                "{} was written",
                path.display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
}
