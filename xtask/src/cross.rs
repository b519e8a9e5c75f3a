//! The agent on the other systems owners run: `cargo xtask cross`, and part of `cargo xtask test`.
//!
//! - **Windows** (`x86_64-pc-windows-gnu`, linked by Debian's mingw-w64): `cargo clippy` of the
//!   agent with every warning an error, and a real build, whose
//!   `lull-agent self-test` then runs under Debian's Wine
//!   — the load sampler over the Windows calls, the sandbox compiling and running a guest, a
//!   pause and resume of it, and the owner's named pipe — and then `lull-agent install` for real:
//!   the files under `C:\ProgramData\Lull`, the service registered with Wine's service control
//!   manager and started, the agent in it logging, and `uninstall --purge` taking it all away.
//!   Wine 8 lacks `bcryptprimitives.dll`,
//!   which Rust's standard library imports; a stand-in (`cross/bcryptprimitives.c`) is built
//!   beside the test binary. Not run under Wine: the QUIC connection (Wine refuses a socket
//!   option quinn sets, so the service's agent stops there), `sc.exe config` (not in Wine: only
//!   a first install is tried), `icacls` (a stub in Wine), input idle and power of a real
//!   desktop.
//! - **macOS** (`aarch64-apple-darwin`, `x86_64-apple-darwin`): `cargo clippy` of the agent
//!   with every warning an error. No macOS SDK or linker can be had here, so nothing is linked: the C parts
//!   of two dependencies (ring's, wasmtime's helpers) are compiled by clang against a few stub
//!   headers written here, only so that their build scripts finish.
//!
//! - **Static Linux** (`x86_64-unknown-linux-musl`, C parts by Debian's `musl-gcc`): `cargo
//!   clippy` too, so that the binary `cargo xtask package` ships keeps building (musl's C
//!   structs and types differ from glibc's).
//!
//! `cargo xtask test` lints the aarch64 macOS binary only ([`Lint::Quick`]) and builds the
//! Windows one with every compiler warning an error: each target checks the whole wasmtime
//! stack again. `cargo xtask cross` lints every target above, tests included ([`Lint::Full`]).
//!
//! The Windows build uses the `cross` profile (nothing optimised, no debug info): it builds in
//! about half the time of the `dev` profile, and the self-test's guests are tiny.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::util;

/// The targets: Windows first.
pub const WINDOWS: &str = "x86_64-pc-windows-gnu";
pub const APPLE: [&str; 2] = ["aarch64-apple-darwin", "x86_64-apple-darwin"];
/// The static Linux agent of `cargo xtask package`.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Every target linted.
pub fn targets() -> Vec<&'static str> {
    let mut all = vec![WINDOWS];
    all.extend(APPLE);
    all.push(MUSL);
    all
}

/// The commands and the Debian packages that have them.
pub const COMMANDS: [(&str, &str); 5] = [
    ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
    ("musl-gcc", "musl-tools"),
    ("clang", "clang"),
    ("llvm-ar", "llvm"),
    ("wine", "wine"),
];

/// Stub headers for compiling the macOS targets' C code without the SDK.
const APPLE_HEADERS: [(&str, &str); 2] = [
    (
        "TargetConditionals.h",
        "/* Stub for checking the macOS build off macOS; nothing built with it is linked. */\n\
         #define TARGET_OS_MAC 1\n#define TARGET_OS_OSX 1\n#define TARGET_OS_IPHONE 0\n",
    ),
    (
        "stdlib.h",
        "/* Stub for checking the macOS build off macOS; nothing built with it is linked. */\n\
         #include <stddef.h>\nvoid abort(void);\nvoid *malloc(size_t);\nvoid free(void *);\n",
    ),
];

/// Installs what the cross builds need: the Rust targets and the Debian packages.
pub fn prepare() -> anyhow::Result<()> {
    util::ensure_targets(&targets())?;
    util::ensure_commands(&COMMANDS)
}

/// `cargo xtask cross`: everything above.
pub fn run() -> anyhow::Result<()> {
    prepare()?;
    clippy(Lint::Full)?;
    windows_self_test()
}

/// How much `clippy` lints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lint {
    /// The agent's binary for aarch64 macOS: what `cargo xtask test` runs, within its time
    /// (each target checks the whole wasmtime stack again, 1-2 minutes on 2 cores). Windows is
    /// built there anyway, with every compiler warning an error.
    Quick,
    /// The binary and the tests, for every target: Windows, both macOS targets and static
    /// Linux (musl) — `cargo xtask cross`.
    Full,
}

