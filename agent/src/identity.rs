//! The agent's own key pair and self-signed certificate, made at first start and kept in the
//! data directory (`tls/agent.key.der`, mode 0600, and `tls/agent.crt.der`). The agent presents
//! the certificate to the coordinator, which binds the agent's ID to this key on its first
//! connection and refuses anyone else who claims that ID.

use std::path::Path;

use anyhow::Context;
use lull_protocol::Digest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The agent's certificate and private key.
#[derive(Debug)]
pub struct AgentIdentity {
    /// The self-signed certificate (DER).
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// sha256 of the public key (SubjectPublicKeyInfo DER), as the coordinator records it.
    pub public_key_hash: Digest,
}

impl AgentIdentity {
    /// Loads the identity from `dir`, making one when there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert_path = dir.join("agent.crt.der");
        let key_path = dir.join("agent.key.der");
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate().context("generating the agent's key")?;
            let cert =
                rcgen::CertificateParams::new(vec!["lull-agent".to_owned()])?.self_signed(&key)?;
            write_private(&key_path, &key.serialize_der())?;
            std::fs::write(&cert_path, cert.der())
                .with_context(|| format!("writing {}", cert_path.display()))?;
        }
        let key_der =
            std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let cert_der = std::fs::read(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let pair = rcgen::KeyPair::try_from(key_der.as_slice())
            .with_context(|| format!("{} is not a key", key_path.display()))?;
        Ok(Self {
            cert: CertificateDer::from(cert_der),
            key: PrivatePkcs8KeyDer::from(key_der),
            public_key_hash: Digest::of(&pair.public_key_der()),
        })
    }

    /// A fresh identity kept only in memory (for tools and tests that dial a coordinator).
    pub fn ephemeral() -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate().context("generating a key")?;
        let cert =
            rcgen::CertificateParams::new(vec!["lull-agent".to_owned()])?.self_signed(&key)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            public_key_hash: Digest::of(&key.public_key_der()),
        })
    }

    /// The private key, for TLS.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentIdentity::load_or_create(dir.path()).unwrap();
        let again = AgentIdentity::load_or_create(dir.path()).unwrap();
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
        let other = AgentIdentity::ephemeral().unwrap();
        assert_ne!(other.public_key_hash, first.public_key_hash);
    }
}
