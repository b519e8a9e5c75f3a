//! Disk a task may use, and disk the agent keeps free.
//!
//! While a task runs, a watcher walks its `/output` and `/scratch` now and then and stops the
//! task ([`TaskControl::stop_over_disk`]) once its files take more than the owner's
//! `task_disk` bytes or `task_files` entries. A file counts for the larger of its length and
//! the blocks it holds, so a sparse file counts as long as it claims to be. The walk stops as
//! soon as a cap is passed, so it never reads more than `task_files` entries; it waits
//! [`MIN_POLL`], or twenty times as long as its last walk took, whichever is longer, so it
//! costs the machine at most about 5 % of one core however many files a task makes. Between
//! two walks a guest may write past the cap by what it writes in that time; the last walk,
//! when the guests have ended, is exact.
//!
//! Separately, the agent takes no new work while its data directory's file system has less
//! than `min_free_disk` free ([`free_space`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use lull_protocol::units::format_size;

use crate::sandbox::TaskControl;

/// The shortest wait between two walks of a task's files.
pub const MIN_POLL: Duration = Duration::from_millis(100);

/// How much disk one task's files may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskCap {
    /// Bytes under `/output` and `/scratch` together.
    pub bytes: u64,
    /// Files, directories and links under `/output` and `/scratch` together.
    pub files: u64,
}

/// What a walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes, each file counting for the larger of its length and its blocks.
    pub bytes: u64,
    /// Entries: files, directories and links.
    pub files: u64,
}

impl DiskCap {
    /// Why `usage` is over the cap, or `None` when it is within it.
    pub fn exceeded_by(&self, usage: Usage) -> Option<String> {
        if usage.bytes > self.bytes {
            Some(format!(
                "the task's files under /output and /scratch took more than {}, this agent's task_disk",
                format_size(self.bytes)
            ))
        } else if usage.files > self.files {
            Some(format!(
                "the task made more than {} files and directories under /output and /scratch, this agent's task_files",
                self.files
            ))
        } else {
            None
        }
    }

    /// Measures `dirs`, stopping as soon as a cap is passed.
    pub fn measure(&self, dirs: &[PathBuf]) -> Usage {
        let mut usage = Usage::default();
        for dir in dirs {
            if !self.walk(dir, &mut usage) {
                break;
            }
        }
        usage
    }

    /// Adds what is under `dir` to `usage`; `false` once a cap is passed (the walk stops).
    fn walk(&self, dir: &Path, usage: &mut Usage) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return true;
        };
        for entry in entries.flatten() {
            // Not followed: a link counts as an entry, not as what it points to.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            usage.files += 1;
            usage.bytes = usage.bytes.saturating_add(held(&meta));
            if self.exceeded_by(*usage).is_some() {
                return false;
            }
            if meta.is_dir() && !self.walk(&entry.path(), usage) {
                return false;
            }
        }
        true
    }

    /// Watches `dirs` until `done` says the guests ended (a message, or its sender dropped):
    /// stops the task through `control` once they go over the cap. Returns the reason it did.
    pub fn watch(
        &self,
        dirs: &[PathBuf],
        control: &TaskControl,
        done: &Receiver<()>,
    ) -> Option<String> {
        let mut wait = MIN_POLL;
        loop {
            match done.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
            }
            let started = Instant::now();
            let usage = self.measure(dirs);
            if let Some(reason) = self.exceeded_by(usage) {
                control.stop_over_disk(reason.clone());
                return Some(reason);
            }
            wait = MIN_POLL.max(started.elapsed() * 20);
        }
    }
}

/// The disk a file holds: its length or its blocks, whichever is larger.
fn held(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.len().max(meta.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// Bytes free to unprivileged users on the file system holding `path`; `None` where that
/// cannot be read.
pub fn free_space(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let stat = rustix::fs::statvfs(path).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Why the agent takes no new work, when `free` bytes are left on the file system of its data
/// directory `dir` and the owner wants `min_free` kept free.
pub fn low_disk(dir: &Path, free: Option<u64>, min_free: u64) -> Option<String> {
    let free = free?;
    (free < min_free).then(|| {
        format!(
            "only {} free on the disk of {}, below min_free_disk {}",
            format_size(free),
            dir.display(),
            format_size(min_free)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_counts_bytes_and_entries_and_stops_past_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(out.join("a/b")).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(out.join("a/b/one"), vec![1u8; 10_000]).unwrap();
        std::fs::write(scratch.join("two"), vec![2u8; 5_000]).unwrap();
        let dirs = [out, scratch];
        let roomy = DiskCap {
            bytes: 1 << 30,
            files: 100,
        };
        let usage = roomy.measure(&dirs);
        // a, a/b, a/b/one, two; each directory holds at least its blocks.
        assert_eq!(usage.files, 4);
        assert!(usage.bytes >= 15_000, "{usage:?}");
        assert_eq!(roomy.exceeded_by(usage), None);

        let few = DiskCap {
            bytes: 1 << 30,
            files: 2,
        };
        let usage = few.measure(&dirs);
        assert_eq!(
            usage.files, 3,
            "the walk stops at the first entry past the cap"
        );
        assert!(
            few.exceeded_by(usage)
                .unwrap()
                .contains("more than 2 files")
        );

        let small = DiskCap {
            bytes: 12_000,
            files: 100,
        };
        let reason = small.exceeded_by(small.measure(&dirs)).unwrap();
        assert!(reason.contains("took more than 11.7 KiB"), "{reason}");
    }

    #[test]
    fn a_sparse_file_counts_for_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        let cap = DiskCap {
            bytes: 1 << 30,
            files: 10,
        };
        let usage = cap.measure(&[dir.path().to_owned()]);
        assert_eq!(usage.bytes, 1 << 40);
        assert!(cap.exceeded_by(usage).is_some());
    }

    #[test]
    fn the_watcher_stops_the_task_once_its_files_pass_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let control = TaskControl::new();
        let cap = DiskCap {
            bytes: 4096 * 4,
            files: 1000,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let dirs = vec![dir.path().to_owned()];
        let watcher = {
            let control = control.clone();
            std::thread::spawn(move || cap.watch(&dirs, &control, &rx))
        };
        std::thread::sleep(MIN_POLL * 2);
        assert!(!control.is_cancelled(), "within the cap");
        std::fs::write(dir.path().join("big"), vec![0u8; 100_000]).unwrap();
        let reason = watcher.join().unwrap().expect("stopped");
        assert!(reason.contains("task_disk"), "{reason}");
        assert!(matches!(
            control.outcome_before_start(),
            Some(lull_protocol::message::Outcome::DiskExceeded { .. })
        ));
        drop(tx);
    }

    #[test]
    fn the_watcher_ends_when_the_guests_do() {
        let control = TaskControl::new();
        let cap = DiskCap { bytes: 1, files: 1 };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(tx);
        assert_eq!(cap.watch(&[], &control, &rx), None);
        assert!(!control.is_cancelled());
    }

    #[test]
    fn low_disk_names_the_directory_and_both_sizes() {
        let dir = Path::new("/var/lib/lull");
        assert_eq!(low_disk(dir, None, 1 << 30), None);
        assert_eq!(low_disk(dir, Some(2 << 30), 1 << 30), None);
        assert_eq!(
            low_disk(dir, Some(300 << 20), 1 << 30).unwrap(),
            "only 300 MiB free on the disk of /var/lib/lull, below min_free_disk 1 GiB"
        );
    }

    #[test]
    fn free_space_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).is_some_and(|f| f > 0));
    }
}
