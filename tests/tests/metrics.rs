//! `/metrics`, scraped from a coordinator that ran a job, and parsed as Prometheus does.

use std::collections::HashMap;
use std::time::Duration;

use lull_tests::{Cluster, guests, summarize};

/// `name{labels}` to value, from Prometheus' text format; panics on a malformed line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        assert!(
            series.starts_with("lull_"),
            "{series} lacks the lull_ prefix"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("{line:?}: not a number"));
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

#[test]
fn metrics_count_agents_tasks_dispatches_and_bytes() {
    let cluster = Cluster::with_agents(&["a"], 2);
    let job = cluster.write_job(
        "three",
        "name = \"three\"\ncount = 3\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    let url = format!("{}/metrics", cluster.api_url());
    let client = cluster.api_client(None);
    let token = cluster.token().to_owned();
    let (status, kind, text) = cluster.block_on(async move {
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, kind, resp.text().await.unwrap())
    });
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let m = parse(&text);
    assert_eq!(m["lull_tasks{state=\"succeeded\"}"], 3.0, "{text}");
    assert_eq!(m["lull_agents{state=\"running\"}"], 1.0, "{text}");
    assert_eq!(m["lull_dispatch_latency_seconds_count"], 3.0, "{text}");
    assert_eq!(
        m["lull_dispatch_latency_seconds_bucket{le=\"+Inf\"}"], 3.0,
        "{text}"
    );
    assert!(m["lull_dispatch_latency_seconds_sum"] > 0.0, "{text}");
    assert!(
        m["lull_blob_store_bytes"] >= guests::hello(0).len() as f64,
        "{text}"
    );
    assert!(
        m.contains_key("lull_harvested_core_seconds_total"),
        "{text}"
    );
    // Without a token, as every API call.
    let (status, _) = cluster.get_anonymous("/metrics");
    assert_eq!(status, 401);
}
