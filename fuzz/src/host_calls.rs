//! Fuzzes the agent's side of `lull:guest/host` (`agent/src/sandbox/guest.rs`) with arbitrary
//! arguments, through a real component in the real sandbox.
//!
//! The guest is one component, compiled once per thread on its first input: it asks `restore` for its
//! checkpoint, which the target's hooks answer with the fuzz input's script, and plays that
//! script's calls (see `lull_fuzz::script`): progress with any f64 (NaN, infinities,
//! negatives), checkpoints empty, of up to 2 MiB, or with pointers and lengths out of bounds,
//! `checkpoint-and-leave`, notices, waits, log lines with invalid levels or invalid UTF-8,
//! repeated as often as the input says. So every input runs the canonical ABI's lifting and
//! lowering and the host implementations, with the agent's own checkpoint hooks
//! (`lull_agent::checkpoint::AttemptHooks`, writing to a blob cache), at the price of one
//! instantiation per input and no compilation.
//!
//! What must hold:
//!
//! - the run ends in an outcome, never a panic of the host: exited 0 (the script ran out),
//!   trapped (a bad pointer, level or string), memory exceeded, evicted or left;
//! - the hooks see exactly the script's progress values, NaN as 0 and the rest clamped to
//!   0..=1 (all of them when the guest got to the end, a prefix when it stopped early);
//! - a checkpoint is kept exactly when the agent keeps checkpoints and the state is within its
//!   cap; each kept one reaches the daemon's channel in order (1, 2, 3...), with its size, the
//!   digest of its bytes and the progress reported before it, and is in the cache;
//! - an attempt ends evicted only when the task was under notice (with the notice's reason),
//!   and left only when `checkpoint-and-leave` kept its state with no notice (with the reason
//!   saying so);
//! - stderr (the log lines) stays within the sandbox's output cap.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lull_agent::cache::{BlobCache, Lru};
use lull_agent::checkpoint::{AttemptHooks, Kept, Pending, Sink};
use lull_agent::sandbox::{
    GuestHooks, Hooks, Program, RunSpec, Sandbox, SandboxConfig, TaskControl,
};
use lull_protocol::Digest;
use lull_protocol::message::{AttemptId, Outcome, TaskId};

use crate::script::{self, Call};

