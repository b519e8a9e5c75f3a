//! The coordinator on PostgreSQL (`serve --database postgres://...`), through the whole loop:
//! agents enroll, a job runs on two agents, the coordinator is killed mid-job and restarted on
//! the same database, and every task ends with one recorded result. Needs the server that
//! `cargo xtask test` starts (`LULL_TEST_POSTGRES`).

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, WAIT, guests, postgres_database, summarize};

#[test]
fn a_coordinator_on_postgres_survives_a_kill_mid_job() {
    let Some(url) = postgres_database("kill_mid_job") else {
        return;
    };
    let mut cluster = Cluster::start_with(&["--database", &url]);
    cluster.start_agent("left", AgentOptions::slots(2));
    cluster.start_agent("right", AgentOptions::slots(2));
    cluster.wait_for_agents(&["left", "right"]);
    assert!(
        !cluster.coordinator_data().join("lull.db").exists(),
        "no SQLite file next to a PostgreSQL database"
    );
    let job = cluster.write_job(
        "pg",
        "name = \"pg\"\ncount = 8\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(1500))],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "tasks running", WAIT, |j| {
        j["counts"]["running"].as_u64().unwrap_or(0) >= 2
    });
    cluster.kill_coordinator();
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart_coordinator();

    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    for index in 0..8 {
        let task = cluster.task(id, index);
        let recorded = task["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["result"].is_object())
            .count();
        assert_eq!(recorded, 1, "one result per task: {task}");
    }
    // The API, tokens and clusters work on it like on SQLite.
    assert_eq!(cluster.agents().len(), 2);
    cluster
        .lull(&["clusters", "create", "pg-only"])
        .assert_success();
}
