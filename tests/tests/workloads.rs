//! What real programs need from a job file: exit codes other than 0 that mean success, which
//! failures are tried again (a program's own exit code is not, by default), and a guest that
//! sees exactly the environment its job declares.

use std::path::PathBuf;

use lull_tests::{Cluster, guests};

/// A job of `count` tasks of the parity program (exits 10 on even indexes and 20 on odd ones,
/// as a solver answers "sat" or "unsat"), with `extra` lines in its module and after it.
fn solver_job(cluster: &Cluster, name: &str, count: u32, module: &str, rest: &str) -> PathBuf {
    cluster.write_job(
        name,
        &format!(
            "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"solver.wasm\"\nargs = [\"{{index}}\"]\n{module}\n[resources]\nmemory = \"16MiB\"\n{rest}"
        ),
        &[("solver.wasm", &guests::exit_by_parity(10, 20))],
    )
}

#[test]
fn an_array_job_exiting_non_zero_by_design_succeeds_with_its_success_exit_codes() {
    let cluster = Cluster::with_agents(&["a"], 4);
    let job = cluster.submit(&solver_job(
        &cluster,
        "sat",
        6,
        "success_exit_codes = [0, 10, 20]",
        "",
    ));
    let done = cluster.wait_for_job_end(job);
    assert_eq!(done["state"], "succeeded", "{done}");
    for i in 0..6 {
        let task = cluster.task(job, i);
        let attempts = task["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{task}");
        let code = if i % 2 == 0 { 10 } else { 20 };
        assert_eq!(
            attempts[0]["result"]["modules"][0]["outcome"],
            serde_json::json!({"kind": "exited", "code": code}),
            "{task}"
        );
    }
    let dir = cluster.results(job);
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("1").join("status.json")).unwrap()).unwrap();
    assert_eq!(status["succeeded"], true, "{status}");
}

/// Waits for job `id` to end, which must be as failed; returns its task 0.
#[track_caller]
fn first_task_of_failed(cluster: &Cluster, id: u64) -> serde_json::Value {
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{done}");
    cluster.task(id, 0)
}

#[test]
fn a_programs_own_failure_is_not_tried_again_unless_retry_on_says_so() {
    let cluster = Cluster::with_agents(&["a", "b"], 2);
    // By default an exit code that is not a success ends the task at once, attempts or not.
    let plain = cluster.submit(&solver_job(
        &cluster,
        "plain",
        2,
        "",
        "[retry]\nmax_attempts = 3\n",
    ));
    let task = first_task_of_failed(&cluster, plain);
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1, "{task}");
    assert_eq!(
        task["task"]["cause"],
        "module solver: exited with code 10 (not tried again: retry.on leaves out exit)",
        "{task}"
    );
    // Listed in retry.on, it is tried again, on the other agent, until the attempts run out.
    let retried = cluster.submit(&solver_job(
        &cluster,
        "retried",
        1,
        "",
        "[retry]\nmax_attempts = 2\non = [\"exit\", \"agent\"]\n",
    ));
    let task = first_task_of_failed(&cluster, retried);
    let attempts = task["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{task}");
    assert_ne!(attempts[0]["agent"], attempts[1]["agent"], "{task}");
    assert_eq!(task["task"]["cause"], "module solver: exited with code 10");
    // A misspelt kind is refused before anything is sent, with its line and the kinds.
    let out = cluster.lull(&[
        "submit",
        solver_job(&cluster, "typo", 1, "", "[retry]\non = [\"exits\"]\n")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        !out.success()
            && out.stderr.contains("on = [\"exits\"]")
            && out.stderr.contains("expected one of `exit`, `trap`"),
        "{out}"
    );
}

