//! Task directories under the agent's work folder, kept for the next task when a task leaves
//! them empty.
//!
//! Every task gets a directory holding `output/` and `scratch/` (and `input-N/` for modules
//! with inputs). Making three directories and removing them again for each task was the
//! largest part of a short task's cost (directory inodes are the file system's slowest
//! objects to allocate and free), so a finished task's directory is emptied and kept for the
//! next one instead. A directory that cannot be emptied is removed, and one that cannot be
//! removed is left alone (and logged); the agent removes the whole work folder when it starts.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lull_protocol::sync::lock;

/// The most emptied directories kept for later tasks: more than an agent runs at once.
const SPARES_KEPT: usize = 256;

/// Task directories under one work folder.
#[derive(Debug)]
pub struct WorkDirs {
    root: PathBuf,
    spare: Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

/// A task's directory, with its two read-write folders made and empty.
#[derive(Debug)]
pub struct TaskDir {
    /// The directory itself.
    pub path: PathBuf,
    /// The task's `/output`.
    pub output: PathBuf,
    /// The task's `/scratch`.
    pub scratch: PathBuf,
}

impl TaskDir {
    fn at(path: PathBuf) -> Self {
        TaskDir {
            output: path.join("output"),
            scratch: path.join("scratch"),
            path,
        }
    }
}

impl WorkDirs {
    /// Task directories under `root`, which must exist and hold nothing this agent did not
    /// make (the daemon empties it when it starts).
    pub fn new(root: PathBuf) -> Self {
        WorkDirs {
            root,
            spare: Mutex::default(),
            made: AtomicU64::new(0),
        }
    }

    /// The work folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An empty task directory: one a finished task left, or a new one.
    pub fn take(&self) -> io::Result<TaskDir> {
        if let Some(path) = lock(&self.spare).pop() {
            return Ok(TaskDir::at(path));
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let dir = TaskDir::at(self.root.join(format!("task-{n}")));
        for d in [&dir.output, &dir.scratch] {
            if let Err(e) = std::fs::create_dir_all(d) {
                let _ = std::fs::remove_dir_all(&dir.path);
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating {}: {e}", d.display()),
                ));
            }
        }
        Ok(dir)
    }

    /// Hands back a finished task's directory: emptied and kept for the next task, or removed
    /// when it cannot be emptied (or enough are kept).
    pub fn give_back(&self, dir: TaskDir) {
        let emptied = match empty(&dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.path.display(), error = %e, "could not empty a task directory; removing it");
                false
            }
        };
        if emptied {
            let mut spare = lock(&self.spare);
            if spare.len() < SPARES_KEPT {
                spare.push(dir.path);
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir.path) {
            tracing::warn!(dir = %dir.path.display(), error = %e, "could not remove a task directory");
        }
    }
}

/// Leaves `dir` holding only an empty `output/` and an empty `scratch/`. Entries are removed
/// without following symbolic links (a guest may have made some).
fn empty(dir: &TaskDir) -> io::Result<()> {
    let mut kept = 0;
    for entry in std::fs::read_dir(&dir.path)? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        if is_dir && (path == dir.output || path == dir.scratch) {
            clear(&path)?;
            kept += 1;
        } else {
            remove(&path, is_dir)?;
        }
    }
    if kept == 2 {
        Ok(())
    } else {
        Err(io::Error::other("output/ or scratch/ is missing"))
    }
}

/// Removes everything inside the directory `path`.
fn clear(path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        remove(&entry.path(), entry.file_type()?.is_dir())?;
    }
    Ok(())
}

fn remove(path: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(p: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_finished_tasks_directory_is_emptied_and_used_again() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path().to_path_buf());
        let first = dirs.take().unwrap();
        let path = first.path.clone();
        std::fs::write(first.output.join("result.txt"), "x").unwrap();
        std::fs::create_dir_all(first.scratch.join("a/b")).unwrap();
        std::fs::write(first.scratch.join("a/b/c"), "y").unwrap();
        std::fs::create_dir(path.join("input-0")).unwrap();
        std::fs::write(path.join("input-0/data"), "z").unwrap();
        dirs.give_back(first);

        let second = dirs.take().unwrap();
        assert_eq!(second.path, path, "the emptied directory is used again");
        assert_eq!(entries(&path), ["output", "scratch"]);
        assert!(entries(&second.output).is_empty());
        assert!(entries(&second.scratch).is_empty());

        // Two at once: the second is a new directory.
        let third = dirs.take().unwrap();
        assert_ne!(third.path, second.path);
        assert!(third.output.is_dir() && third.scratch.is_dir());
    }

    #[cfg(unix)]
    #[test]
    fn links_a_guest_made_are_removed_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep").unwrap();
        let dirs = WorkDirs::new(root.path().to_path_buf());
        let task = dirs.take().unwrap();
        let path = task.path.clone();
        std::os::unix::fs::symlink(outside.path(), task.scratch.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), path.join("input-0")).unwrap();
        dirs.give_back(task);
        assert_eq!(
            std::fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep"
        );
        assert_eq!(entries(&path), ["output", "scratch"]);
        assert!(entries(&path.join("scratch")).is_empty());
    }

    #[test]
    fn a_directory_missing_its_folders_is_removed_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(root.path().to_path_buf());
        let task = dirs.take().unwrap();
        let path = task.path.clone();
        std::fs::remove_dir(&task.scratch).unwrap();
        std::fs::write(&task.scratch, "a file where a folder was").unwrap();
        dirs.give_back(task);
        assert!(!path.exists(), "a directory that is not as made is removed");
        let next = dirs.take().unwrap();
        assert_ne!(next.path, path);
        assert!(next.scratch.is_dir());
    }
}
