//! End-to-end tests of Lull over real processes and sockets.
//!
//! The harness starts the real binaries — `lull-coordinator serve`, `lull-agent run` and the
//! `lull` command — on 127.0.0.1 ports chosen by the operating system, each in its own temporary
//! directory, and tears everything down when the test ends.
//!
//! | item | owns |
//! |---|---|
//! | [`Cluster`] | a coordinator and its agents: start, kill, restart, the `lull` command, the HTTP API |
//! | [`AgentOptions`] | how one agent is started (slots, memory cap, scavenging or dedicated) |
//! | [`CliOutput`] | what one run of `lull` printed and how it exited |
//! | [`guests`] | WASI guests written in WAT for the tests |
//! | [`browser`] | a headless Chromium driven over the DevTools protocol, for the dashboard |
//! | [`rogue`] | an agent driven by hand, for tests of what the coordinator does with a hostile one |
//! | [`netns`] | another host on the same machine: a network namespace with a link that can be cut and mended |
//! | [`wait_for`] | polling with a deadline, the only way these tests wait |
//!
//! Every child's stdout and stderr go to files under the cluster's directory. When a test
//! panics, the cluster prints the tail of each and keeps the directory, so a failure can be
//! diagnosed from the test's output alone (set `LULL_TESTS_KEEP=1` to keep it always). Every
//! wait is bounded and says what it waited for.
//!
//! The binaries are the ones `cargo build --workspace --bins --tests` leaves beside the test
//! executables (`target/debug/`); the harness does not build them.

pub mod browser;
pub mod netns;
pub mod rogue;

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A QUIC dialer for a peer that is not a real agent: it pins the coordinator `pin` and
/// presents a fresh key of its own (the coordinator admits no peer without one).
pub fn stranger_dialer(pin: lull_protocol::Digest) -> lull_agent::link::Dialer {
    let identity = lull_protocol::identity::Identity::ephemeral(&["lull-agent"]).expect("a key");
    lull_agent::link::Dialer::new(Some(pin), Some(&identity)).expect("a dialer")
}

/// How long any one thing may take before a test gives up: starting a process, a job ending.
pub const WAIT: Duration = Duration::from_secs(60);

/// How long the coordinator's leases last in these tests (`--lease`).
pub const LEASE: &str = "3s";

/// How often polling loops look again.
const POLL: Duration = Duration::from_millis(100);

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 60;

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` when the time runs out.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// The path of one of the workspace's binaries, built beforehand.
///
/// Tests run from `target/debug/deps/`, so the binaries are in the parent of the test
/// executable's directory; `CARGO_TARGET_DIR` is honoured as a fallback.
pub fn binary(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
    {
        dirs.extend(deps.parent().map(Path::to_path_buf));
        dirs.push(deps.to_path_buf());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join("debug"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the binary {file} is missing (looked in {dirs:?}): run `cargo build --workspace --bins --tests` \
                 (or `cargo xtask test`) before these tests"
            )
        })
}

/// A fresh, empty PostgreSQL database for a test, on the server named by `LULL_TEST_POSTGRES`
/// (which `cargo xtask test` starts); its URL. Without a server the test fails: it cannot
/// reach its point.
pub fn postgres_database(test: &str) -> String {
    let admin = std::env::var("LULL_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "{test} needs a PostgreSQL server: LULL_TEST_POSTGRES is not set (`cargo xtask test` \
             starts one and sets it; or set it to an admin URL such as postgres://lull@127.0.0.1:5433/postgres)"
        )
    });
    let name = format!(
        "lull_e2e_{test}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let out = Command::new("psql")
        .arg(&admin)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("running psql (PostgreSQL's client)");
    assert!(
        out.status.success(),
        "creating database {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = admin
        .rsplit_once('/')
        .expect("LULL_TEST_POSTGRES ends in /DATABASE");
    format!("{base}/{name}")
}

/// Stops the PostgreSQL server of `LULL_TEST_POSTGRES` as a crash would (`pg_ctl stop -m
/// immediate`: no checkpoint, connections cut), leaves it down for `down`, and starts it again,
/// with the command `cargo xtask test` gives in `LULL_TEST_POSTGRES_CTL`. Every test using the
/// server sees it go; run it only from a test binary of its own.
pub fn crash_postgres(down: Duration) {
    pg_ctl(&["-m", "immediate", "-w", "stop"]);
    std::thread::sleep(down);
    pg_ctl(&["-w", "start"]);
}

fn pg_ctl(action: &[&str]) {
    let ctl = std::env::var("LULL_TEST_POSTGRES_CTL").unwrap_or_else(|_| {
        panic!(
            "restarting PostgreSQL needs LULL_TEST_POSTGRES_CTL, the pg_ctl command of the \
             server (`cargo xtask test` sets it)"
        )
    });
    let words: Vec<&str> = ctl.split('\t').collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .args(action)
        .stdin(Stdio::null())
        .output()
        .expect("running pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {action:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small tmpfs file system mounted for a test (needs root, as `cargo xtask test` runs), to
/// fill up; unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `"64m"`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("lull-tmpfs-")
            .tempdir()
            .expect("creating a mount point");
        let path = dir.path().to_owned();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed (root is needed): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }

    /// Writes `name` until the file system is full; returns its path.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path.join(name);
        let mut f = fs::File::create(&path).expect("creating the filler");
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Whatever is left is less than a chunk: fill it byte by byte.
        while f.write_all(&[0xa5]).is_ok() {}
        path
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("running df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's answer")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Environment variables that set a process's wall clock `offset` ahead (`"+60s"`) or behind
/// (`"-60s"`) the machine's, through Debian's libfaketime (installed by `cargo xtask test`);
/// its monotonic clock is left alone.
pub fn skewed_clock(offset: &str) -> Vec<(&'static str, String)> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).is_file(),
        "{lib} is missing: install Debian's faketime (`cargo xtask test` does)"
    );
    vec![
        ("LD_PRELOAD", lib.to_owned()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_DONT_RESET", "1".to_owned()),
    ]
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A built example guest, e.g. `wordcount.wasm` for wasm32-wasip2; panics saying how to build
/// the examples when it is missing.
pub fn example_module(target: &str, file: &str) -> PathBuf {
    let path = examples_dir()
        .join("target")
        .join(target)
        .join("release")
        .join(file);
    assert!(
        path.is_file(),
        "the example {} is missing: run `cargo xtask test`, which builds the examples \
         (or `cd examples && cargo build --release --target {target}`)",
        path.display()
    );
    path
}

/// The last `n` lines of a file, or a note saying why there are none.
fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A child process whose stdout and stderr go to files.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: bool,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        let out = fs::File::create(&stdout)
            .unwrap_or_else(|e| panic!("creating {}: {e}", stdout.display()));
        let err = fs::File::create(&stderr)
            .unwrap_or_else(|e| panic!("creating {}: {e}", stderr.display()));
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("LULL_COORDINATOR")
            .env_remove("LULL_KEY")
            .env_remove("LULL_DATA_DIR")
            .env_remove("LULL_AGENT_CONFIG");
        cmd.env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            exited: false,
        }
    }

    /// Whether the process is still running.
    fn is_running(&mut self) -> bool {
        !self.exited && matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap; harmless when it has already exited.
    fn kill(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exited = true;
        }
    }

    fn print_tail(&self) {
        for (stream, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            eprintln!(
                "----- {} {stream}, last {TAIL_LINES} lines ({}) -----\n{}",
                self.name,
                path.display(),
                tail(path, TAIL_LINES)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Logs the coordinator's and agents' own decisions in detail, unless `LULL_LOG` says otherwise.
fn verbose_logs(cmd: &mut Command) {
    if std::env::var_os("LULL_LOG").is_none() {
        cmd.env("LULL_LOG", "info,lull_coordinator=debug,lull_agent=debug");
    }
}

/// What one run of `lull` printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything it printed unless it exited with 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "`{}` failed:\n{self}", self.command);
        self
    }

    /// Its standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("`{}` did not print JSON ({e}):\n{self}", self.command))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How an agent is started.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--slots`; the agent's default (its core count) when `None`.
    pub slots: Option<u32>,
    /// `--max-task-memory`, e.g. `"64MiB"`.
    pub max_task_memory: Option<String>,
    /// Run the scavenging policy with this config file (`--config`) instead of `--dedicated`.
    /// Tests run several agents on one machine, where each agent's guests are the others'
    /// incumbents, so agents are dedicated unless a test is about scavenging.
    pub scavenging_config: Option<PathBuf>,
    /// How the agent enrolls: with the cluster's reusable join token by default.
    pub enroll: Enroll,
    /// `--coordinator-key` to pin instead of the coordinator's real one.
    pub coordinator_key: Option<String>,
    /// Connect to this QUIC address (another coordinator of the cluster, see
    /// [`Cluster::start_peer_coordinator`]) instead of the first coordinator's.
    pub coordinator: Option<SocketAddr>,
    /// Lines of `agent.toml` (e.g. `task_disk = "1MiB"`) for a dedicated agent; not with
    /// `scavenging_config`.
    pub settings: Option<String>,
    /// Run the agent in this network namespace (`ip netns exec`), see [`netns::Host`].
    pub netns: Option<String>,
}

/// How a test agent enrolls with the coordinator.
#[derive(Debug, Clone, Default)]
pub enum Enroll {
    /// With the cluster's join token ([`Cluster::join_token`]), reusable and unexpiring.
    #[default]
    ClusterToken,
    /// With this token (`--join-token`).
    Token(String),
    /// Not at all: no `--join-token`.
    Never,
}

impl AgentOptions {
    /// An agent running `n` tasks at once.
    pub fn slots(n: u32) -> Self {
        Self {
            slots: Some(n),
            ..Self::default()
        }
    }
}

/// The coordinator's addresses as it announced them on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announced {
    quic: SocketAddr,
    key: String,
    http: SocketAddr,
    /// The HTTPS key's hash; `None` when the API is plain HTTP.
    http_key: Option<String>,
}

