//! Collection of blobs nothing refers to, and of checkpoints replaced by newer ones.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lull_protocol::Digest;
use tokio::sync::{Notify, RwLock, RwLockReadGuard};

use super::{Hub, HubError, lock};

/// Superseded checkpoints that make a collection come early.
const SUPERSEDED_COLLECT_BYTES: u64 = 256 << 20;
/// The least time between such early collections.
const SUPERSEDED_COLLECT_SPACING: Duration = Duration::from_secs(10);

/// What blob collection keeps between runs.
#[derive(Debug, Default)]
pub(super) struct Collector {
    /// Held shared while a job is checked and stored, exclusively while blobs are collected:
    /// a job never refers to a blob collected under it.
    collecting: RwLock<()>,
    /// States that stopped being a task's latest checkpoint, deleted at the next collection
    /// rather than after the grace period; with their bytes.
    superseded: Mutex<(HashSet<Digest>, u64)>,
    /// Asks for a collection before the next one is due (superseded states pile up).
    soon: Notify,
}

impl Collector {
    /// Keeps collections from starting while the guard lives.
    pub(super) async fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.collecting.read().await
    }
}

impl Hub {
    /// Deletes the blobs no job refers to that went unused for the grace period, and
    /// unfinished uploads as old. Jobs are not stored meanwhile.
    pub async fn collect_blobs(&self) -> Result<crate::blobs::Collected, HubError> {
        let _exclusive = self.collector.collecting.write().await;
        let superseded = std::mem::take(&mut *lock(&self.collector.superseded)).0;
        let before = SystemTime::now();
        let referenced = self.store.referenced_blobs().await?;
        let (dropped, dropped_bytes) = self
            .blobs
            .drop_superseded(superseded, &referenced, before)
            .await;
        if dropped > 0 {
            tracing::info!(
                blobs = dropped,
                bytes = dropped_bytes,
                "deleted superseded checkpoints"
            );
        }
        let mut done = self
            .blobs
            .collect(&referenced, self.config.blob_grace)
            .await
            .map_err(|e| HubError::Io(format!("collecting blobs: {e}")))?;
        done.blobs += dropped;
        done.bytes += dropped_bytes;
        if done.blobs > 0 || done.uploads > 0 {
            tracing::info!(
                blobs = done.blobs,
                bytes = done.bytes,
                uploads = done.uploads,
                kept = done.referenced,
                in_grace = done.in_grace,
                "collected unreferenced blobs"
            );
        }
        Ok(done)
    }

    /// Collects blobs every [`super::HubConfig::gc_interval`], for ever.
    pub async fn collect_blobs_periodically(self: Arc<Self>) {
        let mut every =
            tokio::time::interval(self.config.gc_interval.max(Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.collector.soon.notified() => {
                    // Not more often than this, however fast checkpoints come.
                    tokio::time::sleep(SUPERSEDED_COLLECT_SPACING).await;
                }
            }
            if let Err(e) = self.collect_blobs().await {
                tracing::warn!(error = %e, "blob collection failed; trying again later");
            }
        }
    }

    /// Notes a state that is no longer its task's latest checkpoint, for deletion at the next
    /// collection; asks for that collection early once such states add up.
    pub(super) fn superseded_checkpoint(&self, digest: Digest) {
        let size = self.blobs.size(&digest).unwrap_or(0);
        let mut superseded = lock(&self.collector.superseded);
        if superseded.0.insert(digest) {
            superseded.1 += size;
        }
        if superseded.1 >= SUPERSEDED_COLLECT_BYTES {
            superseded.1 = 0;
            self.collector.soon.notify_one();
        }
    }
}
