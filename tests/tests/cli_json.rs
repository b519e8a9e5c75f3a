//! `--json` on the commands that print what they did: `lull results` and `lull cancel`.

use lull_tests::{Cluster, guests, summarize};

#[test]
fn results_and_cancel_print_json_when_asked() {
    let cluster = Cluster::with_agents(&["a"], 2);
    let job = cluster.write_job(
        "two",
        "name = \"two\"\ncount = 2\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let dir = cluster.root().join("json-results");
    let out = cluster.lull(&[
        "results",
        &id.to_string(),
        "-o",
        dir.to_str().unwrap(),
        "--json",
    ]);
    out.assert_success();
    let v = out.json();
    assert_eq!(v["job"], id, "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["output_files"], 2, "{v}");
    assert_eq!(v["dir"], dir.to_str().unwrap(), "{v}");
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{v}");
    assert_eq!(tasks[1]["index"], 1);
    assert_eq!(tasks[1]["succeeded"], true);
    assert!(dir.join("1/output/result.txt").is_file());

    let forever = cluster.write_job(
        "forever",
        "name = \"forever\"\n[[module]]\npath = \"forever.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("forever.wasm", &guests::forever())],
    );
    let running = cluster.submit(&forever);
    cluster.wait_for_job(running, "the task to run", lull_tests::WAIT, |j| {
        j["counts"]["running"] == 1
    });
    let out = cluster.lull(&["cancel", &running.to_string(), "--json"]);
    out.assert_success();
    let v = out.json();
    assert_eq!(v["job"], running, "{v}");
    assert_eq!(v["stopping"], 1, "{v}");
}
