//! An agent's ID belongs to the key it first connected with: each agent makes its own key pair
//! at first start and presents it to the coordinator, which binds the ID to it. Another program
//! claiming that ID with another key (here: a second agent given a copy of the first one's ID
//! file) is refused, and the first agent keeps its place. (Agents that reconnect with their own
//! key, after a coordinator restart, are covered by `restart.rs`.)

use std::fs;
use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, WAIT, wait_for};

#[test]
fn an_agent_id_belongs_to_the_key_it_first_came_with() {
    let mut cluster = Cluster::with_agents(&["owner"], 1);
    let id = cluster.agent_id("owner");
    let key = cluster.agent_data_dir("owner").join("tls/agent.key.der");
    assert!(key.is_file(), "the agent made its key at {}", key.display());

    // An impostor: the same ID, its own key.
    let impostor = cluster.agent_dir("impostor");
    fs::create_dir_all(&impostor).expect("impostor's data directory");
    fs::write(impostor.join("agent-id"), &id).expect("copying the ID");
    cluster.start_agent("impostor", AgentOptions::slots(1));
    let refusal = wait_for("the impostor to be refused", WAIT, || {
        let log = cluster.agent_log("impostor");
        log.lines()
            .find(|l| l.contains("belongs to another key"))
            .map(str::to_owned)
    });
    assert!(refusal.contains(&id), "the refusal names the ID: {refusal}");

    // The coordinator still lists the owner, under its own name, connected.
    std::thread::sleep(Duration::from_millis(300));
    let listing = cluster
        .agent_listing("owner")
        .expect("the owner is still listed");
    assert_eq!(listing["id"], id.as_str(), "{listing}");
    assert!(
        cluster.agent_listing("impostor").is_none(),
        "the impostor got in: {:?}",
        cluster.agents()
    );
    assert!(
        cluster.coordinator_log().contains("belongs to another key"),
        "the coordinator logs the refusal"
    );
}
