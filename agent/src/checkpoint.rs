//! Checkpoints on the agent: what a guest keeps through `lull:guest/host` goes into the blob
//! cache and is handed to the daemon, which uploads it, seals it with the agent's key and
//! reports it; the checkpoint an earlier attempt kept is handed back to the guest.
//!
//! A checkpoint must reach the coordinator before the result of its attempt (an attempt that
//! leaves on a notice keeps its last checkpoint just before it ends): [`Pending`] counts the
//! checkpoints of each attempt not yet reported, and results wait for their attempt's count to
//! reach zero.
//!
//! **Pace.** An attempt keeps at most one checkpoint per [`Sink::interval`]: one asked for
//! sooner waits in memory, and a newer one replaces it, so a guest that checkpoints in a loop
//! costs the machine one write per interval, not one per call. The one waiting is kept when
//! the attempt ends without succeeding ([`AttemptHooks::finish`]); a checkpoint the guest
//! leaves on is always kept at once. The daemon, too, uploads only the newest of an attempt's
//! checkpoints waiting to go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lull_protocol::Digest;
use lull_protocol::message::AttemptId;
use lull_protocol::units::format_size;
use tokio::sync::{Notify, mpsc};

use crate::cache::BlobCache;
use crate::sandbox::GuestHooks;
use lull_protocol::sync::lock;

/// A checkpoint kept in the cache, for the daemon to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The attempt that kept it.
    pub attempt: AttemptId,
    /// The state's blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its number within the attempt, from 1.
    pub seq: u64,
    /// The task's progress when it was kept, if the guest reported any.
    pub progress: Option<f64>,
}

/// Checkpoints kept and not yet reported, per attempt.
#[derive(Debug, Default)]
pub struct Pending {
    counts: Mutex<HashMap<AttemptId, usize>>,
    changed: Notify,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptId, usize>> {
        lock(&self.counts)
    }

    /// One more checkpoint of `attempt` to report.
    pub fn add(&self, attempt: AttemptId) {
        *self.lock().entry(attempt).or_default() += 1;
    }

    /// A checkpoint of `attempt` was reported (or given up on).
    pub fn done(&self, attempt: AttemptId) {
        {
            let mut counts = self.lock();
            if let Some(n) = counts.get_mut(&attempt) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&attempt);
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Whether every checkpoint kept has been reported (or given up on).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Waits until every checkpoint of `attempt` is reported, at most `timeout`.
    pub async fn flushed(&self, attempt: AttemptId, timeout: Duration) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if !self.lock().contains_key(&attempt) {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}

/// The progress the guests of running attempts reported last.
#[derive(Debug, Default)]
pub struct ProgressBoard(Mutex<HashMap<AttemptId, f64>>);

impl ProgressBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptId, f64>> {
        lock(&self.0)
    }

    /// Records `attempt`'s progress.
    pub fn set(&self, attempt: AttemptId, fraction: f64) {
        self.lock().insert(attempt, fraction);
    }

    /// Forgets an attempt that ended.
    pub fn forget(&self, attempt: AttemptId) {
        self.lock().remove(&attempt);
    }

    /// Every attempt's progress.
    pub fn snapshot(&self) -> Vec<(AttemptId, f64)> {
        let mut v: Vec<_> = self.lock().iter().map(|(a, f)| (*a, *f)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }
}

/// Where checkpoints go: the cache, the daemon's channel, and the count of those pending.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The blob cache the states are written to.
    pub cache: BlobCache,
    /// The daemon's end.
    pub tx: mpsc::UnboundedSender<Kept>,
    /// Checkpoints not yet reported.
    pub pending: Arc<Pending>,
    /// The largest state kept, in bytes.
    pub cap: u64,
    /// The shortest time between two checkpoints of one attempt kept as they come.
    pub interval: Duration,
    /// Where the guests' progress is posted.
    pub progress: Arc<ProgressBoard>,
}

/// The hooks of one attempt.
#[derive(Debug)]
pub struct AttemptHooks {
    attempt: AttemptId,
    restore: Option<Vec<u8>>,
    sink: Option<Sink>,
    progress: Mutex<Option<f64>>,
    seq: AtomicU64,
    pace: Mutex<Pace>,
}

/// When an attempt last kept a checkpoint, and the newest one asked for since, if it waits.
#[derive(Debug, Default)]
struct Pace {
    last_kept: Option<Instant>,
    waiting: Option<Vec<u8>>,
}

impl AttemptHooks {
    /// Hooks for `attempt`, which restores `restore`; without a sink, checkpoints are refused.
    pub fn new(attempt: AttemptId, restore: Option<Vec<u8>>, sink: Option<Sink>) -> Self {
        Self {
            attempt,
            restore,
            sink,
            progress: Mutex::new(None),
            seq: AtomicU64::new(0),
            pace: Mutex::default(),
        }
    }

    /// The attempt's guests ended: unless it succeeded, the checkpoint waiting for its turn
    /// (if any) is kept, for the next attempt to start from.
    pub fn finish(&self, succeeded: bool) {
        let waiting = self.pace().waiting.take();
        if let (Some(state), Some(sink), false) = (waiting, &self.sink, succeeded)
            && let Err(e) = self.keep(sink, state)
        {
            tracing::warn!(attempt = %self.attempt, error = %e, "could not keep the attempt's last checkpoint");
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        lock(&self.pace)
    }

    /// Writes `state` to the cache and hands it to the daemon.
    fn keep(&self, sink: &Sink, state: Vec<u8>) -> Result<(), String> {
        let size = state.len() as u64;
        let digest = sink
            .cache
            .put(&state)
            .map_err(|e| format!("the agent could not keep the checkpoint: {e:#}"))?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        sink.pending.add(self.attempt);
        let kept = Kept {
            attempt: self.attempt,
            digest,
            size,
            seq,
            progress: self.last_progress(),
        };
        if sink.tx.send(kept).is_err() {
            sink.pending.done(self.attempt);
            return Err("the agent is stopping".into());
        }
        Ok(())
    }

    /// The progress the guest reported last.
    pub fn last_progress(&self) -> Option<f64> {
        *lock(&self.progress)
    }
}

impl GuestHooks for AttemptHooks {
    fn task_index(&self) -> u32 {
        self.attempt.task.index
    }

