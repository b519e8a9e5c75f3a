//! Several people on one coordinator, each with their own token: a `submit` token sees and
//! changes only its user's jobs, `read` sees everything and changes nothing, `operate` does
//! everything, a token limited to clusters stays inside them, and a token with a number of uses
//! counts submissions. Every refusal is a 403 whose reason `lull` shows.

use std::path::Path;

use lull_tests::{AgentOptions, CliOutput, Cluster, WAIT, guests};

/// `lull submit JOB` as the holder of `token`; returns the job's number.
fn submit_as(cluster: &Cluster, token: &str, job: &Path) -> u64 {
    let out = submit_output(cluster, token, job);
    out.assert_success();
    out.json()["job"].as_u64().expect("a job number")
}

fn submit_output(cluster: &Cluster, token: &str, job: &Path) -> CliOutput {
    cluster.submit_with_token(token, job)
}

/// `lull ARGS` as the holder of `token` must fail with a refusal containing `why`.
#[track_caller]
fn refused(cluster: &Cluster, token: &str, args: &[&str], why: &str) {
    let out = cluster.lull_with_token(Some(token), args);
    assert!(
        !out.success(),
        "`lull {}` was allowed:\n{out}",
        args.join(" ")
    );
    assert!(
        out.stderr.contains(why),
        "`lull {}`: expected {why:?} in:\n{out}",
        args.join(" ")
    );
}

/// The job numbers `lull status --json` lists for the holder of `token`, newest first.
fn listed(cluster: &Cluster, token: &str) -> Vec<u64> {
    let out = cluster.lull_with_token(Some(token), &["status", "--json"]);
    out.assert_success();
    out.json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

/// A job of `count` short tasks in `cluster`, under the name `name`.
fn job_in(cluster: &Cluster, name: &str, cluster_id: &str, count: u32) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncluster = \"{cluster_id}\"\ncount = {count}\n[[module]]\npath = \"t.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("t.wasm", &guests::hello(0))],
    )
}

