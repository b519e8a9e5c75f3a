//! The coordinator's servers: QUIC for agents ([`quic`]), HTTP for people ([`http`]), around
//! the live state in [`hub`].

pub mod dashboard;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod quic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::blobs::BlobStore;
use crate::store::Store;
use crate::tls;
pub use hub::{Hub, HubConfig, Refusal};
pub use quic::QuicLimits;

/// Where and how a coordinator serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory: database, blobs, identity.
    pub data_dir: PathBuf,
    /// The database: a `postgres://` URL, or `None` for the SQLite file `lull.db` in the data
    /// directory.
    pub database: Option<String>,
    /// UDP address for agents (QUIC).
    pub quic_addr: SocketAddr,
    /// TCP address for people (HTTP).
    pub http_addr: SocketAddr,
    /// Hub settings.
    pub hub: HubConfig,
    /// Bounds on agents' QUIC connections.
    pub quic_limits: QuicLimits,
}

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    /// The hub.
    pub hub: Arc<Hub>,
    /// The QUIC address actually bound.
    pub quic_addr: SocketAddr,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// sha256 of the coordinator's public key, which agents pin.
    pub public_key_hash: lull_protocol::Digest,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        for t in self.tasks {
            t.abort();
        }
        self.endpoint.wait_idle().await;
    }
}

pub use lull_protocol::process::shutdown_signal;

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Opens the data directory, recovers state and starts serving in the background.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = match &config.database {
        Some(url) => Store::connect(url)
            .await
            .with_context(|| format!("opening the database {}", redact(url)))?,
        None => Store::open(&config.data_dir.join("lull.db"))
            .await
            .with_context(|| format!("opening the database in {}", config.data_dir.display()))?,
    };
    let blobs = BlobStore::open(&config.data_dir.join("blobs"))
        .with_context(|| format!("opening the blob store in {}", config.data_dir.display()))?;
    let identity = tls::load_or_create(&config.data_dir.join("tls"))?;
    let hub = Hub::new(store, blobs, config.hub.clone(), rand::random());
    hub.recover().await.context("recovering state")?;

    let socket = std::net::UdpSocket::bind(config.quic_addr)
        .with_context(|| format!("binding QUIC (UDP) on {}", config.quic_addr))?;
    quic::size_buffers(&socket, config.quic_limits.udp_buffer);
    let endpoint = quinn::Endpoint::new(
        tls::endpoint_config(&identity),
        Some(tls::quic_server_config(&identity, &config.quic_limits)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("starting the QUIC endpoint")?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(hub.clone().run()));
    tasks.push(tokio::spawn(hub.clone().collect_blobs_periodically()));
    tasks.push(tokio::spawn(quic::serve(
        endpoint.clone(),
        hub.clone(),
        config.quic_limits,
    )));
    let app = http::router(hub.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }));
    tracing::info!(%quic_addr, %http_addr, key = %identity.public_key_hash, "coordinator serving");
    Ok(Running {
        hub,
        quic_addr,
        http_addr,
        public_key_hash: identity.public_key_hash,
        endpoint,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("postgres://lull:secret@db.lab:5432/lull"),
            "postgres://lull:***@db.lab:5432/lull"
        );
        assert_eq!(
            super::redact("postgres://lull@db.lab/lull"),
            "postgres://lull@db.lab/lull"
        );
        assert_eq!(super::redact("/var/lib/lull.db"), "/var/lib/lull.db");
    }
}
