//! The agent's disk cache: compiled modules kept across agents' lives, damaged ones rebuilt and
//! never loaded, and the size budget kept by evicting the least recently used.

use std::path::Path;
use std::sync::Arc;

use lull_agent::cache::compiled::{CompiledCache, Miss};
use lull_agent::cache::{BlobCache, Entry, Lru};
use lull_agent::runner::{Preparation, Runner};
use lull_agent::sandbox::{Sandbox, SandboxConfig};
use lull_protocol::Digest;
use lull_protocol::job::ModuleSpec;
use lull_protocol::signature::{TrustList, sign};
use ssh_key::{Algorithm, PrivateKey, rand_core::OsRng};

fn hello() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "hello\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 6))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .expect("wat")
}

/// An agent's caches and runner over `data`, as a fresh agent process would open them.
struct Agent {
    runner: Runner,
    lru: Arc<Lru>,
}

fn agent(data: &Path, sandbox: &Arc<Sandbox>, trust: &Arc<TrustList>, budget: u64) -> Agent {
    let lru = Lru::new(budget);
    let cache = BlobCache::open(&data.join("blobs"), lru.clone()).expect("blob cache");
    let compiled = CompiledCache::open(
        &data.join("compiled"),
        &sandbox.compatibility_key(),
        lru.clone(),
    )
    .expect("compiled cache");
    let work_root = data.join("work");
    std::fs::create_dir_all(&work_root).unwrap();
    Agent {
        runner: Runner {
            sandbox: sandbox.clone(),
            cache,
            trust: trust.clone(),
            work: lull_agent::workdir::WorkDirs::new(work_root),
            max_task_memory: 1 << 30,
            outputs_cap: 1 << 20,
            task_disk: lull_agent::disk::DiskCap {
                bytes: 1 << 30,
                files: 10_000,
            },
            compiled,
            loaded: Default::default(),
            checkpoints: None,
            guests: Default::default(),
        },
        lru,
    }
}

/// A signed module in the blob cache, and the trust list that accepts it.
fn signed_module(data: &Path, sandbox: &Arc<Sandbox>) -> (ModuleSpec, Arc<TrustList>) {
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
    let mut trust = TrustList::new();
    trust.add("author@example.org", key.public_key().clone());
    let trust = Arc::new(trust);
    let bytes = hello();
    let a = agent(data, sandbox, &trust, 1 << 30);
    let digest = a.runner.cache.put(&bytes).unwrap();
    let spec = ModuleSpec {
        name: "hello".into(),
        digest,
        size: bytes.len() as u64,
        signature: Some(sign(&key, &bytes).unwrap()),
        args: vec![],
        env: Default::default(),
        stdin: None,
        inputs: vec![],
        success_exit_codes: vec![0],
        env_extra: true,
        mounts: vec![],
    };
    (spec, trust)
}

#[test]
fn compiled_once_then_loaded_from_disk_by_the_next_agent() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let (m, trust) = signed_module(data.path(), &sandbox);

    let first = agent(data.path(), &sandbox, &trust, 1 << 30);
    assert_eq!(first.runner.prepare(&m).unwrap().1, Preparation::Compiled);
    assert_eq!(first.runner.prepare(&m).unwrap().1, Preparation::Loaded);
    assert!(first.runner.compiled.path(&m.digest).is_file());

    let second = agent(data.path(), &sandbox, &trust, 1 << 30);
    assert_eq!(second.lru.compiled(), vec![m.digest]);
    let (program, how) = second.runner.prepare(&m).unwrap();
    assert_eq!(how, Preparation::FromDisk);
    assert!(!program.is_component());
}

#[test]
fn a_damaged_compiled_module_is_detected_deleted_and_rebuilt() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let (m, trust) = signed_module(data.path(), &sandbox);
    let first = agent(data.path(), &sandbox, &trust, 1 << 30);
    first.runner.prepare(&m).unwrap();
    let path = first.runner.compiled.path(&m.digest);

    // One flipped byte in the machine code.
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let second = agent(data.path(), &sandbox, &trust, 1 << 30);
    match second.runner.compiled.get(&m.digest) {
        Err(Miss::Corrupt(why)) => assert!(why.contains("sha256"), "{why}"),
        other => panic!("a damaged artifact was not refused: {other:?}"),
    }
    assert!(!path.exists(), "the damaged artifact is deleted");
    assert!(!second.lru.contains(Entry::Compiled(m.digest)));
    assert_eq!(second.runner.prepare(&m).unwrap().1, Preparation::Compiled);
    assert!(path.is_file(), "compiled again and kept");

    // Cut short, as by a crash mid-write on a file system that does not order writes.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let third = agent(data.path(), &sandbox, &trust, 1 << 30);
    assert_eq!(third.runner.prepare(&m).unwrap().1, Preparation::Compiled);
    let fourth = agent(data.path(), &sandbox, &trust, 1 << 30);
    assert_eq!(fourth.runner.prepare(&m).unwrap().1, Preparation::FromDisk);
}

#[test]
fn a_compiled_module_still_needs_a_trusted_signature() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let (m, trust) = signed_module(data.path(), &sandbox);
    agent(data.path(), &sandbox, &trust, 1 << 30)
        .runner
        .prepare(&m)
        .unwrap();
    // The owner empties the trust list: the kept machine code is not a way around it.
    let nobody = Arc::new(TrustList::new());
    let err = agent(data.path(), &sandbox, &nobody, 1 << 30)
        .runner
        .prepare(&m)
        .unwrap_err();
    assert!(
        err.contains("author@example.org") || err.contains("trust"),
        "{err}"
    );
}

#[test]
fn artifacts_of_another_configuration_are_deleted_on_open() {
    let data = tempfile::tempdir().unwrap();
    let stale = data.path().join("compiled/0123456789abcdef");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(
        stale.join(format!("{}.cwasm", Digest::of(b"x").hex())),
        b"old",
    )
    .unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let a = agent(data.path(), &sandbox, &Arc::new(TrustList::new()), 1 << 30);
    assert!(!stale.exists());
    assert!(a.lru.compiled().is_empty());
}

#[test]
fn the_budget_evicts_least_recently_used_blobs_and_spares_protected_ones() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let a = agent(data.path(), &sandbox, &Arc::new(TrustList::new()), 10_000);
    // Uses a millisecond apart at least, so that the order is plain.
    let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
    let keep = a.runner.cache.put(&[1u8; 3000]).unwrap();
    a.lru.protect_with(move || [keep].into());
    pause();
    let old = a.runner.cache.put(&[2u8; 3000]).unwrap();
    pause();
    let newer = a.runner.cache.put(&[3u8; 3000]).unwrap();
    pause();
    assert_eq!(a.lru.total(), 9000);
    // Past 10,000 bytes: evict down to 9,000, oldest unprotected first.
    let newest = a.runner.cache.put(&[4u8; 3000]).unwrap();
    assert!(a.runner.cache.contains(&keep), "protected");
    assert!(!a.runner.cache.contains(&old), "least recently used");
    assert!(a.runner.cache.contains(&newer) && a.runner.cache.contains(&newest));
    assert_eq!(a.lru.total(), 9000);

    // A fresh agent counts what is on disk.
    let b = agent(data.path(), &sandbox, &Arc::new(TrustList::new()), 10_000);
    assert_eq!(b.lru.total(), 9000);
}
