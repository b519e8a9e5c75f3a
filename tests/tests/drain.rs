//! Draining agents and retrying failed tasks, through the whole loop:
//!
//! - `lull drain AGENT --deadline D`: the agent takes no new work; a task still running at the
//!   deadline is evicted and finishes on another agent; one that ends in time stays where it is;
//!   `--off` lets the agent take work again;
//! - a failed task is retried after a backoff, on another agent when there is one.

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, WAIT, guests, summarize};

fn hello_job(cluster: &Cluster, name: &str, count: u32, spin_ms: u64) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("hello.wasm", &guests::hello(spin_ms))],
    )
}

#[test]
fn a_drained_agent_s_task_moves_at_the_deadline_and_it_takes_no_new_work() {
    let mut cluster = Cluster::start();
    cluster.start_agent("leaving", AgentOptions::slots(1));
    cluster.wait_for_agents(&["leaving"]);
    let leaving = cluster.agent_id("leaving");
    let slow = hello_job(&cluster, "slow", 1, 5000);
    let id = cluster.submit(&slow);
    cluster.wait_for_job(id, "the task to run on the leaving agent", WAIT, |j| {
        j["counts"]["running"] == 1
    });
    cluster.start_agent("staying", AgentOptions::slots(1));
    cluster.wait_for_agents(&["leaving", "staying"]);
    let staying = cluster.agent_id("staying");

    let out = cluster.lull(&["drain", &leaving, "--deadline", "1s"]);
    out.assert_success();
    assert!(out.stdout.contains("1 running task(s)"), "{out}");
    let listing = cluster.agent_listing("leaving").expect("still connected");
    assert!(listing["draining_until_ms"].is_i64(), "{listing}");
    let table = cluster.lull(&["agents"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(&leaving) && l.contains("draining")),
        "{table}"
    );

    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(task["task"]["agent"], staying.as_str(), "{task}");
    let first = &task["attempts"][0];
    assert_eq!(first["agent"], leaving.as_str(), "{task}");
    assert!(
        first["outcome"].as_str().unwrap_or("").contains("drained"),
        "the first attempt was evicted by the drain: {task}"
    );

    // New work goes around it.
    let more = hello_job(&cluster, "more", 3, 0);
    let id = cluster.submit(&more);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    for index in 0..3 {
        assert_eq!(cluster.task(id, index)["task"]["agent"], staying.as_str());
    }
}

#[test]
fn a_task_that_ends_before_the_deadline_stays_and_off_lets_work_in_again() {
    let cluster = Cluster::with_agents(&["only"], 1);
    let only = cluster.agent_id("only");
    let short = hello_job(&cluster, "short", 1, 1500);
    let id = cluster.submit(&short);
    cluster.wait_for_job(id, "the task to run", WAIT, |j| j["counts"]["running"] == 1);
    cluster
        .lull(&["drain", &only, "--deadline", "1m"])
        .assert_success();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(
        task["task"]["attempt"], 1,
        "it finished in time, where it was: {task}"
    );

    // Drained, the only agent takes nothing, and the job says why it waits.
    let next = hello_job(&cluster, "next", 1, 0);
    let id = cluster.submit(&next);
    let waiting = cluster.wait_for_job(id, "a waiting reason", WAIT, |j| {
        j["waiting_reason"].is_string()
    });
    assert_eq!(
        waiting["waiting_reason"], "no agent is accepting work now: only draining",
        "{waiting}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.job(id)["counts"]["pending"], 1);

    cluster.lull(&["drain", &only, "--off"]).assert_success();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
}

#[test]
fn a_failed_task_is_retried_after_a_backoff_on_another_agent() {
    let cluster = Cluster::with_agents(&["one", "two"], 1);
    let job = cluster.write_job(
        "failing",
        "name = \"failing\"\n[[module]]\npath = \"trap.wasm\"\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 2\non = [\"trap\"]\n",
        &[("trap.wasm", &guests::trap())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{task}");
    assert_ne!(
        attempts[0]["agent"], attempts[1]["agent"],
        "the second attempt ran on the other agent: {task}"
    );
    let failed_at = attempts[0]["finished_ms"].as_i64().expect("finished");
    let retried_at = attempts[1]["assigned_ms"].as_i64().expect("assigned");
    assert!(
        retried_at - failed_at >= 1000,
        "the retry waited the 1 s backoff: {} ms",
        retried_at - failed_at
    );
    assert!(
        task["task"]["cause"]
            .as_str()
            .unwrap_or("")
            .contains("trap"),
        "{task}"
    );
}