#[test]
fn with_env_extra_off_a_guest_sees_exactly_its_declared_environment() {
    let cluster = Cluster::with_agents(&["a"], 2);
    let job_with = |name: &str, extra: &str| {
        cluster.write_job(
            name,
            &format!(
                "name = \"{name}\"\n[[module]]\npath = \"env.wasm\"\nenv = {{ MODE = \"fast\" }}\n{extra}\n[resources]\nmemory = \"16MiB\"\n"
            ),
            &[("env.wasm", &guests::environment())],
        )
    };
    let exact = cluster.submit(&job_with("exact", "env_extra = false"));
    let sharded = cluster.write_job(
        "sharded",
        "name = \"sharded\"\ncount = 2\n[[module]]\npath = \"env.wasm\"\nenv = { SHARD = \"part-{index}\" }\nenv_extra = false\n[resources]\nmemory = \"16MiB\"\n",
        &[("env.wasm", &guests::environment())],
    );
    let sharded = cluster.submit(&sharded);
    assert_eq!(cluster.wait_for_job_end(sharded)["state"], "succeeded");
    let shard = std::fs::read_to_string(cluster.results(sharded).join("1").join("stdout"));
    assert_eq!(
        shard.unwrap(),
        "SHARD=part-1\n",
        "{{index}} in an env value"
    );
    let usual = cluster.submit(&job_with("usual", ""));
    for job in [exact, usual] {
        let done = cluster.wait_for_job_end(job);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let stdout = |job: u64| std::fs::read_to_string(cluster.results(job).join("0").join("stdout"));
    assert_eq!(stdout(exact).unwrap(), "MODE=fast\n");
    let usual = stdout(usual).unwrap();
    let mut names: Vec<&str> = usual
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "LULL_ATTEMPT",
            "LULL_JOB",
            "LULL_TASK_COUNT",
            "LULL_TASK_INDEX",
            "MODE"
        ],
        "{usual}"
    );
}

#[test]
fn lull_logs_prints_a_tasks_streams_and_says_when_there_are_none_yet() {
    let mut cluster = Cluster::start();
    let two = cluster.write_job(
        "two",
        "name = \"two\"\ncount = 2\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[[module]]\npath = \"hello.wasm\"\nargs = [\"b{index}\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let two = cluster.submit(&two);
    let out = cluster.lull(&["logs", &format!("{two}/1")]);
    assert!(
        !out.success()
            && out
                .stderr
                .contains(&format!("task {two}/1 has not run yet")),
        "{out}"
    );
    let out = cluster.lull(&["logs", &two.to_string()]);
    assert!(
        !out.success() && out.stderr.contains("has 2 tasks: name one"),
        "{out}"
    );
    cluster.start_agent("a", lull_tests::AgentOptions::slots(2));
    cluster.wait_for_agents(&["a"]);
    let done = cluster.wait_for_job_end(two);
    assert_eq!(done["state"], "succeeded", "{done}");
    let out = cluster.lull(&["logs", &format!("{two}/1")]);
    out.assert_success();
    assert_eq!(
        out.stdout,
        "==> hello <==\nhello from task 1\n==> hello-1 <==\nhello from task b1\n"
    );
    assert_eq!(
        out.stderr,
        "==> hello <==\ndone: task 1\n==> hello-1 <==\ndone: task b1\n"
    );
    let out = cluster.lull(&["logs", &format!("{two}.0"), "--stream", "stderr"]);
    out.assert_success();
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("done: task b0"), "{out}");

    // A running task's output is not there yet, and the command says where it runs.
    let spinning = cluster.write_job(
        "spinning",
        "name = \"spinning\"\n[[module]]\npath = \"forever.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("forever.wasm", &guests::forever())],
    );
    let spinning = cluster.submit(&spinning);
    cluster.wait_for_job(spinning, "its task running", lull_tests::WAIT, |j| {
        j["counts"]["running"] == 1
    });
    let out = cluster.lull(&["logs", &spinning.to_string()]);
    assert!(
        !out.success() && out.stderr.contains("is running on agent"),
        "{out}"
    );
    cluster
        .lull(&["cancel", &spinning.to_string()])
        .assert_success();
}

