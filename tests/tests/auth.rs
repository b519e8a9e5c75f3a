//! Submitters' tokens on the HTTP API of a real coordinator: no token, a wrong one, an agent's
//! join token, an expired or deleted one are refused with a reason and what to do; a valid one
//! works; tokens are listed without their secrets.

use std::time::Duration;

use lull_tests::Cluster;

/// `lull status` with `token` (or none) must fail, saying `why`.
#[track_caller]
fn refused(cluster: &Cluster, token: Option<&str>, why: &str) {
    let out = cluster.lull_with_token(token, &["status"]);
    assert!(!out.success(), "accepted:\n{out}");
    assert!(out.stderr.contains(why), "expected {why:?} in:\n{out}");
    assert!(
        out.stderr
            .contains("lull-coordinator token create --user NAME"),
        "the error says how to get a token:\n{out}"
    );
    assert!(
        token.is_none_or(|t| !out.stderr.contains(t)),
        "the token is not echoed:\n{out}"
    );
}

#[test]
fn the_api_needs_a_valid_submitters_token() {
    let cluster = Cluster::start();

    // The cluster's own token works.
    cluster.lull(&["status"]).assert_success();

    refused(&cluster, None, "this coordinator needs a person's token");
    refused(
        &cluster,
        Some("lull_0123456789abcdef0123456789abcdef01234567"),
        "unknown token",
    );

    let join = cluster.coordinator_token(&["create", "--description", "an agent"]);
    assert!(join.success(), "{join}");
    refused(&cluster, Some(join.stdout.trim()), "another use (agent)");

    let brief = cluster.coordinator_token(&["create", "--user", "brief", "--ttl", "1ms"]);
    assert!(brief.success(), "{brief}");
    std::thread::sleep(Duration::from_millis(20));
    refused(&cluster, Some(brief.stdout.trim()), "expired");

    // Tokens are listed by id, never in full; deleting one cuts it off at once.
    let spare = cluster.coordinator_token(&["create", "--user", "spare", "--description", "spare"]);
    assert!(spare.success(), "{spare}");
    let spare = spare.stdout.trim().to_owned();
    cluster
        .lull_with_token(Some(&spare), &["status"])
        .assert_success();
    let list = cluster.coordinator_token(&["list"]);
    assert!(list.success(), "{list}");
    assert!(
        !list.stdout.contains(&spare),
        "a secret was listed:\n{list}"
    );
    assert!(
        !list.stdout.contains(cluster.token()),
        "a secret was listed:\n{list}"
    );
    // The same as JSON, for scripts: still no secret.
    let listed = cluster.coordinator_token(&["list", "--json"]);
    assert!(listed.success(), "{listed}");
    assert!(
        !listed.stdout.contains(&spare),
        "a secret was listed:\n{listed}"
    );
    let listed = listed.json();
    let entry = listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["description"] == "spare"))
        .unwrap_or_else(|| panic!("no spare token in {listed}"));
    assert_eq!(entry["kind"], "submitter", "{entry}");
    assert_eq!(entry["uses_left"], serde_json::Value::Null, "{entry}");
    let line = list
        .stdout
        .lines()
        .find(|l| l.ends_with("spare"))
        .unwrap_or_else(|| panic!("no spare token listed:\n{list}"));
    let id = line.split_whitespace().next().expect("an id");
    let deleted = cluster.coordinator_token(&["delete", id]);
    assert!(deleted.success(), "{deleted}");
    refused(&cluster, Some(&spare), "unknown token");
    // The others still work.
    cluster.lull(&["status"]).assert_success();

    // The raw API answers 401 with the JSON error body.
    let body = cluster.get_anonymous("/api/v1/jobs");
    assert_eq!(body.0, 401, "{:?}", body.1);
    assert_eq!(body.1["error"]["code"], "unauthorized", "{:?}", body.1);
    // Uploads too: no blob is taken from someone without a token.
    for path in ["/api/v1/uploads", "/api/v1/blobs/missing"] {
        let anonymous = cluster.api_client(None);
        let (status, body) = cluster.request(path, |_, url| {
            anonymous
                .post(url)
                .json(&serde_json::json!({ "digest": format!("sha256:{}", "0".repeat(64)), "size": 1, "digests": [] }))
        });
        assert_eq!(status, 401, "{path}: {body}");
    }
}
