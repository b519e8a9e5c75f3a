//! The agent's blob cache: modules, inputs, and the outputs and logs of results not yet
//! acknowledged, each stored under its sha256 and checked when it arrives.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lull_protocol::Digest;
use lull_protocol::digest::Hasher;

/// Blobs on disk under `root/<64 hex>`.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    tmp: PathBuf,
}

/// A blob that arrived with the wrong bytes.
#[derive(Debug, thiserror::Error)]
#[error("blob {expected}: its bytes hash to {actual}; refusing it")]
pub struct DigestMismatch {
    /// The digest asked for.
    pub expected: Digest,
    /// The digest of the bytes received.
    pub actual: Digest,
}

impl BlobCache {
    /// Opens (creating) a cache under `root`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            root: root.to_owned(),
            tmp,
        })
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    /// Whether the cache holds a blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// A writer for a new blob; [`BlobWriter::commit`] checks its digest and moves it in place.
    pub fn writer(&self) -> anyhow::Result<BlobWriter> {
        Ok(BlobWriter {
            file: tempfile::NamedTempFile::new_in(&self.tmp)?,
            hasher: Hasher::new(),
            size: 0,
        })
    }

    /// Stores bytes, returning their digest.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.contains(&digest) {
            let mut w = self.writer()?;
            w.write_all(bytes)?;
            w.commit(self, Some(digest))?;
        }
        Ok(digest)
    }

    /// Moves a file into the cache, returning its digest and size.
    pub fn adopt(&self, path: &Path) -> anyhow::Result<(Digest, u64)> {
        let mut w = self.writer()?;
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::copy(&mut f, &mut w)?;
        let size = w.size;
        Ok((w.commit(self, None)?, size))
    }
}

/// A blob being written into the cache.
#[derive(Debug)]
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the digest (when one is expected) and moves the blob into the cache.
    pub fn commit(self, cache: &BlobCache, expected: Option<Digest>) -> anyhow::Result<Digest> {
        let actual = self.hasher.finish();
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(DigestMismatch { expected, actual }.into());
        }
        self.file.as_file().sync_all()?;
        self.file
            .persist(cache.path(&actual))
            .map_err(|e| e.error)?;
        Ok(actual)
    }
}