#[test]
fn a_deadline_fails_what_is_unfinished_and_stops_what_runs() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "late",
        "name = \"late\"\ncount = 3\ndeadline = \"3s\"\n[[module]]\npath = \"forever.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("forever.wasm", &guests::forever())],
    );
    let job = cluster.submit(&job);
    let done = cluster.wait_for_job_end(job);
    assert_eq!(done["state"], "failed", "{done}");
    let cause = "the job's deadline passed (3s after it was submitted)";
    let first = cluster.task(job, 0);
    assert_eq!(first["task"]["cause"], cause, "{first}");
    assert_eq!(first["attempts"].as_array().unwrap().len(), 1, "{first}");
    for i in 1..3 {
        let task = cluster.task(job, i);
        assert_eq!(task["task"]["cause"], cause, "{task}");
        assert!(task["attempts"].as_array().unwrap().is_empty(), "{task}");
    }
    let out = cluster.lull(&["status", &job.to_string()]);
    assert!(out.stdout.contains(cause), "{out}");
}

#[test]
fn a_queue_timeout_fails_tasks_no_agent_takes_and_counts_from_submission_across_a_restart() {
    let mut cluster = Cluster::with_agents(&["a"], 2);
    let job = cluster.write_job(
        "nowhere",
        "name = \"nowhere\"\ncount = 2\nqueue_timeout = \"6s\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{index}\"]\n[resources]\nmemory = \"16MiB\"\n[placement]\nconstraints = [\"label.site == mars\"]\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let job = cluster.submit(&job);
    // Down for 5 of the 6 seconds: counted from submission, the tasks fail soon after the
    // restart; counted from the restart, 6 s after it.
    cluster.kill_coordinator();
    std::thread::sleep(std::time::Duration::from_secs(5));
    cluster.restart_coordinator();
    let restarted = std::time::Instant::now();
    let done = cluster.wait_for_job_end(job);
    let after = restarted.elapsed();
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        after < std::time::Duration::from_secs(4),
        "the wait counted from the restart, not from submission: failed {after:?} after it"
    );
    for i in 0..2 {
        let task = cluster.task(job, i);
        let cause = task["task"]["cause"].as_str().unwrap_or_default();
        // Why it waited follows: at the restart, its agent may not be back yet.
        assert!(
            cause.starts_with("waited 6s (queue_timeout) for an agent: "),
            "{task}"
        );
    }
}

#[test]
fn a_cached_resubmission_runs_nothing_and_says_where_its_results_came_from() {
    let cluster = Cluster::with_agents(&["a"], 2);
    let job_with = |name: &str, args: &str, cache: bool| {
        cluster.write_job(
            name,
            &format!(
                "name = \"{name}\"\ncount = 3\ncache = {cache}\n[[module]]\npath = \"hello.wasm\"\nargs = [{args}]\n[resources]\nmemory = \"16MiB\"\n"
            ),
            &[("hello.wasm", &guests::hello(0))],
        )
    };
    let first = cluster.submit(&job_with("first", "\"{index}\"", true));
    assert_eq!(cluster.wait_for_job_end(first)["state"], "succeeded");
    let assigned_before = |cluster: &Cluster| {
        (0..3)
            .map(|i| cluster.task(first, i)["attempts"].as_array().unwrap().len())
            .sum::<usize>()
    };
    let ran = assigned_before(&cluster);

    let again = cluster.submit(&job_with("again", "\"{index}\"", true));
    let done = cluster.wait_for_job_end(again);
    assert_eq!(done["state"], "succeeded", "{done}");
    for i in 0..3 {
        let task = cluster.task(again, i);
        let attempts = task["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{task}");
        let cause = format!("cached: the result of task {first}/{i} (attempt 1)");
        assert_eq!(task["task"]["cause"], cause.as_str(), "{task}");
        assert_eq!(attempts[0]["outcome"], cause.as_str(), "{task}");
    }
    assert_eq!(
        assigned_before(&cluster),
        ran,
        "the first job ran nothing more"
    );
    let out = cluster.lull(&["status", &again.to_string()]);
    assert!(out.stdout.contains("cached: the result of task"), "{out}");
    // The results are the first job's, byte for byte.
    let stdout = std::fs::read_to_string(cluster.results(again).join("2").join("stdout")).unwrap();
    assert_eq!(stdout, "hello from task 2\n");
    let out = cluster.lull(&["logs", &format!("{again}/1")]);
    out.assert_success();
    assert_eq!(out.stdout, "hello from task 1\n");

    // Other arguments, or a job that does not cache, run.
    let changed = cluster.submit(&job_with("changed", "\"x{index}\"", true));
    let plain = cluster.submit(&job_with("plain", "\"{index}\"", false));
    for job in [changed, plain] {
        assert_eq!(cluster.wait_for_job_end(job)["state"], "succeeded");
        let task = cluster.task(job, 0);
        assert!(task["task"]["cause"].is_null(), "{task}");
        assert_eq!(
            task["attempts"][0]["agent"],
            cluster.agent_id("a"),
            "{task}"
        );
    }
}

