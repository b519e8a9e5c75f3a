//! Fast starts through the whole loop, over real processes:
//!
//! - `lull submit` uploads only the blobs the coordinator lacks: nothing of an unchanged job,
//!   only the changed file of a changed one;
//! - an upload cut off mid-way continues from where it stopped; a corrupt chunk is refused;
//! - blobs no job refers to are collected after their grace period, and never one in use;
//! - a task that finds every memory slot taken waits, says so in `lull status`, then runs;
//! - an agent reports the modules it holds compiled, across its restarts, and the scheduler
//!   sends their tasks to it.

use std::time::Duration;

use lull_tests::{AgentOptions, Cluster, example_module, guests, summarize, wait_for};
use serde_json::{Value, json};

fn digest_of(bytes: &[u8]) -> String {
    lull_protocol::Digest::of(bytes).to_string()
}

/// A job of `count` tasks counting the words of `inputs` with the `wordcount` example
/// (`wc.wasm`), which writes `/output/counts.tsv`.
fn wordcount_job(name: &str, count: u32, inputs: &[&str]) -> String {
    let inputs: Vec<String> = inputs.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"wc.wasm\"\ninputs = [{}]\n[resources]\nmemory = \"64MiB\"\n",
        inputs.join(", ")
    )
}

/// A job of `count` tasks of `hello(spin_ms)`.
fn hello_job(name: &str, count: u32) -> String {
    format!(
        "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"hello.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
    )
}

fn wordcount() -> Vec<u8> {
    std::fs::read(example_module("wasm32-wasip2", "wordcount.wasm")).expect("the wordcount example")
}

#[test]
fn only_missing_blobs_are_uploaded() {
    let mut cluster = Cluster::with_agents(&["a"], 2);
    let module = wordcount();
    let job = cluster.write_job(
        "twice",
        &wordcount_job("twice", 2, &["one.txt", "two.txt"]),
        &[
            ("wc.wasm", &module),
            ("one.txt", b"first input"),
            ("two.txt", b"second input"),
        ],
    );
    let first = cluster.submit_json(&job);
    let up = &first["upload"];
    assert_eq!(up["files"], 3, "{first}");
    assert_eq!(up["uploaded"], 3, "{first}");
    assert_eq!(up["module_bytes"], module.len() as u64, "{first}");
    assert_eq!(up["bytes"], (module.len() + 11 + 12) as u64, "{first}");

    // The same job again: nothing to send.
    let again = cluster.submit_json(&job);
    assert_eq!(again["upload"]["uploaded"], 0, "{again}");
    assert_eq!(again["upload"]["bytes"], 0, "{again}");

    // One input changed: only it is sent.
    std::fs::write(job.with_file_name("two.txt"), b"second input, edited").unwrap();
    let changed = cluster.submit_json(&job);
    assert_eq!(changed["upload"]["uploaded"], 1, "{changed}");
    assert_eq!(changed["upload"]["module_bytes"], 0, "{changed}");
    assert_eq!(changed["upload"]["bytes"], 20, "{changed}");

    for answer in [first, again, changed] {
        let id = answer["job"].as_u64().unwrap();
        let done = cluster.wait_for_job_end(id);
        assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    }
    // The manifest lists the module and both inputs as layers.
    let manifest = cluster.get("/api/v1/jobs/3/manifest");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(layers[0]["digest"], digest_of(&module));
    assert_eq!(layers[2]["digest"], digest_of(b"second input, edited"));
    cluster.wait_for_agents(&["a"]);
}

