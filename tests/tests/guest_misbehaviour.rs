//! A guest that traps or never ends is an ordinary outcome: its task fails with the cause, and
//! the agents carry on.

use lull_tests::{AgentOptions, Cluster, guests, summarize};

#[test]
fn a_trapping_guest_and_a_runaway_guest_fail_with_their_causes_and_the_agents_carry_on() {
    let mut cluster = Cluster::with_agents(&["left", "right"], 1);
    let trap = cluster.write_job(
        "trap",
        "name = \"trap\"\n[[module]]\npath = \"trap.wasm\"\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 1\n",
        &[("trap.wasm", &guests::trap())],
    );
    let runaway = cluster.write_job(
        "runaway",
        "name = \"runaway\"\n[[module]]\npath = \"runaway.wasm\"\n[resources]\nmemory = \"16MiB\"\ntimeout = \"2s\"\n[retry]\nmax_attempts = 1\n",
        &[("runaway.wasm", &guests::forever())],
    );
    let trap = cluster.submit(&trap);
    let runaway = cluster.submit(&runaway);

    let trapped = cluster.wait_for_job_end(trap);
    assert_eq!(trapped["state"], "failed", "{}", summarize(&trapped));
    let cause = trapped["tasks"][0]["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("module trap: trapped") && cause.contains("unreachable"),
        "the cause names the trap: {cause:?}"
    );

    let timed_out = cluster.wait_for_job_end(runaway);
    assert_eq!(timed_out["state"], "failed", "{}", summarize(&timed_out));
    let cause = timed_out["tasks"][0]["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("module runaway: timed out after 2.0s"),
        "the cause names the timeout: {cause:?}"
    );

    assert!(cluster.agent_is_running("left") && cluster.agent_is_running("right"));
    cluster.wait_for_agents(&["left", "right"]);
    let good = cluster.write_job(
        "good",
        "name = \"good\"\ncount = 2\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let out = cluster.submit_and_watch(&good);
    out.assert_success();
    assert_eq!(out.json()["state"], "succeeded", "{out}");
}

#[test]
fn a_guest_that_floods_output_with_files_gets_a_bounded_result_and_its_agent_stays() {
    let cluster = Cluster::with_agents(&["a"], 1);
    // Before results were bounded, 45,000 names made a result too large for one message: the
    // agent dropped its connection and sent it again for ever.
    let job = cluster.write_job(
        "flood",
        "name = \"flood\"\n[[module]]\npath = \"flood.wasm\"\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 1\n",
        &[("flood.wasm", &guests::output_flood(45_000))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "one attempt, not a cycle of them");
    let result = &attempts[0]["result"];
    assert_eq!(
        result["outputs"].as_array().map(Vec::len),
        Some(lull_protocol::message::MAX_OUTPUT_FILES),
        "the first files are kept, up to the bound"
    );
    assert_eq!(
        result["outputs_truncated"], true,
        "and the result says some were dropped"
    );
    assert!(
        !cluster.agent_log("a").contains("could not be framed"),
        "{}",
        cluster.agent_log("a")
    );
    assert!(cluster.agents().iter().any(|a| a["name"] == "a"));
}

#[test]
fn a_guest_that_fills_the_disk_is_stopped_at_its_cap_and_an_agent_short_of_disk_takes_no_work() {
    let mut cluster = Cluster::start();
    cluster.start_agent(
        "capped",
        AgentOptions {
            slots: Some(1),
            settings: Some("task_disk = \"8MiB\"\n".into()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["capped"]);
    let job = cluster.write_job(
        "fill",
        "name = \"fill\"\n[[module]]\npath = \"fill.wasm\"\n[resources]\nmemory = \"16MiB\"\ntimeout = \"10m\"\n[retry]\nmax_attempts = 1\n",
        &[("fill.wasm", &guests::disk_filler())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    let cause = done["tasks"][0]["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("disk cap reached") && cause.contains("8 MiB, this agent's task_disk"),
        "the cause names the cap: {cause:?}"
    );
    let task = cluster.task(id, 0);
    assert_eq!(
        task["attempts"][0]["result"]["modules"][0]["outcome"]["kind"],
        "disk_exceeded"
    );
    assert!(cluster.agent_is_running("capped"));
    // The task's files are gone; its emptied folders are kept for the next task.
    let work = cluster.root().join("agents/capped/work");
    let left = files_under(&work);
    assert!(left.is_empty(), "the task's files are gone: {left:?}");

    // An agent that must keep more free than any disk has: listed, not taking work, saying why.
    cluster.start_agent(
        "short",
        AgentOptions {
            settings: Some("min_free_disk = \"1000TiB\"\n".into()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["capped", "short"]);
    cluster.kill_agent("capped");
    // Until the coordinator notices the killed agent's connection is gone, it may still give
    // it the job: wait for that first.
    lull_tests::wait_for("the killed agent to be gone", lull_tests::WAIT, || {
        (!cluster.agents().iter().any(|a| a["name"] == "capped")).then_some(())
    });
    let hello = cluster.write_job(
        "hello",
        "name = \"hello\"\n[[module]]\npath = \"hello.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let waiting = cluster.submit(&hello);
    let short = lull_tests::wait_for(
        "the agent to say its disk is short",
        lull_tests::WAIT,
        || {
            cluster
                .agents()
                .into_iter()
                .find(|a| a["name"] == "short" && a["status"]["accepting"] == false)
        },
    );
    let reason = short["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("below min_free_disk 1000 TiB"), "{short}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let job = cluster.job(waiting);
    assert_eq!(job["state"], "pending", "{}", summarize(&job));
}

/// Everything but directories under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}
