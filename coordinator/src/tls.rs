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
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(AnyClientKey { provider }))
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

/// Asks agents for a certificate and accepts any, self-signed or not: the TLS handshake proves
/// the agent holds the certificate's key, and the hub decides what that key may do (it binds an
/// agent's ID to the key it first came with). Clients without a certificate are let in too, and
/// may not claim an ID that is bound to a key.
#[derive(Debug)]
struct AnyClientKey {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// sha256 of the public key of the certificate a QUIC peer presented, if it presented one.
pub fn peer_key_hash(conn: &quinn::Connection) -> Option<Digest> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let cert = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    Some(Digest::of(cert.subject_public_key_info().as_ref()))
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
