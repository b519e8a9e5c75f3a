//! `lull-agent install` and `uninstall` through the real binary, under a temporary root: the
//! dry run writes nothing, install writes the configuration, trust list and service, a second
//! install changes nothing, and uninstall (then `--purge`) takes it all away. The service manager
//! is not driven under another root: install says what to run instead. With a join token,
//! install enrolls the agent with a real coordinator first, and the installed agent is then
//! admitted on its key alone; a refused token leaves nothing installed. `self-test` checks the
//! binary on this machine.

use std::path::Path;
use std::process::Command;

use lull_tests::{Cluster, WAIT, binary, wait_for};

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

#[test]
fn install_with_a_join_token_enrolls_the_agent_before_writing_anything() {
    let cluster = Cluster::start();
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("utf-8 path");
    let token = cluster.coordinator_token(&["create", "--description", "installer"]);
    assert!(token.success(), "{token}");
    let token = token.stdout.trim().to_owned();
    let addr = cluster.quic_addr().to_string();
    let install = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "install",
            "--coordinator",
            &addr,
            "--ca-hash",
            cluster.coordinator_key(),
            "--token",
            token,
            "--name",
            "installed",
            "--binary",
            "/usr/local/bin/lull-agent",
            "--root",
            root_arg,
        ];
        args.extend_from_slice(extra);
        agent(&args)
    };

    // A refused token: an error that says why, and nothing installed.
    let (ok, stdout, stderr) = install("lull_not-a-token", &[]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("unknown token"), "{stderr}");
    assert!(
        !root.path().join("etc").exists(),
        "installed despite the refusal: {:?}",
        files_under(root.path())
    );

    // A dry run says it would enroll, and does not use the token.
    let (ok, stdout, stderr) = install(&token, &["--dry-run"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("would enroll with the coordinator"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = install(&token, &[]);
    assert!(ok, "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("enrolled: agent "))
        .unwrap_or_else(|| panic!("no enrollment said: {stdout}"));
    let data = root.path().join("var/lib/lull/agent");
    let id = std::fs::read_to_string(data.join("agent-id")).expect("the agent's ID");
    assert!(line.contains(id.trim()), "{line}");
    assert!(data.join("tls/agent.key.der").is_file());
    // Installing again is safe: the key is enrolled already, the used-up token is not needed.
    let (ok, again, stderr) = install(&token, &[]);
    assert!(ok, "{again}{stderr}");
    assert!(again.contains("enrolled already"), "{again}");

    // The installed agent, run on its configuration (its paths taken under the root), is
    // admitted without any token.
    let log = root.path().join("agent.log");
    let mut child = Command::new(binary("lull-agent"))
        .args([
            "run",
            "--config",
            root.path().join("etc/lull/agent.toml").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--allowed-signers",
            root.path()
                .join("etc/lull/allowed_signers")
                .to_str()
                .unwrap(),
            "--dedicated",
        ])
        .env_remove("LULL_JOIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting the installed agent");
    let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the installed agent to be listed", WAIT, || {
            cluster
                .agents()
                .into_iter()
                .find(|a| a["name"] == "installed")
        })
    }));
    let _ = child.kill();
    let _ = child.wait();
    let listed = listed.unwrap_or_else(|_| {
        panic!(
            "the installed agent's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(listed["id"], id.trim(), "{listed}");
}

/// The unit `install` writes is one systemd reads without a complaint: `systemd-analyze verify`
/// loads it as systemd would (every key known, the binary it runs executable) and says nothing.
#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    let root = tempfile::tempdir().expect("temp dir");
    let hash = format!("sha256:{}", "0f".repeat(32));
    let binary = binary("lull-agent");
    let (ok, stdout, stderr) = agent(&[
        "install",
        "--coordinator",
        "lull.lab.example.org:7443",
        "--ca-hash",
        &hash,
        "--binary",
        binary.to_str().expect("utf-8 path"),
        "--root",
        root.path().to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{stdout}{stderr}");
    let unit = root.path().join("etc/systemd/system/lull-agent.service");
    let verify = |unit: &Path| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit)
            .output()
            .expect(
                "running systemd-analyze (Debian's systemd package; cargo xtask test installs it)",
            );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, said) = verify(&unit);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The check is real: a misspelt key and a missing binary are reported.
    let broken = root.path().join("broken.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &broken,
        text.replace("Restart=on-failure", "Restart=on-failure\nRestartt=5"),
    )
    .unwrap();
    let (_, said) = verify(&broken);
    assert!(said.contains("Unknown key 'Restartt'"), "{said}");
    std::fs::write(
        &broken,
        text.replace(binary.to_str().unwrap(), "/nonexistent/lull-agent"),
    )
    .unwrap();
    let (ok, said) = verify(&broken);
    assert!(!ok && said.contains("is not executable"), "{said}");
}

/// What an installer runs to see that the binary works where it is: `lull-agent self-test`
/// samples the load, runs a guest, pauses and resumes it, and answers on the owner's channel.
#[test]
fn the_self_test_passes_here_and_says_what_it_checked() {
    let (ok, stdout, stderr) = agent(&["self-test"]);
    assert!(ok, "{stdout}{stderr}");
    for line in [
        "sampler: ok",
        "sandbox: ok",
        "pause: ok",
        "owner channel: ok",
        "self-test passed",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "{line:?} missing:\n{stdout}"
        );
    }
    // `service` belongs to Windows; elsewhere it says what to use.
    let (ok, _, stderr) = agent(&["service"]);
    assert!(!ok);
    assert!(stderr.contains("lull-agent run"), "{stderr}");
}
