//! Workload signatures: OpenSSH SSHSIG over a module's bytes, namespace `lull-workload`, and
//! trust lists in OpenSSH's `allowed_signers` format.
//!
//! Because the format is OpenSSH's own, `ssh-keygen -Y sign -n lull-workload` and `lull sign`
//! make interchangeable signatures, and an owner can keep the trust list with the same tools.

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of workload signatures.
pub const NAMESPACE: &str = "lull-workload";

/// Why a signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The module carries no signature.
    #[error("the module is not signed (sign it with `lull sign FILE`)")]
    Unsigned,
    /// The signature text is not an SSHSIG.
    #[error("the signature is not an SSH signature: {0}")]
    Malformed(String),
    /// The signature is for another namespace.
    #[error("the signature is for namespace {found:?}, not {NAMESPACE:?}")]
    Namespace {
        /// The namespace found.
        found: String,
    },
    /// The key that signed is not on the trust list.
    #[error("signed by {fingerprint}, which is not on the trust list")]
    UnknownSigner {
        /// The signing key's fingerprint.
        fingerprint: String,
    },
    /// The key is trusted only for other namespaces.
    #[error("the trust list allows {principal} only for namespaces {namespaces}")]
    NamespaceNotAllowed {
        /// The principal.
        principal: String,
        /// What the list allows.
        namespaces: String,
    },
    /// The signature does not match these bytes.
    #[error("bad signature: it does not match the module's bytes")]
    BadSignature,
}

/// Signs `bytes` as a workload with `key`, returning the armored signature (`FILE.sig` content).
pub fn sign(key: &PrivateKey, bytes: &[u8]) -> Result<String, ssh_key::Error> {
    key.sign(NAMESPACE, HashAlg::Sha512, bytes)?
        .to_pem(LineEnding::LF)
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// Principals (comma-separated in the file).
    pub principals: Vec<String>,
    /// `namespaces="..."`, when given.
    pub namespaces: Option<Vec<String>>,
    /// The key.
    pub key: PublicKey,
}

/// A trust list: who may sign the workloads a machine runs.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    signers: Vec<AllowedSigner>,
}

/// Why a trust list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TrustListError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl TrustList {
    /// An empty list, which trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one key under one principal.
    pub fn add(&mut self, principal: &str, key: PublicKey) {
        self.signers.push(AllowedSigner {
            principals: vec![principal.to_owned()],
            namespaces: None,
            key,
        });
    }

    /// How many keys the list holds.
    pub fn len(&self) -> usize {
        self.signers.len()
    }

    /// Whether the list trusts nobody.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Parses an OpenSSH `allowed_signers` file.
    pub fn parse(text: &str) -> Result<Self, TrustListError> {
        let mut list = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| TrustListError {
                line: i + 1,
                reason,
            };
            let tokens = split_tokens(line);
            if tokens.len() < 3 {
                return Err(err(
                    "expected: principals [options] key-type base64-key".into()
                ));
            }
            let principals: Vec<String> = tokens[0]
                .trim_matches('"')
                .split(',')
                .map(str::to_owned)
                .collect();
            let (options, key_at) = if is_key_type(&tokens[1]) {
                (None, 1)
            } else {
                (Some(tokens[1].as_str()), 2)
            };
            if tokens.len() < key_at + 2 {
                return Err(err("missing key after options".into()));
            }
            let key_text = format!("{} {}", tokens[key_at], tokens[key_at + 1]);
            let key = PublicKey::from_openssh(&key_text)
                .map_err(|e| err(format!("cannot read key: {e}")))?;
            let mut namespaces = None;
            if let Some(opts) = options {
                for opt in split_options(opts) {
                    let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
                    match name.to_ascii_lowercase().as_str() {
                        "namespaces" => {
                            namespaces = Some(
                                value
                                    .trim_matches('"')
                                    .split(',')
                                    .map(str::to_owned)
                                    .collect(),
                            );
                        }
                        "cert-authority" => {
                            return Err(err("cert-authority keys are not supported".into()));
                        }
                        // valid-after / valid-before: honoured by the trust work that follows.
                        _ => {}
                    }
                }
            }
            list.signers.push(AllowedSigner {
                principals,
                namespaces,
                key,
            });
        }
        Ok(list)
    }

    /// Checks an armored signature over `bytes`; returns the signer's first principal.
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>) -> Result<String, SignatureError> {
        let text = signature.ok_or(SignatureError::Unsigned)?;
        let sig = SshSig::from_pem(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if sig.namespace() != NAMESPACE {
            return Err(SignatureError::Namespace {
                found: sig.namespace().to_owned(),
            });
        }
        let signer = self
            .signers
            .iter()
            .find(|s| s.key.key_data() == sig.public_key())
            .ok_or_else(|| SignatureError::UnknownSigner {
                fingerprint: PublicKey::from(sig.public_key().clone())
                    .fingerprint(HashAlg::Sha256)
                    .to_string(),
            })?;
        if let Some(ns) = &signer.namespaces
            && !ns.iter().any(|n| n == NAMESPACE)
        {
            return Err(SignatureError::NamespaceNotAllowed {
                principal: signer.principals.join(","),
                namespaces: ns.join(","),
            });
        }
        signer
            .key
            .verify(NAMESPACE, bytes, &sig)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(signer.principals.first().cloned().unwrap_or_default())
    }
}

fn is_key_type(token: &str) -> bool {
    token.starts_with("ssh-") || token.starts_with("ecdsa-") || token.starts_with("sk-")
}

/// Splits on whitespace, keeping double-quoted runs together.
fn split_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits an options field on commas outside quotes.
fn split_options(opts: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in opts.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::Algorithm;
    use ssh_key::rand_core::OsRng;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn signed_by_a_trusted_key_verifies() {
        let k = key();
        let sig = sign(&k, b"module bytes").unwrap();
        let line = format!("dev@lull {}", k.public_key().to_openssh().unwrap());
        let list = TrustList::parse(&line).unwrap();
        assert_eq!(
            list.verify(b"module bytes", Some(&sig)).unwrap(),
            "dev@lull"
        );
        assert_eq!(
            list.verify(b"other bytes", Some(&sig)),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            list.verify(b"module bytes", None),
            Err(SignatureError::Unsigned)
        );
    }

    #[test]
    fn unknown_signer_is_refused() {
        let sig = sign(&key(), b"m").unwrap();
        let mut list = TrustList::new();
        list.add("someone", key().public_key().clone());
        assert!(matches!(
            list.verify(b"m", Some(&sig)),
            Err(SignatureError::UnknownSigner { .. })
        ));
    }

    #[test]
    fn namespaces_option_is_honoured() {
        let k = key();
        let sig = sign(&k, b"m").unwrap();
        let line = format!(
            "a@b namespaces=\"git,file\" {}",
            k.public_key().to_openssh().unwrap()
        );
        let list = TrustList::parse(&line).unwrap();
        assert!(matches!(
            list.verify(b"m", Some(&sig)),
            Err(SignatureError::NamespaceNotAllowed { .. })
        ));
    }

    #[test]
    fn garbage_lines_name_their_line() {
        let err = TrustList::parse("# comment\n\nbob ssh-ed25519 notbase64!!\n").unwrap_err();
        assert_eq!(err.line, 3);
    }
}