/// Parses `lull-coordinator: agents on quic://ADDR (key sha256:HEX), people on
/// https://ADDR (key sha256:HEX)` (or `people on http://ADDR`).
fn parse_announcement(text: &str) -> Option<Announced> {
    let line = text
        .lines()
        .find(|l| l.starts_with("lull-coordinator: agents on quic://"))?;
    let rest = line.strip_prefix("lull-coordinator: agents on quic://")?;
    let (quic, rest) = rest.split_once(" (key ")?;
    let (key, people) = rest.split_once("), people on ")?;
    let (http, http_key) = match people.trim().strip_prefix("https://") {
        Some(rest) => {
            let (addr, key) = rest.split_once(" (key ")?;
            (addr, Some(key.strip_suffix(')')?.to_owned()))
        }
        None => (people.trim().strip_prefix("http://")?, None),
    };
    Some(Announced {
        quic: quic.parse().ok()?,
        key: key.to_owned(),
        http: http.parse().ok()?,
        http_key,
    })
}

/// An HTTP client for the coordinator's API: trusting only the HTTPS key `pin` (any TLS
/// otherwise, for plain HTTP), sending `token` when given.
pub fn api_client(pin: Option<&str>, token: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(pin) = pin {
        let pin = pin
            .parse()
            .expect("the coordinator announces its key as sha256:HEX");
        builder = builder.use_preconfigured_tls(
            lull_protocol::identity::PinnedKey::client_config(pin).expect("a TLS configuration"),
        );
    }
    if let Some(token) = token {
        builder = builder.default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}")
                    .parse()
                    .expect("a token is a header value"),
            )]
            .into_iter()
            .collect(),
        );
    }
    builder.build().expect("an HTTP client")
}

/// One agent process.
#[derive(Debug)]
struct AgentProc {
    name: String,
    data_dir: PathBuf,
    proc: Proc,
}

