//! The agents' side of the coordinator: a QUIC endpoint. Each agent holds one connection; its
//! first bidirectional stream is the control stream, the others fetch or upload blobs.

use std::sync::Arc;

use lull_protocol::message::{AgentMessage, BlobReply, CoordinatorMessage};
use tokio::sync::mpsc;

use super::hub::Hub;

use lull_protocol::frame::stream::{read as read_frame, write as write_frame};

/// Accepts agent connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>) {
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => connection(conn, hub).await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}

async fn connection(conn: quinn::Connection, hub: Arc<Hub>) {
    let remote = conn.remote_address();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let hub = hub.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    if let Err(e) = stream(send, recv, hub, &conn).await {
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
        AgentMessage::Hello { .. } => control(send, recv, hub, first, conn).await,
        AgentMessage::GetBlob { digest } => {
            let path = hub.blobs().path(&digest);
            match tokio::fs::File::open(&path).await {
                Ok(mut file) => {
                    let size = file.metadata().await?.len();
                    write_frame(&mut send, &BlobReply::Ok { size }).await?;
                    tokio::io::copy(&mut file, &mut send).await?;
                }
                Err(_) => write_frame(&mut send, &BlobReply::NotFound).await?,
            }
            send.finish()?;
            Ok(())
        }
        AgentMessage::PutBlob { digest, size } => {
            let reply = match hub
                .blobs()
                .put(digest, Some(size), hub.config().max_blob, &mut recv)
                .await
            {
                Ok(size) => BlobReply::Ok { size },
                Err(e) => BlobReply::Rejected {
                    reason: e.to_string(),
                },
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

async fn control(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hub: Arc<Hub>,
    hello: AgentMessage,
    conn: &quinn::Connection,
) -> anyhow::Result<()> {
    let AgentMessage::Hello { agent_id, .. } = &hello else {
        unreachable!("control() is called with a hello")
    };
    let agent_id = agent_id.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn_no = match hub.agent_connected(&hello, tx).await {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(agent = %agent_id, %reason, "agent refused");
            write_frame(&mut send, &CoordinatorMessage::Refused { reason }).await?;
            send.finish()?;
            // Give the refusal time to arrive before the connection goes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
            conn.close(2u32.into(), b"refused");
            return Ok(());
        }
    };
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if write_frame(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let result = async {
        while let Some(msg) = read_frame::<AgentMessage>(&mut recv).await? {
            hub.agent_message(&agent_id, msg).await;
        }
        anyhow::Ok(())
    }
    .await;
    hub.agent_disconnected(&agent_id, conn_no);
    writer.abort();
    result
}
