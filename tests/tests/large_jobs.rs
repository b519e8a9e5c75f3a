//! Jobs of many tasks stay cheap to follow: `GET /api/v1/jobs/{id}` answers a page of the
//! job's tasks (`offset`, `limit`, `state`) with `next_offset` where the next page starts, and
//! refuses a parameter it cannot take by its name; `lull results` walks every page; `lull
//! status JOB` shows one page and says how to see the next; the watch follows the counts alone
//! and prints the failed tasks at the end.

use std::collections::BTreeSet;

use lull_tests::{Cluster, guests, summarize};
use serde_json::Value;

/// A job of `count` tasks of which the odd ones fail (one attempt each), run to its end.
fn half_failing(cluster: &Cluster, name: &str, count: u32) -> u64 {
    let job = cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"odd.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 1\n"
        ),
        &[("odd.wasm", &guests::odd_fails())],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    id
}

/// The indexes of a detail's tasks.
fn indexes(detail: &Value) -> Vec<u64> {
    detail["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["index"].as_u64().expect("an index"))
        .collect()
}

/// Every page of `query` (without `offset`), following `next_offset`: the pages' indexes.
fn walk(cluster: &Cluster, id: u64, query: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut offset = 0;
    loop {
        let page = cluster.get(&format!("/api/v1/jobs/{id}?{query}&offset={offset}"));
        pages.push(indexes(&page));
        match page.get("next_offset") {
            Some(next) => {
                let next = next.as_u64().expect("next_offset is a number");
                assert!(
                    next > offset,
                    "next_offset {next} goes forward from {offset}"
                );
                offset = next;
            }
            None => return pages,
        }
    }
}

/// Pages of a job of 12 tasks, half failed, with and without a state filter, and the bad
/// parameters.
fn pages_and_bad_parameters(cluster: &Cluster) {
    let id = half_failing(cluster, "pages", 12);

    // No parameter: every task of a small job, and no next_offset.
    let all = cluster.job(id);
    assert_eq!(indexes(&all), (0..12).collect::<Vec<_>>());
    assert!(all.get("next_offset").is_none(), "{all}");
    assert_eq!(all["count"], 12);

    // Five at a time, then the failed ones two at a time.
    assert_eq!(
        walk(cluster, id, "limit=5"),
        [vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9], vec![10, 11]]
    );
    let page = cluster.get(&format!("/api/v1/jobs/{id}?limit=5&offset=5"));
    assert_eq!(page["next_offset"], 10, "{page}");
    assert_eq!(
        walk(cluster, id, "limit=2&state=failed"),
        [vec![1, 3], vec![5, 7], vec![9, 11]]
    );
    let page = cluster.get(&format!("/api/v1/jobs/{id}?limit=2&state=failed&offset=2"));
    assert_eq!(
        (indexes(&page), &page["next_offset"]),
        (vec![3, 5], &7.into())
    );
    for t in page["tasks"].as_array().unwrap() {
        assert_eq!(t["state"], "failed", "{t}");
        assert!(t["result"].is_object(), "a failed task's result: {t}");
    }
    assert_eq!(
        walk(cluster, id, "limit=4&state=succeeded"),
        [vec![0, 2, 4, 6], vec![8, 10]]
    );
    assert_eq!(walk(cluster, id, "state=cancelled"), [Vec::<u64>::new()]);

    // The counts alone: the summary, the definition, no task, and where tasks start.
    let counts = cluster.get(&format!("/api/v1/jobs/{id}?limit=0"));
    assert_eq!(indexes(&counts), Vec::<u64>::new());
    assert_eq!(counts["counts"]["failed"], 6, "{counts}");
    assert_eq!(counts["counts"]["succeeded"], 6, "{counts}");
    assert_eq!(counts["state"], "failed");
    assert_eq!(counts["spec"]["count"], 12);
    assert_eq!(counts["next_offset"], 0, "{counts}");
    let past = cluster.get(&format!("/api/v1/jobs/{id}?offset=12"));
    assert_eq!(indexes(&past), Vec::<u64>::new());
    assert!(past.get("next_offset").is_none(), "{past}");

    // A parameter that cannot be taken is refused, by its name.
    for (query, named) in [
        ("limit=10001", "limit: \"10001\""),
        ("limit=lots", "limit: \"lots\""),
        ("offset=-1", "offset: \"-1\""),
        ("state=done", "state: \"done\""),
        ("limit=1&limit=2", "limit: given twice"),
        ("page=2", "page: not a parameter"),
    ] {
        let (status, body) =
            cluster.request(&format!("/api/v1/jobs/{id}?{query}"), |c, u| c.get(u));
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(named), "{query}: {message:?}");
    }
    let (status, body) = cluster.request("/api/v1/jobs/999?limit=0", |c, u| c.get(u));
    assert_eq!((status, &body["error"]["code"]), (404, &"not_found".into()));
}