/// A coordinator and its agents, each a real process, in one temporary directory:
///
/// ```text
/// keys/key, keys/key.pub, keys/allowed_signers   the submitter's key, trusted by everyone
/// coordinator/                                    the coordinator's data directory
/// agents/<name>/                                  each agent's data directory
/// configs/<name>.toml                             agent configuration files written by tests
/// logs/                                           stdout and stderr of every process
/// jobs/<name>/                                    job files written by tests
/// results/<n>/                                    `lull results` downloads
/// ```
///
/// Dropping it kills every process (SIGKILL, then reaps it).
#[derive(Debug)]
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    key: PathBuf,
    allowed_signers: PathBuf,
    /// Extra arguments of `lull-coordinator serve`, kept for restarts.
    coordinator_args: Vec<String>,
    /// The PostgreSQL database given with `--database`, if any.
    database: Option<String>,
    /// A submitter's token, sent with every request of [`Cluster::lull`] and [`Cluster::get`].
    token: String,
    /// An agent's join token with unlimited uses, which agents enroll with by default.
    join_token: String,
    coordinator: Proc,
    /// More coordinators on the same data directory and database, with their addresses.
    peers: Vec<(Proc, Announced)>,
    /// The first coordinator's HTTP address.
    first_http: SocketAddr,
    generation: u32,
    announced: Announced,
    agents: Vec<AgentProc>,
    finished: Vec<Proc>,
    runs: AtomicU32,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Cluster {
    /// A coordinator with no agent yet, trusting a fresh signing key ([`Cluster::key`]).
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// [`Cluster::start`], with `args` added to `lull-coordinator serve`.
    pub fn start_with(args: &[&str]) -> Cluster {
        Cluster::start_inner(args, None)
    }

    /// [`Cluster::start`], the coordinator keeping its data in `data` (say, a small file
    /// system that a test fills up, see [`Tmpfs`]) rather than in the cluster's directory.
    pub fn start_with_coordinator_data(data: &Path) -> Cluster {
        Cluster::start_inner(&[], Some(data))
    }

    fn start_inner(args: &[&str], coordinator_data: Option<&Path>) -> Cluster {
        let coordinator_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::Builder::new()
            .prefix("lull-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        let root = dir.path().to_owned();
        for sub in [
            "keys",
            "coordinator",
            "agents",
            "configs",
            "logs",
            "jobs",
            "results",
        ] {
            fs::create_dir_all(root.join(sub)).expect("creating the cluster's directories");
        }
        if let Some(data) = coordinator_data {
            // The cluster's path to it stays the same: a link.
            fs::remove_dir(root.join("coordinator")).expect("replacing coordinator/");
            std::os::unix::fs::symlink(data, root.join("coordinator"))
                .expect("linking coordinator/ to its data");
        }
        let key = root.join("keys/key");
        let allowed_signers = root.join("keys/allowed_signers");
        let out = run_lull(
            &root.join("logs"),
            "keys-generate",
            None,
            None,
            None,
            &["keys", "generate", "--out", path_str(&key)],
        );
        assert!(out.success(), "`lull keys generate` failed:\n{out}");
        let public = fs::read_to_string(root.join("keys/key.pub")).expect("reading key.pub");
        fs::write(&allowed_signers, format!("tester {}\n", public.trim()))
            .expect("writing allowed_signers");

        // `--database URL` among the arguments: the token commands use that database too.
        let database = coordinator_args
            .windows(2)
            .find(|w| w[0] == "--database")
            .map(|w| w[1].clone());
        let token = create_token(
            &root,
            database.as_deref(),
            &[
                "--user",
                "tester",
                "--role",
                "operate",
                "--description",
                "tests",
            ],
        );
        let join_token = create_token(
            &root,
            database.as_deref(),
            &["--uses", "0", "--ttl", "0", "--description", "test agents"],
        );
        let (coordinator, announced) =
            spawn_coordinator(&root, &allowed_signers, &coordinator_args, 1, None, &[]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("starting a tokio runtime");
        let http = api_client(announced.http_key.as_deref(), Some(&token));
        Cluster {
            dir: Some(dir),
            root,
            key,
            allowed_signers,
            coordinator_args,
            database,
            token: token.clone(),
            join_token,
            first_http: announced.http,
            coordinator,
            peers: Vec::new(),
            generation: 1,
            announced,
            agents: Vec::new(),
            finished: Vec::new(),
            runs: AtomicU32::new(0),
            runtime,
            http,
        }
    }

    /// A coordinator and one agent per name, each with `slots` slots, all connected.
    pub fn with_agents(names: &[&str], slots: u32) -> Cluster {
        let mut cluster = Cluster::start();
        for name in names {
            cluster.start_agent(name, AgentOptions::slots(slots));
        }
        cluster.wait_for_agents(names);
        cluster
    }

    /// The cluster's temporary directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The submitter's private key (trusted by the coordinator and every agent).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The coordinator's data directory.
    pub fn coordinator_data(&self) -> PathBuf {
        self.root.join("coordinator")
    }

    /// Where the coordinator keeps the blob with this digest (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("{digest:?} is not a sha256: digest"));
        self.coordinator_data()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// Every blob file the coordinator holds, but the empty blob (which every coordinator holds
    /// from the start, so that agents never upload it).
    pub fn stored_blobs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.coordinator_data().join("blobs/sha256"), &mut out);
        let empty = self.blob_path(&lull_protocol::Digest::EMPTY.to_string());
        out.retain(|p| *p != empty);
        out
    }

    /// The coordinator's QUIC address (for agents).
    pub fn quic_addr(&self) -> SocketAddr {
        self.announced.quic
    }

    /// The coordinator's HTTP address (for people and the CLI).
    pub fn http_addr(&self) -> SocketAddr {
        self.announced.http
    }

    /// The coordinator's API URL: `https://ADDR` (`http://ADDR` when it serves plain HTTP).
    pub fn api_url(&self) -> String {
        self.url_of(self.announced.http)
    }

    /// The URL of the API at `addr` (this coordinator's or a peer's).
    fn url_of(&self, addr: SocketAddr) -> String {
        let scheme = if self.announced.http_key.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    }

    /// The hash of the coordinator's HTTPS key (`sha256:<hex>`) that `lull` pins; `None` when
    /// it serves plain HTTP.
    pub fn http_key(&self) -> Option<&str> {
        self.announced.http_key.as_deref()
    }

    /// An HTTP client for the API, pinning its key, sending `token` when given.
    pub fn api_client(&self, token: Option<&str>) -> reqwest::Client {
        api_client(self.http_key(), token)
    }

    /// The hash of the coordinator's public key that agents pin (`sha256:<hex>`).
    pub fn coordinator_key(&self) -> &str {
        &self.announced.key
    }

    /// Starts an agent named `name` (not waiting for it to connect; see
    /// [`Cluster::wait_for_agents`]).
    pub fn start_agent(&mut self, name: &str, options: AgentOptions) {
        assert!(
            self.agents.iter().all(|a| a.name != name),
            "an agent named {name} already runs"
        );
        let data_dir = self.root.join("agents").join(name);
        let mut cmd = match &options.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(binary("lull-agent"));
                cmd
            }
            None => Command::new(binary("lull-agent")),
        };
        cmd.arg("run")
            .args([
                "--coordinator",
                &options
                    .coordinator
                    .unwrap_or(self.announced.quic)
                    .to_string(),
            ])
            .args([
                "--coordinator-key",
                options
                    .coordinator_key
                    .as_deref()
                    .unwrap_or(&self.announced.key),
            ])
            .args(["--data-dir", path_str(&data_dir)])
            .args(["--allowed-signers", path_str(&self.allowed_signers)])
            .args(["--name", name]);
        match &options.enroll {
            Enroll::ClusterToken => {
                cmd.args(["--join-token", &self.join_token]);
            }
            Enroll::Token(t) => {
                cmd.args(["--join-token", t]);
            }
            Enroll::Never => {}
        }
        if let Some(n) = options.slots {
            cmd.args(["--slots", &n.to_string()]);
        }
        if let Some(m) = &options.max_task_memory {
            cmd.args(["--max-task-memory", m]);
        }
        match (&options.scavenging_config, &options.settings) {
            (Some(config), None) => {
                cmd.args(["--config", path_str(config)]);
            }
            (None, settings) => {
                if let Some(settings) = settings {
                    let file = self.root.join(format!("{name}.toml"));
                    std::fs::write(&file, settings).expect("writing the agent's settings");
                    cmd.args(["--config", path_str(&file)]);
                }
                cmd.arg("--dedicated");
            }
            (Some(_), Some(_)) => panic!("settings are for dedicated agents"),
        }
        verbose_logs(&mut cmd);
        let proc = Proc::spawn(&format!("agent-{name}"), cmd, &self.root.join("logs"));
        self.agents.push(AgentProc {
            name: name.to_owned(),
            data_dir,
            proc,
        });
    }

    /// Waits until the coordinator lists an agent of each name; returns the listing.
    pub fn wait_for_agents(&mut self, names: &[&str]) -> Vec<Value> {
        let what = format!("agents {names:?} to be listed by GET /api/v1/agents");
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_agents_alive();
            if let Ok(agents) = self.try_get("/api/v1/agents") {
                let listed = agents.as_array().cloned().unwrap_or_default();
                if names.iter().all(|n| listed.iter().any(|a| a["name"] == *n)) {
                    return listed;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {what}"
            );
            std::thread::sleep(POLL);
        }
    }

    fn assert_agents_alive(&mut self) {
        for a in &mut self.agents {
            assert!(
                a.proc.is_running(),
                "agent {} exited:\n{}",
                a.name,
                tail(&a.proc.stderr, TAIL_LINES)
            );
        }
    }

    /// Kills the agent named `name` (SIGKILL); it may be started again under the same name, on
    /// the same data directory.
    pub fn kill_agent(&mut self, name: &str) {
        let i = self
            .agents
            .iter()
            .position(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"));
        let mut agent = self.agents.remove(i);
        agent.proc.kill();
        self.finished.push(agent.proc);
    }

    /// Whether the agent's process is still running.
    pub fn agent_is_running(&mut self, name: &str) -> bool {
        self.agent_mut(name).proc.is_running()
    }

    fn agent_mut(&mut self, name: &str) -> &mut AgentProc {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
    }

    /// The stable ID of the agent named `name` (what tasks' `agent` fields hold).
    pub fn agent_id(&self, name: &str) -> String {
        let agent = self
            .agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"));
        let path = agent.data_dir.join("agent-id");
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// What agent `name` has logged so far (its stderr), whether it still runs or not.
    pub fn agent_log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join("logs").join(format!("agent-{name}.stderr")))
            .unwrap_or_default()
    }

    /// The data directory agent `name` has, or will have when started.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.root.join("agents").join(name)
    }

    /// The data directory of the agent named `name` (where `lull-agent pause|resume|stop|status`
    /// find its control socket).
    pub fn agent_data_dir(&self, name: &str) -> PathBuf {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
            .data_dir
            .clone()
    }

    /// Writes an agent configuration file `configs/<name>.toml` holding `toml` (e.g. a
    /// `[policy]` table) and returns its path, for [`AgentOptions::scavenging_config`].
    pub fn write_agent_config(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.root.join("configs").join(format!("{name}.toml"));
        fs::write(&path, toml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Runs the owner's command `lull-agent COMMAND --data-dir DIR --json` (`pause`, `resume`,
    /// `snooze 2s`, `finish`, `stop` or `status`: words split at spaces) against the agent
    /// named `name`, to its end (at most [`WAIT`]).
    pub fn agent_command(&self, name: &str, command: &str) -> CliOutput {
        let data_dir = self.agent_data_dir(name);
        let mut cmd = Command::new(binary("lull-agent"));
        cmd.args(command.split_whitespace())
            .args(["--data-dir", path_str(&data_dir), "--json"]);
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        run_program(
            &self.root.join("logs"),
            &format!("lull-agent-{n}-{command}-{name}"),
            cmd,
            format!(
                "lull-agent {command} --data-dir {} --json",
                data_dir.display()
            ),
        )
    }

    /// `GET /api/v1/agents/{id}/events` for the agent named `name`: its recorded state changes
    /// (`from`, `to`, `reason`, `attempts`, `at_ms`), oldest first (the API lists newest first).
    pub fn agent_events(&self, name: &str) -> Vec<Value> {
        let id = self.agent_id(name);
        let mut events = self.get(&format!("/api/v1/agents/{id}/events"))["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        events.reverse();
        events
    }

    /// The coordinator's listing (`GET /api/v1/agents`) of the agent named `name`, if listed.
    pub fn agent_listing(&self, name: &str) -> Option<Value> {
        self.agents().into_iter().find(|a| a["name"] == name)
    }

    /// Waits at most `timeout` for the agent named `name` to exit by itself; returns its exit
    /// code (`None` when a signal ended it). Panics when it still runs after `timeout`.
    pub fn wait_for_agent_exit(&mut self, name: &str, timeout: Duration) -> Option<i32> {
        let agent = self.agent_mut(name);
        let status = wait_for(&format!("agent {name} to exit"), timeout, || {
            agent.proc.child.try_wait().ok().flatten()
        });
        agent.proc.exited = true;
        status.code()
    }

    /// What the coordinator has logged so far (its stderr).
    pub fn coordinator_log(&self) -> String {
        fs::read_to_string(&self.coordinator.stderr).unwrap_or_default()
    }

    /// Starts another coordinator on the same data directory (so the same key and blobs) and
    /// the same `--database` (which must be PostgreSQL: coordinators share only that), on
    /// ports of its own; returns its QUIC address, for [`AgentOptions::coordinator`].
    pub fn start_peer_coordinator(&mut self) -> SocketAddr {
        self.start_peer_coordinator_with_env(&[])
    }

    /// [`Cluster::start_peer_coordinator`] with more environment variables (say, to skew its
    /// clock with libfaketime, see [`skewed_clock`]).
    pub fn start_peer_coordinator_with_env(&mut self, env: &[(&str, &str)]) -> SocketAddr {
        assert!(
            self.database.is_some(),
            "coordinators share a database only on PostgreSQL: start the cluster with --database"
        );
        let n = self.peers.len() as u32;
        let (proc, announced) = spawn_coordinator(
            &self.root,
            &self.allowed_signers,
            &self.coordinator_args,
            100 + n,
            None,
            env,
        );
        assert_eq!(announced.key, self.announced.key, "peers share the key");
        let quic = announced.quic;
        self.peers.push((proc, announced));
        quic
    }

    /// The first coordinator's HTTP address, whichever coordinator the harness talks to.
    pub fn coordinator_http(&self) -> SocketAddr {
        self.first_http
    }

    /// Sends this harness's API requests (and `lull` commands) to peer `i` from now on.
    pub fn use_peer_api(&mut self, i: usize) {
        self.announced.http = self.peers[i].1.http;
    }

    /// What peer coordinator `i` has logged so far.
    pub fn peer_log(&self, i: usize) -> String {
        fs::read_to_string(&self.peers[i].0.stderr).unwrap_or_default()
    }

    /// Kills the coordinator with SIGKILL: no shutdown, no goodbye to the agents.
    pub fn kill_coordinator(&mut self) {
        self.coordinator.kill();
    }

    /// Starts the coordinator again on the same data directory and the same ports, after
    /// [`Cluster::kill_coordinator`]; checks that it kept its key.
    pub fn restart_coordinator(&mut self) {
        assert!(
            !self.coordinator.is_running(),
            "restart_coordinator: the coordinator still runs; kill it first"
        );
        self.generation += 1;
        let (proc, announced) = spawn_coordinator(
            &self.root,
            &self.allowed_signers,
            &self.coordinator_args,
            self.generation,
            Some(&self.announced),
            &[],
        );
        let old = std::mem::replace(&mut self.coordinator, proc);
        self.finished.push(old);
        assert_eq!(
            announced, self.announced,
            "the restarted coordinator must listen on the same addresses with the same key"
        );
    }

    /// Runs `lull --coordinator https://ADDR ARGS...` to its end (at most [`WAIT`]), with the
    /// cluster's submitter token in `LULL_TOKEN` and its HTTPS key in `LULL_COORDINATOR_KEY`.
    pub fn lull(&self, args: &[&str]) -> CliOutput {
        self.lull_with_token(Some(&self.token), args)
    }

    /// [`Cluster::lull`] with another token in `LULL_TOKEN`, or none.
    pub fn lull_with_token(&self, token: Option<&str>, args: &[&str]) -> CliOutput {
        self.lull_on(self.announced.http, token, args)
    }

    /// [`Cluster::lull`] against the coordinator at `http` (the first one, or a peer).
    pub fn lull_at(&self, http: SocketAddr, args: &[&str]) -> CliOutput {
        self.lull_on(http, Some(&self.token), args)
    }

    fn lull_on(&self, http: SocketAddr, token: Option<&str>, args: &[&str]) -> CliOutput {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let url = self.url_of(http);
        let label = format!("lull-{n}-{}", args.first().copied().unwrap_or("none"));
        run_lull(
            &self.root.join("logs"),
            &label,
            Some(&url),
            self.http_key(),
            token,
            args,
        )
    }

    /// `lull ARGS` with the cluster's token, not started: for a command to watch while it runs.
    pub fn lull_command(&self, args: &[&str]) -> Command {
        let url = self.url_of(self.announced.http);
        lull_command(Some(&url), self.http_key(), Some(&self.token), args)
    }

    /// Runs `lull` with the cluster's token, but `--coordinator url` and `pin` in
    /// `LULL_COORDINATOR_KEY` as given (none when `None`): to try wrong addresses and keys.
    pub fn lull_reaching(&self, url: &str, pin: Option<&str>, args: &[&str]) -> CliOutput {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let label = format!("lull-{n}-{}", args.first().copied().unwrap_or("none"));
        run_lull(
            &self.root.join("logs"),
            &label,
            Some(url),
            pin,
            Some(&self.token),
            args,
        )
    }

    /// The agents' join token (unlimited uses, no expiry) that agents enroll with by default.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// Makes a person's token for `user` with `role` (`submit`, `read`, `operate`) and the
    /// further `token create` arguments `extra` (say, `--clusters a,b`); returns it.
    pub fn user_token(&self, user: &str, role: &str, extra: &[&str]) -> String {
        let mut args = vec!["--user", user, "--role", role];
        args.extend_from_slice(extra);
        create_token(&self.root, self.database.as_deref(), &args)
    }

    /// The `operate` token of the user `tester` that the cluster's own requests use.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Runs `lull-coordinator ARGS...` (a command other than `serve`) on the coordinator's data
    /// directory, to its end.
    pub fn coordinator_command(&self, args: &[&str]) -> CliOutput {
        run_coordinator_command(&self.root, self.database.as_deref(), args)
    }

    /// Runs `lull-coordinator token ARGS...` on the coordinator's data directory; returns what
    /// it printed.
    pub fn coordinator_token(&self, args: &[&str]) -> CliOutput {
        run_token_command(&self.root, self.database.as_deref(), args)
    }

    /// Writes a job directory `jobs/<name>/` holding `job.toml` with `job_toml` and each
    /// `(relative path, bytes)` of `files`; returns the path of `job.toml`.
    pub fn write_job(&self, name: &str, job_toml: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.root.join("jobs").join(name);
        fs::create_dir_all(&dir).expect("creating a job directory");
        for (rel, bytes) in files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("creating a job file's directory");
            }
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        let job = dir.join("job.toml");
        fs::write(&job, job_toml).expect("writing job.toml");
        job
    }

    /// Submits a job signed with the cluster's key (`lull submit JOB --key K --json`); returns
    /// its number. Panics when the CLI refuses it.
    pub fn submit(&self, job: &Path) -> u64 {
        let answer = self.submit_json(job);
        answer["job"]
            .as_u64()
            .unwrap_or_else(|| panic!("`lull submit --json` printed no job number:\n{answer}"))
    }

    /// Submits a job as [`Cluster::submit`] does; returns what `lull submit --json` printed
    /// (the job number and what was uploaded).
    pub fn submit_json(&self, job: &Path) -> Value {
        let out = self.submit_with_token(&self.token, job);
        out.assert_success();
        out.json()
    }

    /// `lull submit JOB --key K --json` as the holder of `token`, to its end.
    pub fn submit_with_token(&self, token: &str, job: &Path) -> CliOutput {
        self.lull_with_token(
            Some(token),
            &[
                "submit",
                path_str(job),
                "--key",
                path_str(&self.key),
                "--json",
            ],
        )
    }

    /// Sends a request to the coordinator's API with the submitter's token: `build` makes it
    /// from the client and the URL of `path`. Returns the status and the JSON body.
    pub fn request(
        &self,
        path: &str,
        build: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.api_url());
        let request = build(&self.http, url.clone()).timeout(Duration::from_secs(30));
        self.runtime.block_on(async {
            let resp = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or_default())
        })
    }

    /// Submits a job and follows it to its end (`lull submit JOB --key K --watch --json`);
    /// returns the CLI's output (its stdout is the job's final detail).
    pub fn submit_and_watch(&self, job: &Path) -> CliOutput {
        self.lull(&[
            "submit",
            path_str(job),
            "--key",
            path_str(&self.key),
            "--watch",
            "--json",
        ])
    }

    /// `lull status --json`: every job the coordinator holds.
    pub fn jobs(&self) -> Vec<Value> {
        let out = self.lull(&["status", "--json"]);
        out.assert_success();
        out.json().as_array().cloned().unwrap_or_default()
    }

    /// `GET /api/v1/agents`: the connected agents.
    pub fn agents(&self) -> Vec<Value> {
        self.get("/api/v1/agents")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `GET /api/v1/jobs/{id}`: the job's detail with its tasks.
    pub fn job(&self, id: u64) -> Value {
        self.get(&format!("/api/v1/jobs/{id}"))
    }

    /// `GET /api/v1/jobs/{id}/tasks/{index}`: the task and all its attempts.
    pub fn task(&self, id: u64, index: u32) -> Value {
        self.get(&format!("/api/v1/jobs/{id}/tasks/{index}"))
    }

    /// Polls the job until `check` accepts its detail, for at most `timeout`; panics with the
    /// job's last detail (states, causes) when the time runs out.
    pub fn wait_for_job(
        &self,
        id: u64,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.try_get(&format!("/api/v1/jobs/{id}"));
            if let Ok(job) = &job
                && check(job)
            {
                return job.clone();
            }
            if Instant::now() >= deadline {
                let last = match &job {
                    Ok(j) => summarize(j),
                    Err(e) => e.clone(),
                };
                panic!(
                    "timed out after {timeout:?} waiting for job {id}: {what}\nlast seen: {last}"
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// A job file named `name` of `count` tasks of [`guests::hello`] spinning `spin_ms`
    /// each, with 16 MiB of memory.
    pub fn many_tasks(&self, name: &str, count: u32, spin_ms: u64) -> PathBuf {
        self.write_job(
            name,
            &format!(
                "name = \"{name}\"\ncount = {count}\n[[module]]\npath = \"t.wasm\"\nargs = [\"{{index}}\"]\n[resources]\nmemory = \"16MiB\"\n"
            ),
            &[("t.wasm", &guests::hello(spin_ms))],
        )
    }

    /// Checks that each of the `count` tasks of job `id` succeeded with exactly one recorded
    /// result.
    pub fn assert_one_result_per_task(&self, id: u64, count: u32) {
        for index in 0..count {
            let task = self.task(id, index);
            assert_eq!(task["task"]["state"], "succeeded", "task {index}: {task}");
            let recorded: Vec<&Value> = task["attempts"]
                .as_array()
                .expect("attempts")
                .iter()
                .filter(|a| a["result"].is_object())
                .collect();
            assert_eq!(
                recorded.len(),
                1,
                "task {index}: one recorded result: {task:#}"
            );
            assert_eq!(
                recorded[0]["outcome"], "succeeded",
                "task {index}: {task:#}"
            );
        }
    }

    /// Waits (at most [`WAIT`]) until the job has ended: succeeded, failed or cancelled.
    pub fn wait_for_job_end(&self, id: u64) -> Value {
        self.wait_for_job(id, "to end", WAIT, |j| {
            matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
    }

    /// `lull results JOB -o DIR` into a fresh directory; returns the directory.
    pub fn results(&self, id: u64) -> PathBuf {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("results").join(format!("{id}-{n}"));
        self.lull(&["results", &id.to_string(), "-o", path_str(&dir)])
            .assert_success();
        dir
    }

    /// GETs a JSON document from the coordinator's API; panics on any failure.
    pub fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GETs `path` from the coordinator's API without a token: the status and the JSON body.
    pub fn get_anonymous(&self, path: &str) -> (u16, Value) {
        let resp = self.send_anonymous(path);
        let status = resp.status().as_u16();
        (
            status,
            self.runtime.block_on(resp.json()).unwrap_or_default(),
        )
    }

    /// GETs `path` without a token and returns its body as text; panics unless it is a 200.
    pub fn get_text_anonymous(&self, path: &str) -> String {
        let resp = self.send_anonymous(path);
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        self.runtime
            .block_on(resp.text())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GETs `path` without a token; panics when no answer comes.
    fn send_anonymous(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.api_url());
        // The request is made inside the runtime: its timeout needs the runtime's timer.
        self.runtime
            .block_on(async {
                self.api_client(None)
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
            })
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Reads the first `n` server-sent events of `path` (with the token): each event's name
    /// and its data as JSON. Gives up after a minute.
    pub fn read_events(&self, path: &str, n: usize) -> Vec<(String, Value)> {
        let url = format!("{}{path}", self.api_url());
        self.runtime.block_on(async {
            let mut resp = self
                .http
                .get(&url)
                .timeout(WAIT)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert_eq!(resp.status().as_u16(), 200, "GET {url}");
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(content_type, "text/event-stream", "GET {url}");
            let mut text = String::new();
            let mut events = Vec::new();
            while events.len() < n {
                let chunk = resp
                    .chunk()
                    .await
                    .unwrap_or_else(|e| panic!("reading {url}: {e}"))
                    .unwrap_or_else(|| panic!("{url} ended after {} event(s)", events.len()));
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let mut name = String::from("message");
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            name = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("an event of {url} is not JSON ({e}): {data}"));
                    events.push((name, data));
                }
            }
            events.truncate(n);
            events
        })
    }

    /// GETs a JSON document from the coordinator's API.
    pub fn try_get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}{path}", self.api_url());
        self.runtime.block_on(async {
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status();
            let body: Value = resp
                .json()
                .await
                .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("GET {url}: {status}: {body}"))
            }
        })
    }

    /// Runs a future on the cluster's tokio runtime (for tests that speak QUIC themselves).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.proc.kill();
        }
        self.coordinator.kill();
        if std::thread::panicking() {
            for p in self
                .finished
                .iter()
                .chain(std::iter::once(&self.coordinator))
                .chain(self.agents.iter().map(|a| &a.proc))
            {
                p.print_tail();
            }
        }
        let keep = std::thread::panicking() || std::env::var_os("LULL_TESTS_KEEP").is_some();
        if keep && let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!(
                "----- the cluster's files are kept in {} -----",
                kept.display()
            );
        }
    }
}

