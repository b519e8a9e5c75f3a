//! Placement through the whole loop: agents with labels from their `agent.toml`, jobs with
//! constraints and `spread = "label.site"`, over real processes.
//!
//! - a job constrained to one site runs only there;
//! - a job spread over sites puts as many tasks on each;
//! - a job no agent satisfies waits, and `lull status` says which constraints;
//! - a constraint that cannot be read is refused at submit, naming it.

use std::collections::HashMap;

use lull_tests::{AgentOptions, Cluster, guests, summarize};

fn labelled(cluster: &mut Cluster, name: &str, site: &str) {
    let config = cluster.write_agent_config(
        name,
        &format!("dedicated = true\n[labels]\nsite = \"{site}\"\n"),
    );
    cluster.start_agent(
        name,
        AgentOptions {
            scavenging_config: Some(config),
            ..AgentOptions::slots(2)
        },
    );
}

fn job(cluster: &Cluster, name: &str, count: u32, placement: &str) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n[placement]\n{placement}"
        ),
        &[("hello.wasm", &guests::hello(0))],
    )
}

/// How many of a finished job's tasks ran on each agent ID.
fn per_agent(cluster: &Cluster, id: u64, count: u32) -> HashMap<String, u32> {
    let mut on = HashMap::new();
    for index in 0..count {
        let t = cluster.task(id, index);
        let agent = t["task"]["agent"].as_str().unwrap_or("?").to_owned();
        *on.entry(agent).or_insert(0) += 1;
    }
    on
}

#[test]
fn constraints_and_spread_over_a_label_place_tasks_where_they_say() {
    let mut cluster = Cluster::start();
    labelled(&mut cluster, "north-1", "north");
    labelled(&mut cluster, "north-2", "north");
    labelled(&mut cluster, "south-1", "south");
    cluster.wait_for_agents(&["north-1", "north-2", "south-1"]);
    let south = cluster.agent_id("south-1");

    // Only the south site.
    let only_south = job(
        &cluster,
        "only-south",
        4,
        "constraints = [\"label.site == south\", \"os == linux\"]\n",
    );
    let id = cluster.submit(&only_south);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let on = per_agent(&cluster, id, 4);
    assert_eq!(on.get(&south), Some(&4), "every task on south-1: {on:?}");

    // Spread over the sites: two agents up north, one down south, and still two tasks each.
    let spread = job(
        &cluster,
        "by-site",
        4,
        "strategy = \"spread\"\nspread = \"label.site\"\n",
    );
    let id = cluster.submit(&spread);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let on = per_agent(&cluster, id, 4);
    assert_eq!(on.get(&south), Some(&2), "half on the south site: {on:?}");

    // Nobody satisfies it: it waits, and says why.
    let nowhere = job(
        &cluster,
        "nowhere",
        1,
        "constraints = [\"label.site == east\"]\n",
    );
    let id = cluster.submit(&nowhere);
    let waiting = cluster.wait_for_job(id, "a waiting reason", lull_tests::WAIT, |j| {
        j["waiting_reason"].is_string()
    });
    assert_eq!(
        waiting["waiting_reason"],
        "no connected agent satisfies the constraints (label.site == east)",
        "{waiting}"
    );
    cluster.lull(&["cancel", &id.to_string()]).assert_success();

    // A constraint that cannot be read never reaches the queue.
    let bad = job(&cluster, "bad", 1, "constraints = [\"site = north\"]\n");
    let out = cluster.lull(&["submit", bad.to_str().unwrap()]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("placement.constraints[0]: constraint \"site = north\""),
        "{out}"
    );
}