/// `cargo clippy` of the agent for the other systems, every warning an error.
pub fn clippy(lint: Lint) -> anyhow::Result<()> {
    let headers = util::target_dir().join("xtask").join("apple-include");
    std::fs::create_dir_all(&headers).with_context(|| format!("creating {}", headers.display()))?;
    for (name, text) in APPLE_HEADERS {
        std::fs::write(headers.join(name), text)
            .with_context(|| format!("writing {name} in {}", headers.display()))?;
    }
    let cflags = format!(
        "-nostdlibinc -ffreestanding -DRING_CORE_NOSTDLIBINC=1 -isystem {}",
        headers.display()
    );
    let (apple, more): (&[&str], &[&str]) = match lint {
        Lint::Quick => (&APPLE[..1], &[]),
        Lint::Full => (&APPLE, &["--tests", "--target", WINDOWS, "--target", MUSL]),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut args = vec!["clippy", "-p", "lull-agent", "--bins"];
    args.extend(more);
    for target in apple {
        let t = target.replace('-', "_");
        env.push((format!("CC_{t}"), "clang".into()));
        env.push((format!("AR_{t}"), "llvm-ar".into()));
        env.push((format!("CFLAGS_{t}"), cflags.clone()));
        args.extend(["--target", target]);
    }
    args.extend(["--", "-D", "warnings"]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    util::cargo_env(&args, &env)
}

/// Builds the Windows agent and runs its self-test under Wine.
pub fn windows_self_test() -> anyhow::Result<()> {
    util::cargo_env(
        &[
            "build",
            "--profile",
            "cross",
            "-p",
            "lull-agent",
            "--bin",
            "lull-agent",
            "--target",
            WINDOWS,
        ],
        &[("RUSTFLAGS", "-D warnings")],
    )?;
    let dir = util::target_dir().join(WINDOWS).join("cross");
    let exe = dir.join("lull-agent.exe");
    shim(&dir)?;
    let prefix = util::target_dir().join("xtask").join("wine");
    let out = wine(&prefix, &exe, &["self-test"])?;
    print!("{out}");
    if !out.lines().any(|l| l.trim() == "self-test passed") {
        bail!("the Windows agent's self-test under Wine did not pass:\n{out}");
    }
    let service = windows_service(&prefix, &exe);
    // Wine's own processes (its service manager among them) go with the prefix's server.
    let _ = Command::new("wineserver")
        .arg("-k")
        .env("WINEPREFIX", &prefix)
        .status();
    service
}

/// `lull-agent install` under Wine, for real: the files written, the service registered with
/// Wine's service control manager and started, the agent in it reading its configuration and
/// logging; then `uninstall --purge` deletes it. (The agent then stops at its QUIC socket,
/// which Wine refuses; the service manager records the failure.)
fn windows_service(prefix: &PathBuf, exe: &Path) -> anyhow::Result<()> {
    let program_data = prefix.join("drive_c/ProgramData/Lull");
    // What an earlier run left.
    let _ = wine(prefix, exe, &["uninstall", "--purge"]);
    let hash = format!("sha256:{}", "0".repeat(64));
    let install = [
        "install",
        "--coordinator",
        "127.0.0.1:9",
        "--ca-hash",
        &hash,
    ];
    // The service manager of a Wine prefix that has just been made can refuse the first
    // `sc.exe create` (seen once): a second try, from a clean slate, is the real test.
    let out = match wine(prefix, exe, &install) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("xtask: install under Wine failed once, trying again: {e:#}");
            let _ = wine(prefix, exe, &["uninstall", "--purge"]);
            wine(prefix, exe, &install)?
        }
    };
    print!("{out}");
    for line in [
        "wrote: C:/ProgramData/Lull/agent.toml",
        "ran: sc.exe create LullAgent",
        "ran: sc.exe start LullAgent",
    ] {
        if !out.contains(line) {
            bail!("`lull-agent install` under Wine did not say {line:?}:\n{out}");
        }
    }
    let log = program_data.join("agent.log");
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("started by the service control manager") {
            eprintln!("xtask: the service LullAgent ran under Wine's service control manager");
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            bail!(
                "the service did not start within 60 s under Wine; {}:\n{text}",
                log.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = wine(prefix, exe, &["uninstall", "--purge"])?;
    print!("{out}");
    if !out.contains("ran: sc.exe delete LullAgent") || program_data.join("agent.toml").exists() {
        bail!("`lull-agent uninstall --purge` under Wine left the service or its files:\n{out}");
    }
    Ok(())
}

/// Builds the `bcryptprimitives.dll` stand-in into `dir`, unless it is there already.
fn shim(dir: &Path) -> anyhow::Result<()> {
    let dll = dir.join("bcryptprimitives.dll");
    if dll.is_file() {
        return Ok(());
    }
    let source = util::root().join("xtask/src/cross/bcryptprimitives.c");
    let mut cmd = Command::new("x86_64-w64-mingw32-gcc");
    cmd.args(["-shared", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&dll)
        .arg(&source)
        .args(["-ladvapi32", "-Wl,--kill-at"]);
    util::run(&mut cmd, "building bcryptprimitives.dll for Wine")
}

/// Runs `exe ARGS` under Wine with its own prefix (made on first use); its output. Wine's own
/// chatter goes to its log, not the output.
fn wine(prefix: &PathBuf, exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    std::fs::create_dir_all(prefix.parent().unwrap_or(prefix))?;
    let mut cmd = Command::new("wine");
    cmd.arg(exe)
        .args(args)
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No display here: Wine must not look for one.
        .env_remove("DISPLAY")
        .env("LULL_LOG", "warn");
    let what = format!("wine {} {}", exe.display(), args.join(" "));
    eprintln!("xtask: {what}");
    let started = std::time::Instant::now();
    let output = cmd.output().with_context(|| format!("starting {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    eprintln!(
        "xtask: {what}: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(stdout)
}
