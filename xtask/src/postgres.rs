//! A throwaway PostgreSQL server for the tests: Debian's `postgresql`, installed when missing,
//! a fresh cluster under the target directory, listening on a free loopback port, with trust
//! authentication for the user `lull`. It stops when dropped.
//!
//! `initdb` refuses to run as root, so as root every PostgreSQL program runs as the `postgres`
//! user (which the package makes) through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::util;

/// A running server.
#[derive(Debug)]
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    /// The server's options (`pg_ctl -o`).
    options: String,
    /// An admin URL (database `postgres`, user `lull`).
    pub url: String,
}

/// The newest installed PostgreSQL's programs, e.g. `/usr/lib/postgresql/15/bin`.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, run as `postgres` when we are root.
fn program(bin: &Path, name: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(name));
        cmd
    } else {
        Command::new(bin.join(name))
    }
}

fn free_port() -> anyhow::Result<u16> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(socket.local_addr()?.port())
}

impl Server {
    /// Installs PostgreSQL when missing and starts a fresh server for the tests (without
    /// fsync: the tests check behaviour, not durability against power loss).
    pub fn start() -> anyhow::Result<Server> {
        Self::start_in("postgres-tests", false)
    }

    /// Installs PostgreSQL when missing and starts a fresh server whose data lives in `name`
    /// under the target directory; `fsync` as a production server has it.
    pub fn start_in(name: &str, fsync: bool) -> anyhow::Result<Server> {
        let bin = match find_bin() {
            Some(bin) => bin,
            None => {
                util::ensure_packages("the PostgreSQL tests", &["postgresql"])?;
                find_bin().context(
                    "postgresql is installed but no initdb was found under /usr/lib/postgresql",
                )?
            }
        };
        let dir = util::target_dir().join(name);
        let data = dir.join("data");
        if data.exists() {
            // A server left running by an interrupted run.
            let _ = program(&bin, "pg_ctl")
                .args(["-D"])
                .arg(&data)
                .args(["-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown postgres {} failed ({status})", dir.display());
            }
        }
        let mut initdb = program(&bin, "initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "lull", "--no-sync", "-E", "UTF8"]);
        quiet(&mut initdb, "initdb")?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=400",
            dir.display(),
            if fsync { "on" } else { "off" }
        );
        let mut start = program(&bin, "pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &options, "-w", "start"]);
        quiet(&mut start, "pg_ctl start")?;
        let url = format!("postgres://lull@127.0.0.1:{port}/postgres");
        eprintln!(
            "xtask: PostgreSQL at {url} (fsync {})",
            if fsync { "on" } else { "off" }
        );
        Ok(Server {
            bin,
            data,
            options,
            url,
        })
    }
}

impl Server {
    /// How a test stops, starts or restarts this server (`pg_ctl` with its data directory,
    /// log and options, as `postgres` when we are root; the action is added by the test):
    /// `LULL_TEST_POSTGRES_CTL`, a command line whose words are separated by tabs.
    pub fn ctl(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        if is_root() {
            words.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        words.push(self.bin.join("pg_ctl").display().to_string());
        words.push("-D".into());
        words.push(self.data.display().to_string());
        words.push("-l".into());
        words.push(self.data.with_file_name("server.log").display().to_string());
        words.push("-o".into());
        words.push(self.options.clone());
        words.join("\t")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = program(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "stop"])
            .output();
    }
}

/// Runs a command, showing its output only when it fails.
fn quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