#[test]
fn a_job_detail_pages_its_tasks_with_and_without_a_state_filter() {
    let cluster = Cluster::with_agents(&["a"], 4);
    pages_and_bad_parameters(&cluster);
}

#[test]
fn a_job_detail_pages_its_tasks_on_postgres() {
    let url = lull_tests::postgres_database("job_pages");
    let mut cluster = Cluster::start_with(&["--database", &url]);
    cluster.start_agent("a", lull_tests::AgentOptions::slots(4));
    cluster.wait_for_agents(&["a"]);
    pages_and_bad_parameters(&cluster);
}

#[test]
fn results_and_status_of_a_job_of_more_tasks_than_a_page_reach_every_task() {
    let cluster = Cluster::with_agents(&["left", "right"], 4);
    let count = 1_005;
    let id = cluster.submit(&cluster.many_tasks("pages", count, 0));
    let done = cluster.wait_for_job(id, "to succeed", lull_tests::WAIT * 4, |j| {
        j["counts"]["succeeded"] == count
    });
    // The default page: the first thousand.
    assert_eq!(done["tasks"].as_array().unwrap().len(), 1_000);
    assert_eq!(done["next_offset"], 1_000, "{}", summarize(&done));

    let dir = cluster.results(id);
    let written: BTreeSet<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(written, (0..count).collect::<BTreeSet<u32>>());
    for index in [0, 999, 1_000, 1_004] {
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("{index}/output/result.txt"))).unwrap(),
            index.to_string(),
            "task {index}'s output"
        );
    }
    let json_dir = cluster.root().join("results-json");
    let out = cluster.lull(&[
        "results",
        &id.to_string(),
        "-o",
        json_dir.to_str().unwrap(),
        "--json",
    ]);
    out.assert_success();
    let v = out.json();
    assert_eq!(v["tasks"].as_array().unwrap().len(), count as usize);
    assert_eq!(v["output_files"], count, "{}", v["state"]);

    // `lull status JOB` shows the first page and how to see the next.
    let out = cluster.lull(&["status", &id.to_string()]);
    out.assert_success();
    assert!(
        out.stdout.contains(&format!(
            "1000 task(s) shown, 0 to 999; more from 1000: lull status {id} --offset 1000"
        )),
        "{out}"
    );
    let out = cluster.lull(&["status", &id.to_string(), "--offset", "1000", "--json"]);
    out.assert_success();
    assert_eq!(indexes(&out.json()), (1_000..1_005).collect::<Vec<_>>());
    let out = cluster.lull(&["status", &id.to_string(), "--all", "--json"]);
    out.assert_success();
    let all = out.json();
    assert_eq!(indexes(&all), (0..1_005).collect::<Vec<_>>());
    assert!(all.get("next_offset").is_none());
    let out = cluster.lull(&["status", &id.to_string(), "--state", "failed"]);
    out.assert_success();
    assert!(out.stdout.contains("no failed task"), "{out}");
}

#[test]
fn the_watch_ends_with_the_job_and_prints_its_failed_tasks() {
    let cluster = Cluster::with_agents(&["a"], 4);
    // 25 of 50 fail: the first 20 are printed, and how many more there are.
    let id = half_failing(&cluster, "watched", 50);
    let out = cluster.lull(&["status", &id.to_string(), "--watch"]);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "job {id} failed: 25 succeeded, 25 failed, 0 cancelled"
        )),
        "{out}"
    );
    let printed: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("task "))
        .collect();
    assert_eq!(printed.len(), 20, "{out}");
    assert!(
        printed[0].contains("task 1 failed after 1 attempt(s): module odd: exited with code 1"),
        "{out}"
    );
    assert!(printed[19].contains("task 39 failed"), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "and 5 more failed task(s): lull status {id} --state failed --all"
        )),
        "{out}"
    );

    // With --json: the final detail with those failed tasks, and where more start.
    let out = cluster.lull(&["status", &id.to_string(), "--watch", "--json"]);
    assert_eq!(out.code, Some(3), "{out}");
    let d = out.json();
    assert_eq!(d["state"], "failed");
    assert_eq!(d["counts"]["failed"], 25);
    assert_eq!(indexes(&d), (1..40).step_by(2).collect::<Vec<_>>());
    assert_eq!(d["next_offset"], 41, "{d}");

    // A job that succeeds: no task in the detail, nothing failed to print.
    let fine = cluster.submit(&cluster.many_tasks("fine", 3, 0));
    let out = cluster.lull(&["status", &fine.to_string(), "--watch", "--json"]);
    out.assert_success();
    let d = out.json();
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(indexes(&d), Vec::<u64>::new());
    assert!(d.get("next_offset").is_none(), "{d}");
}
