//! Workflows: jobs that start when the jobs they come after have succeeded, read those jobs'
//! outputs, are held when one fails, and a workflow submitted again that keeps what succeeded.
//! The map and reduce are the `wordfreq` example, on real agents.

use std::path::Path;

use lull_tests::{Cluster, example_module};
use serde_json::Value;

const WORKFLOW: &str = "name = \"counts\"\n\
    [[job]]\nname = \"map\"\nfile = \"map.toml\"\n\
    [[job]]\nname = \"reduce\"\nfile = \"reduce.toml\"\nafter = [\"map\"]\n";

const MAP: &str = "name = \"counts-map\"\nitems = \"shards.csv\"\n\
    [[module]]\npath = \"wordfreq.wasm\"\nargs = [\"map\"]\ninputs = [\"data/{shard}.txt\"]\n\
    [resources]\nmemory = \"64MiB\"\n";

fn reduce(top: u32) -> String {
    format!(
        "name = \"counts-reduce\"\n\
         [[module]]\npath = \"wordfreq.wasm\"\nargs = [\"reduce\", \"--top\", \"{top}\"]\n\
         [[module.mount]]\njob = \"map\"\npath = \"/map\"\n\
         [resources]\nmemory = \"64MiB\"\n"
    )
}

/// `lull submit WORKFLOW --watch --json`: whether it succeeded, and each job's entry by name.
fn submit(cluster: &Cluster, workflow: &Path) -> (bool, Vec<Value>) {
    let out = cluster.lull(&[
        "submit",
        workflow.to_str().unwrap(),
        "--key",
        cluster.key().to_str().unwrap(),
        "--watch",
        "--json",
    ]);
    let v = out.json();
    assert_eq!(v["workflow"], "counts", "{out}");
    (
        out.success(),
        v["jobs"].as_array().cloned().unwrap_or_default(),
    )
}

fn job_of(jobs: &[Value], name: &str) -> u64 {
    jobs.iter()
        .find(|j| j["name"] == name)
        .and_then(|j| j["job"].as_u64())
        .unwrap_or_else(|| panic!("no job {name} in {jobs:?}"))
}

fn kept(jobs: &[Value], name: &str) -> bool {
    jobs.iter().any(|j| j["name"] == name && j["kept"] == true)
}

#[test]
fn a_reduce_runs_after_its_map_is_held_when_the_map_fails_and_a_rerun_keeps_what_succeeded() {
    let cluster = Cluster::with_agents(&["a", "b"], 2);
    let wasm = std::fs::read(example_module("wasm32-wasip2", "wordfreq.wasm")).unwrap();
    let workflow = cluster.write_job(
        "counts",
        WORKFLOW,
        &[
            ("map.toml", MAP.as_bytes()),
            ("reduce.toml", reduce(3).as_bytes()),
            ("wordfreq.wasm", &wasm),
            ("shards.csv", b"shard\none\ntwo\nthree\n"),
            ("data/one.txt", b"apple banana apple"),
            ("data/two.txt", b"banana cherry"),
            // Not text: the third map task fails.
            ("data/three.txt", &[0xff, 0xfe, 0x00]),
        ],
    );
    let dir = workflow.parent().unwrap().to_owned();

    // The map fails: the reduce never starts, and is held saying why.
    let (ok, jobs) = submit(&cluster, &workflow);
    assert!(!ok, "{jobs:?}");
    let (map, reduce_job) = (job_of(&jobs, "map"), job_of(&jobs, "reduce"));
    let held = cluster.job(reduce_job);
    assert_eq!(held["state"], "held", "{held}");
    let why = format!(
        "job {map} (counts-map), which it comes after, did not succeed: 1 task(s) failed, 0 cancelled"
    );
    assert_eq!(held["hold"], why.as_str());
    assert_eq!(held["waiting_reason"], format!("held: {why}"));
    assert_eq!(held["tasks"][0]["attempt"], 0, "the reduce never ran");
    let status = cluster.lull(&["status", &reduce_job.to_string()]);
    assert!(status.stdout.contains(&why), "{status}");

    // Fixed, and submitted again: the map runs anew (its input changed), and so does the
    // reduce after it; the held reduce of the first run is cancelled.
    std::fs::write(dir.join("data/three.txt"), "cherry apple").unwrap();
    let (ok, jobs) = submit(&cluster, &workflow);
    assert!(ok, "{jobs:?}");
    let (map2, reduce2) = (job_of(&jobs, "map"), job_of(&jobs, "reduce"));
    assert!(map2 != map && reduce2 != reduce_job && !kept(&jobs, "map"));
    assert_eq!(cluster.job(reduce_job)["state"], "cancelled");
    let results = cluster.results(reduce2);
    assert_eq!(
        std::fs::read_to_string(results.join("0/output/totals.tsv")).unwrap(),
        "apple\t3\nbanana\t2\ncherry\t2\n",
        "the reduce read every map task's output under /map"
    );
    let spec = &cluster.job(reduce2)["spec"];
    assert_eq!(spec["after"], serde_json::json!([map2]));
    let mounted: Vec<&str> = spec["modules"][0]["mounts"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounted,
        ["0/counts.tsv", "1/counts.tsv", "2/counts.tsv"],
        "each map task's outputs under its index"
    );

    // Only the reduce changed: the map is kept and does not run again.
    std::fs::write(dir.join("reduce.toml"), reduce(1)).unwrap();
    let (ok, jobs) = submit(&cluster, &workflow);
    assert!(ok, "{jobs:?}");
    assert!(
        kept(&jobs, "map") && job_of(&jobs, "map") == map2,
        "{jobs:?}"
    );
    let reduce3 = job_of(&jobs, "reduce");
    assert!(reduce3 != reduce2 && !kept(&jobs, "reduce"));
    let logs = cluster.lull(&["logs", &format!("{reduce3}/0"), "--stream", "stdout"]);
    assert!(
        logs.stdout
            .starts_with("the 1 most frequent of 3 distinct words")
            && logs.stdout.contains("3  apple"),
        "{logs}"
    );
    let maps = cluster
        .jobs()
        .iter()
        .filter(|j| j["name"] == "counts-map")
        .count();
    assert_eq!(maps, 2, "the kept map was not submitted a third time");

    // Nothing changed: both are kept, and nothing runs.
    let out = cluster.lull(&[
        "submit",
        workflow.to_str().unwrap(),
        "--key",
        cluster.key().to_str().unwrap(),
    ]);
    out.assert_success();
    assert!(
        out.stdout
            .contains(&format!("map: job {map2}, kept from the earlier run"))
            && out.stdout.contains(&format!(
                "reduce: job {reduce3}, kept from the earlier run, after map (job {map2})"
            )),
        "{out}"
    );
}

