//! The coordinator on PostgreSQL (`serve --database postgres://...`), through the whole loop:
//! agents enroll, a job runs on two agents, the coordinator is killed mid-job and restarted on
//! the same database, and every task ends with one recorded result. Needs the server that
//! `cargo xtask test` starts (`LULL_TEST_POSTGRES`).

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, WAIT, guests, postgres_database, summarize};

#[test]
fn a_coordinator_on_postgres_survives_a_kill_mid_job() {
    let url = postgres_database("kill_mid_job");
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

/// Two coordinators on a fresh database (`test` names it), the second started with `env`,
/// each with an agent of one slot: `first-side` and `second-side`.
fn two_coordinators(test: &str, env: &[(&str, &str)]) -> Cluster {
    let url = postgres_database(test);
    let mut cluster = Cluster::start_with(&["--database", &url]);
    let second = cluster.start_peer_coordinator_with_env(env);
    cluster.start_agent("first-side", AgentOptions::slots(1));
    cluster.start_agent(
        "second-side",
        AgentOptions {
            coordinator: Some(second),
            ..AgentOptions::slots(1)
        },
    );
    cluster.wait_for_agents(&["first-side"]);
    cluster
}

#[test]
fn two_coordinators_on_one_database_and_one_killed_mid_job_the_other_finishes_it() {
    let mut cluster = two_coordinators("two_coordinators", &[]);
    let first_agent = cluster.agent_id("first-side");
    let second_agent = cluster.agent_id("second-side");

    // Submitted through the first coordinator; the second learns of it from the database and
    // gives its own agent work.
    let job = cluster.write_job(
        "shared",
        "name = \"shared\"\ncount = 6\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(2000))],
    );
    let id = cluster.submit(&job);
    let both = cluster.wait_for_job(id, "both agents running a task", WAIT, |j| {
        let tasks = j["tasks"].as_array().cloned().unwrap_or_default();
        let on = |agent: &str| {
            tasks
                .iter()
                .any(|t| t["state"] == "running" && t["agent"] == agent)
        };
        on(&first_agent) && on(&second_agent)
    });
    assert_eq!(both["counts"]["running"], 2, "{}", summarize(&both));

    // The first coordinator dies; the second finishes the job, its own agent taking the
    // tasks whose lease nobody renews any more.
    cluster.kill_coordinator();
    cluster.use_peer_api(0);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let mut lost = 0;
    for index in 0..6 {
        let task = cluster.task(id, index);
        let attempts = task["attempts"].as_array().unwrap();
        let recorded = attempts.iter().filter(|a| a["result"].is_object()).count();
        assert_eq!(recorded, 1, "one result per task: {task}");
        let finished_before = both["tasks"][index as usize]["state"] == "succeeded";
        if !finished_before {
            assert_eq!(task["task"]["agent"], second_agent.as_str(), "{task}");
        }
        lost += attempts
            .iter()
            .filter(|a| a["outcome"] == "lost: nobody renewed its lease")
            .count();
    }
    assert!(
        lost >= 1,
        "the dead coordinator's running task was requeued"
    );
    assert!(
        cluster
            .peer_log(0)
            .contains("lease in the database ran out"),
        "the second coordinator said so"
    );
}

#[test]
fn revocation_drain_and_cancel_through_one_coordinator_reach_the_agents_of_another() {
    let url = postgres_database("shared_decisions");
    let mut cluster = Cluster::start_with(&["--database", &url]);
    let second = cluster.start_peer_coordinator();
    let on_second = |slots| AgentOptions {
        coordinator: Some(second),
        ..AgentOptions::slots(slots)
    };
    cluster.start_agent("drained", on_second(1));
    cluster.start_agent("revoked", on_second(1));
    // Both connected to the second coordinator; this harness talks to the first.
    cluster.use_peer_api(0);
    cluster.wait_for_agents(&["drained", "revoked"]);
    let drained = cluster.agent_id("drained");
    let revoked = cluster.agent_id("revoked");
    let peer_api = cluster.http_addr();

    // A long job, submitted and cancelled through the first coordinator.
    let job = cluster.write_job(
        "long",
        "name = \"long\"\ncount = 2\n[[module]]\npath = \"endless.wasm\"\n[resources]\nmemory = \"16MiB\"\ntimeout = \"5m\"\n",
        &[("endless.wasm", &guests::forever())],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "both tasks running", WAIT, |j| {
        j["counts"]["running"] == 2
    });
    // Through the first coordinator, which has none of these agents.
    let first_api =
        |cluster: &Cluster, args: &[&str]| cluster.lull_at(cluster.coordinator_http(), args);
    first_api(&cluster, &["cancel", &id.to_string()]).assert_success();
    let done = cluster.wait_for_job(id, "the guests stopped by their agents", WAIT, |j| {
        j["state"] == "cancelled" && j["counts"]["running"] == 0
    });
    assert_eq!(done["counts"]["cancelled"], 2, "{}", summarize(&done));

    first_api(&cluster, &["drain", &drained, "--deadline", "1m"]).assert_success();
    lull_tests::wait_for("the drain to reach the second coordinator", WAIT, || {
        cluster
            .agent_listing("drained")
            .filter(|a| a["draining_until_ms"].is_i64())
    });
    first_api(&cluster, &["agents", "revoke", &revoked]).assert_success();
    lull_tests::wait_for("the revoked agent to be cut off", WAIT, || {
        cluster.agent_listing("revoked").is_none().then_some(())
    });
    assert!(
        cluster
            .agent_log("revoked")
            .contains(&format!("agent {revoked} was revoked")),
        "the agent was told why"
    );
    assert_eq!(
        cluster.http_addr(),
        peer_api,
        "the listings came from the second"
    );
}

#[test]
fn two_coordinators_whose_clocks_differ_by_a_minute_requeue_no_live_work() {
    // The second coordinator's clock runs a minute ahead of the first's (and the database's).
    let skew = lull_tests::skewed_clock("+60s");
    let env: Vec<(&str, &str)> = skew.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = two_coordinators("skewed_clocks", &env);
    let job = cluster.write_job(
        "skewed",
        "name = \"skewed\"\ncount = 4\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(6000))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    // Each task ran once: neither coordinator took the other's live work for lost.
    let mut on_second = 0;
    for index in 0..4 {
        let task = cluster.task(id, index);
        let attempts = task["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "task {index} ran once: {task:#}");
        if task["task"]["agent"] == cluster.agent_id("second-side").as_str() {
            on_second += 1;
        }
    }
    assert!(
        on_second >= 1,
        "the second coordinator found the first's pending tasks despite its clock"
    );
    let log = cluster.peer_log(0);
    assert!(!log.contains("lease in the database ran out"), "{log}");
}

#[test]
fn a_held_job_whose_coordinator_died_is_released_by_another() {
    let url = postgres_database("adopt_held");
    let mut cluster = Cluster::start_with(&["--database", &url]);
    let second = cluster.start_peer_coordinator();
    cluster.start_agent(
        "worker",
        AgentOptions {
            coordinator: Some(second),
            ..AgentOptions::slots(1)
        },
    );
    let step = |name: &str| {
        format!(
            "name = \"{name}\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"16MiB\"\n"
        )
    };
    let workflow = cluster.write_job(
        "steps",
        "name = \"steps\"\n[[job]]\nname = \"first\"\nfile = \"first.toml\"\n\
         [[job]]\nname = \"then\"\nfile = \"then.toml\"\nafter = [\"first\"]\n",
        &[
            ("first.toml", step("first").as_bytes()),
            ("then.toml", step("then").as_bytes()),
            ("hello.wasm", &guests::hello(3000)),
        ],
    );
    // Submitted through the first coordinator, which holds the second job...
    let jobs = cluster.submit_json(&workflow)["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let then = jobs
        .iter()
        .find(|j| j["name"] == "then")
        .and_then(|j| j["job"].as_u64())
        .expect("the second job's number");
    // ...and dies at once; the agent, on the other coordinator, runs the first job.
    cluster.kill_coordinator();
    cluster.use_peer_api(0);
    cluster.wait_for_agents(&["worker"]);
    let done = cluster.wait_for_job_end(then);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
}