#[test]
fn a_mounted_tree_is_read_where_the_job_puts_it_and_a_mount_at_scratch_seeds_it() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let share = cluster.write_job(
        "mounts",
        "name = \"mounts\"\n\
         [[module]]\npath = \"share.wasm\"\n\
         [[module.mount]]\nsource = \"share\"\npath = \"/data/share\"\n\
         [[module]]\npath = \"seeded.wasm\"\n\
         [[module.mount]]\nsource = \"seed\"\npath = \"/scratch\"\n\
         [resources]\nmemory = \"16MiB\"\n",
        &[
            // No inputs: fd 3 is the mount; the second module's first preopen is /output, then
            // /scratch.
            ("share.wasm", &guests::cat(3, "sub/deep/data.txt")),
            ("seeded.wasm", &guests::cat(4, "notes/todo.txt")),
            ("share/sub/deep/data.txt", b"from deep in the tree\n"),
            ("share/top.txt", b"at the top\n"),
            ("seed/notes/todo.txt", b"seeded scratch\n"),
        ],
    );
    let job = cluster.submit(&share);
    let done = cluster.wait_for_job_end(job);
    assert_eq!(done["state"], "succeeded", "{done}");
    let out = cluster.lull(&["logs", &format!("{job}/0"), "--stream", "stdout"]);
    out.assert_success();
    assert_eq!(
        out.stdout,
        "==> share <==\nfrom deep in the tree\n==> seeded <==\nseeded scratch\n"
    );
    let spec = &cluster.job(job)["spec"]["modules"][0]["mounts"][0];
    assert_eq!(spec["path"], "/data/share");
    let paths: Vec<&str> = spec["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["sub/deep/data.txt", "top.txt"]);

    // A mount over the task's own directories is refused before anything is sent.
    let bad = cluster.write_job(
        "bad-mount",
        "name = \"bad\"\n[[module]]\npath = \"share.wasm\"\n[[module.mount]]\nsource = \"share\"\npath = \"/output\"\n",
        &[
            ("share.wasm", &guests::cat(3, "x")),
            ("share/x", b"x"),
        ],
    );
    let out = cluster.lull(&["submit", bad.to_str().unwrap()]);
    assert!(
        !out.success() && out.stderr.contains("module[0].mount[0].path"),
        "{out}"
    );
}

