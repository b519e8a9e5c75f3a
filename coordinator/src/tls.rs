//! The coordinator's identity: a key pair and self-signed certificate made at first start and
//! kept in the data directory. Agents pin the sha256 of its public key (SubjectPublicKeyInfo).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lull_protocol::Digest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The coordinator's certificate and key.
#[derive(Debug)]
pub struct Identity {
    /// The self-signed certificate (DER).
    pub cert: CertificateDer<'static>,
    /// The private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// sha256 of the public key (SPKI DER): what agents pin.
    pub public_key_hash: Digest,
}

/// Label mixed into the stateless-reset key, so it is used for nothing else.
const RESET_KEY_LABEL: &[u8] = b"lull coordinator QUIC stateless reset v1";

impl Identity {
    /// Loads the identity from `dir`, making one when there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert_path = dir.join("coordinator.crt.der");
        let key_path = dir.join("coordinator.key.der");
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate().context("generating the coordinator key")?;
            let params = rcgen::CertificateParams::new(vec![
                "lull-coordinator".to_owned(),
                "localhost".to_owned(),
            ])?;
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_der())?;
            std::fs::write(&cert_path, cert.der())
                .with_context(|| format!("writing {}", cert_path.display()))?;
        }
        let key_der =
            std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let cert_der = std::fs::read(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pair = rcgen::KeyPair::try_from(key_der.as_slice())
            .with_context(|| format!("{} is not a key", key_path.display()))?;
        Ok(Self {
            cert: CertificateDer::from(cert_der),
            key: PrivatePkcs8KeyDer::from(key_der),
            public_key_hash: Digest::of(&key_pair.public_key_der()),
        })
    }

    /// The QUIC stateless-reset key, derived from the private key so that it survives restarts:
    /// after a restart the coordinator can tell agents still holding the old connection that
    /// it is gone, and they reconnect at once instead of waiting for their idle timeout.
    pub fn reset_key(&self) -> ring::hmac::Key {
        let mut seed = RESET_KEY_LABEL.to_vec();
        seed.extend_from_slice(self.key.secret_pkcs8_der());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, Digest::of(&seed).as_bytes())
    }

    /// A QUIC server configuration presenting this identity, speaking Lull's ALPN, within
    /// `limits`.
    pub fn quic_server_config(
        &self,
        limits: &crate::server::QuicLimits,
    ) -> anyhow::Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![lull_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(limits.max_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .max_idle_timeout(Some(limits.idle_timeout.try_into()?));
        config.transport_config(Arc::new(transport));
        // Connection attempts waiting for the accept loop: enough for a burst of agents
        // reconnecting after a restart, bounded so a flood cannot queue without end.
        config.max_incoming(limits.max_handshakes.saturating_mul(16).max(1024));
        Ok(config)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
