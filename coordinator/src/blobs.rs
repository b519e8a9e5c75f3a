//! The content-addressed blob store: modules, inputs, outputs and logs, each stored once under
//! the sha256 of its bytes.
//!
//! A blob is written to a temporary file while it is hashed, synced, and renamed into place only
//! when its digest matches the one announced, so a reader never sees a partial or wrong blob.
//!
//! **Resumable uploads.** A submitter's upload is a series of chunks ([`BlobStore::start_upload`],
//! [`BlobStore::append_chunk`]), each carrying its own sha256 and the offset it starts at; a chunk
//! whose bytes do not match is refused and nothing of it is kept. What arrived is kept under
//! `uploads/` (synced after each chunk), keyed by the blob's digest, so an upload cut off by a
//! lost connection or a killed client continues from its last chunk when the same blob is
//! uploaded again. The last chunk checks the whole blob's digest and moves it into place.
//!
//! **Collection.** [`BlobStore::collect`] deletes the blobs no job references once they have
//! gone unused for a grace period (a blob's modification time is its last use: storing it, or a
//! submitter being told it is present, renews it), and uploads left unfinished as long.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lull_protocol::Digest;
use lull_protocol::digest::Hasher;
use lull_protocol::sync::lock;
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
    /// A chunk's bytes do not hash to the digest sent with them.
    #[error("the chunk at offset {offset} hashes to {actual}, not {expected}; it was not kept")]
    Chunk {
        /// Where the chunk starts.
        offset: u64,
        /// The chunk digest sent.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// A chunk does not start where the upload stands.
    #[error("the upload stands at offset {expected}; a chunk for offset {sent} does not fit")]
    Offset {
        /// Where the upload stands.
        expected: u64,
        /// Where the chunk said it starts.
        sent: u64,
    },
    /// No upload of this blob is under way.
    #[error("no upload of this blob is under way; start one first")]
    NoUpload,
    /// Another request is adding to the same upload right now.
    #[error("another request is adding to this upload; try again when it is done")]
    Busy,
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UploadState {
    /// The blob being uploaded.
    pub digest: Digest,
    /// Its whole size.
    pub size: u64,
    /// Bytes received and kept so far: the next chunk starts here.
    pub offset: u64,
    /// Whether the blob is stored (nothing more to send).
    pub complete: bool,
}

/// What a collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Unfinished uploads deleted.
    pub uploads: u64,
    /// Blobs no job references that are still within their grace period.
    pub in_grace: u64,
    /// Blobs kept because a job references them.
    pub referenced: u64,
}

/// Blobs on local disk under `root/sha256/<2 hex>/<64 hex>`; unfinished uploads under
/// `root/uploads/<64 hex>.part`, with the announced size in `<64 hex>.size`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Uploads a request is adding to right now.
    busy: Arc<Mutex<HashSet<Digest>>>,
}

/// Marks an upload busy while a request adds to it.
struct BusyGuard {
    busy: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.busy).remove(&self.digest);
    }
}

