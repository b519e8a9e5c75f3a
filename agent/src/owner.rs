//! The machine owner's local commands: `lull-agent pause`, `snooze`, `resume`, `finish`,
//! `stop` and `status` reach the running agent over a Unix socket in its data directory, made
//! readable and writable by its owner only (mode 0600), so only the agent's own user (or root)
//! can steer it; on Windows over a local named pipe named after the data directory, which only
//! the agent's account, administrators and LocalSystem may write to.
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

/// The named pipe of the agent whose data directory is `data_dir` (Windows): one per data
/// directory, named after a digest of its absolute path (in lower case on Windows, whose paths
/// are not case-sensitive, and where `absolute` turns `/` into `\`).
pub fn pipe_name(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let mut text = absolute.to_string_lossy().into_owned();
    if cfg!(windows) {
        text = text.to_lowercase();
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(r"\\.\pipe\lull-agent-{}", &hex::encode(digest)[..16])
}

/// The error for a command line the agent does not know.
fn unknown(line: &str) -> serde_json::Value {
    serde_json::json!({
        "error": format!("unknown command {:?}: use pause, snooze MS, resume, finish, stop or status", line.trim())
    })
}

/// Answers the one request of a connection.
async fn answer_one<S>(stream: S, answer: &(impl Fn(OwnerRequest) -> serde_json::Value + ?Sized))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(256);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match OwnerRequest::parse(&line) {
        Some(req) => answer(req),
        None => unknown(&line),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
    let _ = write.flush().await;
}

/// Sends `req` over a connected stream and reads the answer.
async fn ask<S>(stream: S, req: OwnerRequest) -> anyhow::Result<serde_json::Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    write
        .write_all(format!("{}\n", req.line()).as_bytes())
        .await?;
    write.flush().await?;
    let mut line = String::new();
    BufReader::new(read)
        .take(64 * 1024)
        .read_line(&mut line)
        .await?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    Ok(v)
}

/// Serves owner requests for the agent of `data_dir` until the task is dropped; `answer`
/// turns each request into the JSON answer.
///
/// Unix: a socket in the data directory, mode 0600. Windows: a named pipe ([`pipe_name`]) with
/// the default security of pipes (full access for the agent's account, administrators and
/// LocalSystem; others may only read) that refuses remote clients, and fails to start when
/// another process already holds the name.
pub async fn serve(
    data_dir: &Path,
    answer: impl Fn(OwnerRequest) -> serde_json::Value + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let answer = std::sync::Arc::new(answer);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path(data_dir);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        loop {
            let (stream, _) = listener.accept().await?;
            let answer = answer.clone();
            tokio::spawn(async move { answer_one(stream, &*answer).await });
        }
    }
    #[cfg(windows)]
    {
        use tokio::net::windows::named_pipe::ServerOptions;
        let name = pipe_name(data_dir);
        let mut server = ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .create(&name)
            .with_context(|| {
                format!("creating the pipe {name} (is another agent using this data directory?)")
            })?;
        loop {
            server.connect().await?;
            let connected = server;
            server = ServerOptions::new()
                .reject_remote_clients(true)
                .create(&name)
                .with_context(|| format!("creating the pipe {name}"))?;
            let answer = answer.clone();
            tokio::spawn(async move { answer_one(connected, &*answer).await });
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (data_dir, answer);
        bail!("owner commands are not supported on this system")
    }
}

/// Sends one request to the agent whose data directory is `data_dir`.
pub async fn send(data_dir: &Path, req: OwnerRequest) -> anyhow::Result<serde_json::Value> {
    #[cfg(unix)]
    {
        let path = socket_path(data_dir);
        let stream = tokio::net::UnixStream::connect(&path).await.with_context(|| {
            format!(
                "cannot reach the agent at {} (is `lull-agent run` running with this data directory?)",
                path.display()
            )
        })?;
        ask(stream, req).await
    }
    #[cfg(windows)]
    {
        let name = pipe_name(data_dir);
        let client = tokio::net::windows::named_pipe::ClientOptions::new()
            .open(&name)
            .with_context(|| {
                format!(
                    "cannot reach the agent of {} at {name} (is `lull-agent run` running with this data directory?)",
                    data_dir.display()
                )
            })?;
        ask(client, req).await
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (data_dir, req);
        bail!("owner commands are not supported on this system")
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_gets_its_answer_and_nonsense_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let data_dir = dir.path().to_owned();
        let server = tokio::spawn(async move {
            serve(&data_dir, |req| serde_json::json!({ "got": req.as_str() })).await
        });
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