#[test]
fn an_interrupted_upload_resumes_and_a_corrupt_chunk_is_refused() {
    let cluster = Cluster::with_agents(&["a"], 1);
    // 20 MiB of input: three chunks of at most 8 MiB.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = digest_of(&big);
    let module = wordcount();
    let job = cluster.write_job(
        "big",
        &wordcount_job("big", 1, &["big.bin"]),
        &[("wc.wasm", &module), ("big.bin", &big)],
    );

    // A client starts the upload and sends its first 8 MiB, then goes away.
    let (status, started) = cluster.request("/api/v1/uploads", |c, url| {
        c.post(url)
            .json(&json!({ "digest": digest, "size": big.len() }))
    });
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["offset"], 0);
    let chunk = &big[..8 << 20];
    let path = format!("/api/v1/uploads/{digest}");
    let (status, after) = cluster.request(&path, |c, url| {
        c.patch(url)
            .header("upload-offset", "0")
            .header("chunk-digest", digest_of(chunk))
            .body(chunk.to_vec())
    });
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["offset"], 8u64 << 20);

    // A chunk whose bytes do not match its digest is refused, and nothing of it kept.
    let mut damaged = big[8 << 20..9 << 20].to_vec();
    damaged[100] ^= 0xff;
    let (status, refused) = cluster.request(&path, |c, url| {
        c.patch(url)
            .header("upload-offset", (8u64 << 20).to_string())
            .header("chunk-digest", digest_of(&big[8 << 20..9 << 20]))
            .body(damaged)
    });
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "chunk_rejected", "{refused}");
    // A chunk for the wrong place is refused too, saying where the upload stands.
    let (status, misplaced) = cluster.request(&path, |c, url| {
        c.patch(url)
            .header("upload-offset", "0")
            .header("chunk-digest", digest_of(chunk))
            .body(chunk.to_vec())
    });
    assert_eq!(status, 409, "{misplaced}");
    assert!(
        misplaced["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("offset {}", 8u64 << 20)),
        "{misplaced}"
    );
    assert_eq!(cluster.get(&path)["offset"], 8u64 << 20);

    // `lull submit` continues it: only the last 12 MiB travel.
    let answer = cluster.submit_json(&job);
    let up = &answer["upload"];
    assert_eq!(up["resumed_bytes"], 8u64 << 20, "{answer}");
    assert_eq!(up["bytes"], (12u64 << 20) + module.len() as u64, "{answer}");
    assert_eq!(
        std::fs::read(cluster.blob_path(&digest)).unwrap(),
        big,
        "the stored blob is the whole file"
    );
    let done = cluster.wait_for_job_end(answer["job"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
}

#[test]
fn uploads_past_the_cap_are_refused_before_any_byte_is_sent() {
    let cluster = Cluster::start();
    let (status, body) = cluster.request("/api/v1/uploads", |c, url| {
        c.post(url)
            .json(&json!({ "digest": digest_of(b"x"), "size": 2u64 << 30 }))
    });
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
}

#[test]
fn unreferenced_blobs_are_collected_after_their_grace_and_used_ones_never() {
    let mut cluster = Cluster::start_with(&["--blob-grace", "1s", "--gc-interval", "200ms"]);
    cluster.start_agent("a", AgentOptions::slots(2));
    cluster.wait_for_agents(&["a"]);
    let module = wordcount();
    let only_a = b"input of job A".as_slice();
    let only_b = b"the input of job B".as_slice();
    let a = cluster.write_job(
        "a",
        &wordcount_job("a", 1, &["a.txt"]),
        &[("wc.wasm", &module), ("a.txt", only_a)],
    );
    let b = cluster.write_job(
        "b",
        &wordcount_job("b", 1, &["b.txt"]),
        &[("wc.wasm", &module), ("b.txt", only_b)],
    );
    let job_a = cluster.submit(&a);
    let job_b = cluster.submit(&b);
    for id in [job_a, job_b] {
        let done = cluster.wait_for_job_end(id);
        assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    }
    let outputs_a: Vec<String> = cluster.job(job_a)["tasks"][0]["result"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["digest"].as_str().unwrap().to_owned())
        .collect();
    assert!(!outputs_a.is_empty());

    // Several grace periods later, every blob is still referenced by a job: all stay.
    std::thread::sleep(Duration::from_secs(3));
    let held = cluster.stored_blobs().len();
    for d in [digest_of(&module), digest_of(only_a), digest_of(only_b)] {
        assert!(cluster.blob_path(&d).is_file(), "{d} in use, yet collected");
    }

    // A job that has not ended cannot be deleted.
    let forever = cluster.write_job(
        "forever",
        "name = \"forever\"\n[[module]]\npath = \"forever.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("forever.wasm", &guests::forever())],
    );
    let running = cluster.submit(&forever);
    let out = cluster.lull(&["delete", &running.to_string()]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("cancel it first"), "{out}");
    cluster
        .lull(&["cancel", &running.to_string()])
        .assert_success();
    cluster.wait_for_job_end(running);

    // Deleting job A frees what only it used, once the grace has passed.
    cluster
        .lull(&["delete", &job_a.to_string()])
        .assert_success();
    let only_a_path = cluster.blob_path(&digest_of(only_a));
    wait_for("job A's input to be collected", lull_tests::WAIT, || {
        (!only_a_path.exists()).then_some(())
    });
    for d in &outputs_a {
        assert!(!cluster.blob_path(d).exists(), "job A's output {d} kept");
    }
    assert!(
        cluster.blob_path(&digest_of(&module)).is_file(),
        "shared module collected"
    );
    assert!(
        cluster.blob_path(&digest_of(only_b)).is_file(),
        "job B's input collected"
    );
    assert!(cluster.stored_blobs().len() < held);
    // Job B's results are whole.
    let results = cluster.results(job_b);
    assert!(
        results.join("0/output/counts.tsv").is_file(),
        "{}",
        results.display()
    );
}

#[test]
fn a_task_waits_for_a_memory_slot_then_runs() {
    let mut cluster = Cluster::start();
    // Two task slots but one memory slot, and no variable pool: the second task must wait.
    let config = cluster.write_agent_config(
        "small",
        "dedicated = true\n[pool]\nclasses = [{ size = \"64MiB\", slots = 1 }]\nvariable = \"0\"\n",
    );
    cluster.start_agent(
        "small",
        AgentOptions {
            scavenging_config: Some(config),
            ..AgentOptions::slots(2)
        },
    );
    cluster.wait_for_agents(&["small"]);
    let job = cluster.write_job(
        "queue",
        &hello_job("queue", 2),
        &[("hello.wasm", &guests::hello(3000))],
    );
    let id = cluster.submit(&job);
    let waiting = cluster.wait_for_job(id, "a task waiting on its agent", lull_tests::WAIT, |j| {
        j["tasks"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["waiting"].is_string()))
    });
    let why: Vec<&str> = waiting["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["waiting"].as_str())
        .collect();
    assert!(
        why[0].contains("memory slot") && why[0].contains("1 x 64 MiB"),
        "{why:?}"
    );
    let status = cluster.lull(&["status", &id.to_string()]);
    status.assert_success();
    assert!(status.stdout.contains("waiting"), "{status}");
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    assert!(
        done["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["waiting"].is_null())
    );
}

#[test]
fn a_task_that_can_never_fit_the_pools_is_refused_with_the_reason() {
    let mut cluster = Cluster::start();
    // One 16 MiB slot and 16 MiB of variable pool: one guest of 16 MiB fits, two never do.
    let config = cluster.write_agent_config(
        "tiny",
        "dedicated = true\n[pool]\nclasses = [{ size = \"16MiB\", slots = 1 }]\nvariable = \"16MiB\"\n",
    );
    cluster.start_agent(
        "tiny",
        AgentOptions {
            scavenging_config: Some(config),
            ..AgentOptions::slots(1)
        },
    );
    let listed = cluster.wait_for_agents(&["tiny"]);
    // The agent tells the coordinator the most a module may have here.
    assert_eq!(
        listed[0]["capacity"]["max_task_memory"],
        16u64 << 20,
        "{listed:?}"
    );
    let module = guests::hello(0);
    let job = cluster.write_job(
        "pair",
        "name = \"pair\"\n[[module]]\npath = \"a.wasm\"\nargs = [\"a\"]\n[[module]]\npath = \"b.wasm\"\nargs = [\"b\"]\n[resources]\nmemory = \"16MiB\"\n[retry]\nmax_attempts = 1\n",
        &[("a.wasm", &module), ("b.wasm", &module)],
    );
    let id = cluster.submit(&job);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "failed", "{}", summarize(&done));
    let text = summarize(&done);
    assert!(
        text.contains("needs 32 MiB for 2 guest(s) of 16 MiB each; this agent's variable pool is 16 MiB and its largest slot is 16 MiB"),
        "{text}"
    );
}

#[test]
fn an_agent_holding_the_module_compiled_gets_its_tasks_even_after_a_restart() {
    let mut cluster = Cluster::start();
    // "cold" joins first: ties go to the first agent unless another holds the module.
    cluster.start_agent("cold", AgentOptions::slots(2));
    cluster.wait_for_agents(&["cold"]);
    let config =
        cluster.write_agent_config("warm", "dedicated = true\n[labels]\nrole = \"warm\"\n");
    let warm_options = AgentOptions {
        scavenging_config: Some(config),
        ..AgentOptions::slots(2)
    };
    cluster.start_agent("warm", warm_options.clone());
    cluster.wait_for_agents(&["cold", "warm"]);
    let module = guests::xorshift(1000);
    let first = cluster.write_job(
        "first",
        "name = \"first\"\n[[module]]\npath = \"m.wasm\"\n[resources]\nmemory = \"16MiB\"\n[placement]\nconstraints = [\"label.role == warm\"]\n",
        &[("m.wasm", &module)],
    );
    let id = cluster.submit(&first);
    assert_eq!(cluster.wait_for_job_end(id)["state"], "succeeded");

    // The agent restarts: it says what it holds compiled in its hello.
    cluster.kill_agent("warm");
    cluster.start_agent("warm", warm_options);
    cluster.wait_for_agents(&["cold", "warm"]);
    let status = cluster.agent_command("warm", "status");
    let compiled = wait_for("the agent's status", lull_tests::WAIT, || {
        let s = cluster.agent_command("warm", "status");
        s.success().then(|| s.json())
    });
    assert_eq!(compiled["cache"]["compiled"], 1, "{status}");

    let second = cluster.write_job(
        "second",
        "name = \"second\"\n[[module]]\npath = \"m.wasm\"\n[resources]\nmemory = \"16MiB\"\n",
        &[("m.wasm", &module)],
    );
    let id = cluster.submit(&second);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let warm = cluster.agent_id("warm");
    assert_eq!(
        done["tasks"][0]["agent"],
        Value::from(warm),
        "{}",
        summarize(&done)
    );
    // It loaded the module from disk rather than compiling it again.
    let log = cluster.agent_log("warm");
    assert!(log.contains("from_disk"), "{log}");
}