/// The guest: plays the script `restore` hands it.
const GUEST: &str = r#"
(component
  (import "lull:guest/host@0.1.0" (instance $host
    (type $eviction-record (record (field "reason" string) (field "remaining-ms" u64)))
    (export "eviction" (type $eviction (eq $eviction-record)))
    (type $level-enum (enum "debug" "info" "warn" "error"))
    (export "level" (type $level (eq $level-enum)))
    (export "task-index" (func (result u32)))
    (export "attempt" (func (result u32)))
    (export "progress" (func (param "fraction" f64)))
    (export "checkpoint" (func (param "state" (list u8)) (result (result (error string)))))
    (export "checkpoint-and-leave"
      (func (param "state" (list u8)) (result (result (error string)))))
    (export "restore" (func (result (option (list u8)))))
    (export "notice" (func (result (option $eviction))))
    (export "wait-notice" (func (param "timeout-ms" u64) (result (option $eviction))))
    (export "log" (func (param "level" $level) (param "message" string)))))

  ;; The memory, and a bump allocator for what the host hands over (from 64 KiB up).
  (core module $mem
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 65536))
    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32)
      (param $size i32) (result i32)
      (local $ptr i32) (local $end i32) (local $have i32)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $ptr) (local.get $size)))
      (local.set $have (i32.shl (memory.size) (i32.const 16)))
      (if (i32.gt_u (local.get $end) (local.get $have))
        (then
          (if (i32.eq
                (memory.grow
                  (i32.shr_u
                    (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                    (i32.const 16)))
                (i32.const -1))
            (then unreachable))))
      (global.set $heap (local.get $end))
      (local.get $ptr)))
  (core instance $mi (instantiate $mem))

  (core func $task-index (canon lower (func $host "task-index")))
  (core func $attempt (canon lower (func $host "attempt")))
  (core func $progress (canon lower (func $host "progress")))
  (core func $checkpoint (canon lower (func $host "checkpoint")
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $leave (canon lower (func $host "checkpoint-and-leave")
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $restore (canon lower (func $host "restore")
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $notice (canon lower (func $host "notice")
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $wait (canon lower (func $host "wait-notice")
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core func $log (canon lower (func $host "log") (memory (core memory $mi "memory"))))
  (core instance $hi
    (export "task-index" (func $task-index))
    (export "attempt" (func $attempt))
    (export "progress" (func $progress))
    (export "checkpoint" (func $checkpoint))
    (export "leave" (func $leave))
    (export "restore" (func $restore))
    (export "notice" (func $notice))
    (export "wait" (func $wait))
    (export "log" (func $log)))

  ;; The player. Return areas: restore at 16, checkpoint results at 32, notices at 48.
  (core module $m
    (import "mem" "memory" (memory 1))
    (import "host" "task-index" (func $task-index (result i32)))
    (import "host" "attempt" (func $attempt (result i32)))
    (import "host" "progress" (func $progress (param f64)))
    (import "host" "checkpoint" (func $checkpoint (param i32 i32 i32)))
    (import "host" "leave" (func $leave (param i32 i32 i32)))
    (import "host" "restore" (func $restore (param i32)))
    (import "host" "notice" (func $notice (param i32)))
    (import "host" "wait" (func $wait (param i64 i32)))
    (import "host" "log" (func $log (param i32 i32 i32)))
    ;; Bytes taken by each opcode with its operands (lull_fuzz::script::SIZES).
    (data (i32.const 0) "\09\05\09\02\05\01\09\06\01\01")
    (func $at (param $s i32) (param $n i32) (param $offset i32) (result i32)
      (i32.add (local.get $s) (i32.rem_u (local.get $offset) (local.get $n))))
    (func (export "run") (result i32)
      (local $s i32) (local $n i32) (local $pc i32) (local $p i32) (local $op i32)
      (local $size i32) (local $pages i32) (local $ms i64)
      (call $restore (i32.const 16))
      (if (i32.eqz (i32.load8_u (i32.const 16))) (then (return (i32.const 0))))
      (local.set $s (i32.load (i32.const 20)))
      (local.set $n (i32.load (i32.const 24)))
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $pc) (local.get $n)))
          (local.set $p (i32.add (local.get $s) (local.get $pc)))
          (local.set $op (i32.rem_u (i32.load8_u (local.get $p)) (i32.const 10)))
          (local.set $size (i32.load8_u (local.get $op)))
          (br_if $done (i32.gt_u (i32.add (local.get $pc) (local.get $size)) (local.get $n)))
          (local.set $pc (i32.add (local.get $pc) (local.get $size)))
          (block $b9 (block $b8 (block $b7 (block $b6 (block $b5
          (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
            (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 (local.get $op)))
            ;; 0: progress
            (call $progress (f64.load offset=1 (local.get $p)))
            (br $next))
            ;; 1: checkpoint of a slice of the script
            (call $checkpoint
              (call $at (local.get $s) (local.get $n) (i32.load16_u offset=1 (local.get $p)))
              (i32.load16_u offset=3 (local.get $p))
              (i32.const 32))
            (br $next))
            ;; 2: checkpoint of an unchecked pointer and length
            (call $checkpoint
              (i32.load offset=1 (local.get $p))
              (i32.load offset=5 (local.get $p))
              (i32.const 32))
            (br $next))
            ;; 3: checkpoint of the first pages of memory, grown to them where it can be
            (local.set $pages (i32.and (i32.load8_u offset=1 (local.get $p)) (i32.const 31)))
            (if (i32.gt_u (local.get $pages) (memory.size))
              (then (drop (memory.grow (i32.sub (local.get $pages) (memory.size))))))
            (if (i32.gt_u (local.get $pages) (memory.size))
              (then (local.set $pages (memory.size))))
            (call $checkpoint
              (i32.const 0) (i32.shl (local.get $pages) (i32.const 16)) (i32.const 32))
            (br $next))
            ;; 4: checkpoint-and-leave of a slice of the script
            (call $leave
              (call $at (local.get $s) (local.get $n) (i32.load16_u offset=1 (local.get $p)))
              (i32.load16_u offset=3 (local.get $p))
              (i32.const 32))
            (br $next))
            ;; 5: notice
            (call $notice (i32.const 48))
            (br $next))
            ;; 6: wait-notice, for the whole time only under notice
            (call $notice (i32.const 48))
            (local.set $ms (i64.load offset=1 (local.get $p)))
            (if (i32.eqz (i32.load8_u (i32.const 48)))
              (then (local.set $ms (i64.and (local.get $ms) (i64.const 1)))))
            (call $wait (local.get $ms) (i32.const 48))
            (br $next))
            ;; 7: log
            (call $log
              (i32.load8_u offset=1 (local.get $p))
              (call $at (local.get $s) (local.get $n) (i32.load16_u offset=2 (local.get $p)))
              (i32.load16_u offset=4 (local.get $p)))
            (br $next))
            ;; 8: task-index and attempt
            (drop (call $task-index))
            (drop (call $attempt))
            (br $next))
          ;; 9: restore
          (call $restore (i32.const 16))
          (br $next)))
      (i32.const 0)))
  (core instance $i (instantiate $m (with "mem" (instance $mi)) (with "host" (instance $hi))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
"#;

/// The reason of the eviction some inputs are under.
const NOTICE: &str = "the fuzz target evicts this task";
/// Bytes kept of stdout and stderr.
const OUTPUT_CAP: u64 = 4096;
/// The attempt every input runs as.
const ATTEMPT: AttemptId = AttemptId {
    task: TaskId { job: 1, index: 7 },
    attempt: 2,
};

struct Fixture {
    sandbox: Sandbox,
    program: Program,
    cache: BlobCache,
    _dir: tempfile::TempDir,
    spec: RunSpec,
}

impl Fixture {
    fn new() -> Fixture {
        let sandbox = Sandbox::new(SandboxConfig {
            output_cap: OUTPUT_CAP,
            // No ticker: the guest is checked only before it starts, so nothing but the script
            // decides how a run ends.
            epoch_tick: Duration::ZERO,
            ..SandboxConfig::default()
        })
        .expect("sandbox");
        let bytes = wat::parse_str(GUEST).expect("the guest's text");
        let program = sandbox.compile(&bytes).expect("the guest compiles");
        let dir = tempfile::tempdir().expect("temporary directory");
        for sub in ["cache", "output", "scratch"] {
            std::fs::create_dir(dir.path().join(sub)).expect("directory");
        }
        let cache = BlobCache::open(&dir.path().join("cache"), Lru::new(256 << 20)).expect("cache");
        let spec = RunSpec {
            name: "player".into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            input_dir: None,
            mounts: Vec::new(),
            output_dir: dir.path().join("output"),
            scratch_dir: dir.path().join("scratch"),
            memory_limit: 64 << 20,
            timeout: Duration::from_secs(600),
            pooled: false,
            hooks: None,
            seed: None,
        };
        Fixture {
            sandbox,
            program,
            cache,
            _dir: dir,
            spec,
        }
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// A checkpoint call as the hooks saw it.
#[derive(Debug)]
struct Seen {
    len: usize,
    /// The state's digest, when it was within the cap.
    digest: Option<Digest>,
    kept: bool,
    /// The last progress reported before it.
    progress: Option<f64>,
}

/// The agent's hooks, recording what passes through them.
struct Recorder {
    inner: AttemptHooks,
    /// The agent's cap on a checkpoint's size.
    cap: u64,
    progress: Mutex<Vec<f64>>,
    checkpoints: Mutex<Vec<Seen>>,
}

impl GuestHooks for Recorder {
    fn task_index(&self) -> u32 {
        self.inner.task_index()
    }

    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    fn progress(&self, fraction: f64) {
        self.progress.lock().unwrap().push(fraction);
        self.inner.progress(fraction);
    }

    fn checkpoint(&self, state: Vec<u8>, leaving: bool) -> Result<(), String> {
        let len = state.len();
        // Hashing is the cost of a large state: only for those the agent keeps (bounded by
        // its cap), whose digest is checked.
        let digest = (len as u64 <= self.cap).then(|| Digest::of(&state));
        let progress = self.progress.lock().unwrap().last().copied();
        let result = self.inner.checkpoint(state, leaving);
        self.checkpoints.lock().unwrap().push(Seen {
            len,
            digest,
            kept: result.is_ok(),
            progress,
        });
        result
    }

    fn restore(&self) -> Option<Vec<u8>> {
        self.inner.restore()
    }
}

/// Plays one fuzz input: 7 bytes of flags (whether the agent keeps checkpoints, whether the
/// task is under notice, the checkpoint cap in 16-byte units, the notice's grace in
/// milliseconds), then the script. Panics when a property does not hold.
pub fn run(data: &[u8]) {
    let Some((head, script)) = data.split_first_chunk::<7>() else {
        return;
    };
    let flags = head[0];
    let keeps = flags & 1 != 0;
    let under_notice = flags & 2 != 0;
    let cap = u64::from(u16::from_le_bytes([head[1], head[2]])) * 16;
    let grace = Duration::from_millis(u64::from(u32::from_le_bytes([
        head[3], head[4], head[5], head[6],
    ])));
    FIXTURE.with_borrow_mut(|fixture| {
        let fixture = fixture.get_or_insert_with(Fixture::new);
        play(fixture, script, keeps, under_notice, cap, grace);
    });
}

fn play(
    fixture: &Fixture,
    script: &[u8],
    keeps: bool,
    under_notice: bool,
    cap: u64,
    grace: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Kept>();
    let sink = keeps.then(|| Sink {
        cache: fixture.cache.clone(),
        tx,
        pending: Arc::new(Pending::default()),
        cap,
        // Every checkpoint kept as it comes: pacing is the unit tests' (agent/src/checkpoint.rs).
        interval: Duration::ZERO,
        progress: Arc::default(),
    });
    let recorder = Arc::new(Recorder {
        inner: AttemptHooks::new(ATTEMPT, Some(script.to_vec()), sink),
        cap,
        progress: Mutex::default(),
        checkpoints: Mutex::default(),
    });
    let mut spec = fixture.spec.clone();
    spec.hooks = Some(Hooks(recorder.clone()));
    let control = TaskControl::new();
    if under_notice {
        control.evict(NOTICE, grace);
    }

    let output = fixture.sandbox.run(&fixture.program, &spec, &control);

    let calls = script::parse(script);
    let expected: Vec<f64> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Progress(f) => Some(script::clamped(*f)),
            _ => None,
        })
        .collect();
    let progress = recorder.progress.lock().unwrap().clone();
    assert!(
        progress.len() <= expected.len() && progress == expected[..progress.len()],
        "progress seen {progress:?}, script {expected:?}"
    );
    let seen = std::mem::take(&mut *recorder.checkpoints.lock().unwrap());
    let checkpoint_calls = calls
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::Checkpoint { .. }
                    | Call::CheckpointRaw { .. }
                    | Call::CheckpointHuge { .. }
                    | Call::Leave { .. }
            )
        })
        .count();
    assert!(seen.len() <= checkpoint_calls);

    match &output.outcome {
        Outcome::Exited { code: 0 } => {
            assert_eq!(progress, expected, "the guest got to the end of its script");
            assert_eq!(seen.len(), checkpoint_calls);
        }
        Outcome::Trapped { .. } | Outcome::MemoryExceeded { .. } => {}
        Outcome::Evicted { reason } if under_notice => assert_eq!(reason, NOTICE),
        Outcome::Left { reason } if !under_notice => {
            assert_eq!(reason, "the guest left after keeping a checkpoint");
            assert!(
                seen.last().is_some_and(|s| s.kept),
                "left without keeping its state"
            );
        }
        other => panic!("unexpected outcome {other:?}"),
    }

    let mut seq = 0;
    for s in &seen {
        assert_eq!(
            s.kept,
            keeps && s.len as u64 <= cap,
            "a checkpoint of {} bytes against a cap of {cap} (kept: {keeps})",
            s.len
        );
        if !s.kept {
            continue;
        }
        seq += 1;
        let kept = rx.try_recv().expect("a kept checkpoint reaches the daemon");
        assert_eq!(kept.attempt, ATTEMPT);
        assert_eq!(kept.seq, seq);
        assert_eq!(kept.size, s.len as u64);
        assert_eq!(Some(kept.digest), s.digest);
        assert_eq!(kept.progress, s.progress);
        assert!(fixture.cache.contains(&kept.digest));
    }
    assert!(rx.try_recv().is_err(), "more checkpoints than kept");
    assert!(output.stderr.len() as u64 <= OUTPUT_CAP);
    assert!(output.stdout.is_empty());
}
