//! The coordinator under test, as its own process (`lull-coordinator serve`, release build):
//! its tokens, its CPU time and memory from `/proc`, and its HTTP API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `lull-coordinator serve`, stopped with SIGINT when dropped.
#[derive(Debug)]
pub struct Coordinator {
    child: Child,
    /// Its QUIC address.
    pub quic: String,
    /// Its key, for agents to pin.
    pub key: Digest,
    /// Its HTTP address (`host:port`).
    pub http: String,
    /// A submitter's token for its API.
    pub token: String,
    /// A join token with unlimited uses.
    pub join_token: String,
}

/// Makes a token on the data directory with `lull-coordinator token create ARGS`.
fn make_token(bin: &Path, data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = crate::util::stdout_of(
        Command::new(bin)
            .args([
                "token",
                "create",
                "--ttl",
                "0",
                "--description",
                "fleet bench",
            ])
            .args(args)
            .arg("--data-dir")
            .arg(data),
        "lull-coordinator token create",
    )?;
    Ok(out.trim().to_owned())
}

impl Coordinator {
    /// Makes a submitter's token and a join token on `data`, then starts serving with room
    /// for `max_agents` connections, all from one address, logging to `log`.
    pub fn start(bin: &Path, data: &Path, log: &Path, max_agents: usize) -> anyhow::Result<Self> {
        let token = make_token(bin, data, &["--user", "bench", "--role", "operate"])?;
        let join_token = make_token(bin, data, &["--uses", "0"])?;
        let max = max_agents.to_string();
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                // The bench reads the API with a few lines of plain HTTP on loopback.
                "--plain-http",
            ])
            .args(["--max-agent-connections", &max])
            .args(["--max-agent-connections-per-address", &max])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let stdout = child.stdout.take().context("the coordinator's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match lines.next() {
            Some(line) => line?,
            None => bail!(
                "the coordinator exited before serving; see {}",
                log.display()
            ),
        };
        eprintln!("fleet: {line}");
        // lull-coordinator: agents on quic://ADDR (key sha256:HEX), people on http://ADDR
        let word = |prefix: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .map(|w| w.trim_end_matches([',', ')']).to_owned())
                .with_context(|| format!("no {prefix} in the coordinator's first line: {line}"))
        };
        let quic = word("quic://")?;
        let http = word("http://")?;
        let key: Digest = format!("sha256:{}", word("sha256:")?)
            .parse()
            .map_err(|e| anyhow::anyhow!("the coordinator's key: {e}"))?;
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(Self {
            child,
            quic,
            key,
            http,
            token,
            join_token,
        })
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GETs a JSON document from its API.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut body = Vec::new();
        let mut stream = self.request(path).await?;
        stream.read_to_end(&mut body).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// The first `pool` event of `GET /api/v1/stream?since_ms=SINCE`: the connected agents and
    /// the reports each made after `since_ms` (the dashboard's feed).
    pub async fn pool_since(&self, since_ms: i64) -> anyhow::Result<serde_json::Value> {
        let mut stream = self
            .request(&format!("/api/v1/stream?since_ms={since_ms}"))
            .await?;
        let mut text = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
                .await
                .context("no pool event within a minute")??;
            if n == 0 {
                bail!("the event stream ended before a pool event");
            }
            text.extend_from_slice(&buf[..n]);
            // An event ends with a blank line; the pool's is one `data:` line.
            if let Some(end) = find(&text, b"\n\n") {
                let event = std::str::from_utf8(&text[..end])?;
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .context("an event without data")?;
                if !event.lines().any(|l| l.trim() == "event: pool") {
                    bail!("the stream sent {event:.200}");
                }
                return Ok(serde_json::from_str(data.trim_start())?);
            }
        }
    }

    /// Sends `GET path` (HTTP/1.0, so that the body is neither chunked nor kept alive) and
    /// returns the connection past the response's head, which must say 200.
    async fn request(
        &self,
        path: &str,
    ) -> anyhow::Result<tokio::io::BufReader<tokio::net::TcpStream>> {
        let mut stream = tokio::net::TcpStream::connect(&self.http)
            .await
            .with_context(|| format!("connecting to {}", self.http))?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.http, self.token
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut status = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut status).await?;
        if !status.contains(" 200 ") {
            bail!("GET {path}: {}", status.trim());
        }
        loop {
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line).await?;
            if line
                .to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
            {
                bail!("GET {path}: a chunked answer to an HTTP/1.0 request");
            }
            if line.trim().is_empty() {
                return Ok(reader);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process ID, which it keeps until it is waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// UDP datagrams the kernel dropped for want of receive buffer space, since boot
/// (`RcvbufErrors` in `/proc/net/snmp`).
pub fn udp_receive_drops() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp
        .next()
        .context("no Udp: in /proc/net/snmp")?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = udp
        .next()
        .context("no Udp: values")?
        .split_whitespace()
        .collect();
    let at = names
        .iter()
        .position(|n| *n == "RcvbufErrors")
        .context("no RcvbufErrors")?;
    Ok(values.get(at).context("no RcvbufErrors value")?.parse()?)
}

/// The release binaries the bench runs.
pub fn release_bin(name: &str) -> PathBuf {
    crate::util::target_dir().join("release").join(name)
}
