//! A TLS identity of either end: a key pair and a self-signed certificate, made at first start
//! and kept in a directory (`NAME.key.der`, PKCS#8, mode 0600; `NAME.crt.der`). Peers know each
//! other by the sha256 of the public key (SubjectPublicKeyInfo DER): agents pin the
//! coordinator's, and the coordinator binds each agent's ID to the agent's.
//!
//! Behind the `tls` feature.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::Digest;

/// Why an identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(String);

/// A certificate and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The self-signed certificate (DER).
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// sha256 of the public key (SubjectPublicKeyInfo DER).
    pub public_key_hash: Digest,
}

impl Identity {
    /// Loads `NAME.key.der` and `NAME.crt.der` from `dir`, making them (a fresh key pair and a
    /// certificate for `names`) when either is missing.
    pub fn load_or_create(dir: &Path, name: &str, names: &[&str]) -> Result<Self, IdentityError> {
        let fail = |doing: &str, path: &Path, e: &dyn std::fmt::Display| {
            IdentityError(format!("{doing} {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("creating", dir, &e))?;
        let cert_path = dir.join(format!("{name}.crt.der"));
        let key_path = dir.join(format!("{name}.key.der"));
        if !cert_path.exists() || !key_path.exists() {
            let (cert, key) = generate(names)?;
            write_private(&key_path, &key).map_err(|e| fail("writing", &key_path, &e))?;
            std::fs::write(&cert_path, &cert).map_err(|e| fail("writing", &cert_path, &e))?;
        }
        let key = std::fs::read(&key_path).map_err(|e| fail("reading", &key_path, &e))?;
        let cert = std::fs::read(&cert_path).map_err(|e| fail("reading", &cert_path, &e))?;
        Self::from_der(cert, key).map_err(|e| fail("reading", &key_path, &e))
    }

    /// A fresh identity for `names`, kept only in memory (for tools and tests).
    pub fn ephemeral(names: &[&str]) -> Result<Self, IdentityError> {
        let (cert, key) = generate(names)?;
        Self::from_der(cert, key)
    }

    fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Result<Self, IdentityError> {
        let pair = rcgen::KeyPair::try_from(key.as_slice())
            .map_err(|e| IdentityError(format!("not a key: {e}")))?;
        Ok(Self {
            public_key_hash: Digest::of(&pair.public_key_der()),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// The private key, for TLS.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Signs `message` with the identity's key (ECDSA P-256 with SHA-256, ASN.1 DER): peers
    /// verify it with the public key of the certificate it presented.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            self.key.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| IdentityError(format!("the key cannot sign: {e}")))?;
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| IdentityError(format!("signing: {e}")))
    }

    /// The private key's PKCS#8 bytes, to derive other secrets from.
    pub fn secret_pkcs8_der(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }
}

/// sha256 of the public key (SubjectPublicKeyInfo DER) of a certificate: what peers pin.
pub fn key_hash(cert: &CertificateDer<'_>) -> Result<Digest, IdentityError> {
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityError(format!("not a certificate: {e}")))?;
    Ok(Digest::of(cert.subject_public_key_info().as_ref()))
}

/// Accepts a server's certificate when its public key hashes to the pinned digest (any
/// certificate when nothing is pinned), whatever its names, issuer or dates: the key is the
/// server's identity, as SSH's known hosts are. The handshake still proves the server holds
/// the key.
#[derive(Debug)]
pub struct PinnedKey {
    pin: Option<Digest>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedKey {
    /// A verifier pinning `pin`, or trusting any key when `None`.
    pub fn new(pin: Option<Digest>) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// A TLS client configuration (TLS 1.3 and 1.2, no client certificate) that trusts only
    /// the server whose key hashes to `pin`.
    pub fn client_config(pin: Digest) -> Result<rustls::ClientConfig, IdentityError> {
        let verifier = Arc::new(Self::new(Some(pin)));
        Ok(
            rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| IdentityError(format!("setting up TLS: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = key_hash(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the coordinator's key is {got}, not the pinned {pin}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A new key pair and a self-signed certificate for `names`: (certificate, key), both DER.
fn generate(names: &[&str]) -> Result<(Vec<u8>, Vec<u8>), IdentityError> {
    let made = (|| {
        let key = rcgen::KeyPair::generate()?;
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
        Ok::<_, rcgen::Error>((cert.der().to_vec(), key.serialize_der()))
    })();
    made.map_err(|e| IdentityError(format!("making a key pair and certificate: {e}")))
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), "agent", &["lull-agent"]).unwrap();
        let again = Identity::load_or_create(dir.path(), "agent", &["lull-agent"]).unwrap();
        assert_eq!(first.public_key_hash, again.public_key_hash);
        assert_eq!(first.cert, again.cert);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("agent.key.der"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Signatures verify with the certificate's public key.
        let sig = first.sign(b"message").unwrap();
        let spki = {
            let pair =
                rcgen::KeyPair::try_from(first.secret_pkcs8_der()).expect("the key parses again");
            pair.public_key_raw().to_vec()
        };
        let public =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, spki);
        assert!(public.verify(b"message", &sig).is_ok());
        assert!(public.verify(b"another", &sig).is_err());
        let other = Identity::ephemeral(&["lull-agent"]).unwrap();
        assert_ne!(other.public_key_hash, first.public_key_hash);
        let err = std::fs::write(dir.path().join("agent.key.der"), b"garbage")
            .map(|()| Identity::load_or_create(dir.path(), "agent", &[]).unwrap_err())
            .unwrap();
        assert!(err.to_string().contains("agent.key.der"), "{err}");
    }
}