#[test]
fn a_workflows_mistakes_are_named_before_anything_is_submitted() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let wasm = std::fs::read(example_module("wasm32-wasip2", "wordfreq.wasm")).unwrap();
    let refused = |name: &str, workflow: &str, reduce_toml: &str, why: &str| {
        let path = cluster.write_job(
            name,
            workflow,
            &[
                ("map.toml", MAP.as_bytes()),
                ("reduce.toml", reduce_toml.as_bytes()),
                ("wordfreq.wasm", &wasm),
                ("shards.csv", b"shard\none\n"),
                ("data/one.txt", b"a"),
            ],
        );
        let out = cluster.submit_with_token(cluster.token(), &path);
        assert!(!out.success() && out.stderr.contains(why), "{name}: {out}");
    };
    refused(
        "cycle",
        "name = \"counts\"\n[[job]]\nname = \"map\"\nfile = \"map.toml\"\nafter = [\"reduce\"]\n\
         [[job]]\nname = \"reduce\"\nfile = \"reduce.toml\"\nafter = [\"map\"]\n",
        &reduce(3),
        "comes, through the jobs it comes after, after itself",
    );
    // A mount of a job's outputs that the job does not come after.
    refused(
        "unordered",
        "name = \"counts\"\n[[job]]\nname = \"map\"\nfile = \"map.toml\"\n\
         [[job]]\nname = \"reduce\"\nfile = \"reduce.toml\"\n",
        &reduce(3),
        "mount[0].job: \"map\" is not a job this one comes after in the workflow",
    );
    refused(
        "missing-file",
        "name = \"counts\"\n[[job]]\nname = \"map\"\nfile = \"nope.toml\"\n",
        &reduce(3),
        "job[0] (map)",
    );
    assert!(cluster.jobs().is_empty(), "nothing was submitted");
    // A job file that reads another job's outputs is submitted through its workflow.
    let reduce_alone = cluster.write_job("alone", &reduce(3), &[("wordfreq.wasm", &wasm)]);
    let out = cluster.lull(&[
        "submit",
        reduce_alone.to_str().unwrap(),
        "--key",
        cluster.key().to_str().unwrap(),
    ]);
    assert!(
        !out.success() && out.stderr.contains("names a job of a workflow"),
        "{out}"
    );
    // The API refuses a job after one that does not exist.
    let (status, body) = cluster.request("/api/v1/jobs", |http, url| {
        http.post(url).json(&serde_json::json!({
            "name": "after-nothing", "count": 1, "after": [999],
            "modules": [], "resources": {"memory": 1048576, "timeout_ms": 1000},
            "max_attempts": 1
        }))
    });
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["message"], "after: there is no job 999");
}
