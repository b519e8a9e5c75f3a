//! The coordinator's servers: QUIC for agents ([`quic`]), HTTP for people ([`http`]), around
//! the live state in [`hub`].

pub mod dashboard;
pub mod history;
pub mod http;
pub mod https;
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
pub use https::HttpTls;
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
    /// TCP address for people (HTTPS, or HTTP with [`HttpTls::Plain`]).
    pub http_addr: SocketAddr,
    /// How people's connections are secured.
    pub http_tls: HttpTls,
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
    /// sha256 of the HTTPS certificate's public key, which `lull` pins: the coordinator's own
    /// key unless the operator provided a certificate; `None` for plain HTTP.
    pub http_key_hash: Option<lull_protocol::Digest>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The people's URL: `https://ADDR`, or `http://ADDR` for plain HTTP.
    pub fn http_url(&self) -> String {
        let scheme = if self.http_key_hash.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Stops serving, keeping the usage gathered since the last flush.
    pub async fn shutdown(self) {
        if let Err(e) = self.hub.flush_usage().await {
            tracing::warn!(error = %e, "could not record the last usage");
        }
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
    let certified = match &config.http_tls {
        HttpTls::OwnKey => Some(https::Certified::own(&identity)),
        HttpTls::Provided { cert, key } => Some(https::Certified::from_pem_files(cert, key)?),
        HttpTls::Plain => None,
    };
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

    let mut tasks = vec![
        tokio::spawn(hub.clone().run()),
        tokio::spawn(hub.clone().collect_blobs_periodically()),
        tokio::spawn(hub.clone().flush_usage_periodically()),
        tokio::spawn(quic::serve(
            endpoint.clone(),
            hub.clone(),
            config.quic_limits,
        )),
    ];
    let app = http::router(hub.clone());
    let http_key_hash = certified.as_ref().map(|c| c.key_hash);
    match certified {
        Some(certified) => {
            let listener = https::TlsListener::new(listener, certified.server_config()?)?;
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "HTTPS server stopped");
                }
            }));
        }
        None => tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        })),
    }
    tracing::info!(%quic_addr, %http_addr, key = %identity.public_key_hash, "coordinator serving");
    Ok(Running {
        hub,
        quic_addr,
        http_addr,
        public_key_hash: identity.public_key_hash,
        http_key_hash,
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
