//! The `lull` command for people and for programs: `--json` on the commands that print what
//! they did or found (`lull results`, `lull cancel`, `lull keys generate`, `lull sign`,
//! `lull verify`), tables fitted to the terminal's width, and a quiet end when the reader of
//! the output goes away (`lull status | head`).

use std::process::{Command, Output};

use lull_tests::{AgentOptions, Cluster, guests, summarize};
use serde_json::Value;

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

fn lull_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(lull_tests::binary("lull"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running lull")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn keys_sign_and_verify_print_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = lull_in(dir.path(), &["keys", "generate", "--out", "key", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let generated = json_of(&out);
    assert_eq!(generated["private_key"], "key");
    assert_eq!(generated["public_key_file"], "key.pub");
    let public = generated["public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("ssh-ed25519 "), "{generated}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("key.pub"))
            .unwrap()
            .trim(),
        public
    );

    std::fs::write(dir.path().join("guest.wasm"), guests::hello(0)).unwrap();
    let out = lull_in(
        dir.path(),
        &["sign", "guest.wasm", "--key", "key", "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    let signed = json_of(&out);
    assert_eq!(signed["signature"], "guest.wasm.sig", "{signed}");
    assert_eq!(signed["public_key"], public.as_str(), "{signed}");

    std::fs::write(
        dir.path().join("allowed_signers"),
        format!("author@example.org {public}\n"),
    )
    .unwrap();
    let verify = [
        "verify",
        "guest.wasm",
        "--allowed-signers",
        "allowed_signers",
        "--json",
    ];
    let out = lull_in(dir.path(), &verify);
    assert!(out.status.success(), "{out:?}");
    let good = json_of(&out);
    assert_eq!(good["verified"], true, "{good}");
    assert_eq!(good["signer"], "author@example.org", "{good}");
    assert_eq!(good["reason"], Value::Null, "{good}");

    // Other bytes under the same signature: not verified, exit 1, and the reason in the JSON.
    std::fs::write(dir.path().join("guest.wasm"), guests::forever()).unwrap();
    let out = lull_in(dir.path(), &verify);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let bad = json_of(&out);
    assert_eq!(bad["verified"], false, "{bad}");
    assert_eq!(bad["signer"], Value::Null, "{bad}");
    assert!(
        bad["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{bad}"
    );
}

#[test]
fn tables_fit_the_terminal_and_piped_tables_are_whole() {
    let mut cluster = Cluster::start();
    cluster.start_agent("a-workstation-with-a-long-name", AgentOptions::slots(1));
    cluster.wait_for_agents(&["a-workstation-with-a-long-name"]);
    let agents = |columns: Option<&str>| {
        let mut cmd = Command::new(lull_tests::binary("lull"));
        cmd.args(["--coordinator", &cluster.api_url()])
            .arg("agents")
            .env("LULL_TOKEN", cluster.token())
            .env(
                "LULL_COORDINATOR_KEY",
                cluster.http_key().unwrap_or_default(),
            )
            .env_remove("COLUMNS");
        if let Some(c) = columns {
            cmd.env("COLUMNS", c);
        }
        let out = cmd.output().expect("running lull agents");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let whole = agents(None);
    let lines: Vec<&str> = whole.lines().collect();
    assert_eq!(lines.len(), 2, "{whole}");
    assert!(lines[0].starts_with("ID"), "{whole}");
    assert!(
        lines[1].contains("a-workstation-with-a-long-name"),
        "{whole}"
    );
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(
        widest > 90,
        "the test needs a table wider than 90 columns: {whole}"
    );

    let fitted = agents(Some("90"));
    let lines: Vec<&str> = fitted.lines().collect();
    assert_eq!(lines.len(), 2, "each row stays on one line:\n{fitted}");
    for line in &lines {
        assert!(line.chars().count() <= 90, "wider than 90: {line:?}");
    }
    assert!(lines[1].contains('…'), "nothing was cut:\n{fitted}");
    assert!(lines[0].starts_with("ID"), "{fitted}");
}

/// Runs a program with its stdout on a pipe whose reading end is already closed.
fn into_closed_pipe(program: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(lull_tests::binary(program))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running the program")
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (program, args) in [
        ("lull", vec!["completions", "bash"]),
        (
            "lull-coordinator",
            vec!["token", "list", "--data-dir", data],
        ),
    ] {
        let out = into_closed_pipe(program, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{program} {args:?}: {stderr}");
        // Ended by SIGPIPE, as `cat` or `ls` would be.
        assert_eq!(out.status.signal(), Some(13), "{program} {args:?}: {out:?}");
    }
}
