//! The machine owner's local commands: `lull-agent pause`, `snooze`, `resume`, `finish`,
//! `stop` and `status` reach the running agent over a Unix socket in its data directory. The socket is made readable and
//! writable by its owner only (mode 0600), so only the agent's own user (or root) can steer it.
//!
//! One request per connection: a line with the command (`snooze` followed by milliseconds),
//! answered by one line of JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What the owner asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRequest {
    /// Evict guests and take no work until `resume`.
    Pause,
    /// `Pause` for this long, then take work again by itself.
    Snooze(std::time::Duration),
    /// Take no new work, let running tasks end, then exit.
    Finish,
    /// Take work again after `pause`.
    Resume,
    /// Evict guests, then exit.
    Stop,
    /// Say what the agent is doing and why.
    Status,
}

impl OwnerRequest {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerRequest::Pause => "pause",
            OwnerRequest::Snooze(_) => "snooze",
            OwnerRequest::Finish => "finish",
            OwnerRequest::Resume => "resume",
            OwnerRequest::Stop => "stop",
            OwnerRequest::Status => "status",
        }
    }

    /// The request's line on the wire.
    fn line(self) -> String {
        match self {
            OwnerRequest::Snooze(d) => format!("snooze {}", d.as_millis()),
            other => other.as_str().to_owned(),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if let Some(ms) = line.strip_prefix("snooze ") {
            return ms
                .trim()
                .parse()
                .ok()
                .map(|ms| OwnerRequest::Snooze(std::time::Duration::from_millis(ms)));
        }
        Some(match line {
            "pause" => OwnerRequest::Pause,
            "finish" => OwnerRequest::Finish,
            "resume" => OwnerRequest::Resume,
            "stop" => OwnerRequest::Stop,
            "status" => OwnerRequest::Status,
            _ => return None,
        })
    }
}

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Serves owner requests on `path` until the task is dropped; `answer` turns each request into
/// the JSON answer.
#[cfg(unix)]
pub async fn serve(
    path: PathBuf,
    answer: impl Fn(OwnerRequest) -> serde_json::Value + Send + Sync + 'static,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let answer = std::sync::Arc::new(answer);
    loop {
        let (stream, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(256);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match OwnerRequest::parse(&line) {
                Some(req) => answer(req),
                None => serde_json::json!({
                    "error": format!("unknown command {:?}: use pause, snooze MS, resume, finish, stop or status", line.trim())
                }),
            };
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

/// Sends one request to the agent whose data directory is `data_dir`.
#[cfg(unix)]
pub async fn send(data_dir: &Path, req: OwnerRequest) -> anyhow::Result<serde_json::Value> {
    let path = socket_path(data_dir);
    let stream = tokio::net::UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot reach the agent at {} (is `lull-agent run` running with this data directory?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", req.line()).as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    Ok(v)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_gets_its_answer_and_nonsense_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let server = tokio::spawn(serve(
            path.clone(),
            |req| serde_json::json!({ "got": req.as_str() }),
        ));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let v = send(dir.path(), OwnerRequest::Pause).await.unwrap();
        assert_eq!(v["got"], "pause");
        let snooze = OwnerRequest::Snooze(std::time::Duration::from_secs(90));
        assert_eq!(OwnerRequest::parse(&snooze.line()), Some(snooze));
        assert_eq!(OwnerRequest::parse("snooze soon"), None);
        let v = send(dir.path(), OwnerRequest::Finish).await.unwrap();
        assert_eq!(v["got"], "finish");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"dance\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        assert!(line.contains("unknown command"), "{line}");
        server.abort();
    }
}
