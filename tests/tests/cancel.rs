//! Cancelling a job stops its running guests and frees their agents.

use std::time::Duration;

use lull_tests::{Cluster, WAIT, guests, summarize, wait_for};

#[test]
fn cancelling_a_job_stops_its_running_guests_and_frees_the_agents() {
    let cluster = Cluster::with_agents(&["left", "right"], 1);
    // Three endless tasks on two single-slot agents: two run, one waits.
    let job = cluster.write_job(
        "endless",
        "name = \"endless\"\ncount = 3\n[[module]]\npath = \"endless.wasm\"\n[resources]\nmemory = \"16MiB\"\ntimeout = \"5m\"\n",
        &[("endless.wasm", &guests::forever())],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "two tasks running", WAIT, |j| {
        j["counts"]["running"] == 2 && j["counts"]["pending"] == 1
    });
    wait_for("both agents to run a task", WAIT, || {
        let agents = cluster.agents();
        (agents.len() == 2 && agents.iter().all(|a| a["running"] == 1)).then_some(())
    });

    cluster.lull(&["cancel", &id.to_string()]).assert_success();

    let cancelled =
        cluster.wait_for_job(id, "every task cancelled", Duration::from_secs(10), |j| {
            j["state"] == "cancelled" && j["counts"]["cancelled"] == 3
        });
    let tasks = cancelled["tasks"].as_array().unwrap();
    for t in tasks {
        assert_eq!(t["state"], "cancelled", "{}", summarize(&cancelled));
    }
    // The two running guests were stopped by their agents, which said so in their results; the
    // waiting task never started.
    let stopped: Vec<_> = tasks.iter().filter(|t| t["attempt"] == 1).collect();
    assert_eq!(stopped.len(), 2, "{}", summarize(&cancelled));
    for t in stopped {
        assert_eq!(
            t["result"]["modules"][0]["outcome"]["kind"], "cancelled",
            "task {} was stopped by its agent: {t}",
            t["index"]
        );
    }
    let waiting: Vec<_> = tasks.iter().filter(|t| t["attempt"] == 0).collect();
    assert_eq!(waiting.len(), 1, "{}", summarize(&cancelled));
    assert_eq!(waiting[0]["cause"], "cancelled before it started");
    wait_for("both agents to be free", Duration::from_secs(10), || {
        cluster
            .agents()
            .iter()
            .all(|a| a["running"] == 0)
            .then_some(())
    });

    let good = cluster.write_job(
        "good",
        "name = \"good\"\ncount = 2\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let out = cluster.submit_and_watch(&good);
    out.assert_success();
    assert_eq!(out.json()["state"], "succeeded", "{out}");
}
