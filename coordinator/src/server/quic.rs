//! The agents' side of the coordinator: a QUIC endpoint. Each agent holds one connection; its
//! first bidirectional stream is the control stream, the others fetch or upload blobs.
//!
//! What a peer may hold is bounded on purpose ([`QuicLimits`]): open connections, handshakes in
//! progress, streams per connection, and how long a silent connection lives. When many
//! handshakes are under way at once, new ones from addresses QUIC has not validated get a Retry
//! (the client must prove it receives at its address before the coordinator spends a handshake
//! on it), so spoofed floods cost the coordinator one stateless packet each; past the connection
//! limit new connections are refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lull_protocol::message::{AgentMessage, BlobReply, CoordinatorMessage};
use tokio::sync::mpsc;

use super::hub::Hub;

use lull_protocol::frame::stream::{read as read_frame, write as write_frame};

/// The bounds on agents' QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLimits {
    /// Open connections (one per agent), handshakes included. Past it, new connections are
    /// refused. Default 10,000.
    pub max_connections: usize,
    /// Handshakes in progress at once. Past it, new connections from addresses not yet
    /// validated are sent a Retry first. Default 64.
    pub max_handshakes: usize,
    /// Bidirectional streams a connection may have open at once (its control stream and blob
    /// transfers). Default 64.
    pub max_streams: u32,
    /// How long a connection may stay silent before it is closed. Agents send keep-alives every
    /// second. Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_handshakes: 64,
            max_streams: 64,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Accept,
    /// Make the client prove its address first.
    Retry,
    Refuse,
}

/// Decides on a connection attempt, given how many connections are open and how many
/// handshakes are under way, and whether the client's address is already validated (it came
/// back with a Retry token) or may still be asked to validate.
fn admit(
    limits: &QuicLimits,
    open: usize,
    handshaking: usize,
    validated: bool,
    may_retry: bool,
) -> Admission {
    if open >= limits.max_connections {
        Admission::Refuse
    } else if handshaking >= limits.max_handshakes && !validated {
        if may_retry {
            Admission::Retry
        } else {
            Admission::Refuse
        }
    } else {
        Admission::Accept
    }
}

/// Counts one open connection or handshake while it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts agent connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>, limits: QuicLimits) {
    let open = Arc::new(AtomicUsize::new(0));
    let handshaking = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        match admit(
            &limits,
            open.load(Ordering::Acquire),
            handshaking.load(Ordering::Acquire),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        ) {
            Admission::Accept => {}
            Admission::Retry => {
                tracing::debug!(%remote, "many handshakes under way: asking for address validation");
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Admission::Refuse => {
                tracing::warn!(
                    %remote,
                    open = open.load(Ordering::Acquire),
                    max = limits.max_connections,
                    "refusing a connection: at the connection limit"
                );
                incoming.refuse();
                continue;
            }
        }
        let hub = hub.clone();
        // Counted from admission, so the next decision already sees this one.
        let shaking = Counted::new(&handshaking);
        let opened = Counted::new(&open);
        tokio::spawn(async move {
            let result = incoming.await;
            drop(shaking);
            match result {
                Ok(conn) => connection(conn, hub).await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
            drop(opened);
        });
    }
}

