//! A guest that traps or never ends is an ordinary outcome: its task fails with the cause, and
//! the agents carry on.

use lull_tests::{Cluster, guests, summarize};

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
