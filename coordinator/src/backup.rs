//! `lull-coordinator backup DIR`: a consistent copy of a coordinator's data directory, taken
//! while it runs.
//!
//! The database is copied with SQLite's `VACUUM INTO`, which reads one consistent snapshot
//! (other writers carry on); blobs are immutable files named by their digest, so copying those
//! not yet in the backup is enough; the coordinator's key is copied so that agents pinning it
//! accept the restored coordinator. Backing up into the same directory again refreshes the
//! database and adds only the new blobs. Restoring is copying the directory back into an empty
//! data directory, with the coordinator stopped.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::store::Store;

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Jobs in the copied database.
    pub jobs: usize,
    /// Blobs in the backup.
    pub blobs: u64,
    /// Of which this run copied.
    pub new_blobs: u64,
    /// Bytes this run copied for them.
    pub new_bytes: u64,
}

/// Backs up the coordinator data directory `data` (whose database `store` is open) into
/// `dest`.
pub async fn backup(store: &Store, data: &Path, dest: &Path) -> anyhow::Result<BackupSummary> {
    if store.backend() == crate::store::Backend::Postgres {
        anyhow::bail!(
            "this coordinator's database is PostgreSQL: back it up with pg_dump, and its data \
             directory (blobs/ and tls/) with any file copy"
        );
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    // The database, through a temporary name: a backup interrupted here keeps its old copy.
    let db = dest.join("lull.db");
    let partial = dest.join("lull.db.partial");
    let _ = std::fs::remove_file(&partial);
    store
        .backup_into(&partial)
        .await
        .with_context(|| format!("copying the database into {}", partial.display()))?;
    std::fs::rename(&partial, &db).with_context(|| format!("writing {}", db.display()))?;
    let jobs = Store::open(&db)
        .await
        .with_context(|| format!("reading back {}", db.display()))?
        .jobs()
        .await?
        .len();
    // The key agents pin.
    copy_files(&data.join("tls"), &dest.join("tls"))?;
    // Blobs: immutable, named by digest; in-progress uploads (tmp/) are left out.
    let (blobs, new_blobs, new_bytes) = {
        let mut counts = (0u64, 0u64, 0u64);
        let source = data.join("blobs").join("sha256");
        if source.is_dir() {
            for shard in read_dir(&source)? {
                for file in read_dir(&shard)? {
                    let Some(name) = file.file_name().map(|n| n.to_owned()) else {
                        continue;
                    };
                    let shard_name = shard.file_name().unwrap_or_default();
                    let target = dest.join("blobs/sha256").join(shard_name).join(name);
                    counts.0 += 1;
                    if !target.exists() {
                        counts.2 += copy_file(&file, &target)?;
                        counts.1 += 1;
                    }
                }
            }
        }
        counts
    };
    Ok(BackupSummary {
        jobs,
        blobs,
        new_blobs,
        new_bytes,
    })
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// Copies a file through a temporary name (so a partial copy never looks complete), keeping
/// its permissions; returns its size.
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<u64> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = to.with_extension("partial");
    let n = std::fs::copy(from, &partial)
        .with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to).with_context(|| format!("writing {}", to.display()))?;
    Ok(n)
}

/// Copies the files directly in `from` into `to`, replacing those there.
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for file in read_dir(from)? {
        if file.is_file() {
            copy_file(&file, &to.join(file.file_name().unwrap_or_default()))?;
        }
    }
    Ok(())
}