#[test]
fn each_task_reads_its_own_row_and_files_and_sees_no_other_tasks() {
    let cluster = Cluster::with_agents(&["a"], 2);
    let job = cluster.write_job(
        "rows",
        "name = \"rows\"\nitems = \"params.csv\"\n\
         [[module]]\npath = \"ls.wasm\"\ninputs = [\"shards/{shard}.txt\", \"common.txt\"]\nstdin = \"questions/{index}.txt\"\n\
         [[module]]\npath = \"env.wasm\"\nenv = { LABEL = \"{label} of {index}\" }\nenv_extra = false\n\
         [resources]\nmemory = \"16MiB\"\n",
        &[
            ("ls.wasm", &guests::list_dir(3)),
            ("env.wasm", &guests::environment()),
            (
                "params.csv",
                b"shard,label\nalpha,first\ngamma,\"second, with a comma\"\nbeta,third\n",
            ),
            ("shards/alpha.txt", b"a"),
            ("shards/beta.txt", b"b"),
            ("shards/gamma.txt", b"g"),
            ("common.txt", b"c"),
            ("questions/0.txt", b"q0\n"),
            ("questions/1.txt", b"q1\n"),
            ("questions/2.txt", b"q2\n"),
        ],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["count"], 3, "one task per row");
    for (i, shard, label) in [
        (0, "alpha", "first"),
        (1, "gamma", "second, with a comma"),
        (2, "beta", "third"),
    ] {
        let out = cluster.lull(&["logs", &format!("{id}/{i}"), "--stream", "stdout"]);
        out.assert_success();
        let (listing, rest) = out
            .stdout
            .strip_prefix("==> ls <==\n")
            .and_then(|s| s.split_once("--\n"))
            .unwrap_or_else(|| panic!("task {i}: {out}"));
        let mut names: Vec<&str> = listing
            .lines()
            .filter(|n| *n != "." && *n != "..")
            .collect();
        names.sort();
        let own = format!("{shard}.txt");
        let mut expected = vec!["common.txt", own.as_str()];
        expected.sort();
        assert_eq!(names, expected, "task {i}'s /input");
        assert_eq!(
            rest,
            format!("q{i}\n==> env <==\nLABEL={label} of {i}\n"),
            "task {i}'s stdin and environment"
        );
    }

    // Mistakes are named before anything is sent.
    let refused = |name: &str, toml: &str, csv: &[u8], why: &str| {
        let job = cluster.write_job(
            name,
            toml,
            &[
                ("ls.wasm", &guests::list_dir(3)),
                ("params.csv", csv),
                ("shards/alpha.txt", b"a"),
            ],
        );
        let out = cluster.submit_with_token(cluster.token(), &job);
        assert!(!out.success() && out.stderr.contains(why), "{name}: {out}");
    };
    refused(
        "typo",
        "name = \"typo\"\nitems = \"params.csv\"\n[[module]]\npath = \"ls.wasm\"\nargs = [\"{shrad}\"]\n",
        b"shard\nalpha\n",
        "module[0].args[0]: {shrad} is neither {index} nor a column of items (shard)",
    );
    refused(
        "counted",
        "name = \"counted\"\ncount = 5\nitems = \"params.csv\"\n[[module]]\npath = \"ls.wasm\"\n",
        b"shard\nalpha\n",
        "count is 5, but items has 1 row(s)",
    );
    refused(
        "missing",
        "name = \"missing\"\nitems = \"params.csv\"\n[[module]]\npath = \"ls.wasm\"\ninputs = [\"shards/{shard}.txt\"]\n",
        b"shard\nalpha\nomega\n",
        "inputs \"shards/{shard}.txt\" for task 1",
    );
    refused(
        "header",
        "name = \"header\"\nitems = \"params.csv\"\n[[module]]\npath = \"ls.wasm\"\n",
        b"index,x\n1,2\n",
        "{index} is the task's index already",
    );
}

#[test]
fn lull_logs_follow_prints_lines_as_the_task_writes_them_and_the_rest_when_it_ends() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "ticker",
        "name = \"ticker\"\n[[module]]\npath = \"ticker.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("ticker.wasm", &guests::ticker(5, 1500))],
    );
    let id = cluster.submit(&job);
    let mut child = cluster
        .lull_command(&["logs", &id.to_string(), "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting lull logs -f");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (first_at, first) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a line while the task runs");
    assert_eq!(first, "tick 0");
    let now = cluster.job(id);
    assert_eq!(
        now["state"], "running",
        "the first line came while the task ran: {now}"
    );
    let mut lines = vec![first];
    let mut last_at = first_at;
    while let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(60)) {
        lines.push(line);
        last_at = at;
    }
    assert_eq!(lines, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);
    assert!(
        last_at - first_at >= Duration::from_secs(3),
        "lines came as they were written, over {:?}",
        last_at - first_at
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("[lull: task {id}/0 succeeded]")),
        "{stderr}"
    );
}
