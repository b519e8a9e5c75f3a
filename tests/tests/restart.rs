//! The coordinator can be killed at any instant and restarted on its data directory.

use std::fs;

use lull_tests::{Cluster, WAIT, guests, summarize};

#[test]
fn a_coordinator_killed_mid_job_restarts_and_records_every_result_exactly_once() {
    let mut cluster = Cluster::with_agents(&["left", "right"], 1);
    // Six tasks of 1.5 s on two single-slot agents: three rounds of two.
    let job = cluster.write_job(
        "slow",
        r#"
name = "slow"
count = 6
[[module]]
path = "slow.wasm"
args = ["{index}"]
[resources]
memory = "16MiB"
timeout = "1m"
"#,
        &[("slow.wasm", &guests::hello(1500))],
    );
    let id = cluster.submit(&job);

    let midway = cluster.wait_for_job(id, "some tasks done and some running", WAIT, |j| {
        j["counts"]["succeeded"].as_u64() >= Some(1) && j["counts"]["running"].as_u64() >= Some(1)
    });
    cluster.kill_coordinator();
    eprintln!("killed the coordinator with {}", summarize(&midway));
    cluster.restart_coordinator();

    cluster.wait_for_agents(&["left", "right"]);
    // The restarted coordinator told the agents their old connection was gone (a QUIC
    // stateless reset, its keys being derived from its own): they did not wait for their
    // idle timeout.
    for agent in ["left", "right"] {
        let log = cluster.agent_log(agent);
        assert!(log.contains("reset by peer"), "{agent}: {log}");
    }
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    for index in 0..6 {
        let task = cluster.task(id, index);
        assert_eq!(task["task"]["state"], "succeeded", "task {index}: {task}");
        let attempts = task["attempts"].as_array().unwrap();
        let with_result: Vec<_> = attempts.iter().filter(|a| !a["result"].is_null()).collect();
        assert_eq!(
            with_result.len(),
            1,
            "task {index} must have exactly one recorded result: {task:#}"
        );
        assert_eq!(
            with_result[0]["result"]["modules"][0]["outcome"]["kind"], "exited",
            "task {index}: {task:#}"
        );
        assert_eq!(
            with_result[0]["outcome"], "succeeded",
            "task {index}: {task:#}"
        );
    }

    let results = cluster.results(id);
    for index in 0..6 {
        let dir = results.join(index.to_string());
        assert_eq!(
            fs::read_to_string(dir.join("output/result.txt")).unwrap(),
            index.to_string(),
            "task {index}'s /output/result.txt"
        );
        assert_eq!(
            fs::read_to_string(dir.join("stdout")).unwrap(),
            format!("hello from task {index}\n"),
            "task {index}'s stdout"
        );
    }
}
