//! `lull-coordinator backup DIR` while the coordinator runs, then a restore into an empty data
//! directory: the restored coordinator has the same key (its agents reconnect), its finished
//! jobs and their result files, and runs new work.

use std::fs;
use std::path::Path;

use lull_tests::{Cluster, guests, summarize};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_backup_taken_while_running_restores_jobs_results_and_the_key() {
    let mut cluster = Cluster::with_agents(&["worker"], 2);
    let job = cluster.write_job(
        "before",
        "name = \"before\"\ncount = 2\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let before = cluster.submit(&job);
    let done = cluster.wait_for_job_end(before);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    let dir = cluster.root().join("backup");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let out = cluster.coordinator_command(&["backup", &dir_arg]);
    out.assert_success();
    assert!(out.stdout.contains("(1 job(s))"), "{out}");
    assert!(dir.join("lull.db").is_file() && dir.join("tls/coordinator.key.der").is_file());
    // Again: nothing new to copy but the database.
    let again = cluster.coordinator_command(&["backup", &dir_arg]);
    again.assert_success();
    // The first run copied every blob, the second none.
    let blobs = |text: &str| -> (u64, u64) {
        let (head, tail) = text.split_once(" blob(s) (").expect("a blob count");
        let total = head.rsplit(' ').next().unwrap().parse().unwrap();
        let new = tail.split(' ').next().unwrap().parse().unwrap();
        (total, new)
    };
    let (total, new) = blobs(&out.stdout);
    assert!(total >= 3 && new == total, "{out}");
    assert_eq!(blobs(&again.stdout), (total, 0), "{again}");
    assert!(again.stdout.contains("0 new, 0 B"), "{again}");

    // Lose the data directory; restore the backup into an empty one.
    cluster.kill_coordinator();
    let data = cluster.coordinator_data();
    fs::rename(&data, cluster.root().join("lost")).unwrap();
    copy_dir(&dir, &data);
    cluster.restart_coordinator();
    cluster.wait_for_agents(&["worker"]);

    let restored = cluster.job(before);
    assert_eq!(restored["state"], "succeeded", "{restored}");
    let results = cluster.results(before);
    // The files `lull results` really writes for a one-module task; a missing one fails.
    let read = |rel: &str| {
        fs::read_to_string(results.join(rel))
            .unwrap_or_else(|e| panic!("{rel} of the restored results: {e}"))
    };
    assert_eq!(read("1/stdout"), "hello from task 1\n");
    assert_eq!(read("1/output/result.txt"), "1");

    let after = cluster.submit(&job);
    let done = cluster.wait_for_job_end(after);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));

    // A data directory without a database is said to be one, not backed up empty.
    let empty = cluster.root().join("empty");
    let out = std::process::Command::new(lull_tests::binary("lull-coordinator"))
        .args(["backup", &dir_arg, "--data-dir", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no coordinator database"), "{stderr}");
    assert!(!empty.exists(), "nothing was made there");
}