/// One line per task: index, state, attempt, agent, cause; for panic messages.
pub fn summarize(job: &Value) -> String {
    let mut s = format!(
        "job {} state {} counts {} waiting_reason {}",
        job["id"], job["state"], job["counts"], job["waiting_reason"]
    );
    for t in job["tasks"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n  task {} {} attempt {} agent {} cause {}",
            t["index"], t["state"], t["attempt"], t["agent"], t["cause"]
        ));
    }
    s
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// Starts `lull-coordinator serve` and waits for its announcement. `same` gives the addresses
/// to listen on again (a restart); otherwise the OS chooses the ports.
fn spawn_coordinator(
    root: &Path,
    allowed_signers: &Path,
    extra: &[String],
    generation: u32,
    same: Option<&Announced>,
    env: &[(&str, &str)],
) -> (Proc, Announced) {
    // A test may choose the QUIC address (one its network namespaces reach).
    let chosen = extra.iter().position(|a| a == "--quic-listen");
    let chosen_quic = chosen.and_then(|c| extra.get(c + 1)).cloned();
    let extra: Vec<&String> = extra
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen.is_none_or(|c| *i != c && *i != c + 1))
        .map(|(_, a)| a)
        .collect();
    let (quic, http) = match same {
        Some(a) => (a.quic.to_string(), a.http.to_string()),
        None => (
            chosen_quic.unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            "127.0.0.1:0".to_owned(),
        ),
    };
    let mut cmd = Command::new(binary("lull-coordinator"));
    cmd.arg("serve")
        .args(["--data-dir", path_str(&root.join("coordinator"))])
        .args(["--quic-listen", &quic])
        .args(["--http-listen", &http])
        .args(["--allowed-signers", path_str(allowed_signers)])
        .args(["--lease", LEASE])
        .args(extra)
        .envs(env.iter().copied());
    verbose_logs(&mut cmd);
    let mut proc = Proc::spawn(
        &format!("coordinator-{generation}"),
        cmd,
        &root.join("logs"),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fs::read_to_string(&proc.stdout).unwrap_or_default();
        if let Some(a) = parse_announcement(&text) {
            return (proc, a);
        }
        if !proc.is_running() {
            let message = format!(
                "lull-coordinator exited before announcing its addresses:\n{}",
                tail(&proc.stderr, TAIL_LINES)
            );
            proc.kill();
            panic!("{message}");
        }
        if Instant::now() >= deadline {
            proc.kill();
            panic!(
                "timed out after {WAIT:?} waiting for lull-coordinator to announce its addresses:\n{}",
                tail(&proc.stderr, TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `lull` to its end (at most [`WAIT`]), with its output in `logs/<label>.*`.
fn run_lull(
    logs: &Path,
    label: &str,
    coordinator: Option<&str>,
    pin: Option<&str>,
    token: Option<&str>,
    args: &[&str],
) -> CliOutput {
    let cmd = lull_command(coordinator, pin, token, args);
    run_program(logs, label, cmd, format!("lull {}", args.join(" ")))
}

/// `lull ARGS` reaching `coordinator` with `pin` and `token`, not started.
fn lull_command(
    coordinator: Option<&str>,
    pin: Option<&str>,
    token: Option<&str>,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(binary("lull"));
    if let Some(url) = coordinator {
        cmd.args(["--coordinator", url]);
    }
    // Tables are whole, whatever the terminal the tests run in.
    cmd.env_remove("LULL_TOKEN")
        .env_remove("LULL_COORDINATOR_KEY")
        .env_remove("COLUMNS");
    if let Some(token) = token {
        cmd.env("LULL_TOKEN", token);
    }
    if let Some(pin) = pin {
        cmd.env("LULL_COORDINATOR_KEY", pin);
    }
    cmd.args(args);
    cmd
}

/// Runs `lull-coordinator token ARGS... --data-dir ROOT/coordinator` to its end.
fn run_token_command(root: &Path, database: Option<&str>, args: &[&str]) -> CliOutput {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    run_coordinator_command(root, database, &all)
}

/// Runs `lull-coordinator ARGS... --data-dir ROOT/coordinator [--database URL]` to its end.
fn run_coordinator_command(root: &Path, database: Option<&str>, args: &[&str]) -> CliOutput {
    let mut cmd = Command::new(binary("lull-coordinator"));
    cmd.args(args)
        .args(["--data-dir", path_str(&root.join("coordinator"))]);
    if let Some(url) = database {
        cmd.args(["--database", url]);
    }
    let label: String = args[..args.len().min(2)]
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    run_program(
        &root.join("logs"),
        &label,
        cmd,
        format!("lull-coordinator {}", args.join(" ")),
    )
}

/// Makes a token with `lull-coordinator token create ARGS...` and returns it.
fn create_token(root: &Path, database: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = run_token_command(root, database, &all);
    assert!(
        out.success(),
        "`lull-coordinator token create` failed:
{out}"
    );
    out.stdout.trim().to_owned()
}

/// Runs `cmd` to its end (at most [`WAIT`]), with its output in `logs/<label>.*`; `command`
/// names it in messages.
fn run_program(logs: &Path, label: &str, cmd: Command, command: String) -> CliOutput {
    let mut proc = Proc::spawn(label, cmd, logs);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match proc.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                proc.kill();
                panic!(
                    "timed out after {WAIT:?} waiting for `{command}` to finish:\n{}",
                    tail(&proc.stderr, TAIL_LINES)
                );
            }
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    proc.exited = true;
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    CliOutput {
        command,
        code: status.code(),
        stdout: read(&proc.stdout),
        stderr: read(&proc.stderr),
    }
}

/// WASI preview 1 guests, written in WAT and compiled with the `wat` crate.
///
/// Without `/input`, a guest's first preopened directory (descriptor 3) is `/output`.
pub mod guests {
    fn compile(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap_or_else(|e| panic!("a test guest does not compile: {e}"))
    }

    /// Takes one argument, ARG. Busy-waits `spin_ms` milliseconds of wall time (on the
    /// monotonic clock, so the time does not depend on the machine's speed), then writes ARG to
    /// `/output/result.txt`, `hello from task ARG\n` to stdout and `done: task ARG\n` to stderr,
    /// and exits 0. A failing WASI call exits with 100 + its errno; a wrong argument count, 2.
    pub fn hello(spin_ms: u64) -> Vec<u8> {
        compile(
            &HELLO
                .replace("SPIN_BEFORE", &spin_ms.to_string())
                .replace("SPIN_AFTER", "0"),
        )
    }

    /// [`hello`], writing `/output/result.txt` first and then spinning for `spin_ms`
    /// milliseconds before it writes to stdout and stderr (which the agent holds in memory):
    /// a task whose files are all written while it runs on.
    pub fn hello_writing_first(spin_ms: u64) -> Vec<u8> {
        compile(
            &HELLO
                .replace("SPIN_BEFORE", "0")
                .replace("SPIN_AFTER", &spin_ms.to_string()),
        )
    }

    const HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; constants
  (data (i32.const 0) "result.txt")
  (data (i32.const 16) "hello from task ")
  (data (i32.const 32) "\n")
  (data (i32.const 48) "done: task ")
  ;; 100 argc, 104 argv buffer size, 200 argv pointers, 600 iovec, 700 bytes written,
  ;; 704 opened fd, 800 clock, 1024.. argv buffer

  (func $check (param $errno i32)
    (if (local.get $errno)
      (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno))))))

  (func $now_ms (result i64)
    (call $check (call $clock_time_get (i32.const 1) (i64.const 1000) (i32.const 800)))
    (i64.div_u (i64.load (i32.const 800)) (i64.const 1000000)))

  (func $spin (param $ms i64) (local $end i64)
    (local.set $end (i64.add (call $now_ms) (local.get $ms)))
    (block $done
      (loop $again
        (br_if $done (i64.ge_u (call $now_ms) (local.get $end)))
        (br $again))))

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 600) (local.get $ptr))
    (i32.store (i32.const 604) (local.get $len))
    (call $check (call $fd_write (local.get $fd) (i32.const 600) (i32.const 1) (i32.const 700))))

  (func (export "_start") (local $arg i32) (local $len i32) (local $fd i32)
    (call $check (call $args_sizes_get (i32.const 100) (i32.const 104)))
    (if (i32.ne (i32.load (i32.const 100)) (i32.const 2))
      (then (call $proc_exit (i32.const 2))))
    (call $check (call $args_get (i32.const 200) (i32.const 1024)))
    ;; argv[1] is the last string in the buffer: its length is what is left, minus the NUL.
    (local.set $arg (i32.load (i32.const 204)))
    (local.set $len
      (i32.sub
        (i32.sub (i32.add (i32.const 1024) (i32.load (i32.const 104))) (local.get $arg))
        (i32.const 1)))
    (call $spin (i64.const SPIN_BEFORE))
    ;; path_open(/output, no symlink follow, "result.txt", O_CREAT|O_TRUNC, rights fd_write)
    (call $check
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 10)
        (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 704)))
    (local.set $fd (i32.load (i32.const 704)))
    (call $write (local.get $fd) (local.get $arg) (local.get $len))
    (call $check (call $fd_close (local.get $fd)))
    (call $spin (i64.const SPIN_AFTER))
    (call $write (i32.const 1) (i32.const 16) (i32.const 16))
    (call $write (i32.const 1) (local.get $arg) (local.get $len))
    (call $write (i32.const 1) (i32.const 32) (i32.const 1))
    (call $write (i32.const 2) (i32.const 48) (i32.const 11))
    (call $write (i32.const 2) (local.get $arg) (local.get $len))
    (call $write (i32.const 2) (i32.const 32) (i32.const 1))))
