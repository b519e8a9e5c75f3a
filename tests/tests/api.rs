//! The HTTP API as a client sees it: every error a JSON body with a stable code, the OpenAPI
//! document and the dashboard served without a token, and the pool and its live stream.

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, guests, summarize};
use serde_json::Value;

/// Asserts an error answer: its status, its code, and a message that names what was asked.
fn assert_error(answer: (u16, Value), status: u16, code: &str, mentions: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "the message {message:?} does not mention {mentions:?}"
    );
}

#[test]
fn every_error_is_json_with_a_code() {
    use reqwest::Method;
    let cluster = Cluster::start();
    // `request` sends the submitter's token.
    let auth = |c: &reqwest::Client, method: Method, url: String| c.request(method, url);

    assert_error(
        cluster.request("/api/v1/nothing", |c, u| auth(c, Method::GET, u)),
        404,
        "not_found",
        "/api/v1/nothing",
    );
    assert_error(
        cluster.request("/api/v1/jobs", |c, u| auth(c, Method::PUT, u)),
        405,
        "method_not_allowed",
        "PUT /api/v1/jobs",
    );
    assert_error(
        cluster.request("/api/v1/jobs", |c, u| {
            auth(c, Method::POST, u).body("{\"name\": \"x\"}")
        }),
        415,
        "unsupported_media_type",
        "POST /api/v1/jobs",
    );
    assert_error(
        cluster.request("/api/v1/jobs", |c, u| {
            auth(c, Method::POST, u).json(&serde_json::json!({"name": 3}))
        }),
        422,
        "invalid_body",
        "name",
    );
    assert_error(
        cluster.request("/api/v1/jobs", |c, u| {
            auth(c, Method::POST, u)
                .header("content-type", "application/json")
                .body("{not json")
        }),
        400,
        "bad_request",
        "POST /api/v1/jobs",
    );
    assert_error(
        cluster.request("/api/v1/jobs/seven", |c, u| auth(c, Method::GET, u)),
        400,
        "bad_request",
        "GET /api/v1/jobs/seven",
    );
    assert_error(
        cluster.request("/api/v1/jobs/99", |c, u| auth(c, Method::GET, u)),
        404,
        "not_found",
        "no job 99",
    );
    // Without a token: 401, JSON, and how to get one.
    assert_error(
        cluster.get_anonymous("/api/v1/pool"),
        401,
        "unauthorized",
        "token create --user NAME",
    );
}

#[test]
fn the_openapi_document_and_the_dashboard_need_no_token() {
    let cluster = Cluster::start();
    let (status, doc) = cluster.get_anonymous("/api/v1/openapi.json");
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    for path in ["/api/v1/jobs", "/api/v1/pool", "/api/v1/stream"] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let page = cluster.get_text_anonymous("/");
    assert!(page.contains("<title>Lull</title>"), "{page}");
    assert!(page.contains("/dashboard/app.js"), "{page}");
    let script = cluster.get_text_anonymous("/dashboard/app.js");
    assert!(
        script.contains("/api/v1/stream"),
        "the script does not follow the stream"
    );
    let (status, body) = cluster.get_anonymous("/dashboard/secrets.txt");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[test]
fn the_pool_and_its_stream_follow_the_agents_and_jobs() {
    let mut cluster = Cluster::start();
    cluster.start_agent("lender", AgentOptions::slots(1));
    cluster.wait_for_agents(&["lender"]);
    let job = cluster.write_job(
        "one",
        "name = \"one\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    // The agent reports about once a second: a few reports make a history.
    let pool = lull_tests::wait_for(
        "three reports of the agent",
        Duration::from_secs(30),
        || {
            let pool = cluster.get("/api/v1/pool");
            let samples = pool["agents"][0]["history"].as_array().map_or(0, Vec::len);
            (samples >= 3).then_some(pool)
        },
    );
    let agent = &pool["agents"][0];
    assert_eq!(agent["name"], "lender", "{pool}");
    let history = agent["history"].as_array().unwrap();
    for pair in history.windows(2) {
        assert!(
            pair[0]["at_ms"].as_i64() < pair[1]["at_ms"].as_i64(),
            "not in order: {pool}"
        );
    }
    for sample in history {
        for field in ["incumbent_cpu", "guest_cpu", "memory_used"] {
            let f = sample[field].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&f), "{field} out of 0..1: {sample}");
        }
        assert!(sample["state"].is_string(), "{sample}");
    }
    let job = &pool["jobs"][0];
    assert_eq!(job["id"], id, "{pool}");
    assert_eq!(job["progress"], 1.0, "{pool}");
    assert_eq!(pool["tasks"]["succeeded"], 1, "{pool}");
    assert!(
        pool["harvest"]["core_seconds"].as_f64().unwrap() >= 0.0,
        "{pool}"
    );
    assert!(
        !pool["harvest"]["minutes"].as_array().unwrap().is_empty(),
        "{pool}"
    );

    // The stream: events named pool, a second apart, each with only the history since the one
    // before.
    let since = pool["now_ms"].as_i64().unwrap();
    let events = cluster.read_events(&format!("/api/v1/stream?since_ms={since}"), 3);
    assert_eq!(events.len(), 3);
    let mut last = since;
    for (name, data) in &events {
        assert_eq!(name, "pool");
        let now = data["now_ms"].as_i64().unwrap();
        assert!(now > last, "events out of order");
        let agent = &data["agents"][0];
        for sample in agent["history"].as_array().unwrap() {
            let at = sample["at_ms"].as_i64().unwrap();
            assert!(
                at > last && at <= now,
                "a sample outside ({last}, {now}]: {sample}"
            );
        }
        assert_eq!(data["jobs"][0]["id"], id);
        last = now;
    }
    let first = events[0].1["now_ms"].as_i64().unwrap();
    assert!(
        last - first >= 1_500,
        "three events came within {} ms, not a second apart",
        last - first
    );

    // Two clients at once are sent the same seconds: one document a second for all of them.
    let path = format!("/api/v1/stream?since_ms={last}");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| cluster.read_events(&path, 3));
        let b = s.spawn(|| cluster.read_events(&path, 3));
        (a.join().unwrap(), b.join().unwrap())
    });
    let times = |events: &[(String, Value)]| -> Vec<i64> {
        events
            .iter()
            .map(|(_, d)| d["now_ms"].as_i64().unwrap())
            .collect()
    };
    let (a, b) = (times(&a), times(&b));
    assert!(
        a.iter().filter(|t| b.contains(t)).count() >= 2,
        "the clients' seconds differ: {a:?} and {b:?}"
    );
}
