//! The whole loop: submit, place on agents, run, collect, download.

use std::collections::BTreeSet;
use std::fs;

use lull_tests::{AgentOptions, Cluster, example_module, examples_dir, guests, summarize};

#[test]
fn an_array_job_runs_on_both_agents_and_every_task_s_results_come_home() {
    let cluster = Cluster::with_agents(&["left", "right"], 1);
    // Each task busy-waits 300 ms, so the two agents' single slots are both in use.
    let job = cluster.write_job(
        "hello",
        r#"
name = "hello"
count = 4
[[module]]
path = "hello.wasm"
args = ["{index}"]
[resources]
memory = "16MiB"
timeout = "1m"
"#,
        &[("hello.wasm", &guests::hello(300))],
    );

    let watched = cluster.submit_and_watch(&job);
    watched.assert_success();
    let detail = watched.json();
    assert_eq!(detail["state"], "succeeded", "{watched}");
    let id = detail["id"].as_u64().expect("the job's number");

    let results = cluster.results(id);
    for index in 0..4 {
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
        assert_eq!(
            fs::read_to_string(dir.join("stderr")).unwrap(),
            format!("done: task {index}\n"),
            "task {index}'s stderr"
        );
        let status: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("status.json")).unwrap()).unwrap();
        assert_eq!(status["job"], id);
        assert_eq!(status["index"], index);
        assert_eq!(status["state"], "succeeded", "task {index}: {status}");
        assert_eq!(status["succeeded"], true, "task {index}: {status}");
        assert_eq!(status["attempt"], 1, "task {index}: {status}");
        assert_eq!(status["cause"], serde_json::Value::Null);
        assert_eq!(status["modules"][0]["outcome"]["kind"], "exited");
        assert_eq!(status["modules"][0]["outcome"]["code"], 0);
        assert_eq!(status["outputs"][0]["path"], "result.txt");
    }

    let ran_on: BTreeSet<String> = cluster.job(id)["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["agent"].as_str().unwrap().to_owned())
        .collect();
    let agents: BTreeSet<String> = ["left", "right"]
        .iter()
        .map(|n| cluster.agent_id(n))
        .collect();
    assert_eq!(ran_on, agents, "spread placement uses both agents");
}

#[test]
fn the_wordcount_component_counts_the_words_of_its_inputs() {
    example_module("wasm32-wasip2", "wordcount.wasm");
    let cluster = Cluster::with_agents(&["solo"], 1);
    let job = examples_dir().join("wordcount/job.toml");

    let watched = cluster.submit_and_watch(&job);
    watched.assert_success();
    let id = watched.json()["id"].as_u64().expect("the job's number");

    let results = cluster.results(id);
    let counts = fs::read_to_string(results.join("0/output/counts.tsv")).unwrap();
    assert!(
        counts.lines().any(|l| l == "71\t730\t3863\ttotal"),
        "counts.tsv has no total row of 71 lines, 730 words, 3863 bytes:\n{counts}"
    );
    assert_eq!(
        fs::read_to_string(results.join("0/stdout")).unwrap(),
        counts,
        "the same table goes to stdout"
    );
}

#[test]
fn results_arriving_together_from_several_agents_are_each_recorded_on_the_first_attempt() {
    let names = ["a", "b", "c", "d"];
    let cluster = Cluster::with_agents(&names, 1);
    // Tasks placed in the same instant on four agents end within moments of each other.
    let job = cluster.write_job(
        "together",
        r#"
name = "together"
count = 8
[[module]]
path = "hello.wasm"
args = ["{index}"]
[resources]
memory = "16MiB"
[retry]
max_attempts = 1
"#,
        &[("hello.wasm", &guests::hello(200))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    for t in done["tasks"].as_array().unwrap() {
        assert_eq!(t["attempt"], 1, "{}", summarize(&done));
    }
}

#[test]
fn single_slot_agents_are_never_given_two_tasks_at_once() {
    let mut cluster = Cluster::start();
    // The tasks wait in the queue before the agents connect, so they are placed the moment the
    // agents say hello, while the agents' first reports arrive.
    let job = cluster.write_job(
        "queued",
        r#"
name = "queued"
count = 12
[[module]]
path = "hello.wasm"
args = ["{index}"]
[resources]
memory = "16MiB"
"#,
        &[("hello.wasm", &guests::hello(300))],
    );
    let id = cluster.submit(&job);
    let names = ["a", "b", "c", "d"];
    for name in names {
        cluster.start_agent(name, AgentOptions::slots(1));
    }
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    // On the coordinator's clock, each attempt on an agent is assigned after the one before it
    // on that agent finished.
    let mut attempts: Vec<(String, i64, i64, String)> = (0..12)
        .flat_map(|index| {
            let task = cluster.task(id, index);
            task["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["agent"].as_str().unwrap().to_owned(),
                        a["assigned_ms"].as_i64().unwrap(),
                        a["finished_ms"].as_i64().unwrap(),
                        format!("{index}#{}", a["attempt"]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    attempts.sort();
    for pair in attempts.windows(2) {
        let ((agent, _, finished, before), (next_agent, assigned, _, after)) = (&pair[0], &pair[1]);
        assert!(
            agent != next_agent || assigned >= finished,
            "attempt {after} was assigned at {assigned} while attempt {before} ran until {finished} \
             on the same single-slot agent {agent}: {attempts:?}"
        );
    }
}
