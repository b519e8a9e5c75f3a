//! The agent's disk cache: blobs (modules, inputs, and the outputs and logs of results not yet
//! acknowledged), each stored under its sha256 and checked when it arrives, and compiled
//! modules ([`compiled`]), all under one size budget.
//!
//! The budget is kept by evicting what was used least recently ([`Lru`]): the time of last use
//! is the file's modification time, so the order survives restarts. Blobs that running tasks
//! need and the blobs of results still waiting for the coordinator's acknowledgement are never
//! evicted (the agent says which, through [`Lru::protect_with`]); a cache full of those runs
//! over its budget and says so in the log.

pub mod compiled;
mod lru;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use lull_protocol::Digest;
use lull_protocol::digest::Hasher;

pub use self::lru::{Entry, Lru};

/// Blobs on disk under `root/<64 hex>`.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    tmp: PathBuf,
    lru: Arc<Lru>,
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
    /// Opens (creating) a cache under `root`, entering the blobs already there in `lru`.
    pub fn open(root: &Path, lru: Arc<Lru>) -> anyhow::Result<Self> {
        let tmp = root.join("tmp");
        // Half-written blobs of an earlier run are of no use.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let cache = Self {
            root: root.to_owned(),
            tmp,
            lru,
        };
        for e in std::fs::read_dir(root)?.flatten() {
            if let Some(digest) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                && let Ok(meta) = e.metadata()
                && meta.is_file()
            {
                cache.lru.insert(
                    Entry::Blob(digest),
                    e.path(),
                    meta.len(),
                    lru::last_use(&meta),
                );
            }
        }
        Ok(cache)
    }

    /// The budget this cache counts against.
    pub fn lru(&self) -> &Arc<Lru> {
        &self.lru
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    /// Whether the cache holds a blob.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Notes that a blob is being used (it is evicted last).
    pub fn touch(&self, digest: &Digest) {
        self.lru.touch(Entry::Blob(*digest));
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
        if self.contains(&digest) {
            self.touch(&digest);
        } else {
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

    /// Checks the digest (when one is expected), moves the blob into the cache and counts it
    /// against the budget (which may evict others).
    pub fn commit(self, cache: &BlobCache, expected: Option<Digest>) -> anyhow::Result<Digest> {
        let actual = self.hasher.finish();
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(DigestMismatch { expected, actual }.into());
        }
        self.file.as_file().sync_all()?;
        let path = cache.path(&actual);
        self.file.persist(&path).map_err(|e| e.error)?;
        cache
            .lru
            .insert(Entry::Blob(actual), path, self.size, lru::now_ms());
        cache.lru.evict();
        Ok(actual)
    }
}
