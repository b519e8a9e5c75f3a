//! Checkpoints through the whole loop, over real processes: a guest keeps a checkpoint and
//! leaves; the agent uploads it, sealed with its key and bound to the attempt; the coordinator
//! keeps it; the task's next attempt restores it.

use std::time::Duration;

use lull_agent::cache::{BlobCache, Lru};
use lull_agent::link;
use lull_protocol::identity::Identity;
use lull_protocol::message::{
    AgentMessage, AttemptId, CoordinatorMessage, TaskId, checkpoint_seal_message,
};
use lull_tests::rogue::{Facts, Rogue};
use lull_tests::{AgentOptions, Cluster, example_module, guests, summarize};

#[test]
fn a_task_that_leaves_with_a_checkpoint_resumes_from_it() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "resume",
        "name = \"resume\"\n[[module]]\npath = \"resumer.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("resumer.wasm", &guests::resumer())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    let first = &attempts[0]["result"]["modules"][0]["outcome"];
    assert_eq!(first["kind"], "left", "{task}");
    assert_eq!(
        first["reason"], "the guest left after keeping a checkpoint",
        "{task}"
    );
    // The second attempt found the 5 bytes the first kept (it exits ok only then).
    assert_eq!(
        attempts[1]["result"]["modules"][0]["outcome"]["code"], 0,
        "{task}"
    );
    let log = cluster.coordinator_log();
    assert!(log.contains("checkpoint kept"), "{log}");
}

#[test]
fn a_guest_that_always_leaves_uses_up_its_attempts_instead_of_running_for_ever() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "leaver",
        "name = \"leaver\"\n[[module]]\npath = \"leaver.wasm\"\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 2\n",
        &[("leaver.wasm", &guests::always_leaves())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "as many attempts as the job allows: {task}"
    );
    for a in attempts {
        let outcome = &a["result"]["modules"][0]["outcome"];
        assert_eq!(outcome["kind"], "left", "{task}");
    }
    let cause = done["tasks"][0]["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("left: the guest left after keeping a checkpoint"),
        "{cause:?}"
    );
}

#[test]
fn the_progress_a_guest_reports_shows_in_lull_status() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "progress",
        "name = \"progress\"\n[[module]]\npath = \"p.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("p.wasm", &guests::progress_then_spin())],
    );
    let id = cluster.submit(&job);
    let detail = cluster.wait_for_job(id, "the task's progress", lull_tests::WAIT, |j| {
        j["tasks"][0]["progress"].is_number()
    });
    assert_eq!(detail["tasks"][0]["progress"], 0.25, "{detail}");
    let status = cluster.lull(&["status", &id.to_string()]);
    status.assert_success();
    assert!(status.stdout.contains("running 25%"), "{status}");
    cluster.lull(&["cancel", &id.to_string()]).assert_success();
    cluster.wait_for_job_end(id);
}

