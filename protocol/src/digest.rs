//! Content digests: every module, input, output and log is a blob named by the sha256 of its bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest, written `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The string does not start with `sha256:`.
    #[error("digest {0:?} does not start with \"sha256:\"")]
    Algorithm(String),
    /// The hex part is not 64 hex digits.
    #[error("digest {0:?} is not \"sha256:\" followed by 64 hex digits")]
    Hex(String),
}

impl Digest {
    /// The digest of no bytes at all. Every coordinator holds the empty blob from the start, so
    /// an agent never uploads it (a guest that printed nothing has this as its log).
    pub const EMPTY: Digest = Digest([
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ]);

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the `sha256:` prefix (used as a file name in blob stores).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Computes a digest over bytes fed in pieces, for streams too large to hold in memory.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

impl Digest {
    /// Parses the 64 hex digits alone (as in a file name), without the `sha256:` prefix.
    pub fn from_hex(hex_part: &str) -> Result<Self, DigestError> {
        parse_hex(hex_part, hex_part)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Algorithm(s.to_owned()))?;
        parse_hex(hex_part, s)
    }
}

/// Parses `hex_part`; errors name `s`, the whole text given.
fn parse_hex(hex_part: &str, s: &str) -> Result<Digest, DigestError> {
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::Hex(s.to_owned()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut out)
        .map_err(|_| DigestError::Hex(s.to_owned()))?;
    Ok(Digest(out))
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_digest_of_no_bytes() {
        assert_eq!(Digest::EMPTY, Digest::of(b""));
        assert_eq!(Digest::EMPTY, Hasher::new().finish());
    }

    #[test]
    fn known_digest_round_trips() {
        let d = Digest::of(b"abc");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), d);
    }

    #[test]
    fn malformed_digests_are_refused() {
        assert!(matches!(
            "md5:00".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            "sha256:xyz".parse::<Digest>(),
            Err(DigestError::Hex(_))
        ));
        let long = format!("sha256:{}", "0".repeat(65));
        assert!(matches!(long.parse::<Digest>(), Err(DigestError::Hex(_))));
    }
}
