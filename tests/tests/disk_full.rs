//! Full disks: the coordinator's data directory, and an agent's, on small file systems that
//! fill up while work runs. Errors say what is wrong, nothing half-written is kept, and work
//! carries on once space returns.

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, Tmpfs, WAIT, summarize};

#[test]
fn a_coordinator_whose_disk_fills_up_says_so_and_finishes_the_work_once_space_returns() {
    let disk = Tmpfs::mount("48m");
    let mut cluster = Cluster::start_with_coordinator_data(&disk.path);
    cluster.start_agent("left", AgentOptions::slots(2));
    cluster.start_agent("right", AgentOptions::slots(2));
    cluster.wait_for_agents(&["left", "right"]);
    let id = cluster.submit(&cluster.many_tasks("full", 40, 300));
    cluster.wait_for_job(id, "some tasks done", WAIT, |j| {
        j["counts"]["succeeded"].as_u64() >= Some(4)
    });
    let filler = disk.fill("filler");
    // Results come in meanwhile and cannot be kept; a new job cannot be stored.
    std::thread::sleep(Duration::from_secs(3));
    let refused_job = cluster.many_tasks("refused", 2, 7);
    let refused = cluster.lull(&[
        "submit",
        refused_job.to_str().unwrap(),
        "--key",
        cluster.key().to_str().unwrap(),
    ]);
    assert!(
        !refused.success(),
        "a job was accepted on a full disk: {refused}"
    );
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("No space left on device") || said.contains("full"),
        "the refusal says why: {said}"
    );
    let stuck = cluster.job(id);
    assert_ne!(stuck["state"], "succeeded", "{}", summarize(&stuck));
    let log = cluster.coordinator_log();
    assert!(
        log.contains("could not store a blob from an agent")
            && log.contains("No space left on device"),
        "the coordinator says what it cannot do: {log}"
    );

    std::fs::remove_file(filler).unwrap();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    cluster.assert_one_result_per_task(id, 40);
    // Every output kept is whole: none was cut short by the full disk.
    let results = cluster.results(id);
    for index in 0..40 {
        let dir = results.join(index.to_string());
        assert_eq!(
            std::fs::read_to_string(dir.join("stdout")).unwrap(),
            format!("hello from task {index}\n")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("output/result.txt")).unwrap(),
            index.to_string()
        );
    }
    // The refused job left nothing behind, and jobs are taken again.
    assert_eq!(cluster.jobs().len(), 1, "{:?}", cluster.jobs());
    let again = cluster.submit(&cluster.many_tasks("again", 2, 0));
    assert_eq!(cluster.wait_for_job_end(again)["state"], "succeeded");
}

#[test]
fn an_agent_whose_disk_fills_up_takes_no_work_until_space_returns() {
    let (disk, mut cluster, _data) = agent_on_a_small_disk();
    let first = cluster.submit(&cluster.many_tasks("before", 4, 0));
    assert_eq!(cluster.wait_for_job_end(first)["state"], "succeeded");

    let filler = disk.fill("filler");
    let short = lull_tests::wait_for("the agent to say its disk is short", WAIT, || {
        cluster
            .agents()
            .into_iter()
            .find(|a| a["name"] == "small" && a["status"]["accepting"] == false)
    });
    let reason = short["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("below min_free_disk 16 MiB"), "{short}");
    let waiting = cluster.submit(&cluster.many_tasks("during", 4, 0));
    std::thread::sleep(Duration::from_secs(3));
    let job = cluster.job(waiting);
    assert_eq!(job["state"], "pending", "{}", summarize(&job));
    assert!(cluster.agent_is_running("small"));

    std::fs::remove_file(filler).unwrap();
    assert!(disk.free() > 16 << 20);
    let done = cluster.wait_for_job_end(waiting);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    cluster.assert_one_result_per_task(waiting, 4);
}

#[test]
fn an_agent_whose_disk_fills_while_tasks_run_reports_why_and_loses_no_result() {
    let (disk, cluster, data) = agent_on_a_small_disk();
    // Each task writes its file at once, then runs on: the disk fills meanwhile, so the agent
    // can keep neither the file nor the result.
    let job = cluster.write_job(
        "late",
        "name = \"late\"\ncount = 2\n[[module]]\npath = \"t.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("t.wasm", &lull_tests::guests::hello_writing_first(4000))],
    );
    let id = cluster.submit(&job);
    cluster.wait_for_job(id, "both tasks running", WAIT, |j| {
        j["counts"]["running"].as_u64() == Some(2)
    });
    // A moment for the guests to write their files.
    std::thread::sleep(Duration::from_millis(500));
    let filler = disk.fill("filler");
    // The outbox cannot take a result either: what a full disk does only when no page is
    // freed in between, made certain here by putting a file where its directory was.
    let outbox = data.join("outbox");
    let away = data.join("outbox.away");
    std::fs::rename(&outbox, &away).unwrap();
    std::fs::File::create(&outbox).unwrap();

    // Each attempt ends failed with the reason, and its result reaches the coordinator from
    // the agent's memory; the tasks wait for an agent with room.
    for index in 0..2 {
        let task = lull_tests::wait_for("the failed attempt to be recorded", WAIT, || {
            let task = cluster.task(id, index);
            let ended = task["attempts"][0]["outcome"].is_string();
            ended.then_some(task)
        });
        let attempt = &task["attempts"][0];
        let said = attempt["outcome"].as_str().unwrap_or_default();
        assert!(
            said.contains("could not keep the task's output")
                && said.contains("No space left on device"),
            "task {index}: {task:#}"
        );
        assert_eq!(
            attempt["result"]["modules"][0]["outcome"]["kind"], "unreportable",
            "task {index}: {task:#}"
        );
    }
    let log = cluster.agent_log("small");
    assert!(
        log.contains("could not keep results on disk; sending them from memory"),
        "{log}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let waiting = cluster.job(id);
    assert_eq!(waiting["state"], "pending", "{}", summarize(&waiting));
    assert!(
        waiting["waiting_reason"]
            .as_str()
            .is_some_and(|r| r.contains("below min_free_disk")),
        "{}",
        summarize(&waiting)
    );

    std::fs::remove_file(&outbox).unwrap();
    std::fs::rename(&away, &outbox).unwrap();
    std::fs::remove_file(filler).unwrap();
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let results = cluster.results(id);
    for index in 0..2 {
        let dir = results.join(index.to_string());
        assert_eq!(
            std::fs::read_to_string(dir.join("output/result.txt")).unwrap(),
            index.to_string()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("stdout")).unwrap(),
            format!("hello from task {index}\n")
        );
    }
    // Nothing half-written was left in the agent's outbox or cache.
    let leftovers: Vec<_> = walk_files(&data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A cluster with one agent, `small` (two slots, `min_free_disk` 16 MiB), whose data
/// directory (returned) is on a 48 MiB file system of its own.
fn agent_on_a_small_disk() -> (Tmpfs, Cluster, std::path::PathBuf) {
    let disk = Tmpfs::mount("48m");
    let mut cluster = Cluster::start();
    let data = disk.path.join("agent");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&data, cluster.root().join("agents/small")).unwrap();
    cluster.start_agent(
        "small",
        AgentOptions {
            settings: Some("min_free_disk = \"16MiB\"\n".into()),
            ..AgentOptions::slots(2)
        },
    );
    cluster.wait_for_agents(&["small"]);
    (disk, cluster, data)
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
