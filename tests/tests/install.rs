//! `lull-agent install` and `uninstall` through the real binary, under a temporary root: the
//! dry run writes nothing, install writes the configuration, trust list and service, a second
//! install changes nothing, and uninstall (then `--purge`) takes it all away. The service manager
//! is not driven under another root: install says what to run instead.

use std::path::Path;
use std::process::Command;

use lull_tests::binary;

fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("lull-agent"))
        .args(args)
        .output()
        .expect("running lull-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    found.sort();
    found
}

#[test]
fn install_and_uninstall_under_a_temporary_root() {
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("utf-8 path");
    let hash = format!("sha256:{}", "0f".repeat(32));
    let install = [
        "install",
        "--coordinator",
        "lull.lab.example.org:7443",
        "--ca-hash",
        &hash,
        "--binary",
        "/usr/local/bin/lull-agent",
        "--root",
        root_arg,
    ];

    let mut dry = install.to_vec();
    dry.push("--dry-run");
    let (ok, stdout, stderr) = agent(&dry);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("would write:") && stdout.contains("lull-agent.service"),
        "{stdout}"
    );
    assert!(files_under(root.path()).is_empty(), "a dry run wrote files");

    let (ok, stdout, stderr) = agent(&install);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "to start it on the target system, run: systemctl enable --now lull-agent.service"
        ),
        "{stdout}"
    );
    let written = files_under(root.path());
    for path in [
        "etc/lull/agent.toml",
        "etc/lull/allowed_signers",
        "etc/systemd/system/lull-agent.service",
    ] {
        assert!(
            written.iter().any(|p| p == path),
            "{path} missing from {written:?}"
        );
    }
    let config = std::fs::read_to_string(root.path().join("etc/lull/agent.toml")).unwrap();
    assert!(
        config.contains(&format!("coordinator_key = \"{hash}\"")),
        "{config}"
    );

    // The written configuration is one the agent accepts.
    let (ok, stdout, stderr) = agent(&[
        "status",
        "--config",
        root.path().join("etc/lull/agent.toml").to_str().unwrap(),
        "--data-dir",
        root.path().join("var/lib/lull/agent").to_str().unwrap(),
    ]);
    assert!(!ok, "no agent runs there: {stdout}");
    assert!(
        !stderr.contains("agent.toml"),
        "the configuration was read without complaint: {stderr}"
    );

    let (ok, again, stderr) = agent(&install);
    assert!(ok, "{again}{stderr}");
    assert!(
        !again.contains("wrote:"),
        "a second install rewrote files:\n{again}"
    );

    let (ok, stdout, stderr) = agent(&["uninstall", "--root", root_arg]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        !root
            .path()
            .join("etc/systemd/system/lull-agent.service")
            .exists()
    );
    assert!(
        root.path().join("etc/lull/agent.toml").exists(),
        "kept without --purge"
    );

    let (ok, stdout, stderr) = agent(&["uninstall", "--purge", "--root", root_arg]);
    assert!(ok, "{stdout}{stderr}");
    let left: Vec<String> = files_under(root.path())
        .into_iter()
        .filter(|p| {
            p.ends_with(".toml") || p.ends_with(".service") || p.ends_with("allowed_signers")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let (ok, _, stderr) = agent(&[
        "install",
        "--coordinator",
        "nowhere",
        "--ca-hash",
        &hash,
        "--root",
        root_arg,
    ]);
    assert!(!ok);
    assert!(stderr.contains("error: --coordinator"), "{stderr}");
}
