//! Fuzzes trust lists and signature checks (`lull_protocol::signature`): [`TrustList::parse`]
//! and [`TrustList::parse_revoked`] on arbitrary text, and [`TrustList::verify`] of arbitrary
//! bytes against arbitrary armored signatures.
//!
//! The target holds one real key (Ed25519, from a fixed seed), a trust list naming it
//! (`fuzz@lull`), and its signature over fixed bytes, so that the verification paths past the
//! armor are reached. What must hold:
//!
//! - a trust list that parses, asked about the real signature, never calls it malformed, of
//!   another namespace or bad (those depend on the signature alone); it accepts it only if it
//!   holds a signer;
//! - revocation only ever turns an acceptance into `Revoked`;
//! - an arbitrary signature is accepted only over the bytes the real key signed, and only as
//!   `fuzz@lull`, and never once that key is revoked;
//! - a signature the target makes over arbitrary bytes verifies over those bytes and no other;
//!   an armored signature changed anywhere is either refused or decodes to the same signature;
//! - an `allowed_signers` line with arbitrary principals and options in front of the real key
//!   either does not parse, or makes the real signature trusted, outside its namespaces or
//!   outside its validity window (never malformed, never bad).

#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use lull_protocol::signature::{self, SignatureError, TrustList};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{PrivateKey, SshSig};

/// The bytes the real key signed.
const SIGNED: &[u8] = b"\0asm\x01\0\0\0 a module the fuzz key signed";
/// The real key's principal.
const PRINCIPAL: &str = "fuzz@lull";

struct Fixture {
    key: PrivateKey,
    /// The key's public half in OpenSSH form (`ssh-ed25519 AAAA...`).
    public: String,
    /// The key's signature over [`SIGNED`], armored.
    signature: String,
    /// A list trusting the key.
    trusted: TrustList,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
    let public = key.public_key().to_openssh().expect("public key");
    let signature = signature::sign(&key, SIGNED).expect("sign");
    let trusted = TrustList::parse(&format!("{PRINCIPAL} {public}")).expect("trust list");
    Fixture {
        key,
        public,
        signature,
        trusted,
    }
});

/// A fixed "now" for validity windows: 2030-01-01 00:00:00 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

#[derive(Debug, Arbitrary)]
enum Case<'a> {
    /// An arbitrary trust list, asked about the real signature.
    List(&'a str),
    /// An arbitrary revocation file, added to the list that trusts the real key.
    Revoked(&'a str),
    /// Arbitrary bytes against an arbitrary signature, on the list that trusts the real key.
    Verify { bytes: &'a [u8], signature: &'a str },
    /// A signature made here over arbitrary bytes, then changed at one place.
    SignAndChange {
        bytes: &'a [u8],
        at: usize,
        with: char,
    },
    /// Arbitrary principals and options in front of the real key, on one line.
    Options(&'a str),
}

fuzz_target!(|data: &[u8]| {
    let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let f = &*FIXTURE;
    match case {
        Case::List(text) => {
            let Ok(list) = TrustList::parse(text) else {
                return;
            };
            let result = list.verify_at(SIGNED, Some(&f.signature), now());
            assert!(
                !matches!(
                    result,
                    Err(SignatureError::Malformed(_)
                        | SignatureError::Namespace { .. }
                        | SignatureError::BadSignature
                        | SignatureError::Unsigned
                        | SignatureError::Revoked { .. })
                ),
                "{result:?}"
            );
            if result.is_ok() {
                assert!(!list.is_empty());
            }
        }
        Case::Revoked(text) => {
            let mut list = f.trusted.clone();
            if list.parse_revoked(text).is_err() {
                return;
            }
            let result = list.verify(SIGNED, Some(&f.signature));
            match result {
                Ok(p) => assert_eq!(p, PRINCIPAL),
                Err(SignatureError::Revoked { .. }) => assert!(list.revoked_len() > 0),
                Err(e) => panic!("revocation turned acceptance into {e:?}"),
            }
        }
        Case::Verify { bytes, signature } => {
            if let Ok(p) = f.trusted.verify(bytes, Some(signature)) {
                assert_eq!(bytes, SIGNED, "accepted over bytes the key never signed");
                assert_eq!(p, PRINCIPAL);
                let mut revoked = f.trusted.clone();
                revoked.parse_revoked(&f.public).expect("revocation file");
                assert!(matches!(
                    revoked.verify(bytes, Some(signature)),
                    Err(SignatureError::Revoked { .. })
                ));
            }
        }
        Case::SignAndChange { bytes, at, with } => {
            let armored = signature::sign(&f.key, bytes).expect("sign");
            assert_eq!(
                f.trusted.verify(bytes, Some(&armored)).as_deref(),
                Ok(PRINCIPAL)
            );
            let mut other = bytes.to_vec();
            other.push(0);
            assert_eq!(
                f.trusted.verify(&other, Some(&armored)),
                Err(SignatureError::BadSignature)
            );
            let mut changed: Vec<char> = armored.chars().collect();
            let at = at % changed.len();
            changed[at] = with;
            let changed: String = changed.into_iter().collect();
            if f.trusted.verify(bytes, Some(&changed)).is_ok() {
                let a = SshSig::from_pem(&armored).expect("original");
                let b = SshSig::from_pem(&changed).expect("accepted, so it decodes");
                assert_eq!(
                    a.signature_bytes(),
                    b.signature_bytes(),
                    "a changed signature was accepted"
                );
                assert_eq!(a.public_key(), b.public_key());
            }
        }
        Case::Options(front) => {
            let front = front.lines().next().unwrap_or_default();
            let Ok(list) = TrustList::parse(&format!("{front} {}", f.public)) else {
                return;
            };
            let result = list.verify_at(SIGNED, Some(&f.signature), now());
            assert!(
                matches!(
                    result,
                    Ok(_)
                        | Err(SignatureError::UnknownSigner { .. }
                            | SignatureError::NamespaceNotAllowed { .. }
                            | SignatureError::OutsideValidity { .. })
                ),
                "{front:?}: {result:?}"
            );
        }
    }
});
