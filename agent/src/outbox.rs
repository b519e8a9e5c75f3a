//! The outbox: every result the agent has not yet had acknowledged by the coordinator, kept on
//! disk so that a restart sends it again.
//!
//! Results are written in groups: a writer thread takes every result that ended since its last
//! write and puts them in one file (a temporary file, synced, renamed, and the folder synced),
//! so that many results ending at once cost one sync, not one each. A result is sent only once
//! it is on disk; when the disk will not take it (full, or the folder gone), it is sent from
//! memory all the same and lost only if the agent stops before it is acknowledged. A file is
//! removed once every result in it is acknowledged; a file left by an earlier run is read at
//! start, and its results are sent again (the coordinator acknowledges copies without counting
//! them twice).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use lull_protocol::Digest;
use lull_protocol::message::{AttemptId, TaskResult};
use lull_protocol::sync::lock;
use tokio::sync::Notify;

/// Results written in one file at most.
const MAX_GROUP: usize = 1024;

/// Where a result is kept until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kept {
    /// Waiting for the writer: not sent yet.
    Writing,
    /// In this file of the outbox.
    File(PathBuf),
    /// The disk would not take it: in memory only.
    Memory,
}

#[derive(Debug)]
struct Entry {
    result: TaskResult,
    kept: Kept,
}

#[derive(Debug, Default)]
struct State {
    results: HashMap<AttemptId, Entry>,
    /// Each file in the outbox and how many of its results are not yet acknowledged.
    files: HashMap<PathBuf, usize>,
}

impl State {
    /// One result of `file` is no longer needed: the file goes when none is left.
    fn release(&mut self, file: &Path) {
        if let Some(n) = self.files.get_mut(file) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.files.remove(file);
                if let Err(e) = std::fs::remove_file(file) {
                    tracing::warn!(file = %file.display(), error = %e, "could not remove an outbox file whose results are all acknowledged");
                }
            }
        }
    }
}

/// The results waiting for acknowledgement.
#[derive(Debug)]
pub struct Outbox {
    state: Arc<Mutex<State>>,
    writer: Mutex<std::sync::mpsc::Sender<AttemptId>>,
    ready: Arc<Notify>,
}

impl Outbox {
    /// Opens the outbox in `dir` (created if missing), taking in what an earlier run left, and
    /// starts its writer.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut state = State::default();
        let mut next = 0u64;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries.flatten() {
            let path = e.path();
            match path.extension().and_then(|x| x.to_str()) {
                Some("json") => {}
                // A group whose writing was cut short: its results were never sent.
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            if let Some(n) = group_number(&path) {
                next = next.max(n + 1);
            }
            let results = match read_file(&path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %format!("{e:#}"), "unreadable file in the outbox; removing it");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let mut held = 0;
            for result in results {
                if state.results.contains_key(&result.attempt) {
                    continue;
                }
                held += 1;
                state.results.insert(
                    result.attempt,
                    Entry {
                        result,
                        kept: Kept::File(path.clone()),
                    },
                );
            }
            if held == 0 {
                let _ = std::fs::remove_file(&path);
            } else {
                state.files.insert(path, held);
            }
        }
        let state = Arc::new(Mutex::new(state));
        let ready = Arc::new(Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            next,
            state: state.clone(),
            ready: ready.clone(),
        };
        std::thread::Builder::new()
            .name("lull-outbox".into())
            .spawn(move || writer.run(rx))
            .context("starting the outbox writer")?;
        Ok(Self {
            state,
            writer: Mutex::new(tx),
            ready,
        })
    }

    /// Takes a result: held at once (its attempt reported, its blobs spared), sent once it is
    /// written (see [`Outbox::ready`]).
    pub fn put(&self, result: TaskResult) {
        let attempt = result.attempt;
        let mut state = lock(&self.state);
        if let Some(old) = state.results.insert(
            attempt,
            Entry {
                result,
                kept: Kept::Writing,
            },
        ) && let Kept::File(file) = old.kept
        {
            state.release(&file);
        }
        drop(state);
        if lock(&self.writer).send(attempt).is_err() {
            // The writer is gone (it cannot be, while the outbox lives): keep it in memory.
            if let Some(e) = lock(&self.state).results.get_mut(&attempt) {
                e.kept = Kept::Memory;
            }
            self.ready.notify_one();
        }
    }