async fn connection(conn: quinn::Connection, hub: Arc<Hub>) {
    let remote = conn.remote_address();
    // The agent this connection speaks for, once its hello is welcomed.
    let agent: Arc<OnceLock<String>> = Arc::default();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let hub = hub.clone();
                let conn = conn.clone();
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = stream(send, recv, hub, &conn, &agent).await {
                        tracing::debug!(%remote, error = %e, "stream ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "connection closed");
                return;
            }
        }
    }
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hub: Arc<Hub>,
    conn: &quinn::Connection,
    agent: &OnceLock<String>,
) -> anyhow::Result<()> {
    let first: AgentMessage = match read_frame(&mut recv).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            // A frame over the cap or garbage: close the whole connection, it is not a Lull agent.
            conn.close(1u32.into(), b"malformed frame");
            return Err(e.into());
        }
    };
    match first {
        AgentMessage::Hello { .. } => control(send, recv, hub, first, conn, agent).await,
        AgentMessage::Enroll {
            token,
            agent_id,
            name,
        } => {
            let key = crate::tls::peer_key_hash(conn);
            let reply = hub.enroll(key, &agent_id, &name, &token).await;
            write_frame(&mut send, &reply).await?;
            send.finish()?;
            Ok(())
        }
        AgentMessage::GetBlob { digest } => {
            let refusal = match agent.get() {
                None => Some("blobs are served only after the agent's hello".to_owned()),
                Some(id) if !hub.agent_may_fetch(id, &digest) => Some(format!(
                    "blob {digest} belongs to no attempt assigned to agent {id}"
                )),
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                tracing::warn!(remote = %conn.remote_address(), agent = ?agent.get(), %digest, %reason, "blob download refused");
                write_frame(&mut send, &BlobReply::Rejected { reason }).await?;
                send.finish()?;
                return Ok(());
            }
            let path = hub.blobs().path(&digest);
            match tokio::fs::File::open(&path).await {
                Ok(mut file) => {
                    let size = file.metadata().await?.len();
                    write_frame(&mut send, &BlobReply::Ok { size }).await?;
                    tokio::io::copy(&mut file, &mut send).await?;
                    if let Some(id) = agent.get() {
                        hub.blob_served(id, size);
                    }
                }
                Err(_) => write_frame(&mut send, &BlobReply::NotFound).await?,
            }
            send.finish()?;
            Ok(())
        }
        AgentMessage::PutBlob { digest, size } => {
            let reply = if agent.get().is_none() {
                BlobReply::Rejected {
                    reason: "blobs are accepted only after the agent's hello".into(),
                }
            } else {
                match hub
                    .blobs()
                    .put(digest, Some(size), hub.config().max_blob, &mut recv)
                    .await
                {
                    Ok(size) => BlobReply::Ok { size },
                    Err(e) => BlobReply::Rejected {
                        reason: e.to_string(),
                    },
                }
            };
            write_frame(&mut send, &reply).await?;
            send.finish()?;
            Ok(())
        }
        other => {
            anyhow::bail!("unexpected first message {other:?}")
        }
    }
}

/// Sends a refusal on the control stream, gives it time to arrive, and closes the connection.
async fn refuse(send: &mut quinn::SendStream, conn: &quinn::Connection, reason: String) {
    if write_frame(send, &CoordinatorMessage::Refused { reason })
        .await
        .is_ok()
        && send.finish().is_ok()
    {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(2u32.into(), b"refused");
}

async fn control(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hub: Arc<Hub>,
    hello: AgentMessage,
    conn: &quinn::Connection,
    agent: &OnceLock<String>,
) -> anyhow::Result<()> {
    let AgentMessage::Hello { agent_id, .. } = &hello else {
        unreachable!("control() is called with a hello")
    };
    let agent_id = agent_id.clone();
    if agent.get().is_some() {
        refuse(&mut send, conn, "a second hello on one connection".into()).await;
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let key = crate::tls::peer_key_hash(conn);
    let conn_no = match hub.agent_connected(&hello, key, tx).await {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(agent = %agent_id, %reason, "agent refused");
            refuse(&mut send, conn, reason).await;
            return Ok(());
        }
    };
    let _ = agent.set(agent_id.clone());
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let CoordinatorMessage::Refused { reason } = msg {
                // The hub cut this agent off (revoked): say why, then close.
                refuse(&mut send, &writer_conn, reason).await;
                break;
            }
            if write_frame(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let result = async {
        while let Some(msg) = read_frame::<AgentMessage>(&mut recv).await? {
            if let AgentMessage::Checkpoint {
                attempt,
                digest,
                size,
                seq,
                progress,
                seal,
            } = &msg
            {
                // The seal must be the agent's own: made with the key of this connection.
                let message =
                    lull_protocol::message::checkpoint_seal_message(*attempt, digest, *size, *seq);
                let sealed = hex::decode(seal)
                    .is_ok_and(|sig| crate::tls::peer_signed(conn, &message, &sig));
                hub.agent_checkpoint(&agent_id, *attempt, *digest, *size, *seq, *progress, sealed)
                    .await;
                continue;
            }
            hub.agent_message(&agent_id, msg).await;
        }
        anyhow::Ok(())
    }
    .await;
    hub.agent_disconnected(&agent_id, conn_no);
    writer.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_follows_the_limits() {
        let limits = QuicLimits {
            max_connections: 10,
            max_handshakes: 3,
            ..QuicLimits::default()
        };
        // Quiet: everyone in.
        assert_eq!(admit(&limits, 0, 0, false, true), Admission::Accept);
        assert_eq!(admit(&limits, 9, 2, false, true), Admission::Accept);
        // Many handshakes: unvalidated addresses prove themselves first; validated ones go on.
        assert_eq!(admit(&limits, 5, 3, false, true), Admission::Retry);
        assert_eq!(admit(&limits, 5, 3, true, false), Admission::Accept);
        // A client that already used its retry and is still unvalidated is refused.
        assert_eq!(admit(&limits, 5, 3, false, false), Admission::Refuse);
        // Full: nobody.
        assert_eq!(admit(&limits, 10, 0, true, false), Admission::Refuse);
    }
}
