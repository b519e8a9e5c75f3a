//! Enrollment and mutual TLS between agents and the coordinator, over real QUIC connections:
//!
//! - an agent enrolls once with a join token, and afterwards its key alone admits it;
//! - an agent without enrollment is refused and told how to enroll;
//! - expired, used-up and submitters' tokens enroll nobody;
//! - an agent pinning another key than the coordinator's refuses to connect, and so never
//!   shows its join token;
//! - `lull agents revoke` cuts an agent off at once, its task runs on elsewhere, and its key
//!   cannot enroll again;
//! - an enrolled client cannot download another agent's modules or report its attempts.

use std::time::Duration;

use lull_agent::link::{self, Dialer, Refused};
use lull_protocol::Digest;
use lull_protocol::identity::Identity;
use lull_protocol::message::{
    AgentMessage, AgentStatus, AttemptId, BlobReply, Capacity, CoordinatorMessage, TaskId,
    TaskResult,
};
use lull_tests::{AgentOptions, Cluster, Enroll, WAIT, guests, summarize, wait_for};

fn with(enroll: Enroll) -> AgentOptions {
    AgentOptions {
        enroll,
        ..AgentOptions::slots(1)
    }
}

/// Waits for a line of the agent's log containing every one of `words`; returns it.
fn wait_for_log(cluster: &Cluster, agent: &str, words: &[&str]) -> String {
    wait_for(&format!("agent {agent} to log {words:?}"), WAIT, || {
        cluster
            .agent_log(agent)
            .lines()
            .find(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_owned)
    })
}

/// Makes an agent's join token with `lull-coordinator token create ARGS`.
fn join_token(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = cluster.coordinator_token(&all);
    assert!(out.success(), "{out}");
    out.stdout.trim().to_owned()
}

/// The `uses left` column of `token list` for the token made with `description`.
fn uses_left(cluster: &Cluster, description: &str) -> String {
    let out = cluster.coordinator_token(&["list"]);
    assert!(out.success(), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_end().ends_with(description))
        .unwrap_or_else(|| panic!("no token {description:?} listed:\n{out}"));
    let columns: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
    columns[columns.len() - 2].trim().to_owned()
}

