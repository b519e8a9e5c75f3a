//! `verify = N` over real processes: honest agents run a task deterministically and agree bit
//! for bit; an agent that forges its result is outvoted, named in the task's attempts and
//! counted against it, and the job's result is the honest one.

use std::fs;

use lull_protocol::message::TaskResult;
use lull_protocol::message::{AgentMessage, Captured, CoordinatorMessage, ModuleResult, Outcome};
use lull_tests::rogue::{Facts, Rogue};
use lull_tests::{AgentOptions, Cluster, guests, summarize};

/// The wall clock a deterministic run first reads: 2000-01-01T00:00:00Z, in nanoseconds.
const WALL_START_NS: u64 = 946_684_800 * 1_000_000_000;
/// The bits of the canonical NaN.
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// The observer guest's printout: wall clock, monotonic clock, random bytes, NaN bits.
fn observed(stdout: &[u8]) -> (u64, u64, Vec<u8>, u64) {
    assert_eq!(stdout.len(), 40, "{stdout:?}");
    let word = |at: usize| u64::from_le_bytes(stdout[at..at + 8].try_into().unwrap());
    (word(0), word(8), stdout[16..32].to_vec(), word(32))
}

#[test]
fn honest_agents_agree_bit_for_bit_on_a_deterministic_run() {
    let cluster = Cluster::with_agents(&["a", "b"], 1);
    let job = cluster.write_job(
        "observe",
        "name = \"observe\"\ncount = 2\nverify = 2\n[[module]]\npath = \"observer.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("observer.wasm", &guests::observer())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let mut randoms = Vec::new();
    for index in 0..2 {
        let task = cluster.task(id, index);
        let attempts = task["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "two runs, which agree at once: {task}");
        assert_ne!(
            attempts[0]["agent"], attempts[1]["agent"],
            "on two agents: {task}"
        );
        assert_eq!(
            attempts[1]["outcome"], "succeeded: 2 agents agree on its result",
            "{task}"
        );
        let first = &attempts[0]["result"]["modules"][0]["stdout"];
        let second = &attempts[1]["result"]["modules"][0]["stdout"];
        assert_eq!(first, second, "the same bytes: {task}");
    }
    let results = cluster.results(id);
    for index in 0..2 {
        let stdout = fs::read(results.join(index.to_string()).join("stdout")).unwrap();
        let (wall, monotonic, random, nan) = observed(&stdout);
        assert_eq!(wall, WALL_START_NS, "the wall clock starts at a fixed time");
        assert_eq!(monotonic, 0, "the monotonic clock starts at zero");
        assert_eq!(nan, CANONICAL_NAN, "NaNs are canonical: {nan:#x}");
        randoms.push(random);
    }
    assert_ne!(randoms[0], randoms[1], "each task has its own seed");

    // The same guest without `verify`: the host's clocks and randomness, and (on x86-64,
    // whose float unit keeps a NaN operand's payload) a NaN that is not canonical.
    let plain = cluster.write_job(
        "observe-plain",
        "name = \"observe-plain\"\n[[module]]\npath = \"observer.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("observer.wasm", &guests::observer())],
    );
    let id = cluster.submit(&plain);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let stdout = fs::read(cluster.results(id).join("0").join("stdout")).unwrap();
    let (wall, _, _, nan) = observed(&stdout);
    assert!(
        wall > 1_700_000_000 * 1_000_000_000,
        "the host's wall clock: {wall}"
    );
    if cfg!(target_arch = "x86_64") {
        assert_eq!(nan, 0x7ff8_0000_0000_0001, "the payload is kept: {nan:#x}");
    }
}

#[test]
fn verify_catches_an_agent_that_forges_its_result() {
    forger_is_outvoted(false);
}

#[test]
fn a_restarted_coordinator_remembers_the_runs_it_compares() {
    forger_is_outvoted(true);
}

/// A forger runs a task of a `verify = 2` job first; two honest agents then outvote it. With
/// `restart`, the coordinator restarts in between, and still compares with the forger's run.
fn forger_is_outvoted(restart: bool) {
    let mut cluster = Cluster::start();
    let facts = Facts::of(&cluster);
    let job = cluster.write_job(
        "checked",
        "name = \"checked\"\nverify = 2\n[[module]]\npath = \"observer.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("observer.wasm", &guests::observer())],
    );
    // The forger is the only agent when the job comes: it runs the task first, and forges.
    let (rogue, attempt) = cluster.block_on(async move {
        let mut rogue = Rogue::join(&facts, "forger").await;
        let assignment = rogue.take(&facts, &job).await;
        assert!(
            assignment.seed.is_some(),
            "a verified task comes with its seed"
        );
        assert!(assignment.checkpoint.is_none());
        let forged = b"all tests passed\n";
        let digest = rogue.put_blob(forged).await;
        let result = TaskResult {
            attempt: assignment.attempt,
            modules: vec![ModuleResult {
                name: assignment.job.modules[0].name.clone(),
                outcome: Outcome::Exited { code: 0 },
                stdout: Some(Captured {
                    digest,
                    size: forged.len() as u64,
                    truncated: false,
                }),
                stderr: None,
            }],
            outputs: vec![],
            elapsed_ms: 1,
            outputs_truncated: false,
        };
        rogue.say(&AgentMessage::Result(result)).await;
        loop {
            match rogue.next().await {
                Some(CoordinatorMessage::ResultAck { attempt })
                    if attempt == assignment.attempt =>
                {
                    break;
                }
                Some(_) => {}
                None => panic!("the coordinator ended the control stream"),
            }
        }
        (rogue, assignment.attempt)
    });
    let id = attempt.task.job;
    // Its run alone settles nothing: the task waits for a second agent.
    let task = cluster.task(id, 0);
    assert_eq!(task["task"]["state"], "pending", "{task}");
    let reason = cluster.job(id)["waiting_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("verify = 2 needs that many distinct agents"),
        "{reason}"
    );
    let status = cluster.lull(&["status", &id.to_string()]);
    status.assert_success();
    for says in [
        "results checked: each task succeeds when 2 distinct agents send the same result (verify)",
        "pending tasks: verify = 2 needs that many distinct agents",
    ] {
        assert!(status.stdout.contains(says), "{status}");
    }
    let rogue = if restart {
        drop(rogue);
        cluster.kill_coordinator();
        cluster.restart_coordinator();
        None
    } else {
        Some(rogue)
    };
    // Two honest agents come: one disagrees with the forger, the other breaks the tie.
    cluster.start_agent("a", AgentOptions::slots(1));
    cluster.start_agent("b", AgentOptions::slots(1));
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{task}");
    assert_eq!(attempts[0]["agent"], "forger", "{task}");
    assert_eq!(
        attempts[0]["outcome"],
        "disagreed: its result differs from the one the other agents agree on",
        "{task}"
    );
    assert_eq!(
        attempts[1]["outcome"], "succeeded; 1 more agent must agree (2 different results so far)",
        "{task}"
    );
    assert_eq!(
        attempts[2]["outcome"], "succeeded: 2 agents agree on its result",
        "{task}"
    );
    let honest: Vec<&serde_json::Value> = attempts[1..].iter().map(|a| &a["agent"]).collect();
    assert!(
        honest.contains(&&serde_json::json!(cluster.agent_id("a")))
            && honest.contains(&&serde_json::json!(cluster.agent_id("b"))),
        "{task}"
    );
    // The result people get is the honest one.
    let stdout = fs::read(cluster.results(id).join("0").join("stdout")).unwrap();
    let (wall, _, _, nan) = observed(&stdout);
    assert_eq!((wall, nan), (WALL_START_NS, CANONICAL_NAN));
    if rogue.is_none() {
        return;
    }
    // The forger's count of disagreements, while it is connected.
    let agents = cluster.agents();
    let forger = agents
        .iter()
        .find(|a| a["id"] == "forger")
        .unwrap_or_else(|| panic!("the forger is still connected: {agents:?}"));
    assert_eq!(forger["disagreements"], 1, "{forger}");
    drop(rogue);
}