    /// The coordinator has `attempt`'s result: forgotten, and its file removed once every
    /// result in it is.
    pub fn acknowledged(&self, attempt: AttemptId) {
        let mut state = lock(&self.state);
        if let Some(entry) = state.results.remove(&attempt)
            && let Kept::File(file) = entry.kept
        {
            state.release(&file);
        }
    }

    /// Fires when results became ready to send.
    pub fn ready(&self) -> &Notify {
        &self.ready
    }

    /// Results ready to send (written, or kept in memory) for which `skip` is false.
    pub fn to_send(&self, skip: impl Fn(&AttemptId) -> bool) -> Vec<TaskResult> {
        lock(&self.state)
            .results
            .iter()
            .filter(|(a, e)| e.kept != Kept::Writing && !skip(a))
            .map(|(_, e)| e.result.clone())
            .collect()
    }

    /// Whether `attempt`'s result waits for acknowledgement.
    pub fn contains(&self, attempt: AttemptId) -> bool {
        lock(&self.state).results.contains_key(&attempt)
    }

    /// The attempts whose results wait.
    pub fn attempts(&self) -> Vec<AttemptId> {
        lock(&self.state).results.keys().copied().collect()
    }

    /// The blobs the waiting results refer to (never evicted meanwhile).
    pub fn blobs(&self) -> Vec<Digest> {
        lock(&self.state)
            .results
            .values()
            .flat_map(|e| e.result.blobs())
            .collect()
    }

    /// Whether every result has been acknowledged.
    pub fn is_empty(&self) -> bool {
        lock(&self.state).results.is_empty()
    }

    /// How many waiting results are not on disk (lost if the agent stops now).
    pub fn only_in_memory(&self) -> usize {
        lock(&self.state)
            .results
            .values()
            .filter(|e| matches!(e.kept, Kept::Writing | Kept::Memory))
            .count()
    }
}

/// The number of a group file (`group-N.json`).
fn group_number(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("group-")?
        .parse()
        .ok()
}

/// A file of the outbox: a group of results, or one result (as earlier versions wrote).
fn read_file(path: &Path) -> anyhow::Result<Vec<TaskResult>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<TaskResult>),
        One(Box<TaskResult>),
    }
    let bytes = std::fs::read(path)?;
    Ok(match serde_json::from_slice(&bytes)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(r) => vec![*r],
    })
}

/// The thread that writes groups of results.
struct Writer {
    dir: PathBuf,
    next: u64,
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<AttemptId>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter().take(MAX_GROUP - 1));
            self.write_group(&group);
            self.ready.notify_one();
        }
    }

    /// Writes the results of `group` still waiting into one file, and marks them kept there
    /// (or, when the disk will not take them, in memory).
    fn write_group(&mut self, group: &[AttemptId]) {
        let results: Vec<TaskResult> = {
            let state = lock(&self.state);
            group
                .iter()
                .filter_map(|a| state.results.get(a))
                .filter(|e| e.kept == Kept::Writing)
                .map(|e| e.result.clone())
                .collect()
        };
        if results.is_empty() {
            return;
        }
        let path = self.dir.join(format!("group-{}.json", self.next));
        self.next += 1;
        let written = write_whole(&self.dir, &path, &results);
        let mut state = lock(&self.state);
        let mut held = 0;
        for r in &results {
            // Acknowledged or replaced while it was written: not this file's to keep.
            let Some(entry) = state.results.get_mut(&r.attempt) else {
                continue;
            };
            if entry.kept != Kept::Writing {
                continue;
            }
            entry.kept = match &written {
                Ok(()) => {
                    held += 1;
                    Kept::File(path.clone())
                }
                Err(_) => Kept::Memory,
            };
        }
        match written {
            Ok(()) if held == 0 => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(()) => {
                state.files.insert(path, held);
            }
            Err(e) => tracing::error!(
                results = results.len(),
                error = %format!("{e:#}"),
                "could not keep results on disk; sending them from memory (they are lost if the agent stops before the coordinator has them)"
            ),
        }
    }
}

