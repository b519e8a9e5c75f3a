//! Bad days, over real processes: a network cut between an agent and the coordinator, and a
//! coordinator killed again and again while a large job runs. Each task ends with exactly one
//! recorded result, and no work is lost.

use std::time::{Duration, Instant};

use lull_tests::netns::Host;
use lull_tests::{AgentOptions, Cluster, WAIT, guests, summarize};

#[test]
fn an_agent_cut_off_stops_its_stale_task_which_finishes_once_elsewhere() {
    let island = Host::new("island", 1);
    let listen = format!("{}:0", island.outside);
    let mut cluster = Cluster::start_with(&["--quic-listen", &listen]);
    cluster.start_agent(
        "island",
        AgentOptions {
            netns: Some(island.name.clone()),
            ..AgentOptions::slots(1)
        },
    );
    cluster.wait_for_agents(&["island"]);
    let job = cluster.write_job(
        "cut",
        "name = \"cut\"\n[[module]]\npath = \"slow.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("slow.wasm", &guests::hello(15_000))],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "the task running on the island", WAIT, |j| {
        j["counts"]["running"] == 1
    });
    island.cut();
    let cut_at = Instant::now();
    // The mainland agent can only get the task once the island's lease ran out.
    cluster.start_agent("mainland", AgentOptions::slots(1));
    cluster.wait_for_agents(&["island", "mainland"]);
    let mainland = cluster.agent_id("mainland");
    cluster.wait_for_job(id, "the task moved to the mainland", WAIT, |j| {
        j["tasks"][0]["agent"] == mainland.as_str()
    });
    // The island stops its copy on its own, without a word from the coordinator.
    lull_tests::wait_for("the island to stop its stale attempt", WAIT, || {
        cluster
            .agent_log("island")
            .contains("stopping a stale attempt")
            .then_some(())
    });
    assert!(
        cut_at.elapsed() < Duration::from_secs(14),
        "fenced before the guest would have ended by itself"
    );
    island.mend();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    cluster.assert_one_result_per_task(id, 1);
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task:#}");
    assert_eq!(attempts[0]["agent"], cluster.agent_id("island").as_str());
    assert!(
        attempts[0]["result"].is_null(),
        "the island's late result is not counted: {task:#}"
    );
    // Back in touch, the island hands in its result (ignored as late) and empties its outbox.
    let outbox = cluster.agent_data_dir("island").join("outbox");
    lull_tests::wait_for("the island's outbox to empty", WAIT, || {
        (std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0) == 0).then_some(())
    });
    assert!(
        cluster
            .coordinator_log()
            .contains("late or duplicate result ignored"),
        "{}",
        cluster.coordinator_log()
    );
}

/// Kills the coordinator ten times while job `id` of `count` tasks runs, each time once some
/// more tasks succeeded, and restarts it on the same data; then checks every task.
fn killed_ten_times(cluster: &mut Cluster, id: u64, count: u32) {
    let mut done_before = 0;
    for kill in 1..=10 {
        let job = cluster.wait_for_job(id, "more tasks done", WAIT, |j| {
            j["counts"]["succeeded"].as_u64().unwrap_or(0) > done_before
        });
        done_before = job["counts"]["succeeded"].as_u64().unwrap_or(0);
        assert_ne!(
            job["state"], "succeeded",
            "the job ended before kill {kill}: make its tasks longer"
        );
        cluster.kill_coordinator();
        eprintln!("kill {kill}: {}", summarize(&job));
        cluster.restart_coordinator();
    }
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    cluster.assert_one_result_per_task(id, count);
}

/// A job of 1,000 tasks of 100 ms each, for two agents of four slots.
fn thousand_tasks(cluster: &Cluster) -> std::path::PathBuf {
    cluster.many_tasks("thousand", 1000, 100)
}

#[test]
fn a_coordinator_on_sqlite_killed_ten_times_during_a_thousand_tasks_records_each_once() {
    let mut cluster = Cluster::with_agents(&["left", "right"], 4);
    let id = cluster.submit(&thousand_tasks(&cluster));
    killed_ten_times(&mut cluster, id, 1000);
}

#[test]
fn a_coordinator_on_postgres_killed_ten_times_during_a_thousand_tasks_records_each_once() {
    let url = lull_tests::postgres_database("killed_ten_times");
    let mut cluster = Cluster::start_with(&["--database", &url]);
    cluster.start_agent("left", AgentOptions::slots(4));
    cluster.start_agent("right", AgentOptions::slots(4));
    cluster.wait_for_agents(&["left", "right"]);
    let id = cluster.submit(&thousand_tasks(&cluster));
    killed_ten_times(&mut cluster, id, 1000);
}
