//! `cargo xtask package`: the agent as a static Linux binary and a Debian package.
//!
//! 1. `lull-agent` built in release for `x86_64-unknown-linux-musl` (Debian's `musl-tools` for
//!    the C parts): statically linked, so it runs on any x86-64 Linux whatever its C library.
//! 2. Its size, before and after stripping, printed with the figures below as one JSON object
//!    on the last line.
//! 3. A `.deb` made by cargo-deb (installed when missing) from that binary, stripped, with the
//!    systemd
//!    unit `lull-agent install` writes (`agent/debian/lull-agent.service`, kept equal to it by a
//!    unit test) in `/lib/systemd/system`. Nothing is enabled on installing the package: the
//!    machine's coordinator and key come with `lull-agent install`.
//! 4. The package checked: unpacked into a temporary directory, the binary there is static
//!    (`ldd` finds no dynamic section), passes `lull-agent self-test`, and the unit passes
//!    `systemd-analyze verify` against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::cross::MUSL;
use crate::util;

pub fn run() -> anyhow::Result<()> {
    util::ensure_targets(&[MUSL])?;
    util::ensure_commands(&[
        ("musl-gcc", "musl-tools"),
        ("strip", "binutils"),
        ("dpkg-deb", "dpkg"),
        ("systemd-analyze", "systemd"),
    ])?;
    let cargo_deb =
        Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/cargo-deb");
    if !cargo_deb.is_file() {
        util::cargo_install("cargo-deb")?;
    }
    // cargo-deb builds the release binary for the target, then packages it stripped (the
    // release profile keeps line tables, for backtraces in development).
    util::cargo(&["deb", "-p", "lull-agent", "--target", MUSL, "--strip"])?;
    let binary = util::target_dir()
        .join(MUSL)
        .join("release")
        .join("lull-agent");
    let binary_size = std::fs::metadata(&binary)
        .with_context(|| format!("reading {}", binary.display()))?
        .len();
    let stripped = util::target_dir().join("xtask").join("lull-agent.stripped");
    let mut strip = Command::new("strip");
    strip.arg("-o").arg(&stripped).arg(&binary);
    util::run(&mut strip, "strip lull-agent")?;
    let stripped_size = std::fs::metadata(&stripped)?.len();
    let deb = newest_deb(&util::target_dir().join(MUSL).join("debian"))?;
    let deb_size = std::fs::metadata(&deb)?.len();
    check(&deb)?;
    println!("package: {}", deb.display());
    println!(
        "{}",
        serde_json::json!({
            "musl_binary_bytes": binary_size,
            "musl_stripped_bytes": stripped_size,
            "deb_bytes": deb_size,
        })
    );
    Ok(())
}

/// The `.deb` cargo-deb made last in `dir`.
fn newest_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("no .deb in {}", dir.display()))
}

/// Unpacks the package and tries what it holds.
fn check(deb: &Path) -> anyhow::Result<()> {
    let root = util::target_dir().join("xtask").join("deb-check");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let root = root.as_path();
    let mut unpack = Command::new("dpkg-deb");
    unpack.arg("-x").arg(deb).arg(root);
    util::run(&mut unpack, "dpkg-deb -x (unpacking the package)")?;
    let binary = root.join("usr/bin/lull-agent");
    let unit = root.join("lib/systemd/system/lull-agent.service");
    for path in [&binary, &unit] {
        if !path.is_file() {
            bail!("the package has no {}", path.display());
        }
    }
    let ldd = Command::new("ldd").arg(&binary).output()?;
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    if !(said.contains("not a dynamic executable") || said.contains("statically linked")) {
        bail!("the packaged lull-agent is not static: ldd says {said}");
    }
    let out = util::stdout_of(
        Command::new(&binary).arg("self-test"),
        "the packaged lull-agent's self-test",
    )?;
    print!("{out}");
    if !out.lines().any(|l| l == "self-test passed") {
        bail!("the packaged lull-agent's self-test did not pass");
    }
    // Verified as systemd would load it, with the binary it names being the unpacked one.
    let text = std::fs::read_to_string(&unit)?;
    let here = root.join("lull-agent.service");
    std::fs::write(
        &here,
        text.replace("/usr/bin/lull-agent", &binary.display().to_string()),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&here)
        .output()
        .context("running systemd-analyze")?;
    let said = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify of the packaged unit: {said}");
    }
    eprintln!("xtask: the packaged unit passes systemd-analyze verify");
    Ok(())
}
