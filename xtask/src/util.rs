//! Helpers shared by the tasks: running cargo, the wasm targets, the examples.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// The directory cargo builds into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

thread_local! {
    /// Where the commands this thread runs write their output, when not to the terminal.
    static LOG: std::cell::RefCell<Option<(PathBuf, std::fs::File)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the output of every command it runs through [`run`] appended to the file at
/// `path` (created or emptied first), not the terminal: for work on a second thread, whose
/// lines would otherwise mix with the first's. The terminal still gets each command's name and
/// how long it took.
pub fn logged_to<T>(path: &Path, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    LOG.with_borrow_mut(|log| *log = Some((path.to_owned(), file)));
    let result = f();
    LOG.with_borrow_mut(|log| *log = None);
    Ok(result)
}

/// Runs a command, saying what it is and, when it succeeds, how long it took.
pub fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let logged = LOG.with_borrow(|log| -> anyhow::Result<Option<PathBuf>> {
        let Some((path, file)) = log else {
            return Ok(None);
        };
        use std::io::Write;
        writeln!(&*file, "xtask: {what}")?;
        cmd.stdout(file.try_clone()?).stderr(file.try_clone()?);
        Ok(Some(path.clone()))
    })?;
    match &logged {
        Some(path) => eprintln!("xtask: {what} (its output in {})", path.display()),
        None => eprintln!("xtask: {what}"),
    }
    let started = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        match logged {
            Some(path) => bail!(
                "{what} failed ({status}); its output is in {}",
                path.display()
            ),
            None => bail!("{what} failed ({status})"),
        }
    }
    eprintln!(
        "xtask: {what}: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs cargo in the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_env(args, &[])
}

/// Runs cargo with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, &format!("cargo {}", args.join(" ")))
}

/// `cargo xtask ARGS` again, with xtask built with its benchmarks (the `bench` feature): its
/// output is theirs, the last line of a benchmark's one JSON object among it.
#[cfg(not(feature = "bench"))]
pub fn with_benches(args: &[String]) -> std::process::ExitCode {
    let status = Command::new(cargo_bin())
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--features",
            "bench",
            "--",
        ])
        .args(args)
        .current_dir(root())
        .status();
    match status {
        Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
        Ok(s) => {
            std::process::ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("xtask: starting cargo run --features bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `cargo install CRATE --locked --debug`, built in a directory of its own (never the
/// workspace's target directory, whose lock would hold up the workspace's builds meanwhile).
/// Unoptimized: the tools it installs (cargo-deny, cargo-fuzz) do seconds of work here, and
/// build in less than half the time (cargo-deny in a fresh machine's CI run: 126 s instead of
/// 325 s; its checks then take 4 s instead of 2).
pub fn cargo_install(krate: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(["install", krate, "--locked", "--debug"])
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root());
    run(&mut cmd, &format!("cargo install {krate} --locked --debug"))
}

/// Test counts summed over every test binary.
#[derive(Debug, Default)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Runs `cargo test ...`, passing its output through and summing its `test result:` lines.
pub fn cargo_test(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Counts> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(cargo_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut counts = Counts::default();
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(kind)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match kind {
                        "passed" => counts.passed += n,
                        "failed" => counts.failed += n,
                        "ignored" => counts.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        bail!("cargo test failed ({status})");
    }
    Ok(counts)
}

/// Adds the wasm targets when they are missing.
pub fn ensure_wasm_targets() -> anyhow::Result<()> {
    ensure_targets(&["wasm32-wasip1", "wasm32-wasip2"])
}

/// Adds the Rust targets that are missing (`rustup target add`).
pub fn ensure_targets(targets: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .context("running rustup (the Rust toolchain installer) to list targets")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"])
        .args(&missing)
        .current_dir(root());
    run(
        &mut cmd,
        &format!("rustup target add {}", missing.join(" ")),
    )
}

/// Installs the Debian packages that provide `commands` when any of them is missing from `PATH`
/// (`apt-get update`, then `apt-get install -y`; this needs root). `needs` pairs a command with
/// its package.
pub fn ensure_commands(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let on_path = |command: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
    };
    let missing: Vec<(&str, &str)> = needs
        .iter()
        .copied()
        .filter(|(command, _)| !on_path(command))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    let commands: Vec<&str> = missing.iter().map(|(command, _)| *command).collect();
    ensure_packages(
        &format!("the tests need {}", commands.join(", ")),
        &packages,
    )
}

/// Installs Debian packages (`apt-get update`, then `apt-get install -y`; this needs root),
/// saying `why`.
pub fn ensure_packages(why: &str, packages: &[&str]) -> anyhow::Result<()> {
    let why = format!("{why}: installing {}", packages.join(" "));
    let mut update = Command::new("apt-get");
    update.arg("update");
    run(&mut update, &format!("{why} (apt-get update)"))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install, &format!("{why} (apt-get install)"))
}

/// Builds the example guests (their own workspace under examples/).
pub fn build_examples() -> anyhow::Result<()> {
    let dir = root().join("examples");
    for (target, packages) in [
        ("wasm32-wasip1", &["mandelbrot", "crunch"][..]),
        (
            "wasm32-wasip2",
            &["montecarlo", "wordcount", "primes", "wordfreq"][..],
        ),
    ] {
        let mut cmd = Command::new(cargo_bin());
        cmd.args(["build", "--release", "--target", target])
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR");
        for p in packages {
            cmd.args(["-p", p]);
        }
        run(
            &mut cmd,
            &format!("building examples {} for {target}", packages.join(", ")),
        )?;
    }
    // The guest SDK is a crate of the main workspace; it must build for the guests' target.
    run(
        Command::new(cargo_bin())
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "lull-guest",
            ])
            .current_dir(root()),
        "building the guest SDK (lull-guest) for wasm32-wasip2",
    )?;
    Ok(())
}

