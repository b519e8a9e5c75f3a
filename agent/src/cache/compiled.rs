//! Compiled modules on disk, so that a module is compiled once per machine, not once per run
//! of the agent.
//!
//! Artifacts live under `root/<key>/<module hex>.cwasm`, where the key is the sandbox's
//! [`compatibility_key`](crate::sandbox::Sandbox::compatibility_key): the wasmtime version and
//! the engine's code-generation settings. Directories of other keys (left by an older agent)
//! are deleted when the cache opens.
//!
//! Each file is `LULLCW01`, the sha256 of the artifact, then the artifact. A file that is
//! truncated, altered or otherwise does not match its sha256 is deleted and never loaded; the
//! caller compiles the module again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use lull_protocol::Digest;

use super::{Entry, Lru, lru};
use crate::sandbox::Artifact;

const MAGIC: &[u8; 8] = b"LULLCW01";
const HEADER: usize = MAGIC.len() + 32;

/// The compiled-module cache.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    tmp: PathBuf,
    lru: Arc<Lru>,
}

/// Why a kept artifact was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// There is none.
    Absent,
    /// There was one, but it did not match its checksum (it has been deleted).
    Corrupt(String),
}

impl CompiledCache {
    /// Opens (creating) the cache for artifacts of `key` under `root`, entering those already
    /// there in `lru`.
    pub fn open(root: &Path, key: &str, lru: Arc<Lru>) -> anyhow::Result<Self> {
        let dir = root.join(key);
        let tmp = root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&dir, &tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        for e in std::fs::read_dir(root)?.flatten() {
            let name = e.file_name();
            if name != key && name != "tmp" {
                tracing::info!(dir = %e.path().display(), "deleting modules compiled by another wasmtime or configuration");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let cache = Self { dir, tmp, lru };
        for e in std::fs::read_dir(&cache.dir)?.flatten() {
            let path = e.path();
            let module = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| Digest::from_hex(s).ok());
            match (module, e.metadata()) {
                (Some(module), Ok(meta)) if meta.is_file() => cache.lru.insert(
                    Entry::Compiled(module),
                    path,
                    meta.len(),
                    lru::last_use(&meta),
                ),
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(cache)
    }

    /// Where the artifact of `module` lives.
    pub fn path(&self, module: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", module.hex()))
    }

    /// The kept artifact of `module`, checked against its sha256.
    pub fn get(&self, module: &Digest) -> Result<Artifact, Miss> {
        let path = self.path(module);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) => return Err(self.corrupt(module, format!("cannot read it: {e}"))),
        };
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(self.corrupt(module, "its header is missing or wrong".into()));
        }
        let mut bytes = bytes;
        let payload = bytes.split_off(HEADER);
        if Digest::of(&payload).as_bytes()[..] != bytes[MAGIC.len()..] {
            return Err(self.corrupt(
                module,
                "its bytes do not match their sha256 (truncated or altered)".into(),
            ));
        }
        // SAFETY: the bytes are what `put` wrote from an `Artifact`, as their sha256 shows.
        match unsafe { Artifact::from_trusted_bytes(payload) } {
            Some(a) => {
                self.lru.touch(Entry::Compiled(*module));
                Ok(a)
            }
            None => Err(self.corrupt(module, "it is not a compiled module".into())),
        }
    }

    fn corrupt(&self, module: &Digest, why: String) -> Miss {
        tracing::warn!(%module, reason = %why, "deleting a damaged compiled module; it will be compiled again");
        self.discard(module);
        Miss::Corrupt(why)
    }

    /// Deletes the artifact of `module` (it is damaged or cannot be loaded).
    pub fn discard(&self, module: &Digest) {
        self.lru.remove(Entry::Compiled(*module));
        let _ = std::fs::remove_file(self.path(module));
    }

    /// Keeps the artifact of `module`, counting it against the budget.
    pub fn put(&self, module: &Digest, artifact: &Artifact) -> anyhow::Result<()> {
        let payload = artifact.bytes();
        let mut file = tempfile::NamedTempFile::new_in(&self.tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(Digest::of(payload).as_bytes())?;
        file.write_all(payload)?;
        file.as_file().sync_all()?;
        let path = self.path(module);
        file.persist(&path).map_err(|e| e.error)?;
        self.lru.insert(
            Entry::Compiled(*module),
            path,
            (HEADER + payload.len()) as u64,
            lru::now_ms(),
        );
        self.lru.evict();
        Ok(())
    }
}