/// Writes `results` to `path` whole (a temporary file, synced, renamed, the folder synced), or
/// not at all.
fn write_whole(dir: &Path, path: &Path, results: &[TaskResult]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(results)?;
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::message::{ModuleResult, Outcome, TaskId};

    fn result(index: u32) -> TaskResult {
        TaskResult {
            attempt: AttemptId {
                task: TaskId { job: 7, index },
                attempt: 1,
            },
            modules: vec![ModuleResult {
                name: "main".into(),
                outcome: Outcome::Exited { code: 0 },
                stdout: None,
                stderr: None,
            }],
            outputs: vec![],
            elapsed_ms: 1,
            outputs_truncated: false,
        }
    }

    /// Waits until the writer has taken every result put so far.
    fn written(outbox: &Outbox, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while outbox.to_send(|_| false).len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer took no results"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn results_are_sent_once_on_disk_and_their_file_goes_with_the_last_acknowledgement() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = Outbox::open(&dir).unwrap();
        for i in 0..3 {
            outbox.put(result(i));
        }
        assert_eq!(
            outbox.attempts().len(),
            3,
            "held from the moment they are put"
        );
        written(&outbox, 3);
        let on_disk: usize = files(&dir)
            .iter()
            .map(|f| read_file(f).unwrap().len())
            .sum();
        assert_eq!(on_disk, 3);
        assert_eq!(outbox.only_in_memory(), 0);
        let sent = outbox.to_send(|a| a.task.index == 0);
        assert_eq!(sent.len(), 2, "skipped what the caller has in flight");
        for i in 0..3 {
            assert!(
                !files(&dir).is_empty(),
                "removed before its last result was acknowledged"
            );
            outbox.acknowledged(result(i).attempt);
        }
        assert!(outbox.is_empty());
        assert!(files(&dir).is_empty(), "left {:?}", files(&dir));
    }

    #[test]
    fn a_restart_sends_again_what_was_not_acknowledged_including_single_result_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        {
            let outbox = Outbox::open(&dir).unwrap();
            outbox.put(result(1));
            outbox.put(result(2));
            written(&outbox, 2);
            outbox.acknowledged(result(1).attempt);
        }
        // A result as earlier versions kept it, one per file, a half-written group, and junk.
        std::fs::write(
            dir.join("7.3.1.json"),
            serde_json::to_vec(&result(3)).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("group-99.tmp"), b"[{").unwrap();
        std::fs::write(dir.join("group-98.json"), b"not json").unwrap();
        let outbox = Outbox::open(&dir).unwrap();
        let mut again: Vec<u32> = outbox
            .to_send(|_| false)
            .iter()
            .map(|r| r.attempt.task.index)
            .collect();
        again.sort();
        // 1 was acknowledged, but shared its file with 2 (written together): it goes again
        // with it, and the coordinator acknowledges the copy.
        assert!(
            again == [1, 2, 3] || again == [2, 3],
            "sent again: {again:?}"
        );
        assert!(!dir.join("group-99.tmp").exists() && !dir.join("group-98.json").exists());
        // New groups do not overwrite the files still held.
        outbox.put(result(4));
        written(&outbox, again.len() + 1);
        for i in [1, 2, 3, 4] {
            outbox.acknowledged(result(i).attempt);
        }
        assert!(files(&dir).is_empty(), "left {:?}", files(&dir));
    }

    #[test]
    fn a_disk_that_will_not_take_results_sends_them_from_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = Outbox::open(&dir).unwrap();
        // The folder replaced by a file: nothing can be written in it.
        std::fs::remove_dir(&dir).unwrap();
        std::fs::write(&dir, b"").unwrap();
        outbox.put(result(1));
        written(&outbox, 1);
        assert_eq!(outbox.only_in_memory(), 1);
        outbox.acknowledged(result(1).attempt);
        assert!(outbox.is_empty());
    }
}