/// A running `lull dev`, stopped with ctrl-c (SIGINT) when dropped.
pub struct Dev {
    child: std::process::Child,
    bin: PathBuf,
    /// Its HTTP address.
    pub url: String,
}

impl Dev {
    /// Starts the debug build's `lull dev` with extra arguments and waits until `agents`
    /// agents are connected.
    pub fn start(args: &[&str], agents: usize) -> anyhow::Result<Self> {
        Self::start_with(target_dir().join("debug").join("lull"), args, agents)
    }

    /// Starts the release build's `lull dev` with `agents` agents of `slots` slots each, on
    /// loopback ports of the system's choosing, and waits until they are connected.
    #[cfg(feature = "bench")]
    pub fn start_release(agents: usize, slots: u32) -> anyhow::Result<Self> {
        Self::start_release_with(agents, slots, &[])
    }

    /// [`Dev::start_release`] with more arguments for `lull dev`.
    #[cfg(feature = "bench")]
    pub fn start_release_with(agents: usize, slots: u32, more: &[&str]) -> anyhow::Result<Self> {
        Self::start_sized(
            target_dir().join("release").join("lull"),
            agents,
            slots,
            more,
        )
    }

    /// Starts `bin dev` with `agents` agents of `slots` slots on ephemeral ports, and `more`.
    #[cfg(feature = "bench")]
    pub fn start_sized(
        bin: PathBuf,
        agents: usize,
        slots: u32,
        more: &[&str],
    ) -> anyhow::Result<Self> {
        let (agents_arg, slots_arg) = (agents.to_string(), slots.to_string());
        let mut args = vec![
            "--agents",
            &agents_arg,
            "--slots",
            &slots_arg,
            "--http-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(more);
        Self::start_with(bin, &args, agents)
    }

    /// Starts `bin dev ARGS`.
    pub fn start_with(bin: PathBuf, args: &[&str], agents: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(&bin)
            .arg("dev")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} dev", bin.display()))?;
        let stdout = child.stdout.take().context("lull dev's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context(
            "lull dev exited before it was ready (is another lull dev using its ports?)",
        )??;
        println!("{first}");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("lull dev did not print its address")?
            .to_owned();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                println!("{line}");
            }
        });
        let dev = Self { child, bin, url };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = dev.output(&["agents", "--json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            if v.as_array().map(Vec::len).unwrap_or(0) >= agents {
                return Ok(dev);
            }
            if std::time::Instant::now() > deadline {
                bail!("the agents of lull dev did not connect within a minute");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A `lull` command aimed at this cluster.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--coordinator").arg(&self.url);
        cmd
    }

    /// Runs `lull ARGS` against this cluster and returns its stdout, failing with its stderr.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        stdout_of(
            self.command().args(args),
            &format!("lull {}", args.join(" ")),
        )
    }

    /// GETs a JSON document from the cluster's HTTP API.
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get(path)?)?)
    }

    /// GETs a document from the cluster's HTTP API, as text.
    pub fn get(&self, path: &str) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let host = self.url.trim_start_matches("http://");
        let mut stream =
            std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8(response)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }

    /// The process ID of `lull dev` (coordinator and agents in one process).
    #[cfg(feature = "bench")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` (`what`, for errors) to its end and returns its stdout, failing with its stderr.
pub fn stdout_of(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}
