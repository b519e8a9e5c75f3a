//! The agent's QUIC link to its coordinator: connecting (pinning the coordinator's key),
//! framed messages, and blob downloads and uploads on their own streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use lull_protocol::frame;
use lull_protocol::identity::{Identity, PinnedKey};
use lull_protocol::message::{AgentMessage, BlobReply, EnrollReply};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use crate::cache::BlobCache;

/// Reads one frame; `Ok(None)` when the stream ended before a frame began.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<Option<T>> {
    Ok(frame::stream::read(recv).await?)
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut (impl tokio::io::AsyncWrite + Unpin),
    msg: &T,
) -> anyhow::Result<()> {
    Ok(frame::stream::write(send, msg).await?)
}

/// A QUIC client endpoint for reaching one coordinator.
#[derive(Debug, Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Dialer {
    /// A dialer that pins `pin` (the coordinator's public key hash) when given, and presents
    /// `identity` as its client certificate when given.
    pub fn new(pin: Option<Digest>, identity: Option<&Identity>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedKey::new(pin)));
        let mut tls = match identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.private_key())
                .context("using the agent's key")?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![lull_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let bind: SocketAddr = "0.0.0.0:0".parse()?;
        let endpoint = quinn::Endpoint::client(bind).context("opening a UDP socket")?;
        Self { endpoint, config }.keep_alive(Some(Duration::from_secs(1)))
    }

    /// The same dialer sending keep-alives every `interval` (`None`: never) on the connections
    /// it makes from now on. [`Dialer::new`] sends one every second, so that a connection stays
    /// up through the coordinator's idle timeout while nothing else is said. A connection that
    /// stays silent for 5 s is given up.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> anyhow::Result<Self> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(interval)
            .max_idle_timeout(Some(Duration::from_secs(5).try_into()?));
        self.config.transport_config(Arc::new(transport));
        Ok(self)
    }

    /// Waits until the connections made by this dialer have closed cleanly (so that a closing
    /// frame reaches the coordinator before the process ends).
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Connects to `addr` (`host:port`).
    pub async fn connect(&self, addr: &str) -> anyhow::Result<quinn::Connection> {
        let target = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to no address"))?;
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), target, "lull-coordinator")?
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(conn)
    }
}

/// The coordinator refused this agent (not enrolled, revoked, an ID taken by another key, a
/// join token refused...): a person has to act, so retrying soon is pointless.
#[derive(Debug, thiserror::Error)]
#[error("refused by the coordinator: {0}")]
pub struct Refused(pub String);

/// Enrolls the key `conn` presents under `agent_id` with a join token. Returns whether it was
/// enrolled already (the token was not used); a refusal is a [`Refused`] error.
pub async fn enroll(
    conn: &quinn::Connection,
    token: &str,
    agent_id: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .context("opening an enrollment stream")?;
    let msg = AgentMessage::Enroll {
        token: token.trim().to_owned(),
        agent_id: agent_id.to_owned(),
        name: name.to_owned(),
    };
    write_frame(&mut send, &msg).await?;
    send.finish()?;
    match read_frame::<EnrollReply>(&mut recv).await? {
        Some(EnrollReply::Enrolled { already }) => Ok(already),
        Some(EnrollReply::Refused { reason }) => Err(Refused(reason).into()),
        None => bail!("the coordinator closed the enrollment stream without an answer"),
    }
}

/// Downloads a blob into the cache, checking its digest. A blob whose bytes do not match is
/// refused (a [`crate::cache::DigestMismatch`] error) and never stored.
pub async fn fetch_blob(
    conn: &quinn::Connection,
    cache: &BlobCache,
    digest: Digest,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening a blob stream")?;
    write_frame(&mut send, &AgentMessage::GetBlob { digest }).await?;
    send.finish()?;
    let reply: BlobReply = read_frame(&mut recv)
        .await?
        .context("the coordinator closed the blob stream")?;
    let size = match reply {
        BlobReply::Ok { size } => size,
        BlobReply::NotFound => bail!("the coordinator does not have blob {digest}"),
        BlobReply::Rejected { reason } => bail!("blob {digest}: {reason}"),
    };
    let mut writer = cache.writer()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = AsyncReadExt::read(&mut recv, &mut buf).await?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut writer, &buf[..n])?;
        if writer.size() > size {
            bail!("blob {digest}: more bytes than the {size} announced");
        }
    }
    if writer.size() != size {
        bail!("blob {digest}: received {} of {size} bytes", writer.size());
    }
    writer.commit(cache, Some(digest))?;
    Ok(())
}

/// Uploads a blob from the cache.
pub async fn upload_blob(
    conn: &quinn::Connection,
    cache: &BlobCache,
    digest: Digest,
) -> anyhow::Result<()> {
    let path = cache.path(&digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let (mut send, mut recv) = conn.open_bi().await.context("opening a blob stream")?;
    write_frame(&mut send, &AgentMessage::PutBlob { digest, size }).await?;
    tokio::io::copy(&mut file, &mut send).await?;
    send.finish()?;
    match read_frame::<BlobReply>(&mut recv).await? {
        Some(BlobReply::Ok { .. }) => Ok(()),
        Some(BlobReply::Rejected { reason }) => bail!("upload of {digest} refused: {reason}"),
        other => bail!("upload of {digest}: unexpected reply {other:?}"),
    }
}