#[test]
fn each_submitter_sees_and_controls_only_their_own_jobs() {
    let mut cluster = Cluster::start();
    let alice = cluster.user_token("alice", "submit", &[]);
    let bob = cluster.user_token("bob", "submit", &[]);

    // No agent yet: the jobs wait, and can be looked at and cancelled.
    let a = submit_as(&cluster, &alice, &job_in(&cluster, "alices", "default", 2));
    let b = submit_as(&cluster, &bob, &job_in(&cluster, "bobs", "default", 2));

    assert_eq!(listed(&cluster, &alice), vec![a]);
    assert_eq!(listed(&cluster, &bob), vec![b]);
    let all = listed(&cluster, cluster.token());
    assert_eq!(all, vec![b, a], "the operator sees everyone's");
    let owners: Vec<String> = cluster
        .jobs()
        .iter()
        .map(|j| j["owner"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(owners, vec!["bob", "alice"]);

    // Alice cannot see, download, cancel or delete Bob's job...
    let b = b.to_string();
    refused(&cluster, &alice, &["status", &b], "belongs to bob");
    refused(&cluster, &alice, &["results", &b], "belongs to bob");
    refused(&cluster, &alice, &["cancel", &b], "belongs to bob");
    refused(&cluster, &alice, &["delete", &b], "belongs to bob");
    // ...nor operate the pool.
    cluster.start_agent("lender", AgentOptions::slots(1));
    cluster.wait_for_agents(&["lender"]);
    let agent = cluster.agent_id("lender");
    refused(
        &cluster,
        &alice,
        &["drain", &agent],
        "needs the operate role",
    );
    refused(
        &cluster,
        &alice,
        &["agents", "revoke", &agent],
        "needs the operate role",
    );
    refused(
        &cluster,
        &alice,
        &["clusters", "create", "mine"],
        "needs the operate role",
    );
    // The API says 403 with the code `forbidden`.
    let (status, body) = cluster.request(&format!("/api/v1/jobs/{b}"), |_, url| {
        lull_tests::api_client(cluster.http_key(), Some(&alice)).get(url)
    });
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = cluster.request("/metrics", |_, url| {
        lull_tests::api_client(cluster.http_key(), Some(&alice)).get(url)
    });
    assert_eq!(status, 403, "/metrics spans every user");

    // Her own job she runs to its end, downloads and deletes.
    let done = cluster.wait_for_job_end(a);
    assert_eq!(done["state"], "succeeded", "{done}");
    let a = a.to_string();
    let out_dir = cluster.root().join("results/alice");
    cluster
        .lull_with_token(
            Some(&alice),
            &["results", &a, "--out", out_dir.to_str().unwrap()],
        )
        .assert_success();
    cluster
        .lull_with_token(Some(&alice), &["delete", &a])
        .assert_success();

    // Whoami.
    let (_, me) = cluster.request("/api/v1/me", |_, url| {
        lull_tests::api_client(cluster.http_key(), Some(&bob)).get(url)
    });
    assert_eq!(
        me,
        serde_json::json!({"user": "bob", "role": "submit", "clusters": null, "groups": []})
    );
}

#[test]
fn read_tokens_look_and_operate_tokens_act() {
    let mut cluster = Cluster::start();
    let bob = cluster.user_token("bob", "submit", &[]);
    let auditor = cluster.user_token("auditor", "read", &[]);
    let admin = cluster.user_token("admin", "operate", &[]);
    let b = submit_as(&cluster, &bob, &job_in(&cluster, "bobs", "default", 1));
    let b_arg = b.to_string();

    // Read: sees Bob's job and the metrics, changes nothing, submits nothing.
    assert_eq!(listed(&cluster, &auditor), vec![b]);
    cluster
        .lull_with_token(Some(&auditor), &["status", &b_arg])
        .assert_success();
    refused(&cluster, &auditor, &["cancel", &b_arg], "may only look");
    let out = submit_output(&cluster, &auditor, &job_in(&cluster, "audit", "default", 1));
    assert!(
        !out.success() && out.stderr.contains("may only look"),
        "{out}"
    );
    let (status, _) = cluster.request("/metrics", |_, url| {
        lull_tests::api_client(cluster.http_key(), Some(&auditor)).get(url)
    });
    assert_eq!(status, 200);

    // Operate: cancels Bob's job, drains an agent, makes a cluster.
    cluster.start_agent("lender", AgentOptions::slots(1));
    cluster.wait_for_agents(&["lender"]);
    let agent = cluster.agent_id("lender");
    cluster
        .lull_with_token(Some(&admin), &["cancel", &b_arg])
        .assert_success();
    cluster
        .lull_with_token(Some(&admin), &["drain", &agent])
        .assert_success();
    cluster
        .lull_with_token(Some(&admin), &["drain", &agent, "--off"])
        .assert_success();
    cluster
        .lull_with_token(Some(&admin), &["clusters", "create", "lab"])
        .assert_success();
    refused(
        &cluster,
        &auditor,
        &["drain", &agent],
        "needs the operate role",
    );
}

#[test]
fn a_cluster_limited_token_stays_inside_its_clusters() {
    let cluster = Cluster::start();
    cluster
        .lull(&["clusters", "create", "lab"])
        .assert_success();
    let labbie = cluster.user_token("labbie", "submit", &["--clusters", "lab"]);
    let lab_admin = cluster.user_token("lab-admin", "operate", &["--clusters", "lab"]);
    let bob = cluster.user_token("bob", "submit", &[]);

    let out = submit_output(
        &cluster,
        &labbie,
        &job_in(&cluster, "outside", "default", 1),
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr
            .contains("limited to cluster(s) lab, not default"),
        "{out}"
    );
    let inside = submit_as(&cluster, &labbie, &job_in(&cluster, "inside", "lab", 1));
    let elsewhere = submit_as(&cluster, &bob, &job_in(&cluster, "elsewhere", "default", 1));

    // The lab's operator sees and acts on the lab's jobs only, and makes no clusters.
    assert_eq!(listed(&cluster, &lab_admin), vec![inside]);
    refused(
        &cluster,
        &lab_admin,
        &["cancel", &elsewhere.to_string()],
        "limited to cluster(s) lab",
    );
    cluster
        .lull_with_token(Some(&lab_admin), &["cancel", &inside.to_string()])
        .assert_success();
    refused(
        &cluster,
        &lab_admin,
        &["clusters", "create", "more"],
        "needs a token for every cluster",
    );
    let out = cluster.lull_with_token(Some(&lab_admin), &["clusters", "list", "--json"]);
    out.assert_success();
    let ids: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["lab"], "it lists only its clusters");

    // Tokens name clusters that exist.
    let out = cluster.coordinator_token(&["create", "--user", "x", "--clusters", "nowhere"]);
    assert!(
        !out.success() && out.stderr.contains("no cluster nowhere"),
        "{out}"
    );
}

#[test]
fn a_token_with_uses_counts_submissions() {
    let cluster = Cluster::start();
    let once = cluster.user_token("ci", "submit", &["--uses", "1"]);
    let first = submit_as(&cluster, &once, &job_in(&cluster, "first", "default", 1));
    let out = submit_output(&cluster, &once, &job_in(&cluster, "second", "default", 1));
    assert!(!out.success(), "a second submission was taken:\n{out}");
    assert!(out.stderr.contains("used up"), "{out}");
    // Watching its job goes on.
    assert_eq!(listed(&cluster, &once), vec![first]);
    // And nothing of the refused one was stored.
    assert_eq!(listed(&cluster, cluster.token()), vec![first]);
}

#[test]
fn tokens_need_a_user_and_a_known_role() {
    let cluster = Cluster::start();
    let out = cluster.coordinator_token(&["create", "--submitter"]);
    assert!(
        !out.success() && out.stderr.contains("--user NAME"),
        "{out}"
    );
    let out = cluster.coordinator_token(&["create", "--user", "a b"]);
    assert!(
        !out.success() && out.stderr.contains("not a user name"),
        "{out}"
    );
    let out = cluster.coordinator_token(&["create", "--user", "a", "--role", "admin"]);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("\"admin\" is not a role: submit, read or operate"),
        "{out}"
    );
    let list = cluster.coordinator_token(&["list", "--json"]);
    assert!(list.success(), "{list}");
    let tester = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "tester")
        .cloned()
        .expect("the harness's token is listed with its user");
    assert_eq!(tester["role"], "operate", "{tester}");
}