/// What the coordinator answers a rogue agent's checkpoint with: `None` when it was kept.
async fn checkpoint_answer(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    msg: AgentMessage,
) -> Option<String> {
    link::write_frame(send, &msg).await.unwrap();
    // A refusal comes back at once; a kept checkpoint gets no answer.
    match tokio::time::timeout(Duration::from_millis(1500), link::read_frame(recv)).await {
        Ok(Ok(Some(CoordinatorMessage::CheckpointRefused { reason, .. }))) => Some(reason),
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn checkpoints_of_other_attempts_unsealed_or_too_large_are_refused() {
    let cluster = Cluster::start();
    let facts = Facts::of(&cluster);
    let job = cluster.write_job(
        "mine",
        "name = \"mine\"\n[[module]]\npath = \"forever.wasm\"\n[resources]\nmemory = \"16MiB\"\n[placement]\nconstraints = [\"label.role == rogue\"]\n",
        &[("forever.wasm", &guests::forever())],
    );
    let answers = cluster.block_on(async move {
        let stranger = Identity::ephemeral(&["lull-agent"]).unwrap();
        let mut rogue = Rogue::join(&facts, "a-rogue").await;
        let mine = rogue.take(&facts, &job).await.attempt;
        let Rogue {
            identity,
            conn,
            mut send,
            mut recv,
        } = rogue;

        let lru = Lru::new(1 << 30);
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), lru).unwrap();
        let state = cache.put(b"state").unwrap();
        link::upload_blob(&conn, &cache, state).await.unwrap();
        let seal = |who: &Identity, attempt: AttemptId, size: u64, seq: u64| {
            hex::encode(
                who.sign(&checkpoint_seal_message(attempt, &state, size, seq))
                    .unwrap(),
            )
        };
        let checkpoint = |attempt, size, seq, seal: String| AgentMessage::Checkpoint {
            attempt,
            digest: state,
            size,
            seq,
            progress: Some(0.5),
            seal,
        };
        let other = AttemptId {
            task: TaskId {
                job: mine.task.job,
                index: 7,
            },
            attempt: 1,
        };
        let mut answers = Vec::new();
        // Sealed by another key.
        let msg = checkpoint(mine, 5, 1, seal(&stranger, mine, 5, 1));
        answers.push(checkpoint_answer(&mut send, &mut recv, msg).await);
        // A seal for another sequence number.
        let msg = checkpoint(mine, 5, 2, seal(&identity, mine, 5, 1));
        answers.push(checkpoint_answer(&mut send, &mut recv, msg).await);
        // Another task's attempt.
        let msg = checkpoint(other, 5, 1, seal(&identity, other, 5, 1));
        answers.push(checkpoint_answer(&mut send, &mut recv, msg).await);
        // Over the cap (64 MiB).
        let big = 100 << 20;
        let msg = checkpoint(mine, big, 1, seal(&identity, mine, big, 1));
        answers.push(checkpoint_answer(&mut send, &mut recv, msg).await);
        // Its own, sealed, uploaded: kept.
        let msg = checkpoint(mine, 5, 1, seal(&identity, mine, 5, 1));
        answers.push(checkpoint_answer(&mut send, &mut recv, msg).await);
        conn.close(0u32.into(), b"done");
        answers
    });
    assert!(
        answers[0].as_deref().is_some_and(|r| r.contains("seal")),
        "{answers:?}"
    );
    assert!(
        answers[1].as_deref().is_some_and(|r| r.contains("seal")),
        "{answers:?}"
    );
    assert!(
        answers[2]
            .as_deref()
            .is_some_and(|r| r.contains("not assigned to this agent")),
        "{answers:?}"
    );
    assert!(
        answers[3]
            .as_deref()
            .is_some_and(|r| r.contains("over this coordinator's cap of 64 MiB")),
        "{answers:?}"
    );
    assert_eq!(answers[4], None, "{answers:?}");
    let log = cluster.coordinator_log();
    assert!(log.contains("checkpoint kept"), "{log}");
}

/// The `primes` example (built with lull-guest) counting the primes below 30 million, keeping
/// a checkpoint every second.
fn primes_job(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    let module = std::fs::read(example_module("wasm32-wasip2", "primes.wasm")).unwrap();
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\n[[module]]\npath = \"primes.wasm\"\nargs = [\"--limit\", \"30000000\", \"--every\", \"1\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("primes.wasm", &module)],
    )
}

/// Waits until the task has kept a checkpoint with some progress; returns that progress.
fn wait_for_checkpoint(cluster: &Cluster, id: u64) -> f64 {
    lull_tests::wait_for("a checkpoint with progress", lull_tests::WAIT, || {
        cluster.task(id, 0)["checkpoint"]["progress"]
            .as_f64()
            .filter(|p| *p > 0.0)
    })
}

