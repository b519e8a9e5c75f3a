//! PostgreSQL crashing and coming back 3 s later, twice, while a coordinator on it runs a job:
//! the coordinator rides it out, and every task ends with exactly one recorded result. In a test binary of its
//! own, because every test on the server would see the restart.

use lull_tests::{AgentOptions, Cluster, WAIT, crash_postgres, postgres_database, summarize};

#[test]
fn postgres_crashing_twice_under_load_loses_no_result() {
    let url = postgres_database("restarted_under_load");
    let mut cluster = Cluster::start_with(&["--database", &url]);
    cluster.start_agent("left", AgentOptions::slots(4));
    cluster.start_agent("right", AgentOptions::slots(4));
    cluster.wait_for_agents(&["left", "right"]);
    let id = cluster.submit(&cluster.many_tasks("load", 400, 100));
    let mut done_before = 0;
    for restart in 1..=2 {
        let job = cluster.wait_for_job(id, "more tasks done", WAIT, |j| {
            j["counts"]["succeeded"].as_u64().unwrap_or(0) > done_before + 20
        });
        done_before = job["counts"]["succeeded"].as_u64().unwrap_or(0);
        assert_ne!(
            job["state"], "succeeded",
            "the job ended before crash {restart}"
        );
        crash_postgres(std::time::Duration::from_secs(3));
        eprintln!("crashed PostgreSQL for 3 s with {}", summarize(&job));
    }
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    cluster.assert_one_result_per_task(id, 400);
    // The agents kept reporting while the database was away: none of their work was taken
    // for lost and run again.
    let log = cluster.coordinator_log();
    assert!(!log.contains("lease expired"), "{log}");
    for index in 0..400 {
        let task = cluster.task(id, index);
        assert_eq!(
            task["attempts"].as_array().map(Vec::len),
            Some(1),
            "task {index}: {task:#}"
        );
    }
    // The coordinator said what went wrong, and still serves.
    assert!(
        log.contains("database") || log.contains("PostgreSQL") || log.contains("connection"),
        "{log}"
    );
    assert_eq!(cluster.agents().len(), 2);
}