"#;

    /// Prints (as 40 raw bytes on stdout) what differs between hosts and runs unless a run is
    /// deterministic: the wall clock and the monotonic clock (8 bytes each, little-endian
    /// nanoseconds), 16 bytes of `random_get`, and the bits of a float sum whose operand is a
    /// NaN with a payload (8 bytes). Exits 0; a failing WASI call exits with 100 + its errno.
    pub fn observer() -> Vec<u8> {
        compile(OBSERVER)
    }

    const OBSERVER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0: a NaN whose payload is 1; 8: 0.0; 64..104: what is printed; 200: iovec; 300: written
  (data (i32.const 0) "\01\00\00\00\00\00\f8\7f")
  (func $check (param $errno i32)
    (if (local.get $errno)
      (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno))))))
  (func (export "_start")
    (call $check (call $clock (i32.const 0) (i64.const 1) (i32.const 64)))
    (call $check (call $clock (i32.const 1) (i64.const 1) (i32.const 72)))
    (call $check (call $random (i32.const 80) (i32.const 16)))
    (f64.store (i32.const 96) (f64.add (f64.load (i32.const 0)) (f64.load (i32.const 8))))
    (i32.store (i32.const 200) (i32.const 64))
    (i32.store (i32.const 204) (i32.const 40))
    (call $check (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))))
