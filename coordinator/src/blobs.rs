//! The content-addressed blob store: modules, inputs, outputs and logs, each stored once under
//! the sha256 of its bytes.
//!
//! A blob is written to a temporary file while it is hashed, synced, and renamed into place only
//! when its digest matches the one announced, so a reader never sees a partial or wrong blob.

use std::path::{Path, PathBuf};

use lull_protocol::Digest;
use lull_protocol::digest::Hasher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to the announced digest.
    #[error("the bytes hash to {actual}, not {expected}")]
    Mismatch {
        /// The digest announced.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// More bytes than allowed.
    #[error("blob exceeds the {max} byte limit")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Fewer or more bytes than announced.
    #[error("expected {expected} bytes, received {received}")]
    Length {
        /// Announced.
        expected: u64,
        /// Received.
        received: u64,
    },
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// Blobs on local disk under `root/sha256/<2 hex>/<64 hex>`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating) a store under `root`.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where a blob lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the store holds a blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Reads a stored blob whole.
    pub async fn read(&self, digest: &Digest) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(self.path(digest)).await
    }

    /// Stores bytes read from `src`, which must hash to `expected` and, when `size` is given,
    /// be exactly that long; at most `max` bytes are accepted. Storing a blob already held is
    /// cheap and harmless.
    pub async fn put(
        &self,
        expected: Digest,
        size: Option<u64>,
        max: u64,
        mut src: impl AsyncRead + Unpin,
    ) -> Result<u64, BlobError> {
        if let Some(n) = size
            && n > max
        {
            return Err(BlobError::TooLarge { max });
        }
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        let mut file = tokio::fs::File::from_std(tmp.reopen()?);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max {
                return Err(BlobError::TooLarge { max });
            }
            if let Some(expected) = size
                && total > expected
            {
                return Err(BlobError::Length {
                    expected,
                    received: total,
                });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await?;
        }
        if let Some(expected) = size
            && total != expected
        {
            return Err(BlobError::Length {
                expected,
                received: total,
            });
        }
        let actual = hasher.finish();
        if actual != expected {
            return Err(BlobError::Mismatch { expected, actual });
        }
        file.sync_all().await?;
        drop(file);
        let dest = self.path(&expected);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tmp.persist(&dest).map_err(|e| e.error)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_digest_and_refuses_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(!store.contains(&d));
        store.put(d, Some(5), 1 << 20, &b"hello"[..]).await.unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.read(&d).await.unwrap(), b"hello");

        let other = Digest::of(b"other");
        let err = store
            .put(other, None, 1 << 20, &b"hello"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&other));

        let err = store.put(d, None, 3, &b"hello"[..]).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { max: 3 }), "{err}");
        let err = store
            .put(d, Some(4), 1 << 20, &b"hello"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Length { .. }), "{err}");
        // The stored blob is untouched by the failed puts.
        assert_eq!(store.read(&d).await.unwrap(), b"hello");
    }
}