/// Follows a job to its end, sampling its task's progress; returns the samples.
fn progress_until_done(cluster: &Cluster, id: u64) -> Vec<f64> {
    let mut samples = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let job = cluster.job(id);
        if let Some(p) = job["tasks"][0]["progress"].as_f64() {
            samples.push(p);
        }
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
            return samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not end: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout_of(cluster: &Cluster, id: u64) -> String {
    let dir = cluster.results(id);
    std::fs::read_to_string(dir.join("0/stdout")).unwrap()
}

#[test]
fn a_drained_task_resumes_elsewhere_from_its_checkpoint_with_the_same_result() {
    let mut cluster = Cluster::start();
    cluster.start_agent("first", AgentOptions::slots(1));
    cluster.wait_for_agents(&["first"]);
    // The same work uninterrupted, for its answer.
    let calm = cluster.submit(&primes_job(&cluster, "calm"));
    assert_eq!(cluster.wait_for_job_end(calm)["state"], "succeeded");
    let expected = stdout_of(&cluster, calm);

    let id = cluster.submit(&primes_job(&cluster, "drained"));
    let kept = wait_for_checkpoint(&cluster, id);
    cluster.start_agent("second", AgentOptions::slots(1));
    cluster.wait_for_agents(&["first", "second"]);
    let first = cluster.agent_id("first");
    cluster
        .lull(&["drain", &first, "--deadline", "20s"])
        .assert_success();
    // The guest answered the notice at once, well before the 20 s deadline.
    assert_moved_and_resumed(&cluster, id, &first, "second", kept);
    assert_eq!(
        stdout_of(&cluster, id),
        expected,
        "the same answer as uninterrupted"
    );
}

/// Follows job `id` to its end and checks that its one task was evicted from agent `from` and
/// finished on agent `to` (a name), starting where the first attempt left off, its progress
/// never below `kept` (the checkpoint it had when it was moved).
fn assert_moved_and_resumed(cluster: &Cluster, id: u64, from: &str, to: &str, kept: f64) {
    let samples = progress_until_done(cluster, id);
    let done = cluster.job(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    assert_eq!(attempts[0]["agent"], from, "{task}");
    // Handed back by its agent: an eviction, not an attempt lost with its agent.
    assert_eq!(
        attempts[0]["result"]["modules"][0]["outcome"]["kind"], "evicted",
        "{task}"
    );
    assert_eq!(attempts[1]["agent"], cluster.agent_id(to).as_str());
    let stderr = std::fs::read_to_string(cluster.results(id).join("0/stderr")).unwrap();
    assert!(stderr.contains("resuming at"), "{stderr}");
    assert!(
        samples.iter().all(|p| *p >= kept),
        "progress fell below the checkpoint's {kept}: {samples:?}"
    );
}

#[test]
fn a_task_whose_agent_is_killed_resumes_from_its_last_periodic_checkpoint() {
    let mut cluster = Cluster::start();
    cluster.start_agent("doomed", AgentOptions::slots(1));
    cluster.wait_for_agents(&["doomed"]);
    let id = cluster.submit(&primes_job(&cluster, "killed"));
    let kept = wait_for_checkpoint(&cluster, id);
    cluster.start_agent("survivor", AgentOptions::slots(1));
    cluster.wait_for_agents(&["doomed", "survivor"]);
    cluster.kill_agent("doomed");
    let samples = progress_until_done(&cluster, id);
    let done = cluster.job(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    assert_eq!(attempts[1]["agent"], cluster.agent_id("survivor").as_str());
    let stderr = std::fs::read_to_string(cluster.results(id).join("0/stderr")).unwrap();
    assert!(stderr.contains("resuming at"), "{stderr}");
    assert!(
        samples.iter().all(|p| *p >= kept),
        "progress fell below the checkpoint's {kept}: {samples:?}"
    );
    // π(3·10^7).
    assert_eq!(stdout_of(&cluster, id), "1857859\n");
}

#[test]
fn a_guest_that_ignores_the_notice_is_stopped_at_the_deadline_and_resumes_from_its_checkpoint() {
    let mut cluster = Cluster::start();
    cluster.start_agent("first", AgentOptions::slots(1));
    cluster.wait_for_agents(&["first"]);
    let job = cluster.write_job(
        "deaf",
        "name = \"deaf\"\n[[module]]\npath = \"deaf.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("deaf.wasm", &guests::checkpoint_then_spin())],
    );
    let id = cluster.submit(&job);
    wait_for_checkpoint_kept(&cluster, id);
    cluster.start_agent("second", AgentOptions::slots(1));
    cluster.wait_for_agents(&["first", "second"]);
    let first = cluster.agent_id("first");
    cluster
        .lull(&["drain", &first, "--deadline", "2s"])
        .assert_success();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    let outcome = &attempts[0]["result"]["modules"][0]["outcome"];
    assert_eq!(outcome["kind"], "evicted", "{task}");
    // Stopped at the deadline, not before: it never answered the notice.
    let ran =
        attempts[0]["finished_ms"].as_i64().unwrap() - attempts[0]["started_ms"].as_i64().unwrap();
    assert!(ran >= 2000, "stopped after {ran} ms: {task}");
    // The second attempt found the checkpoint (it exits ok only then).
    assert_eq!(attempts[1]["agent"], cluster.agent_id("second").as_str());
}

/// Waits until the task has kept a checkpoint.
fn wait_for_checkpoint_kept(cluster: &Cluster, id: u64) {
    lull_tests::wait_for("a checkpoint", lull_tests::WAIT, || {
        cluster.task(id, 0)["checkpoint"].is_object().then_some(())
    });
}

#[test]
fn an_agent_stopped_by_its_owner_hands_back_its_task_and_checkpoint_before_it_exits() {
    let mut cluster = Cluster::start();
    cluster.start_agent("leaving", AgentOptions::slots(1));
    cluster.wait_for_agents(&["leaving"]);
    let id = cluster.submit(&primes_job(&cluster, "stopped"));
    let kept = wait_for_checkpoint(&cluster, id);
    cluster.start_agent("staying", AgentOptions::slots(1));
    cluster.wait_for_agents(&["leaving", "staying"]);
    let leaving = cluster.agent_id("leaving");
    cluster.agent_command("leaving", "stop").assert_success();
    assert_eq!(
        cluster.wait_for_agent_exit("leaving", lull_tests::WAIT),
        Some(0)
    );
    assert_moved_and_resumed(&cluster, id, &leaving, "staying", kept);
}

#[test]
fn checkpoints_replaced_by_newer_ones_are_deleted_from_the_coordinator() {
    let mut cluster = Cluster::start_with(&["--gc-interval", "500ms"]);
    cluster.start_agent(
        "a",
        AgentOptions {
            slots: Some(1),
            settings: Some("checkpoint_interval = \"1s\"\n".into()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["a"]);
    let id = cluster.submit(&primes_job(&cluster, "superseded"));
    // The task's latest checkpoint, as it changes.
    let mut seen: Vec<String> = Vec::new();
    lull_tests::wait_for(
        "three checkpoints one after the other",
        lull_tests::WAIT,
        || {
            let task = cluster.task(id, 0);
            assert_eq!(task["task"]["state"], "running", "{task}");
            if let Some(d) = task["checkpoint"]["digest"].as_str()
                && seen.last().map(String::as_str) != Some(d)
            {
                seen.push(d.to_owned());
            }
            (seen.len() >= 3).then_some(())
        },
    );
    cluster.lull(&["cancel", &id.to_string()]).assert_success();
    cluster.wait_for_job_end(id);
    let latest = cluster.task(id, 0)["checkpoint"]["digest"]
        .as_str()
        .expect("a checkpoint")
        .to_owned();
    // Replaced states go at the next collection, not after the hour-long grace.
    lull_tests::wait_for(
        "replaced checkpoints to be deleted",
        lull_tests::WAIT,
        || {
            seen.iter()
                .filter(|d| **d != latest)
                .all(|d| !cluster.blob_path(d).exists())
                .then_some(())
        },
    );
    assert!(cluster.blob_path(&latest).exists(), "the latest is kept");
    assert!(
        cluster
            .coordinator_log()
            .contains("deleted superseded checkpoints")
    );
}
