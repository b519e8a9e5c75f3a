//! Clusters through the whole loop: `lull clusters create`, join tokens for a cluster, agents
//! enrolled into it, and jobs that name it running only there.

use lull_tests::{AgentOptions, Cluster, Enroll, guests, summarize};

fn job(cluster: &Cluster, name: &str, cluster_line: &str) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\n{cluster_line}count = 3\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("hello.wasm", &guests::hello(0))],
    )
}

#[test]
fn a_job_runs_only_on_the_agents_of_its_cluster() {
    let mut cluster = Cluster::start();
    let out = cluster.lull(&["clusters", "create", "gpu", "--description", "the GPU room"]);
    out.assert_success();
    assert!(out.stdout.contains("token create --cluster gpu"), "{out}");
    let again = cluster.lull(&["clusters", "create", "gpu"]);
    assert!(!again.success());
    assert!(
        again.stderr.contains("cluster gpu exists already"),
        "{again}"
    );
    let bad = cluster.lull(&["clusters", "create", "GPU Room"]);
    assert!(!bad.success());
    assert!(bad.stderr.contains("is not a cluster ID"), "{bad}");
    let nowhere = cluster.coordinator_token(&["create", "--cluster", "nope"]);
    assert!(!nowhere.success());
    assert!(
        nowhere.stderr.contains("cluster: no cluster nope"),
        "{nowhere}"
    );

    let token = cluster.coordinator_token(&["create", "--cluster", "gpu", "--uses", "0"]);
    assert!(token.success(), "{token}");
    assert!(
        token.stderr.contains("join token for cluster gpu"),
        "{token}"
    );
    cluster.start_agent(
        "gpu-1",
        AgentOptions {
            enroll: Enroll::Token(token.stdout.trim().to_owned()),
            ..AgentOptions::slots(2)
        },
    );
    cluster.start_agent("plain", AgentOptions::slots(2));
    cluster.wait_for_agents(&["gpu-1", "plain"]);
    assert_eq!(cluster.agent_listing("gpu-1").unwrap()["cluster"], "gpu");
    assert_eq!(
        cluster.agent_listing("plain").unwrap()["cluster"],
        "default"
    );

    let listed = cluster.lull(&["clusters", "list", "--json"]);
    listed.assert_success();
    let listed = listed.json();
    let gpu = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "gpu")
        .expect("gpu listed");
    assert_eq!(gpu["agents_connected"], 1, "{listed}");
    assert_eq!(gpu["agents_enrolled"], 1, "{listed}");
    assert_eq!(gpu["description"], "the GPU room");

    for (name, line, agent) in [
        ("on-gpu", "cluster = \"gpu\"\n", "gpu-1"),
        ("on-default", "", "plain"),
    ] {
        let id = cluster.submit(&job(&cluster, name, line));
        let done = cluster.wait_for_job_end(id);
        assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
        let expected = cluster.agent_id(agent);
        for index in 0..3 {
            assert_eq!(
                cluster.task(id, index)["task"]["agent"],
                expected.as_str(),
                "{name} task {index}"
            );
        }
    }

    let unknown = job(&cluster, "lost", "cluster = \"nope\"\n");
    let key = cluster.key().to_str().unwrap().to_owned();
    let out = cluster.lull(&["submit", unknown.to_str().unwrap(), "--key", &key]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("there is no cluster \"nope\""), "{out}");
}
