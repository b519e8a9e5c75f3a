//! `cargo xtask systemd`: the agent's systemd unit started for real, under systemd, in a Debian
//! container (`systemd-nspawn --boot` of a root made by `debootstrap`, kept under
//! `target/xtask/systemd-root`; the first run downloads its Debian packages: 60 s and a 365 MB root here).
//!
//! Inside, `systemd/check.sh` starts a coordinator on the container's own loopback, makes a join
//! token and runs the `lull-agent install` command the coordinator prints, as root, as an IT
//! person would: the key is made by root in `/var/lib/lull/agent` before systemd starts the
//! service as a dynamic user. The checks, on what the container wrote: the service is active,
//! connected to its coordinator, runs as neither root nor a fixed user, in the `input` group,
//! with `CAP_SYS_NICE` and no other capability, and owns its data directory and key (mode 0600).

use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::util;

const SCRIPT: &str = include_str!("systemd/check.sh");
/// `CAP_SYS_NICE` is capability 23.
const CAP_SYS_NICE: u64 = 1 << 23;

/// The commands and the Debian packages that have them.
pub const COMMANDS: [(&str, &str); 2] = [
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
];

/// `cargo xtask systemd`: builds the binaries, makes the root if missing, runs the check.
pub fn run() -> anyhow::Result<()> {
    util::ensure_commands(&COMMANDS)?;
    util::cargo(&[
        "build",
        "-p",
        "lull-agent",
        "-p",
        "lull-coordinator",
        "--bins",
    ])?;
    prepare_root()?;
    check_installed()
}

fn root() -> std::path::PathBuf {
    util::target_dir().join("xtask").join("systemd-root")
}

/// Makes the container's Debian root with debootstrap, unless it is there (mostly downloads
/// and unpacking: `cargo xtask test` does it on its second thread).
pub fn prepare_root() -> anyhow::Result<()> {
    let root = root();
    if !root.join("usr/lib/systemd/systemd").is_file() {
        let _ = std::fs::remove_dir_all(&root);
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
            ])
            .arg(&root)
            .arg("http://deb.debian.org/debian");
        util::run(
            &mut debootstrap,
            "debootstrap (a Debian root for the container)",
        )?;
    }
    Ok(())
}

/// Installs the debug binaries built already in the container and checks the service there.
pub fn check_installed() -> anyhow::Result<()> {
    let root = root();
    // A clean slate: what an earlier run installed goes.
    for leftover in [
        "etc/lull",
        "var/lib/lull",
        "var/lib/private/lull",
        "var/lib/lull-coordinator",
        "etc/systemd/system/lull-agent.service",
        "etc/systemd/system/multi-user.target.wants/lull-agent.service",
        "lull-check.txt",
        "var/log/journal",
    ] {
        let path = root.join(leftover);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    let bin = util::target_dir().join("debug");
    for name in ["lull-agent", "lull-coordinator"] {
        std::fs::copy(bin.join(name), root.join("usr/local/bin").join(name))
            .with_context(|| format!("copying {name} into the container"))?;
    }
    write_executable(&root.join("usr/local/bin/lull-check"), SCRIPT)?;
    std::fs::write(
        root.join("etc/systemd/system/lull-check.service"),
        "[Unit]\nDescription=Lull's check of its installed agent\nAfter=multi-user.target\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/bin/lull-check\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("lull-check.service");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("/etc/systemd/system/lull-check.service", &link)?;
    }
    let mut nspawn = Command::new("timeout");
    nspawn
        .args([
            "300",
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
        ])
        .args([
            "--keep-unit",
            "--private-network",
            "--machine=lull-check",
            "-D",
        ])
        .arg(&root)
        .stdout(std::process::Stdio::null());
    util::run(&mut nspawn, "systemd-nspawn --boot (the container)")?;
    let said = std::fs::read_to_string(root.join("lull-check.txt"))
        .context("the container wrote no lull-check.txt")?;
    check(&said).with_context(|| format!("in the container:\n{said}"))?;
    println!("{}", section(&said, "status"));
    println!("{}", section(&said, "unit"));
    println!("{}", section(&said, "process"));
    println!("{}", section(&said, "files"));
    eprintln!("xtask: the installed unit ran under systemd as a dynamic user, connected");
    Ok(())
}

fn write_executable(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The lines after `== NAME` up to the next section, without the shell's trace (`+ ...`).
fn section(said: &str, name: &str) -> String {
    said.lines()
        .skip_while(|l| *l != format!("== {name}"))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .filter(|l| !l.starts_with('+'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

fn check(said: &str) -> anyhow::Result<()> {
    ensure!(said.contains("== done"), "the check did not finish");
    let status = &section(said, "status");
    ensure!(
        status.contains("(connected)"),
        "the service's agent is not connected to its coordinator"
    );
    let unit = &section(said, "unit");
    ensure!(
        field(unit, "ActiveState=") == Some("active"),
        "the service is not active"
    );
    ensure!(
        field(unit, "DynamicUser=") == Some("yes"),
        "not a dynamic user"
    );
    ensure!(
        field(unit, "NRestarts=") == Some("0"),
        "the service restarted"
    );
    let process = &section(said, "process");
    let uid: u32 = field(process, "Uid:")
        .and_then(|u| u.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .context("no Uid line")?;
    ensure!(uid != 0, "the agent runs as root");
    let groups = field(process, "Groups:").unwrap_or_default();
    let cap_eff = field(process, "CapEff:")
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .context("no CapEff line")?;
    ensure!(
        cap_eff == CAP_SYS_NICE,
        "the agent's capabilities are {cap_eff:#x}, not CAP_SYS_NICE alone"
    );
    let input = section(said, "input");
    ensure!(
        groups.split_whitespace().any(|g| g == input.trim()),
        "the agent is not in the input group ({}): its groups are {groups}",
        input.trim()
    );
    let files = &section(said, "files");
    for line in files.lines() {
        let mut parts = line.split_whitespace();
        let (Some(owner), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("cannot read {line:?}");
        };
        ensure!(
            owner == uid.to_string(),
            "{path} is owned by {owner}, not the service's user {uid}"
        );
        if path.ends_with(".der") {
            ensure!(mode == "600", "{path} has mode {mode}");
        }
    }
    ensure!(
        files.lines().count() == 2,
        "the data directory or key is missing"
    );
    Ok(())
}
