//! The coordinator's identity: a key pair and self-signed certificate made at first start and
//! kept in the data directory. Agents pin the sha256 of its public key (SubjectPublicKeyInfo).

use std::path::Path;
use std::sync::Arc;

use lull_protocol::Digest;
use rustls::pki_types::CertificateDer;

pub use lull_protocol::identity::Identity;

/// The coordinator's identity in `dir` (`coordinator.key.der`, `coordinator.crt.der`), made at
/// first start.
pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_or_create(
        dir,
        "coordinator",
        &["lull-coordinator", "localhost"],
    )?)
}

/// Label mixed into the stateless-reset key, so it is used for nothing else.
const RESET_KEY_LABEL: &[u8] = b"lull coordinator QUIC stateless reset v1";

/// The QUIC stateless-reset key, derived from the private key so that it survives restarts:
/// after a restart the coordinator can tell agents still holding the old connection that
/// it is gone, and they reconnect at once instead of waiting for their idle timeout.
pub fn reset_key(identity: &Identity) -> ring::hmac::Key {
    let mut seed = RESET_KEY_LABEL.to_vec();
    seed.extend_from_slice(identity.secret_pkcs8_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, Digest::of(&seed).as_bytes())
}

/// Label mixed into the connection-ID key.
const CID_KEY_LABEL: &[u8] = b"lull coordinator QUIC connection IDs v1";

/// The QUIC endpoint's configuration, its keys derived from the private key so that they
/// survive restarts. quinn only answers a packet for a connection it does not know with a
/// stateless reset when the packet's connection ID passes its generator's check: with the
/// generator's key random per process (quinn's default), a restarted coordinator silently
/// dropped agents' packets, and they noticed only at their idle timeout.
pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key(identity)));
    let mut seed = CID_KEY_LABEL.to_vec();
    seed.extend_from_slice(identity.secret_pkcs8_der());
    let digest = Digest::of(&seed);
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest.as_bytes()[..8]);
    let key = u64::from_le_bytes(key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    config
}

/// A QUIC server configuration presenting this identity, speaking Lull's ALPN, within
/// `limits`.
pub fn quic_server_config(
    identity: &Identity,
    limits: &crate::server::QuicLimits,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientKey { provider }))
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())?;
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

/// Requires a certificate of every agent and accepts any, self-signed or not: the TLS
/// handshake proves the agent holds the certificate's key, and the hub decides what that key
/// may do (it binds an agent's ID to the key it first came with). A client without a
/// certificate fails the handshake: nothing is spent on a peer that proves no key.
#[derive(Debug)]
struct AnyClientKey {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
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

/// Whether `signature` (ECDSA P-256 with SHA-256, ASN.1 DER) over `message` was made with the
/// key of the certificate the QUIC peer presented.
pub fn peer_signed(conn: &quinn::Connection, message: &[u8], signature: &[u8]) -> bool {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return false;
    };
    let Some(cert) = certs
        .first()
        .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
    else {
        return false;
    };
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
        .is_ok()
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
