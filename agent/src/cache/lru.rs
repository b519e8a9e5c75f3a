//! The cache's size budget: what is on disk, how big, when last used, and eviction of the least
//! recently used when the total passes the budget.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use lull_protocol::Digest;
use lull_protocol::sync::lock;
use lull_protocol::units::format_size;

/// Something the budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// A blob, by its digest.
    Blob(Digest),
    /// The compiled form of a module, by the module's digest.
    Compiled(Digest),
}

#[derive(Debug)]
struct Item {
    path: PathBuf,
    size: u64,
    /// Milliseconds since the epoch of the last use.
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    items: HashMap<Entry, Item>,
    total: u64,
    /// Compiled modules added and dropped since [`Lru::take_compiled_changes`].
    added: Vec<Digest>,
    dropped: Vec<Digest>,
    /// Whether the log already says the budget cannot be kept (said once per episode).
    over_warned: bool,
}

type Protect = Box<dyn Fn() -> HashSet<Digest> + Send + Sync>;

/// The budget shared by the blob cache and the compiled-module cache.
pub struct Lru {
    budget: u64,
    state: Mutex<State>,
    protect: OnceLock<Protect>,
}

impl fmt::Debug for Lru {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lru")
            .field("budget", &self.budget)
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When a file was last used, as the cache records it (its modification time).
pub(crate) fn last_use(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Lru {
    /// An empty budget of `budget` bytes.
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(Self {
            budget,
            state: Mutex::new(State::default()),
            protect: OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sets what may not be evicted: the blobs `f` returns when an eviction runs (called
    /// without any of the cache's locks held). Only the first call counts.
    pub fn protect_with(&self, f: impl Fn() -> HashSet<Digest> + Send + Sync + 'static) {
        let _ = self.protect.set(Box::new(f));
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes counted now.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Counts a file that is now on disk at `path`.
    pub fn insert(&self, entry: Entry, path: PathBuf, size: u64, used: u64) {
        let mut s = self.lock();
        if let Some(old) = s.items.insert(entry, Item { path, size, used }) {
            s.total -= old.size;
        } else if let Entry::Compiled(d) = entry {
            s.added.push(d);
        }
        s.total += size;
    }

    /// Whether the budget counts `entry`.
    pub fn contains(&self, entry: Entry) -> bool {
        self.lock().items.contains_key(&entry)
    }

    /// Records a use of `entry` now, in memory and as the file's modification time.
    pub fn touch(&self, entry: Entry) {
        let now = now_ms();
        let path = {
            let mut s = self.lock();
            let Some(item) = s.items.get_mut(&entry) else {
                return;
            };
            // Once a second is precise enough for an eviction order, and spares the disk.
            if now.saturating_sub(item.used) < 1000 {
                return;
            }
            item.used = now;
            item.path.clone()
        };
        set_modified(&path);
    }

    /// Deletes `entry`'s file and stops counting it (a corrupt or unusable entry).
    pub fn remove(&self, entry: Entry) {
        let item = {
            let mut s = self.lock();
            let item = s.items.remove(&entry);
            if let Some(item) = &item {
                s.total -= item.size;
                if let Entry::Compiled(d) = entry {
                    s.dropped.push(d);
                }
            }
            item
        };
        if let Some(item) = item {
            remove_file(&item.path);
        }
    }

    /// Compiled modules counted now.
    pub fn compiled(&self) -> Vec<Digest> {
        self.lock()
            .items
            .keys()
            .filter_map(|e| match e {
                Entry::Compiled(d) => Some(*d),
                Entry::Blob(_) => None,
            })
            .collect()
    }

    /// Compiled modules added and dropped since the last call.
    pub fn take_compiled_changes(&self) -> (Vec<Digest>, Vec<Digest>) {
        let mut s = self.lock();
        (std::mem::take(&mut s.added), std::mem::take(&mut s.dropped))
    }

    /// When the total passes the budget, deletes the least recently used entries that are not
    /// protected until it is back under nine tenths of the budget.
    pub fn evict(&self) {
        if self.lock().total <= self.budget {
            return;
        }
        let protected = self.protect.get().map(|f| f()).unwrap_or_default();
        let target = self.budget / 10 * 9;
        let mut gone = Vec::new();
        let mut s = self.lock();
        let mut order: Vec<(u64, Entry)> = s
            .items
            .iter()
            .filter(|(e, _)| match e {
                Entry::Blob(d) => !protected.contains(d),
                Entry::Compiled(_) => true,
            })
            .map(|(e, item)| (item.used, *e))
            .collect();
        order.sort_by_key(|&(used, _)| used);
        for (_, entry) in order {
            if s.total <= target {
                break;
            }
            if let Some(item) = s.items.remove(&entry) {
                s.total -= item.size;
                if let Entry::Compiled(d) = entry {
                    s.dropped.push(d);
                }
                gone.push(item.path);
            }
        }
        if s.total > self.budget {
            if !s.over_warned {
                tracing::warn!(
                    budget = %format_size(self.budget),
                    in_use = %format_size(s.total),
                    "the cache is over its budget with files that running tasks or unsent results need"
                );
            }
            s.over_warned = true;
        } else {
            s.over_warned = false;
        }
        drop(s);
        for path in &gone {
            remove_file(path);
        }
        if !gone.is_empty() {
            tracing::debug!(evicted = gone.len(), "cache entries evicted");
        }
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "could not delete a cache entry");
    }
}

fn set_modified(path: &Path) {
    let result = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = result {
        tracing::debug!(file = %path.display(), error = %e, "could not record a cache entry's use");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, size: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; size]).unwrap();
        p
    }

    #[test]
    fn evicts_the_least_recently_used_first_down_to_nine_tenths() {
        let dir = tempfile::tempdir().unwrap();
        let lru = Lru::new(1000);
        let d = |i: u8| Digest::of(&[i]);
        for i in 0..4u8 {
            let p = file(dir.path(), &i.to_string(), 300);
            lru.insert(Entry::Blob(d(i)), p, 300, 100 + u64::from(i));
        }
        // 1200 bytes: over; the oldest goes (to 900, nine tenths of the budget).
        lru.evict();
        assert_eq!(lru.total(), 900);
        assert!(!dir.path().join("0").exists());
        assert!(!lru.contains(Entry::Blob(d(0))));
        assert!(dir.path().join("1").exists());
        // Under budget: nothing more goes.
        lru.evict();
        assert_eq!(lru.total(), 900);
        // 300 more: 1200 again; now the second oldest goes.
        let p = file(dir.path(), "4", 300);
        lru.insert(Entry::Blob(d(4)), p, 300, 200);
        lru.evict();
        assert!(!dir.path().join("1").exists());
        assert!(dir.path().join("2").exists() && dir.path().join("4").exists());
    }

    #[test]
    fn a_touched_entry_outlives_older_ones_and_protected_blobs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let lru = Lru::new(500);
        let d = |i: u8| Digest::of(&[i]);
        let keep = d(1);
        lru.protect_with(move || HashSet::from([keep]));
        for i in 0..3u8 {
            let p = file(dir.path(), &i.to_string(), 200);
            lru.insert(Entry::Blob(d(i)), p, 200, 100 + u64::from(i));
        }
        lru.touch(Entry::Blob(d(0)));
        lru.evict();
        // 600 > 500: entry 2 is now the oldest unprotected (0 was touched, 1 is protected).
        assert!(lru.contains(Entry::Blob(d(0))));
        assert!(lru.contains(Entry::Blob(d(1))));
        assert!(!lru.contains(Entry::Blob(d(2))));
        assert_eq!(lru.total(), 400);
    }

    #[test]
    fn compiled_entries_are_reported_as_they_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let lru = Lru::new(100);
        let m = Digest::of(b"m");
        let p = file(dir.path(), "m", 10);
        lru.insert(Entry::Compiled(m), p.clone(), 10, now_ms());
        assert_eq!(lru.compiled(), vec![m]);
        assert_eq!(lru.take_compiled_changes(), (vec![m], vec![]));
        lru.remove(Entry::Compiled(m));
        assert!(!p.exists());
        assert_eq!(lru.take_compiled_changes(), (vec![], vec![m]));
        assert_eq!(lru.total(), 0);
    }
}