"#;

    /// Pure computation: runs `iterations` steps of the xorshift64 generator (13, 7, 17) from a
    /// fixed seed, then writes the final state to stdout as 16 lowercase hex digits and a
    /// newline, and exits 0. The output depends only on `iterations`, never on timing, so a run
    /// that was paused or throttled prints the same as one that was not. Each step is a handful
    /// of dependent instructions (about a nanosecond or two on a desktop core).
    pub fn xorshift(iterations: u64) -> Vec<u8> {
        compile(&XORSHIFT.replace("ITERATIONS", &iterations.to_string()))
    }

    const XORSHIFT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0 hex digits, 16..32 the state as text, 32 newline, 64 iovec, 72 bytes written
  (data (i32.const 0) "0123456789abcdef")
  (func (export "_start") (local $x i64) (local $i i64) (local $k i32)
    (local.set $x (i64.const 0x9E3779B97F4A7C15))
    (local.set $i (i64.const ITERATIONS))
    (block $done
      (loop $again
        (br_if $done (i64.eqz (local.get $i)))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $i (i64.sub (local.get $i) (i64.const 1)))
        (br $again)))
    ;; the low digit last
    (local.set $k (i32.const 15))
    (block $written
      (loop $digit
        (i32.store8 (i32.add (i32.const 16) (local.get $k))
          (i32.load8_u (i32.wrap_i64 (i64.and (local.get $x) (i64.const 15)))))
        (local.set $x (i64.shr_u (local.get $x) (i64.const 4)))
        (br_if $written (i32.eqz (local.get $k)))
        (local.set $k (i32.sub (local.get $k) (i32.const 1)))
        (br $digit)))
    (i32.store8 (i32.const 32) (i32.const 10))
    (i32.store (i32.const 64) (i32.const 16))
    (i32.store (i32.const 68) (i32.const 17))
    (if (call $fd_write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 72))
      (then (call $proc_exit (i32.const 1))))))
