//! The agents' side of the coordinator: a QUIC endpoint. Each agent holds one connection; its
//! first bidirectional stream is the control stream, the others fetch or upload blobs.
//!
//! What a peer may hold is bounded on purpose ([`QuicLimits`]): open connections, handshakes in
//! progress, streams per connection, and how long a silent connection lives. When many
//! handshakes are under way at once, new ones from addresses QUIC has not validated get a Retry
//! (the client must prove it receives at its address before the coordinator spends a handshake
//! on it), so spoofed floods cost the coordinator one stateless packet each; past the connection
//! limit new connections are refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lull_protocol::message::{AgentMessage, BlobReply, CoordinatorMessage};
use tokio::sync::mpsc;

use super::hub::Hub;

use lull_protocol::frame::stream::{read as read_frame, write as write_frame, write_batch};
use lull_protocol::sync::lock;

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
    /// How long a new connection has to say hello (enrolling first, if it does). Until then it
    /// is served one stream at a time, and a peer that says nothing in time is closed.
    /// Default 10 s.
    pub hello_timeout: Duration,
    /// Open connections from one IP address, handshakes included. Agents behind one NAT share
    /// an address: raise it for a larger site. Default 256.
    pub max_per_address: usize,
    /// The receive and send buffers asked for the QUIC socket, in bytes. Every agent's packets
    /// arrive on that one socket: a short stall of the coordinator with a buffer too small for
    /// thousands of agents drops datagrams (handshakes time out, reports arrive late). The
    /// kernel grants at most `net.core.rmem_max` / `wmem_max`; a smaller grant is logged.
    /// Default 8 MiB.
    pub udp_buffer: usize,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_handshakes: 64,
            max_streams: 64,
            idle_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            max_per_address: 256,
            udp_buffer: 8 << 20,
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
    from_address: usize,
    handshaking: usize,
    validated: bool,
    may_retry: bool,
) -> Admission {
    if open >= limits.max_connections || from_address >= limits.max_per_address {
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

/// Counts the open connections of each IP address.
#[derive(Debug, Default, Clone)]
struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerAddress {
    fn open(&self, ip: IpAddr) -> usize {
        lock(&self.0).get(&ip).copied().unwrap_or(0)
    }

    /// Counts one connection from `ip` while the returned guard lives.
    fn count(&self, ip: IpAddr) -> AddressCounted {
        *lock(&self.0).entry(ip).or_default() += 1;
        AddressCounted(self.clone(), ip)
    }
}

struct AddressCounted(PerAddress, IpAddr);

impl Drop for AddressCounted {
    fn drop(&mut self) {
        let mut map = lock(&self.0.0);
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Asks the kernel for receive and send buffers of `want` bytes on the QUIC socket, and
/// returns what it granted (receive, send). A smaller grant is logged with what to change;
/// it does not stop the coordinator.
pub fn size_buffers(socket: &std::net::UdpSocket, want: usize) -> (usize, usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(want);
    let _ = sock.set_send_buffer_size(want);
    // Linux reports twice the size set (half of it is for its own bookkeeping).
    let granted = |size: std::io::Result<usize>| {
        let size = size.unwrap_or(0);
        if cfg!(target_os = "linux") {
            size / 2
        } else {
            size
        }
    };
    let recv = granted(sock.recv_buffer_size());
    let send = granted(sock.send_buffer_size());
    if recv < want || send < want {
        // Not a warning: most systems' limits are below the default, and a few hundred
        // agents never need more.
        tracing::info!(
            asked = want,
            receive = recv,
            send,
            "the QUIC socket got smaller buffers than asked for: with thousands of agents, \
             datagrams may be dropped; raise the system's limits (on Linux: sysctl -w \
             net.core.rmem_max={want} net.core.wmem_max={want})"
        );
    } else {
        tracing::debug!(receive = recv, send, "QUIC socket buffers");
    }
    (recv, send)
}

/// Accepts agent connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, hub: Arc<Hub>, limits: QuicLimits) {
    let open = Arc::new(AtomicUsize::new(0));
    let handshaking = Arc::new(AtomicUsize::new(0));
    let per_address = PerAddress::default();
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let ip = remote.ip().to_canonical();
        match admit(
            &limits,
            open.load(Ordering::Acquire),
            per_address.open(ip),
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
                    from_address = per_address.open(ip),
                    max = limits.max_connections,
                    max_per_address = limits.max_per_address,
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
        let from_address = per_address.count(ip);
        let hello_timeout = limits.hello_timeout;
        tokio::spawn(async move {
            let result = incoming.await;
            drop(shaking);
            match result {
                Ok(conn) => connection(conn, hub, hello_timeout).await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
            drop(opened);
            drop(from_address);
        });
    }
}

async fn connection(conn: quinn::Connection, hub: Arc<Hub>, hello_timeout: Duration) {
    let remote = conn.remote_address();
    // The agent this connection speaks for, once its hello is welcomed.
    let agent: Arc<OnceLock<String>> = Arc::default();
    // Until it says hello, a peer is served one stream at a time, and all of it (enrolling
    // included) within the hello deadline: a peer that has proved nothing holds one frame.
    let deadline = tokio::time::Instant::now() + hello_timeout;
    loop {
        let (send, mut recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection closed before its hello");
                return;
            }
            Err(_) => {
                return no_hello_in_time(&conn);
            }
        };
        let first = tokio::time::timeout_at(deadline, first_frame(&mut recv, &conn)).await;
        let first = match first {
            Err(_) => {
                return no_hello_in_time(&conn);
            }
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "stream ended with an error");
                return;
            }
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(first))) => first,
        };
        if matches!(first, AgentMessage::Hello { .. }) {
            let (hub, conn, agent) = (hub.clone(), conn.clone(), agent.clone());
            tokio::spawn(async move {
                if let Err(e) = control(send, recv, hub, first, &conn, &agent).await {
                    tracing::debug!(%remote, error = %e, "control stream ended with an error");
                }
            });
            break;
        }
        let served =
            tokio::time::timeout_at(deadline, stream(first, send, recv, &hub, &conn, &agent)).await;
        match served {
            Err(_) => {
                return no_hello_in_time(&conn);
            }
            Ok(Err(e)) => tracing::debug!(%remote, error = %e, "stream ended with an error"),
            Ok(Ok(())) => {}
        }
    }
    loop {
        match conn.accept_bi().await {
            Ok((send, mut recv)) => {
                let hub = hub.clone();
                let conn = conn.clone();
                let agent = agent.clone();
                tokio::spawn(async move {
                    let result = match first_frame(&mut recv, &conn).await {
                        Ok(Some(first)) => stream(first, send, recv, &hub, &conn, &agent).await,
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = result {
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

/// Closes a connection whose peer did not say hello in time.
fn no_hello_in_time(conn: &quinn::Connection) {
    tracing::info!(remote = %conn.remote_address(), "closing a connection that said no hello in time");
    conn.close(3u32.into(), b"no hello in time");
}

/// Reads the frame that opens a stream; `None` when the stream ended first. A frame over the
/// cap, garbage or a body that does not arrive closes the whole connection: it is not a Lull
/// agent.
async fn first_frame(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
) -> anyhow::Result<Option<AgentMessage>> {
    match read_frame(recv).await {
        Ok(m) => Ok(m),
        Err(e) => {
            conn.close(1u32.into(), b"malformed frame");
            Err(e.into())
        }
    }
}

async fn stream(
    first: AgentMessage,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hub: &Hub,
    conn: &quinn::Connection,
    agent: &OnceLock<String>,
) -> anyhow::Result<()> {
    match first {
        AgentMessage::Hello { .. } => {
            refuse(&mut send, conn, "a second hello on one connection".into()).await;
            Ok(())
        }
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
                    Err(e) => {
                        if let crate::blobs::BlobError::Io(io) = &e {
                            // The coordinator's own trouble (a full disk): its operator's to see.
                            tracing::error!(agent = ?agent.get(), %digest, error = %io, "could not store a blob from an agent");
                        }
                        BlobReply::Rejected {
                            reason: e.to_string(),
                        }
                    }
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let key = crate::tls::peer_key_hash(conn);
    let conn_no = match hub.agent_connected(&hello, key, tx).await {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(agent = %agent_id, %reason, "agent refused");
            refuse(&mut send, conn, reason.to_string()).await;
            return Ok(());
        }
    };
    let _ = agent.set(agent_id.clone());
    let writer_conn = conn.clone();
    let writer_agent = agent_id.clone();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(msg) = rx.recv().await {
            // What queued up meanwhile (assignments and acknowledgements come in bursts) goes
            // in the same write.
            batch.push(msg);
            while batch.len() < WRITE_BATCH
                && let Ok(msg) = rx.try_recv()
            {
                batch.push(msg);
            }
            let refused = match batch
                .iter()
                .position(|m| matches!(m, CoordinatorMessage::Refused { .. }))
            {
                Some(i) => batch.drain(i..).next(),
                None => None,
            };
            // One message that cannot be framed is dropped, not the ones beside it.
            let written = write_batch(&mut send, &batch, |_, e| {
                tracing::error!(agent = %writer_agent, error = %e, "a message to the agent could not be framed; dropped");
            })
            .await;
            batch.clear();
            if let Some(CoordinatorMessage::Refused { reason }) = refused {
                // The hub cut this agent off (revoked): say why, then close.
                refuse(&mut send, &writer_conn, reason).await;
                break;
            }
            if written.is_err() {
                break;
            }
        }
    });
    // Reports and heartbeats say the agent is alive: they are handled as they are read, never
    // behind a message waiting on the store (a database restarting must not make the leases of
    // live agents run out). Everything else is handled in order, one at a time.
    let (queue, mut queued) = mpsc::channel::<AgentMessage>(HANDLER_QUEUE);
    let reader = async {
        while let Some(msg) = read_frame::<AgentMessage>(&mut recv).await? {
            match msg {
                AgentMessage::Report { .. } | AgentMessage::Heartbeat => {
                    hub.agent_message(&agent_id, msg).await;
                }
                other => {
                    if queue.send(other).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(queue);
        anyhow::Ok(())
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(RESULTS_IN_FLIGHT));
    let handler = async {
        while let Some(msg) = queued.recv().await {
            if let AgentMessage::Result(result) = msg {
                // Not waited for: the next results join the same write. Past the bound, the
                // connection waits for the oldest to be written.
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                if let Some(recorded) = hub.agent_result(&agent_id, result).await {
                    tokio::spawn(async move {
                        let _ = recorded.await;
                        drop(slot);
                    });
                }
                continue;
            }
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
    };
    let (result, ()) = tokio::join!(reader, handler);
    hub.agent_disconnected(&agent_id, conn_no);
    writer.abort();
    result
}

/// Messages of one agent read and waiting to be handled (a result waiting on the store, and
/// what came after it); past it the connection is read no further until one is handled.
const HANDLER_QUEUE: usize = 1024;

/// Messages to one agent written together at most, when they queue up.
const WRITE_BATCH: usize = 256;

/// Results of one agent handed to the core and not yet written: past it, the connection's
/// messages wait for the oldest to be written. Many in flight share a transaction; the bound
/// keeps an agent from queueing unbounded work on a slow store.
const RESULTS_IN_FLIGHT: usize = 256;

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
        assert_eq!(admit(&limits, 0, 0, 0, false, true), Admission::Accept);
        assert_eq!(admit(&limits, 9, 1, 2, false, true), Admission::Accept);
        // Many handshakes: unvalidated addresses prove themselves first; validated ones go on.
        assert_eq!(admit(&limits, 5, 1, 3, false, true), Admission::Retry);
        assert_eq!(admit(&limits, 5, 1, 3, true, false), Admission::Accept);
        // A client that already used its retry and is still unvalidated is refused.
        assert_eq!(admit(&limits, 5, 1, 3, false, false), Admission::Refuse);
        // Full: nobody.
        assert_eq!(admit(&limits, 10, 0, 0, true, false), Admission::Refuse);
        // One address at its own cap: refused, whatever else is open.
        let limits = QuicLimits {
            max_per_address: 4,
            ..limits
        };
        assert_eq!(admit(&limits, 5, 4, 0, true, false), Admission::Refuse);
        assert_eq!(admit(&limits, 5, 3, 0, true, false), Admission::Accept);
    }

    #[test]
    fn the_socket_gets_the_buffers_asked_for_within_the_systems_limits() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Below every default limit (Linux allows 208 KiB unless told more): granted whole.
        let (recv, send) = size_buffers(&socket, 160 << 10);
        assert!(recv >= 160 << 10 && send >= 160 << 10, "{recv} {send}");
        // Far above any limit: the kernel grants what it allows, and the socket stays usable.
        let (recv, _) = size_buffers(&socket, 1 << 30);
        assert!(
            (160 << 10..1 << 30).contains(&recv),
            "{recv} (was {before})"
        );
        socket.send_to(b"x", socket.local_addr().unwrap()).unwrap();
        let mut buf = [0; 4];
        assert_eq!(socket.recv(&mut buf).unwrap(), 1);
    }
}