#[test]
fn an_agent_enrolls_once_and_then_its_key_alone_admits_it() {
    let mut cluster = Cluster::start();
    let token = join_token(&cluster, &["--description", "for-first"]);
    cluster.start_agent("first", with(Enroll::Token(token.clone())));
    cluster.wait_for_agents(&["first"]);
    assert!(
        cluster
            .agent_log("first")
            .contains("enrolled with the coordinator"),
        "{}",
        cluster.agent_log("first")
    );
    assert_eq!(uses_left(&cluster, "for-first"), "0");

    // Restarted without a token, the enrolled key is enough.
    let id = cluster.agent_id("first");
    cluster.kill_agent("first");
    cluster.start_agent("first", with(Enroll::Never));
    cluster.wait_for_agents(&["first"]);
    assert_eq!(cluster.agent_id("first"), id);
    // And restarted with the used-up token, it is let in without using it.
    cluster.kill_agent("first");
    cluster.start_agent("first", with(Enroll::Token(token)));
    cluster.wait_for_agents(&["first"]);

    let job = cluster.write_job(
        "hello",
        "name = \"hello\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let out = cluster.submit_and_watch(&job);
    out.assert_success();
    assert_eq!(out.json()["state"], "succeeded", "{out}");
}

#[test]
fn an_agent_that_is_not_enrolled_is_refused_and_told_how_to_enroll() {
    let mut cluster = Cluster::start();
    cluster.start_agent("stranger", with(Enroll::Never));
    let line = wait_for_log(&cluster, "stranger", &["refused", "not enrolled"]);
    assert!(line.contains("--join-token"), "says how: {line}");
    assert!(cluster.agent_listing("stranger").is_none());
    assert!(
        cluster.agent_is_running("stranger"),
        "a refusal is not a crash"
    );
}

#[test]
fn expired_used_up_and_submitters_tokens_enroll_nobody() {
    let mut cluster = Cluster::start();
    let expired = join_token(&cluster, &["--ttl", "1s", "--description", "short"]);
    let single = join_token(&cluster, &["--description", "single"]);
    std::thread::sleep(Duration::from_millis(1200));

    cluster.start_agent("late", with(Enroll::Token(expired)));
    wait_for_log(&cluster, "late", &["refused", "the token expired"]);

    cluster.start_agent("first", with(Enroll::Token(single.clone())));
    cluster.wait_for_agents(&["first"]);
    cluster.start_agent("second", with(Enroll::Token(single)));
    wait_for_log(&cluster, "second", &["refused", "used up"]);

    let submitter = cluster.token().to_owned();
    cluster.start_agent("submitter", with(Enroll::Token(submitter)));
    wait_for_log(&cluster, "submitter", &["refused", "another use"]);

    std::thread::sleep(Duration::from_millis(300));
    let names: Vec<String> = cluster
        .agents()
        .iter()
        .map(|a| a["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        names,
        ["first"],
        "only the first holder of a good token got in"
    );
}

#[test]
fn an_agent_pinning_another_key_refuses_the_coordinator_and_keeps_its_token() {
    let mut cluster = Cluster::start();
    let token = join_token(&cluster, &["--description", "unspent"]);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    cluster.start_agent(
        "misled",
        AgentOptions {
            coordinator_key: Some(wrong.clone()),
            ..with(Enroll::Token(token))
        },
    );
    let line = wait_for_log(&cluster, "misled", &["cannot reach the coordinator"]);
    assert!(line.contains(&format!("not the pinned {wrong}")), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(cluster.agent_listing("misled").is_none());
    assert_eq!(
        uses_left(&cluster, "unspent"),
        "1",
        "the token was never shown to the coordinator"
    );
}

#[test]
fn a_revoked_agent_is_dropped_at_once_and_its_task_finishes_elsewhere() {
    let mut cluster = Cluster::start();
    cluster.start_agent("doomed", AgentOptions::slots(1));
    cluster.wait_for_agents(&["doomed"]);
    let doomed = cluster.agent_id("doomed");
    let job = cluster.write_job(
        "slow",
        "name = \"slow\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(3000))],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "the task to run on the doomed agent", WAIT, |j| {
        j["counts"]["running"] == 1
    });
    cluster.start_agent("spare", AgentOptions::slots(1));
    cluster.wait_for_agents(&["doomed", "spare"]);

    let out = cluster.lull(&["agents", "revoke", &doomed]);
    out.assert_success();
    assert!(
        out.stdout.contains("1 task(s)"),
        "says what was requeued: {out}"
    );
    // Cut off at once: the coordinator closed its connection, it says why.
    wait_for_log(&cluster, "doomed", &["refused", "revoked"]);
    assert!(cluster.agent_listing("doomed").is_none());

    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(task["task"]["attempt"], 2, "{task}");
    assert_eq!(
        task["task"]["agent"],
        cluster.agent_id("spare").as_str(),
        "{task}"
    );
    assert_eq!(
        task["attempts"][0]["outcome"], "lost: its agent was revoked",
        "{task}"
    );

    // Its key cannot enroll again, not even under a new ID with a good token.
    let key_dir = cluster.agent_data_dir("doomed").join("tls");
    let (pin, addr, token) = (
        cluster.coordinator_key().parse::<Digest>().unwrap(),
        cluster.quic_addr().to_string(),
        cluster.join_token().to_owned(),
    );
    let refusals = cluster.block_on(async move {
        let identity = Identity::load_or_create(&key_dir, "agent", &["lull-agent"]).unwrap();
        let dialer = Dialer::new(Some(pin), Some(&identity)).unwrap();
        let conn = dialer.connect(&addr).await.expect("connecting");
        let mut refusals = Vec::new();
        for id in [doomed.as_str(), "a-fresh-start"] {
            let err = link::enroll(&conn, &token, id, "doomed")
                .await
                .expect_err("a revoked agent's key cannot enroll");
            refusals.push(err.downcast::<Refused>().expect("a refusal").0);
        }
        refusals
    });
    assert!(refusals[0].contains("was revoked"), "{refusals:?}");
    assert!(refusals[1].contains("already enrolled"), "{refusals:?}");
}

/// Opens a blob stream whose first frame is `msg`; returns the coordinator's answer.
async fn ask(conn: &quinn::Connection, msg: &AgentMessage) -> BlobReply {
    let (mut send, mut recv) = conn.open_bi().await.expect("opening a stream");
    link::write_frame(&mut send, msg).await.unwrap();
    send.finish().unwrap();
    tokio::time::timeout(WAIT, link::read_frame(&mut recv))
        .await
        .expect("an answer in time")
        .expect("a readable answer")
        .expect("an answer")
}

#[test]
fn an_enrolled_client_cannot_fetch_or_report_another_agents_work() {
    let mut cluster = Cluster::start();
    cluster.start_agent("victim", AgentOptions::slots(1));
    cluster.wait_for_agents(&["victim"]);
    let module = guests::hello(2000);
    let digest = Digest::of(&module);
    let job = cluster.write_job(
        "private",
        "name = \"private\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &module)],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "the task to run on the victim", WAIT, |j| {
        j["counts"]["running"] == 1
    });
    let theirs = AttemptId {
        task: TaskId { job: id, index: 0 },
        attempt: 1,
    };

    let (pin, addr, token) = (
        cluster.coordinator_key().parse::<Digest>().unwrap(),
        cluster.quic_addr().to_string(),
        cluster.join_token().to_owned(),
    );
    let (before_hello, after_hello) = cluster.block_on(async move {
        let identity = Identity::ephemeral(&["lull-agent"]).unwrap();
        let dialer = Dialer::new(Some(pin), Some(&identity)).unwrap();
        let conn = dialer.connect(&addr).await.expect("connecting");
        let get = AgentMessage::GetBlob { digest };
        let before = ask(&conn, &get).await;

        assert!(!link::enroll(&conn, &token, "a-rogue", "rogue").await.unwrap());
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = AgentMessage::Hello {
            protocol_version: lull_protocol::PROTOCOL_VERSION,
            agent_id: "a-rogue".into(),
            name: "rogue".into(),
            // No slots: it is given no work of its own.
            capacity: Capacity::default(),
            running: vec![theirs],
            status: AgentStatus::default(),
            compiled: vec![],
        };
        link::write_frame(&mut send, &hello).await.unwrap();
        let welcome: Option<CoordinatorMessage> = link::read_frame(&mut recv).await.unwrap();
        assert!(
            matches!(welcome, Some(CoordinatorMessage::Welcome { .. })),
            "{welcome:?}"
        );
        // Claiming the victim's attempt in its hello got it a cancel, not the attempt.
        let cancel: Option<CoordinatorMessage> = link::read_frame(&mut recv).await.unwrap();
        assert!(
            matches!(&cancel, Some(CoordinatorMessage::Cancel { attempt, .. }) if *attempt == theirs),
            "{cancel:?}"
        );
        let after = ask(&conn, &get).await;

        // Reports about the victim's attempt: a start and a failed result.
        link::write_frame(
            &mut send,
            &AgentMessage::Started {
                attempt: theirs,
                setup_us: 1,
            },
        )
        .await
        .unwrap();
        let forged: TaskResult = serde_json::from_value(serde_json::json!({
            "attempt": theirs,
            "modules": [{"name": "hello", "outcome": {"kind": "exited", "code": 1},
                         "stdout": null, "stderr": null}],
            "outputs": [],
            "elapsed_ms": 1
        }))
        .unwrap();
        link::write_frame(&mut send, &AgentMessage::Result(forged))
            .await
            .unwrap();
        // The coordinator answers a result (recorded or not) with an acknowledgement.
        let ack: Option<CoordinatorMessage> =
            tokio::time::timeout(WAIT, link::read_frame(&mut recv))
                .await
                .expect("an answer in time")
                .unwrap();
        assert!(
            matches!(&ack, Some(CoordinatorMessage::ResultAck { attempt }) if *attempt == theirs),
            "{ack:?}"
        );
        (before, after)
    });
    for (when, reply) in [
        ("before hello", &before_hello),
        ("after hello", &after_hello),
    ] {
        assert!(
            matches!(reply, BlobReply::Rejected { .. }),
            "{when}: the module of another agent's attempt was served: {reply:?}"
        );
    }
    match &after_hello {
        BlobReply::Rejected { reason } => {
            assert!(
                reason.contains("no attempt assigned to agent a-rogue"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }

    // The victim's attempt was untouched: it ends as the victim reports it.
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(task["task"]["attempt"], 1, "{task}");
    assert_eq!(
        task["task"]["agent"],
        cluster.agent_id("victim").as_str(),
        "{task}"
    );
    assert_eq!(
        task["attempts"][0]["result"]["modules"][0]["outcome"]["code"], 0,
        "the victim's own result, not the forged one: {task}"
    );
    let log = cluster.coordinator_log();
    assert!(
        log.lines()
            .any(|l| l.contains("a-rogue") && l.contains("not assigned to this agent")),
        "the forged start is logged"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("a-rogue") && l.contains("result ignored")),
        "the forged result is logged"
    );
}