impl BlobStore {
    /// Opens (creating) a store under `root`. The store always holds the empty blob
    /// ([`Digest::EMPTY`]): agents never upload it, and collection never deletes it.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        let store = Self {
            root: root.to_owned(),
            busy: Arc::default(),
        };
        let empty = store.path(&Digest::EMPTY);
        if std::fs::metadata(&empty).ok().map(|m| m.len()) != Some(0) {
            let shard = empty.parent().expect("a blob's path has a shard folder");
            std::fs::create_dir_all(shard)?;
            // Nothing to lose if this is not yet on disk: it is made again on the next open.
            std::fs::File::create(&empty)?;
        }
        Ok(store)
    }

    /// Bytes of all the blobs stored (read from the disk: a walk of the store).
    pub async fn stored_bytes(&self) -> std::io::Result<u64> {
        let root = self.root.join("sha256");
        tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for shard in std::fs::read_dir(&root)?.flatten() {
                for e in std::fs::read_dir(shard.path())?.flatten() {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
            Ok(total)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Renews a stored blob's grace period (it was just found useful, e.g. by a submitter who
    /// will refer to it).
    pub fn touch(&self, digest: &Digest) {
        let path = self.path(digest);
        let result = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(blob = %digest, error = %e, "could not renew a blob's grace period");
        }
    }

    fn part_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{}.part", digest.hex()))
    }

    fn size_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{}.size", digest.hex()))
    }

    fn claim(&self, digest: Digest) -> Result<BusyGuard, BlobError> {
        if !lock(&self.busy).insert(digest) {
            return Err(BlobError::Busy);
        }
        Ok(BusyGuard {
            busy: self.busy.clone(),
            digest,
        })
    }

    /// Where the upload of `digest` stands, if one is under way or the blob is stored.
    pub async fn upload_state(&self, digest: &Digest) -> Result<Option<UploadState>, BlobError> {
        if let Some(size) = self.size(digest) {
            return Ok(Some(UploadState {
                digest: *digest,
                size,
                offset: size,
                complete: true,
            }));
        }
        let size = match tokio::fs::read_to_string(self.size_path(digest)).await {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(size) = size else {
            return Ok(None);
        };
        let offset = match tokio::fs::metadata(self.part_path(digest)).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(Some(UploadState {
            digest: *digest,
            size,
            offset: offset.min(size),
            complete: false,
        }))
    }

    /// Starts the upload of a blob of `size` bytes, or finds where an earlier one stopped. A
    /// blob already stored needs nothing more (`complete`); an earlier upload announced with
    /// another size starts over.
    pub async fn start_upload(
        &self,
        digest: Digest,
        size: u64,
        max: u64,
    ) -> Result<UploadState, BlobError> {
        if size > max {
            return Err(BlobError::TooLarge { max });
        }
        let _busy = self.claim(digest)?;
        if let Some(state) = self.upload_state(&digest).await? {
            if state.complete {
                self.touch(&digest);
                return Ok(state);
            }
            if state.size == size {
                return Ok(state);
            }
        }
        let begun = async {
            let part = tokio::fs::File::create(self.part_path(&digest)).await?;
            part.sync_all().await?;
            write_synced(&self.size_path(&digest), size.to_string().as_bytes()).await
        }
        .await;
        if let Err(e) = begun {
            // No half-begun upload is left (a full disk, say): the next try starts clean.
            self.discard_upload(&digest).await;
            return Err(e.into());
        }
        if size == 0 {
            return self.finish_upload(digest, size).await;
        }
        Ok(UploadState {
            digest,
            size,
            offset: 0,
            complete: false,
        })
    }

    /// Adds a chunk that starts at `offset` and hashes to `chunk_digest`. The chunk that
    /// reaches the announced size finishes the upload: the whole blob's digest is checked, and
    /// a blob that does not match is discarded (the upload starts over).
    pub async fn append_chunk(
        &self,
        digest: Digest,
        offset: u64,
        chunk_digest: Digest,
        bytes: &[u8],
    ) -> Result<UploadState, BlobError> {
        let _busy = self.claim(digest)?;
        let state = self
            .upload_state(&digest)
            .await?
            .ok_or(BlobError::NoUpload)?;
        if state.complete {
            return Ok(state);
        }
        if offset != state.offset {
            return Err(BlobError::Offset {
                expected: state.offset,
                sent: offset,
            });
        }
        let end = offset + bytes.len() as u64;
        if end > state.size {
            return Err(BlobError::Length {
                expected: state.size,
                received: end,
            });
        }
        let actual = Digest::of(bytes);
        if actual != chunk_digest {
            return Err(BlobError::Chunk {
                offset,
                expected: chunk_digest,
                actual,
            });
        }
        {
            let mut part = tokio::fs::OpenOptions::new()
                .append(true)
                .open(self.part_path(&digest))
                .await?;
            let written = async {
                part.write_all(bytes).await?;
                part.flush().await?;
                part.sync_data().await
            }
            .await;
            if let Err(e) = written {
                // What part of the chunk got in is unchecked: cut back to where it started.
                let _ = part.set_len(offset).await;
                return Err(e.into());
            }
        }
        if end == state.size {
            return self.finish_upload(digest, state.size).await;
        }
        Ok(UploadState {
            offset: end,
            ..state
        })
    }

    /// Checks a complete upload's digest and moves it into place.
    async fn finish_upload(&self, digest: Digest, size: u64) -> Result<UploadState, BlobError> {
        let part = self.part_path(&digest);
        let file = tokio::fs::File::open(&part).await?;
        let result = self.put(digest, Some(size), u64::MAX, file).await;
        self.discard_upload(&digest).await;
        result?;
        Ok(UploadState {
            digest,
            size,
            offset: size,
            complete: true,
        })
    }

    async fn discard_upload(&self, digest: &Digest) {
        let _ = tokio::fs::remove_file(self.part_path(digest)).await;
        let _ = tokio::fs::remove_file(self.size_path(digest)).await;
    }

    /// Deletes the blobs that `referenced` does not hold and that have gone unused for
    /// `grace`, and the uploads left unfinished as long. Call it where no job that refers to
    /// an unlisted blob can be stored meanwhile.
    pub async fn collect(
        &self,
        referenced: &HashSet<Digest>,
        grace: Duration,
    ) -> std::io::Result<Collected> {
        let root = self.root.clone();
        let busy = self.busy.clone();
        let referenced = referenced.clone();
        tokio::task::spawn_blocking(move || collect_blocking(&root, &busy, &referenced, grace))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Deletes at once each of `candidates` (states that stopped being a task's latest
    /// checkpoint) that `referenced` does not hold and that was last used before `before` (the
    /// moment before `referenced` was read: a blob stored or renewed since may be about to be
    /// referenced). The rest wait for the ordinary collection. Returns the blobs and bytes
    /// deleted.
    pub async fn drop_superseded(
        &self,
        candidates: HashSet<Digest>,
        referenced: &HashSet<Digest>,
        before: SystemTime,
    ) -> (u64, u64) {
        let store = self.clone();
        let referenced = referenced.clone();
        tokio::task::spawn_blocking(move || {
            let mut done = (0, 0);
            for digest in candidates.difference(&referenced) {
                if *digest == Digest::EMPTY {
                    continue;
                }
                let path = store.path(digest);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.modified().is_ok_and(|t| t < before) && std::fs::remove_file(&path).is_ok()
                {
                    done.0 += 1;
                    done.1 += meta.len();
                }
            }
            done
        })
        .await
        .unwrap_or_default()
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
        // A blob already stored (results often carry the same output, and empty logs) is read
        // and checked as a new one, but not written again: only its time is, renewing its
        // grace period.
        let stored = self
            .size(&expected)
            .is_some_and(|have| size.is_none_or(|n| n == have));
        let mut sink = if stored {
            None
        } else {
            let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
            let file = tokio::fs::File::from_std(tmp.reopen()?);
            Some((tmp, file))
        };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; size.unwrap_or(64 * 1024).clamp(1, 64 * 1024) as usize];
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
            if let Some((_, file)) = &mut sink {
                file.write_all(&buf[..n]).await?;
            }
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
        let Some((tmp, mut file)) = sink else {
            self.touch(&expected);
            return Ok(total);
        };
        // tokio reports a failed write (a full disk) only at the next write or flush, not at
        // a sync: without the flush, a short file would be kept under the digest of all of it.
        file.flush().await?;
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

async fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = tokio::fs::File::create(path).await?;
    f.write_all(bytes).await?;
    // The write's own error, if any, comes with the flush (see `put`).
    f.flush().await?;
    f.sync_all().await
}

/// How long ago a file was last modified (zero for times in the future).
fn age(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

fn collect_blocking(
    root: &Path,
    busy: &Mutex<HashSet<Digest>>,
    referenced: &HashSet<Digest>,
    grace: Duration,
) -> std::io::Result<Collected> {
    let mut done = Collected::default();
    for shard in std::fs::read_dir(root.join("sha256"))?.flatten() {
        let Ok(entries) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(digest) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if digest == Digest::EMPTY {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if referenced.contains(&digest) {
                done.referenced += 1;
            } else if age(&meta) < grace {
                done.in_grace += 1;
            } else {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        done.blobs += 1;
                        done.bytes += meta.len();
                    }
                    Err(err) => {
                        tracing::warn!(blob = %digest, error = %err, "could not delete an unreferenced blob")
                    }
                }
            }
        }
    }
    for e in std::fs::read_dir(root.join("uploads"))?.flatten() {
        let path = e.path();
        let Some(digest) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| Digest::from_hex(s).ok())
        else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        let in_progress = lock(busy).contains(&digest);
        if !in_progress && age(&meta) >= grace {
            let _ = std::fs::remove_file(&path);
            if path.extension().is_some_and(|x| x == "part") {
                done.uploads += 1;
            }
        }
    }
    Ok(done)
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

        // Stored again: checked as a new one (other bytes under its digest are refused), and
        // nothing written but its time.
        let err = store
            .put(d, Some(5), 1 << 20, &b"jello"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(store.path(&d))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(store.put(d, None, 1 << 20, &b"hello"[..]).await.unwrap(), 5);
        assert_eq!(store.read(&d).await.unwrap(), b"hello");
        let renewed = std::fs::metadata(store.path(&d))
            .unwrap()
            .modified()
            .unwrap();
        assert!(
            renewed > old + Duration::from_secs(60),
            "its grace period renewed"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn an_interrupted_upload_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let d = Digest::of(&blob);
        let state = store.start_upload(d, 10_000, 1 << 20).await.unwrap();
        assert_eq!((state.offset, state.complete), (0, false));
        let first = &blob[..4000];
        let state = store
            .append_chunk(d, 0, Digest::of(first), first)
            .await
            .unwrap();
        assert_eq!(state.offset, 4000);

        // The client goes away; a new store over the same directory (a restarted coordinator)
        // and a new client find the upload where it stood.
        let store = BlobStore::open(dir.path()).unwrap();
        let state = store.start_upload(d, 10_000, 1 << 20).await.unwrap();
        assert_eq!((state.offset, state.complete), (4000, false));
        // A chunk for the wrong offset is refused, saying where to start.
        let rest = &blob[4000..];
        let err = store
            .append_chunk(d, 0, Digest::of(rest), rest)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::Offset {
                    expected: 4000,
                    sent: 0
                }
            ),
            "{err}"
        );
        let state = store
            .append_chunk(d, 4000, Digest::of(rest), rest)
            .await
            .unwrap();
        assert!(state.complete);
        assert_eq!(store.read(&d).await.unwrap(), blob);
        assert!(!store.part_path(&d).exists() && !store.size_path(&d).exists());
        // Starting again finds it stored.
        assert!(
            store
                .start_upload(d, 10_000, 1 << 20)
                .await
                .unwrap()
                .complete
        );
    }

    #[tokio::test]
    async fn a_corrupt_chunk_is_refused_and_nothing_of_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = vec![42u8; 3000];
        let d = Digest::of(&blob);
        store.start_upload(d, 3000, 1 << 20).await.unwrap();
        let mut damaged = blob[..1000].to_vec();
        damaged[10] ^= 1;
        let err = store
            .append_chunk(d, 0, Digest::of(&blob[..1000]), &damaged)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Chunk { offset: 0, .. }), "{err}");
        assert_eq!(store.upload_state(&d).await.unwrap().unwrap().offset, 0);

        // Chunks that each match, making a blob that does not: discarded at the end.
        let other = vec![1u8; 3000];
        store
            .append_chunk(d, 0, Digest::of(&other), &other)
            .await
            .map(|_| ())
            .unwrap_or_else(|e| assert!(matches!(e, BlobError::Mismatch { .. }), "{e}"));
        assert!(!store.contains(&d));
        assert!(store.upload_state(&d).await.unwrap().is_none());

        // Too big for the cap: refused before a byte is sent.
        let err = store.start_upload(d, 3000, 100).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { max: 100 }), "{err}");
    }

    #[tokio::test]
    async fn collection_spares_referenced_and_recent_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut stored = Vec::new();
        for b in [&b"kept"[..], b"recent", b"old"] {
            let d = Digest::of(b);
            store.put(d, None, 1 << 20, b).await.unwrap();
            stored.push(d);
        }
        let (kept, recent, old) = (stored[0], stored[1], stored[2]);
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        for d in [kept, old] {
            std::fs::File::options()
                .write(true)
                .open(store.path(&d))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let done = store
            .collect(&HashSet::from([kept]), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            (done.blobs, done.referenced, done.in_grace),
            (1, 1, 1),
            "{done:?}"
        );
        assert!(store.contains(&kept) && store.contains(&recent) && !store.contains(&old));
    }

    #[tokio::test]
    async fn the_empty_blob_is_always_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(store.size(&Digest::EMPTY), Some(0));
        assert_eq!(store.read(&Digest::EMPTY).await.unwrap(), b"");
        // Neither collection nor dropping superseded states deletes it, however old.
        std::fs::File::options()
            .write(true)
            .open(store.path(&Digest::EMPTY))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let done = store
            .collect(&HashSet::new(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(done.blobs, 0, "{done:?}");
        let later = SystemTime::now() + Duration::from_secs(1);
        let dropped = store
            .drop_superseded(HashSet::from([Digest::EMPTY]), &HashSet::new(), later)
            .await;
        assert_eq!(dropped, (0, 0));
        assert!(store.contains(&Digest::EMPTY));
        // A damaged copy (not empty) is made right on the next open.
        std::fs::write(store.path(&Digest::EMPTY), b"junk").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(store.size(&Digest::EMPTY), Some(0));
    }

    #[tokio::test]
    async fn superseded_states_go_at_once_unless_referenced_or_used_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut stored = Vec::new();
        for b in [
            &b"old state"[..],
            b"also a module",
            b"renewed",
            b"never stored",
        ] {
            let d = Digest::of(b);
            if b != b"never stored" {
                store.put(d, None, 1 << 20, b).await.unwrap();
            }
            stored.push(d);
        }
        let (old, module, renewed, absent) = (stored[0], stored[1], stored[2], stored[3]);
        let before = SystemTime::now() + Duration::from_millis(10);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Stored again after the references were read: it may be about to be referenced.
        store.touch(&renewed);
        let (blobs, bytes) = store
            .drop_superseded(
                HashSet::from([old, module, renewed, absent]),
                &HashSet::from([module]),
                before,
            )
            .await;
        assert_eq!((blobs, bytes), (1, 9));
        assert!(!store.contains(&old));
        assert!(store.contains(&module) && store.contains(&renewed));
    }
}