    fn attempt(&self) -> u32 {
        self.attempt.attempt
    }

    fn progress(&self, fraction: f64) {
        *lock(&self.progress) = Some(fraction);
        if let Some(sink) = &self.sink {
            sink.progress.set(self.attempt, fraction);
        }
    }

    fn checkpoint(&self, state: Vec<u8>, leaving: bool) -> Result<(), String> {
        let Some(sink) = &self.sink else {
            return Err("this agent keeps no checkpoints".into());
        };
        let size = state.len() as u64;
        if size > sink.cap {
            return Err(format!(
                "the checkpoint is {}; this agent keeps at most {}",
                format_size(size),
                format_size(sink.cap)
            ));
        }
        {
            let mut pace = self.pace();
            let now = Instant::now();
            if !leaving
                && pace
                    .last_kept
                    .is_some_and(|t| now.saturating_duration_since(t) < sink.interval)
            {
                pace.waiting = Some(state);
                return Ok(());
            }
            pace.waiting = None;
            pace.last_kept = Some(now);
        }
        self.keep(sink, state)
    }

    fn restore(&self) -> Option<Vec<u8>> {
        self.restore.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::message::TaskId;

    #[tokio::test]
    async fn a_result_waits_until_its_attempts_checkpoints_are_reported() {
        let pending = Arc::new(Pending::default());
        let a = AttemptId {
            task: TaskId { job: 1, index: 0 },
            attempt: 1,
        };
        let other = AttemptId { attempt: 2, ..a };
        pending.add(a);
        pending.add(a);
        // Another attempt's result does not wait.
        pending.flushed(other, Duration::from_secs(10)).await;
        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.flushed(a, Duration::from_secs(10)).await })
        };
        pending.done(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one checkpoint is still to report");
        pending.done(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("flushed once both are reported")
            .unwrap();
    }

    #[test]
    fn checkpoints_over_the_cap_or_without_a_sink_are_refused_with_the_reason() {
        let a = AttemptId {
            task: TaskId { job: 1, index: 0 },
            attempt: 1,
        };
        let nowhere = AttemptHooks::new(a, None, None);
        assert_eq!(
            nowhere.checkpoint(b"x".to_vec(), false),
            Err("this agent keeps no checkpoints".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), crate::cache::Lru::new(1 << 20)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending::default());
        let hooks = AttemptHooks::new(
            a,
            Some(b"before".to_vec()),
            Some(Sink {
                cache: cache.clone(),
                tx,
                pending: pending.clone(),
                cap: 4,
                interval: Duration::ZERO,
                progress: Arc::default(),
            }),
        );
        assert_eq!(hooks.restore(), Some(b"before".to_vec()));
        assert_eq!(
            hooks.checkpoint(b"12345".to_vec(), false),
            Err("the checkpoint is 5 B; this agent keeps at most 4 B".into())
        );
        GuestHooks::progress(&hooks, 0.5);
        hooks.checkpoint(b"1234".to_vec(), false).unwrap();
        let kept = rx.try_recv().unwrap();
        assert_eq!((kept.seq, kept.size, kept.progress), (1, 4, Some(0.5)));
        assert!(cache.contains(&kept.digest));
        assert!(pending.lock().contains_key(&a));
    }

    #[test]
    fn checkpoints_sooner_than_the_interval_wait_and_the_newest_is_kept_unless_the_attempt_succeeds()
     {
        let a = AttemptId {
            task: TaskId { job: 1, index: 0 },
            attempt: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), crate::cache::Lru::new(1 << 20)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Sink {
            cache,
            tx,
            pending: Arc::default(),
            cap: 1 << 10,
            interval: Duration::from_secs(3600),
            progress: Arc::default(),
        };
        let hooks = AttemptHooks::new(a, None, Some(sink.clone()));
        let states: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        for state in &states {
            hooks.checkpoint(state.clone(), false).unwrap();
        }
        // The first is kept; the other 99 came too soon, and only the newest waits.
        let first = rx.try_recv().unwrap();
        assert_eq!(first.seq, 1);
        assert!(rx.try_recv().is_err());
        hooks.finish(false);
        let last = rx.try_recv().unwrap();
        assert_eq!((last.seq, last.size), (2, 10));
        assert_eq!(last.digest, Digest::of(&states[99]));
        hooks.finish(false);
        assert!(rx.try_recv().is_err(), "kept once");

        // Leaving keeps its state at once, however soon; a success drops the one waiting.
        let hooks = AttemptHooks::new(a, None, Some(sink));
        hooks.checkpoint(b"one".to_vec(), false).unwrap();
        hooks.checkpoint(b"two".to_vec(), true).unwrap();
        assert_eq!(rx.try_recv().unwrap().digest, Digest::of(b"one"));
        assert_eq!(rx.try_recv().unwrap().digest, Digest::of(b"two"));
        hooks.checkpoint(b"three".to_vec(), false).unwrap();
        hooks.finish(true);
        assert!(rx.try_recv().is_err(), "no use after a success");
    }
}