/// A job of `count` tasks spinning `spin_ms` each, with `priority`.
fn spinning_job(
    cluster: &Cluster,
    name: &str,
    count: u32,
    spin_ms: u64,
    priority: i32,
) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\npriority = {priority}\n[[module]]\npath = \"t.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("t.wasm", &guests::hello(spin_ms))],
    )
}

/// When each task of job `id` was first assigned (ms since the Unix epoch).
fn assigned_ms(cluster: &Cluster, id: u64, count: u32) -> Vec<i64> {
    (0..count)
        .map(|i| {
            cluster.task(id, i)["attempts"][0]["assigned_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("task {id}.{i} has no attempt"))
        })
        .collect()
}

#[test]
fn a_newcomer_is_served_before_a_heavy_user_and_priority_orders_a_users_own_jobs() {
    let mut cluster = Cluster::start_with(&["--fair-share-half-life", "1m"]);
    let alice = cluster.user_token("alice", "submit", &[]);
    let bob = cluster.user_token("bob", "submit", &[]);
    // Alice fills the one slot's queue first; then Bob comes, then Alice's urgent job.
    let heavy = submit_as(
        &cluster,
        &alice,
        &spinning_job(&cluster, "heavy", 6, 400, 0),
    );
    let newcomer = submit_as(
        &cluster,
        &bob,
        &spinning_job(&cluster, "newcomer", 2, 400, 0),
    );
    let urgent = submit_as(
        &cluster,
        &alice,
        &spinning_job(&cluster, "urgent", 2, 400, 5),
    );
    // Before any agent: the jobs wait, and status shows who is served first.
    cluster.start_agent("lender", AgentOptions::slots(1));
    cluster.wait_for_agents(&["lender"]);
    for id in [heavy, newcomer, urgent] {
        let done = cluster.wait_for_job_end(id);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let heavy_at = assigned_ms(&cluster, heavy, 6);
    let newcomer_at = assigned_ms(&cluster, newcomer, 2);
    let urgent_at = assigned_ms(&cluster, urgent, 2);
    // Bob's tasks ran before most of Alice's, though submitted after her heavy job...
    let heavy_before_bob = heavy_at.iter().filter(|t| **t < newcomer_at[1]).count();
    assert!(
        heavy_before_bob <= 3,
        "Bob waited behind {heavy_before_bob} of Alice's tasks: heavy {heavy_at:?}, newcomer {newcomer_at:?}"
    );
    // ...and Alice's urgent job ran before the rest of her heavy one.
    let last_urgent = urgent_at.iter().max().unwrap();
    let heavy_after_urgent = heavy_at.iter().filter(|t| *t > last_urgent).count();
    assert!(
        heavy_after_urgent >= 2,
        "the urgent job did not overtake: heavy {heavy_at:?}, urgent {urgent_at:?}"
    );
    // The shares are listed, for everyone.
    let (status, shares) = cluster.request("/api/v1/shares", |c, url| c.get(url));
    assert_eq!(status, 200, "{shares}");
    let users: Vec<&str> = shares
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user"].as_str().unwrap())
        .collect();
    assert!(
        users.contains(&"alice") && users.contains(&"bob"),
        "{shares}"
    );
    let out = cluster.lull_with_token(Some(&bob), &["status"]);
    out.assert_success();
    assert!(out.stdout.contains("Fair share"), "{out}");
}

#[test]
fn harvested_cpu_is_credited_to_the_user_and_the_lender_and_survives_a_restart() {
    let mut cluster = Cluster::start();
    let made =
        cluster.coordinator_token(&["create", "--owner", "carol", "--uses", "0", "--ttl", "0"]);
    assert!(
        made.success() && made.stderr.contains("lent by carol"),
        "{made}"
    );
    cluster.start_agent(
        "carols-desktop",
        AgentOptions {
            slots: Some(1),
            enroll: lull_tests::Enroll::Token(made.stdout.trim().to_owned()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["carols-desktop"]);
    let alice = cluster.user_token("alice", "submit", &[]);
    let job = submit_as(
        &cluster,
        &alice,
        &spinning_job(&cluster, "burn", 2, 2_500, 0),
    );
    let done = cluster.wait_for_job_end(job);
    assert_eq!(done["state"], "succeeded", "{done}");

    let credited = |cluster: &Cluster| {
        let (status, acc) = cluster.request("/api/v1/accounting", |c, url| c.get(url));
        assert_eq!(status, 200, "{acc}");
        let of = |list: &str, name: &str| {
            acc[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["name"] == name)
                .and_then(|u| u["core_seconds"].as_f64())
                .unwrap_or(0.0)
        };
        (of("users", "alice"), of("lenders", "carol"))
    };
    let (user, lender) = credited(&cluster);
    assert!(
        user > 0.5 && lender >= user * 0.999,
        "alice {user}, carol {lender}"
    );
    let metrics = {
        let url = format!("{}/metrics", cluster.api_url());
        let client = cluster.api_client(Some(cluster.token()));
        cluster.block_on(async move { client.get(url).send().await.unwrap().text().await.unwrap() })
    };
    assert!(
        metrics.contains("lull_user_core_seconds_total{user=\"alice\"}")
            && metrics.contains("lull_lender_core_seconds_total{lender=\"carol\"}"),
        "{metrics}"
    );

    // Kept in the store: after a flush, a killed coordinator comes back with the totals.
    std::thread::sleep(std::time::Duration::from_secs(11));
    cluster.kill_coordinator();
    cluster.restart_coordinator();
    let (after_user, after_lender) = credited(&cluster);
    assert!(
        after_user >= user * 0.99 && after_lender >= lender * 0.99,
        "before: {user} / {lender}, after a restart: {after_user} / {after_lender}"
    );
}

#[test]
fn a_quota_holds_a_user_to_their_tasks_at_once_and_only_operators_set_it() {
    let mut cluster = Cluster::start();
    let alice = cluster.user_token("alice", "submit", &[]);
    refused(
        &cluster,
        &alice,
        &["clusters", "quota", "default", "alice", "--max-tasks", "9"],
        "needs the operate role",
    );
    let out = cluster.lull(&["clusters", "quota", "default", "alice", "--max-tasks", "1"]);
    out.assert_success();
    assert!(
        out.stdout.contains("alice") && out.stdout.contains('1'),
        "{out}"
    );
    let out = cluster.lull(&["clusters", "quota", "default", "*", "--max-cores", "2.5"]);
    out.assert_success();
    let out = cluster.lull(&["clusters", "quotas", "default", "--json"]);
    out.assert_success();
    assert_eq!(
        out.json(),
        serde_json::json!([
            {"user": "*", "max_tasks": null, "max_cores": 2.5},
            {"user": "alice", "max_tasks": 1, "max_cores": null}
        ])
    );
    let out = cluster.lull(&["clusters", "quota", "default", "bob", "--max-cores=0"]);
    assert!(!out.success() && out.stderr.contains("max_cores"), "{out}");

    let job = submit_as(
        &cluster,
        &alice,
        &spinning_job(&cluster, "one-at-a-time", 3, 700, 0),
    );
    cluster.start_agent("lender", AgentOptions::slots(4));
    cluster.wait_for_agents(&["lender"]);
    cluster.wait_for_job(
        job,
        "one task running, the others held by the quota",
        WAIT,
        |j| {
            j["counts"]["running"] == 1
                && j["waiting_reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("alice is at their quota: 1 of 1 task(s) running"))
        },
    );
    let done = cluster.wait_for_job_end(job);
    assert_eq!(done["state"], "succeeded", "{done}");
    // One after the other: each started after the one before had ended.
    assert_one_at_a_time(spans(&cluster, job, 3));
    cluster
        .lull(&["clusters", "quota", "default", "alice", "--remove"])
        .assert_success();
}

/// When each task of job `id` was first assigned and when that attempt ended (ms since the
/// Unix epoch).
fn spans(cluster: &Cluster, id: u64, count: u32) -> Vec<(i64, i64)> {
    (0..count)
        .map(|i| {
            let a = &cluster.task(id, i)["attempts"][0];
            (
                a["assigned_ms"].as_i64().unwrap(),
                a["finished_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Each span started after the one before it had ended.
#[track_caller]
fn assert_one_at_a_time(mut spans: Vec<(i64, i64)>) {
    spans.sort();
    assert!(
        spans.windows(2).all(|w| w[1].0 >= w[0].1),
        "tasks overlapped: {spans:?}"
    );
}

/// A job of `count` tasks spinning `spin_ms` each, with `group = "..."` when given.
fn grouped_job(
    cluster: &Cluster,
    name: &str,
    count: u32,
    spin_ms: u64,
    group: Option<&str>,
) -> std::path::PathBuf {
    let group = group.map_or(String::new(), |g| format!("group = \"{g}\"\n"));
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n{group}[[module]]\npath = \"t.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
        ),
        &[("t.wasm", &guests::hello(spin_ms))],
    )
}

#[test]
fn a_group_quota_holds_the_jobs_of_all_its_members_together() {
    let mut cluster = Cluster::start();
    let alice = cluster.user_token("alice", "submit", &["--groups", "physics"]);
    let bob = cluster.user_token("bob", "submit", &["--groups", "chem,physics"]);
    let carol = cluster.user_token("carol", "submit", &[]);
    let out = cluster.lull(&["tokens", "list"]);
    out.assert_success();
    assert!(out.stdout.contains("chem,physics"), "{out}");
    cluster
        .lull(&[
            "clusters",
            "quota",
            "default",
            "@physics",
            "--max-tasks",
            "1",
        ])
        .assert_success();
    let out = cluster.lull(&["clusters", "quotas", "default", "--json"]);
    out.assert_success();
    assert_eq!(
        out.json(),
        serde_json::json!([{"user": "@physics", "max_tasks": 1, "max_cores": null}])
    );
    let out = cluster.lull(&[
        "clusters",
        "quota",
        "default",
        "@no way",
        "--max-tasks",
        "1",
    ]);
    assert!(
        !out.success() && out.stderr.contains("is not a group name"),
        "{out}"
    );

    // Only members put jobs in a group.
    let physics_of_carol = grouped_job(&cluster, "carols", 1, 0, Some("physics"));
    let out = submit_output(&cluster, &carol, &physics_of_carol);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("group physics: the token of carol (submit) is in no group"),
        "{out}"
    );
    let out = submit_output(
        &cluster,
        &alice,
        &grouped_job(&cluster, "bio", 1, 0, Some("bio")),
    );
    assert!(
        !out.success() && out.stderr.contains("is in group(s) physics"),
        "{out}"
    );

    // alice's job is in her only group by default; bob names physics for one job, and his
    // other job is in his first group, chem, which has no quota.
    let a = submit_as(&cluster, &alice, &grouped_job(&cluster, "a", 3, 600, None));
    let b = submit_as(
        &cluster,
        &bob,
        &grouped_job(&cluster, "b", 2, 600, Some("physics")),
    );
    let c = submit_as(&cluster, &bob, &grouped_job(&cluster, "c", 2, 1500, None));
    let out = cluster.lull_with_token(Some(&alice), &["status", &a.to_string()]);
    out.assert_success();
    assert!(out.stdout.contains("group: physics"), "{out}");
    let out = cluster.lull_with_token(Some(&bob), &["status", &c.to_string(), "--json"]);
    out.assert_success();
    assert_eq!(out.json()["spec"]["group"], "chem", "{out}");

    cluster.start_agent("lender", AgentOptions::slots(4));
    cluster.wait_for_agents(&["lender"]);
    cluster.wait_for_job(
        b,
        "one physics task running, the group's others held by its quota",
        WAIT,
        |j| {
            j["waiting_reason"].as_str().is_some_and(|w| {
                w.contains("group physics is at its quota: 1 of 1 task(s) running")
            })
        },
    );
    for job in [a, b, c] {
        let done = cluster.wait_for_job_end(job);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    // The group's five tasks ran one at a time, both members' together; chem's ran beside them.
    let physics: Vec<(i64, i64)> = spans(&cluster, a, 3)
        .into_iter()
        .chain(spans(&cluster, b, 2))
        .collect();
    assert_one_at_a_time(physics.clone());
    let chem = spans(&cluster, c, 2);
    assert!(
        chem.iter()
            .any(|&(start, end)| physics.iter().any(|&(s, e)| start < e && s < end)),
        "chem's tasks never ran beside physics': {chem:?} {physics:?}"
    );
}

/// A job of `count` tasks of one whole core each, spinning `spin_ms`.
fn core_job(cluster: &Cluster, name: &str, count: u32, spin_ms: u64) -> std::path::PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"t.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\ncpu = 1\n"
        ),
        &[("t.wasm", &guests::hello(spin_ms))],
    )
}

#[test]
fn where_an_operator_allows_preemption_a_newcomer_evicts_a_running_task_which_runs_again() {
    let mut cluster = Cluster::start_with(&[
        "--preempt-after",
        "1s",
        "--preempt-grace",
        "1s",
        "--fair-share-half-life",
        "2s",
    ]);
    let alice = cluster.user_token("alice", "submit", &[]);
    let bob = cluster.user_token("bob", "submit", &[]);
    refused(
        &cluster,
        &alice,
        &["clusters", "set", "default", "--preempt", "on"],
        "needs the operate role",
    );
    let out = cluster.lull(&["clusters", "set", "default", "--preempt", "on"]);
    out.assert_success();
    assert!(out.stdout.contains("preemption on"), "{out}");
    // Two slots of a core each, both Alice's.
    cluster.start_agent("lender", AgentOptions::slots(2));
    cluster.wait_for_agents(&["lender"]);
    let long = submit_as(&cluster, &alice, &core_job(&cluster, "long", 2, 6_000));
    cluster.wait_for_job(long, "alice's tasks running", WAIT, |j| {
        j["counts"]["running"] == 2
    });
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let short = submit_as(&cluster, &bob, &core_job(&cluster, "short", 1, 200));
    let done = cluster.wait_for_job_end(short);
    assert_eq!(done["state"], "succeeded", "{done}");
    let done = cluster.wait_for_job_end(long);
    assert_eq!(done["state"], "succeeded", "{done}");
    // One of Alice's tasks was evicted for Bob's, and ran again.
    let attempts: Vec<serde_json::Value> = (0..2)
        .flat_map(|i| {
            cluster.task(long, i)["attempts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let evicted: Vec<&serde_json::Value> = attempts
        .iter()
        .filter(|a| a.to_string().contains("preempted for waiting work of bob"))
        .collect();
    assert_eq!(evicted.len(), 1, "{attempts:?}");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
}

#[test]
fn operators_manage_tokens_through_the_api_and_others_cannot() {
    let cluster = Cluster::start();
    // Made by the harness's operate token, from afar.
    let out = cluster.lull(&[
        "tokens", "create", "--user", "dana", "--role", "read", "--json",
    ]);
    out.assert_success();
    let made = out.json();
    let dana = made["token"].as_str().unwrap().to_owned();
    let id = made["info"]["id"].as_str().unwrap().to_owned();
    assert_eq!(made["info"]["role"], "read", "{made}");
    cluster
        .lull_with_token(Some(&dana), &["status"])
        .assert_success();
    // A read token, or a submit one, manages no tokens.
    refused(
        &cluster,
        &dana,
        &["tokens", "list"],
        "needs the operate role",
    );
    refused(
        &cluster,
        &dana,
        &["tokens", "create", "--user", "eve", "--role", "operate"],
        "needs the operate role",
    );
    // Mistakes are named.
    let out = cluster.lull(&["tokens", "create", "--user", "a b"]);
    assert!(!out.success() && out.stderr.contains("user: "), "{out}");
    let out = cluster.lull(&["tokens", "create", "--owner", "lab", "--cluster", "nowhere"]);
    assert!(
        !out.success() && out.stderr.contains("no cluster nowhere"),
        "{out}"
    );
    // Listed without secrets; deleted, it stops working at once.
    let out = cluster.lull(&["tokens", "list"]);
    out.assert_success();
    assert!(
        out.stdout.contains(&id) && !out.stdout.contains(&dana),
        "{out}"
    );
    cluster.lull(&["tokens", "delete", &id]).assert_success();
    let out = cluster.lull_with_token(Some(&dana), &["status"]);
    assert!(
        !out.success() && out.stderr.contains("unknown token"),
        "{out}"
    );
    let out = cluster.lull(&["tokens", "delete", &id]);
    assert!(
        !out.success() && out.stderr.contains("no token has an id"),
        "{out}"
    );
}