"#;

    /// Takes one argument, a number: exits 1 when it is odd, 0 when it is even (with
    /// `args = ["{index}"]`, the odd tasks of a job fail).
    pub fn odd_fails() -> Vec<u8> {
        exit_by_parity(0, 1)
    }

    /// Takes one argument, a number: exits `even` when it is even and `odd` when it is odd, as
    /// a solver exits 10 for "sat" and 20 for "unsat". A wrong argument count exits 2.
    pub fn exit_by_parity(even: i32, odd: i32) -> Vec<u8> {
        compile(
            &r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 100 argc, 104 argv buffer size, 200 argv pointers, 1024.. argv buffer
  (func (export "_start")
    (if (call $args_sizes_get (i32.const 100) (i32.const 104)) (then (call $proc_exit (i32.const 2))))
    (if (call $args_get (i32.const 200) (i32.const 1024)) (then (call $proc_exit (i32.const 2))))
    ;; The last argument's last digit is just before the buffer's final NUL; an ASCII digit
    ;; is odd when the digit is.
    (call $proc_exit
      (select (i32.const ODD) (i32.const EVEN)
        (i32.and
          (i32.load8_u (i32.sub (i32.add (i32.const 1024) (i32.load (i32.const 104))) (i32.const 2)))
          (i32.const 1))))))"#
                .replace("EVEN", &even.to_string())
                .replace("ODD", &odd.to_string()),
        )
    }

    /// Copies the file at `path` under the preopened directory `fd` (3 is the first: `/input`
    /// when the module has inputs, then its mounts in order, then `/output` and `/scratch`) to
    /// stdout, up to 4 KiB, and exits 0; a failing WASI call exits with 100 + its errno.
    pub fn cat(fd: u32, path: &str) -> Vec<u8> {
        compile(
            &r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0.. the path, 100 the opened fd, 200 iovec, 300 count, 1024.. the bytes
  (data (i32.const 0) "PATH")
  (func $check (param $errno i32)
    (if (local.get $errno)
      (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno))))))
  (func (export "_start")
    ;; rights: fd_read (bit 1)
    (call $check (call $open (i32.const DIRFD) (i32.const 0) (i32.const 0) (i32.const LEN)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 100)))
    (i32.store (i32.const 200) (i32.const 1024))
    (i32.store (i32.const 204) (i32.const 4096))
    (call $check (call $read (i32.load (i32.const 100)) (i32.const 200) (i32.const 1) (i32.const 300)))
    (i32.store (i32.const 204) (i32.load (i32.const 300)))
    (call $check (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))))"#
                .replace("PATH", path)
                .replace("DIRFD", &fd.to_string())
                .replace("LEN", &path.len().to_string()),
        )
    }

    /// Writes `tick N\n` to stdout `count` times (at most 10), `every_ms` milliseconds apart
    /// (busy-waiting on the monotonic clock), then exits 0.
    pub fn ticker(count: u32, every_ms: u64) -> Vec<u8> {
        assert!(count <= 10);
        compile(
            &r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0.. the line (its digit at 5), 100 iovec, 200 written, 304 the time
  (data (i32.const 0) "tick 0\n")
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1000) (i32.const 304)))
    (i64.load (i32.const 304)))
  (func (export "_start") (local $i i32) (local $until i64)
    (loop $next
      (i32.store8 (i32.const 5) (i32.add (i32.const 48) (local.get $i)))
      (i32.store (i32.const 100) (i32.const 0))
      (i32.store (i32.const 104) (i32.const 7))
      (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 200)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.lt_u (local.get $i) (i32.const COUNT))
        (then
          (local.set $until (i64.add (call $now) (i64.const EVERY_NS)))
          (block $done
            (loop $spin
              (br_if $done (i64.ge_u (call $now) (local.get $until)))
              (br $spin)))
          (br $next))))))"#
                .replace("COUNT", &count.to_string())
                .replace("EVERY_NS", &(every_ms * 1_000_000).to_string()),
        )
    }

    /// Lists the directory preopened at `fd` (the first preopen is 3): one name per line on
    /// stdout, `.` and `..` included, in the order the host gives; then copies its standard
    /// input to stdout after a line `--`. A failing WASI call exits with 100 + its errno.
    pub fn list_dir(fd: u32) -> Vec<u8> {
        compile(
            &r#"(module
  (import "wasi_snapshot_preview1" "fd_readdir" (func $readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 100 bytes used, 200 iovecs, 300 written, 400 "\n", 404 "--\n", 1024.. entries, 65536.. stdin
  (data (i32.const 400) "\n")
  (data (i32.const 404) "--\n")
  (func $check (param $errno i32)
    (if (local.get $errno)
      (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno))))))
  (func $write (param $at i32) (param $len i32)
    (i32.store (i32.const 200) (local.get $at))
    (i32.store (i32.const 204) (local.get $len))
    (call $check (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300))))
  (func (export "_start") (local $p i32) (local $end i32) (local $len i32)
    (call $check (call $readdir (i32.const DIRFD) (i32.const 1024) (i32.const 32768) (i64.const 0) (i32.const 100)))
    (local.set $p (i32.const 1024))
    (local.set $end (i32.add (i32.const 1024) (i32.load (i32.const 100))))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const 24)) (local.get $end)))
        (local.set $len (i32.load (i32.add (local.get $p) (i32.const 16))))
        (call $write (i32.add (local.get $p) (i32.const 24)) (local.get $len))
        (call $write (i32.const 400) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.add (i32.const 24) (local.get $len))))
        (br $next)))
    (call $write (i32.const 404) (i32.const 3))
    (i32.store (i32.const 200) (i32.const 65536))
    (i32.store (i32.const 204) (i32.const 4096))
    (call $check (call $read (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 300)))
    (call $write (i32.const 65536) (i32.load (i32.const 300)))))"#
                .replace("DIRFD", &fd.to_string()),
        )
    }

    /// Writes its whole environment to stdout, one `NAME=value` per line, and exits 0; a
    /// failing WASI call exits with 100 + its errno.
    pub fn environment() -> Vec<u8> {
        compile(
            r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 100 count, 104 buffer size, 200 iovec, 300 written, 1024.. pointers, 8192.. the strings
  (func $check (param $errno i32)
    (if (local.get $errno)
      (then (call $proc_exit (i32.add (i32.const 100) (local.get $errno))))))
  (func (export "_start") (local $i i32) (local $end i32)
    (call $check (call $sizes (i32.const 100) (i32.const 104)))
    (call $check (call $get (i32.const 1024) (i32.const 8192)))
    ;; Each NUL that ends a string becomes a newline.
    (local.set $i (i32.const 8192))
    (local.set $end (i32.add (i32.const 8192) (i32.load (i32.const 104))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $i)))
          (then (i32.store8 (local.get $i) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 200) (i32.const 8192))
    (i32.store (i32.const 204) (i32.load (i32.const 104)))
    (call $check (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))))"#,
        )
    }

    /// Loops forever: only a timeout or a cancellation stops it.
    pub fn forever() -> Vec<u8> {
        compile(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "_start") (loop $forever (br $forever))))"#,
        )
    }

    /// Traps at once on `unreachable`.
    pub fn trap() -> Vec<u8> {
        compile(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "_start") unreachable))"#,
        )
    }

    /// A module that imports `env::printf`, as a C toolchain's output might: valid WebAssembly
    /// that Lull cannot run.
    pub fn imports_printf() -> Vec<u8> {
        compile(
            r#"(module
                 (import "env" "printf" (func $printf (param i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "_start")))"#,
        )
    }

    /// A core module giving a component's lowered functions their memory and allocator (a bump
    /// allocator), as the instance `$mi`: put where `HEAP` is; `OPTIONS` (after a `canon lower`)
    /// points the lowering at them.
    const HEAP: &str = r#"(core module $mem
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (global.get $next))
      (global.set $next (i32.add (global.get $next) (local.get 3)))
      (local.get $p)))
  (core instance $mi (instantiate $mem))"#;

    /// A component's text with [`HEAP`] and its options filled in.
    fn component(text: &str) -> Vec<u8> {
        compile(&text.replace("HEAP", HEAP).replace(
            "OPTIONS",
            r#"(memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))"#,
        ))
    }

    /// A component (WASI preview 2) that reports progress 0.25 through `lull:guest/host`, then
    /// spins for ever.
    pub fn progress_then_spin() -> Vec<u8> {
        reporting_progress(
            "(call $progress (f64.const 0.25))
      (loop $spin (br $spin))
      (i32.const 0)",
        )
    }

    /// A component (WASI preview 2) that works through `steps` steps of `spins` loop turns
    /// each, reporting its progress through `lull:guest/host` after each, then exits 0.
    pub fn progress_creep(steps: u32, spins: u32) -> Vec<u8> {
        reporting_progress(&format!(
            "(local $step i32) (local $spin i32)
      (loop $steps
        (local.set $spin (i32.const {spins}))
        (loop $spins
          (local.set $spin (i32.sub (local.get $spin) (i32.const 1)))
          (br_if $spins (local.get $spin)))
        (local.set $step (i32.add (local.get $step) (i32.const 1)))
        (call $progress
          (f64.div (f64.convert_i32_u (local.get $step)) (f64.const {steps})))
        (br_if $steps (i32.lt_u (local.get $step) (i32.const {steps}))))
      (i32.const 0)"
        ))
    }

    /// A component (WASI preview 2) whose `run` is `body`, a core function returning 0 for
    /// success, which may call `$progress` (the host's `progress`).
    fn reporting_progress(body: &str) -> Vec<u8> {
        compile(
            &r#"
(component
  (import "lull:guest/host@0.1.0" (instance $host
    (export "progress" (func (param "fraction" f64)))))
  (core func $progress (canon lower (func $host "progress")))
  (core instance $hi (export "progress" (func $progress)))
  (core module $m
    (import "host" "progress" (func $progress (param f64)))
    (func (export "run") (result i32)
      BODY))
  (core instance $i (instantiate $m (with "host" (instance $hi))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
"#
            .replace("BODY", body),
        )
    }

    /// A component (WASI preview 2) using `lull:guest/host`: when `restore` finds a checkpoint
    /// it exits `ok` if the checkpoint is the 5 bytes `state` (`err` otherwise); when it finds
    /// none, it keeps `state` with the host function `keep` and then does `then`.
    fn restore_or_keep(keep: &str, then: &str) -> Vec<u8> {
        restore_then(
            "(if (i32.load8_u (i32.const 64))
        (then
          (if (i32.ne (i32.load (i32.const 72)) (i32.const 5)) (then (return (i32.const 1))))
          (return (i32.ne (i32.load (i32.load (i32.const 68))) (i32.load (i32.const 16))))))",
            keep,
            then,
        )
    }

    /// A component (WASI preview 2) using `lull:guest/host`: calls `restore`, does `found`
    /// (which sees the option at address 64), keeps the 5 bytes `state` with the host function
    /// `keep` and then does `then`.
    fn restore_then(found: &str, keep: &str, then: &str) -> Vec<u8> {
        component(
            &r#"
(component
  (import "lull:guest/host@0.1.0" (instance $host
    (export "restore" (func (result (option (list u8)))))
    (export "KEEP"
      (func (param "state" (list u8)) (result (result (error string)))))))
  HEAP
  (core func $restore (canon lower (func $host "restore")
    OPTIONS))
  (core func $keep (canon lower (func $host "KEEP")
    OPTIONS))
  (core instance $hi (export "restore" (func $restore)) (export "keep" (func $keep)))
  (core module $m
    (import "mem" "memory" (memory 1))
    (import "host" "restore" (func $restore (param i32)))
    (import "host" "keep" (func $keep (param i32 i32 i32)))
    (data (i32.const 16) "state")
    (func (export "run") (result i32)
      (call $restore (i32.const 64))
      FOUND
      (call $keep (i32.const 16) (i32.const 5) (i32.const 96))
      THEN
      (i32.const 1)))
  (core instance $i (instantiate $m (with "mem" (instance $mi)) (with "host" (instance $hi))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
"#
            .replace("FOUND", found)
            .replace("KEEP", keep)
            .replace("THEN", then),
        )
    }

    /// A component (WASI preview 2) that ignores eviction notices: when `restore` finds the
    /// checkpoint `state` it exits `ok`; when it finds none, it keeps `state` with `checkpoint`
    /// (as a periodic checkpoint would) and spins for ever.
    pub fn checkpoint_then_spin() -> Vec<u8> {
        restore_or_keep("checkpoint", "(loop $spin (br $spin))")
    }

    /// A component (WASI preview 2): when `restore` finds the checkpoint `state` it exits `ok`;
    /// when it finds none, it keeps `state` with `checkpoint-and-leave`, ending its attempt as
    /// evicted.
    pub fn resumer() -> Vec<u8> {
        restore_or_keep("checkpoint-and-leave", "")
    }

    /// A module (WASI preview 1, no inputs, so `/output` is descriptor 3) that creates `count`
    /// empty files `f000000`, `f000001`... under `/output` and exits 0.
    pub fn output_flood(count: u32) -> Vec<u8> {
        wat::parse_str(
            r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "f000000")
  (func (export "_start")
    (local $i i32) (local $n i32) (local $p i32)
    (loop $files
      (local.set $n (local.get $i))
      (local.set $p (i32.const 106))
      (loop $digits
        (i32.store8 (local.get $p)
          (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
        (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (br_if $digits (i32.ge_u (local.get $p) (i32.const 101))))
      (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
            (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
            (i32.const 200)))
        (then (drop (call $close (i32.load (i32.const 200))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $files (i32.lt_u (local.get $i) (i32.const COUNT))))))"#
                .replace("COUNT", &count.to_string()),
        )
        .expect("wat")
    }

    /// A module (WASI preview 1, no inputs, so `/output` is descriptor 3) that appends 64 KiB
    /// to `/output/fill` for ever, or until the disk or the sandbox stops it.
    pub fn disk_filler() -> Vec<u8> {
        wat::parse_str(
            r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100) "fill")
  (func (export "_start")
    (local $fd i32)
    ;; O_CREAT | O_TRUNC; rights to write.
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 4)
          (i32.const 9) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
          (i32.const 200))
      (then unreachable))
    (local.set $fd (i32.load (i32.const 200)))
    ;; One iovec at 0: 64 KiB from 1024.
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $fill
      (if (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
        (then unreachable))
      (br $fill))))"#,
        )
        .expect("wat")
    }

    /// A component (WASI preview 2) that, checkpoint or not, keeps `state` with
    /// `checkpoint-and-leave` every time it runs: it never ends on its own.
    pub fn always_leaves() -> Vec<u8> {
        restore_then("", "checkpoint-and-leave", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_announcement_parses() {
        let a = parse_announcement(
            "lull-coordinator: agents on quic://127.0.0.1:4433 (key sha256:abcd), people on https://127.0.0.1:8080 (key sha256:ef01)\n",
        )
        .unwrap();
        assert_eq!(a.quic, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(a.key, "sha256:abcd");
        assert_eq!(a.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(a.http_key.as_deref(), Some("sha256:ef01"));
        let plain = parse_announcement(
            "lull-coordinator: agents on quic://127.0.0.1:4433 (key sha256:abcd), people on http://127.0.0.1:8080\n",
        )
        .unwrap();
        assert_eq!(plain.http, a.http);
        assert_eq!(plain.http_key, None);
        assert_eq!(parse_announcement("lull-coordinator: starting\n"), None);
    }

    #[test]
    fn the_guests_compile() {
        for bytes in [
            guests::hello(0),
            guests::xorshift(1),
            guests::forever(),
            guests::trap(),
            guests::disk_filler(),
            guests::imports_printf(),
        ] {
            assert!(bytes.starts_with(b"\0asm"));
        }
    }
}
