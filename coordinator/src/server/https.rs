//! HTTPS for the people's API: the coordinator's own key (the one agents pin, which `lull`
//! pins too) or a certificate the operator provides, and a listener that finishes TLS
//! handshakes off the accept loop.
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each for at most
//! [`HANDSHAKE_TIMEOUT`]: a peer that opens a connection and says nothing holds one handshake
//! slot for a few seconds, never the accept loop, so it cannot keep others out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lull_protocol::Digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

use crate::tls::Identity;

/// TLS handshakes under way at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the people's API is served.
#[derive(Debug, Clone, Default)]
pub enum HttpTls {
    /// HTTPS with the coordinator's own key and self-signed certificate: clients pin the key's
    /// hash, as agents do.
    #[default]
    OwnKey,
    /// HTTPS with a certificate chain and key the operator provides (PEM files), read at start.
    Provided {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Plain HTTP: for `lull dev`, or behind a proxy that terminates TLS.
    Plain,
}

/// A certificate chain and key to serve HTTPS with.
#[derive(Debug)]
pub struct Certified {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// sha256 of the leaf certificate's public key: what `lull --coordinator-key` pins.
    pub key_hash: Digest,
}

impl Certified {
    /// The coordinator's own identity.
    pub fn own(identity: &Identity) -> Self {
        Self {
            chain: vec![identity.cert.clone()],
            key: identity.private_key(),
            key_hash: identity.public_key_hash,
        }
    }

    /// A chain and key from PEM files, checked to belong together.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
        let leaf = chain.first().with_context(|| {
            format!(
                "--tls-cert {}: holds no certificate (PEM \"BEGIN CERTIFICATE\")",
                cert.display()
            )
        })?;
        let key_hash = lull_protocol::identity::key_hash(leaf)
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
        let certified = Self {
            chain,
            key: private,
            key_hash,
        };
        // Building the configuration checks that the key is the leaf's.
        certified.server_config().with_context(|| {
            format!(
                "--tls-key {} does not go with --tls-cert {}",
                key.display(),
                cert.display()
            )
        })?;
        Ok(certified)
    }

    /// The TLS server configuration: TLS 1.3 and 1.2 (browsers), HTTP/1.1.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Aborts its task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener handing axum TLS streams whose handshakes have finished.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _acceptor: AbortOnDrop,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accepting an HTTPS connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            _acceptor: AbortOnDrop(task),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh key pair and self-signed certificate as PEM: (certificate, key).
    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["lull.example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn provided_certificates_are_read_and_checked_against_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key) = pem_pair();
        let (_, b_key) = pem_pair();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let other_key = dir.path().join("other.pem");
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        std::fs::write(&other_key, &b_key).unwrap();

        let certified = Certified::from_pem_files(&cert, &key).unwrap();
        let spki = rcgen::KeyPair::from_pem(&a_key).unwrap().public_key_der();
        assert_eq!(certified.key_hash, Digest::of(&spki));

        let err = format!(
            "{:#}",
            Certified::from_pem_files(&cert, &other_key).unwrap_err()
        );
        assert!(err.contains("does not go with"), "{err}");
        let err = format!("{:#}", Certified::from_pem_files(&key, &key).unwrap_err());
        assert!(
            err.contains("--tls-cert") && err.contains("no certificate"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Certified::from_pem_files(&cert, &dir.path().join("missing.pem")).unwrap_err()
        );
        assert!(
            err.contains("--tls-key") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
