//! The sandbox against small guests written in WAT (and, when it has been built, the `wordcount`
//! example component): exits, traps, limits, cancellation, output capture, the filesystem grants,
//! and what `compile` refuses.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use lull_agent::sandbox::{
    Program, RunOutput, RunSpec, Sandbox, SandboxConfig, SandboxError, TaskControl,
};
use lull_protocol::message::Outcome;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// Imports and memory every WAT guest starts with.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
"#;

/// A WASI preview 1 command module: `body` is the rest of the module after [`PRELUDE`].
fn wasm(body: &str) -> Vec<u8> {
    let text = format!("(module {PRELUDE} {body})");
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

/// Writes "hello\n" to stdout and returns from `_start`.
fn hello() -> Vec<u8> {
    wasm(
        r#"
        (data (i32.const 16) "hello\n")
        (func (export "_start")
          (i32.store (i32.const 0) (i32.const 16))
          (i32.store (i32.const 4) (i32.const 6))
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
        "#,
    )
}

/// Grows its memory one page at a time until refused, then aborts the way Rust's allocator does.
fn memory_bomb() -> Vec<u8> {
    wasm(
        r#"
        (func (export "_start")
          (loop $grow
            (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
          unreachable)
        "#,
    )
}

/// Spins forever.
fn spin() -> Vec<u8> {
    wasm(r#"(func (export "_start") (loop $again (br $again)))"#)
}

/// A test's host directories, removed when it is dropped.
struct Dirs {
    input: TempDir,
    output: TempDir,
    scratch: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            input: tempfile::tempdir().expect("input dir"),
            output: tempfile::tempdir().expect("output dir"),
            scratch: tempfile::tempdir().expect("scratch dir"),
        }
    }

    /// A spec with all three directories, 16 MiB of memory and a 10 s timeout.
    fn spec(&self) -> RunSpec {
        RunSpec {
            name: "guest".to_string(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            input_dir: Some(self.input.path().to_path_buf()),
            mounts: Vec::new(),
            output_dir: self.output.path().to_path_buf(),
            scratch_dir: self.scratch.path().to_path_buf(),
            memory_limit: 16 * MIB,
            timeout: Duration::from_secs(10),
            pooled: false,
            hooks: None,
            seed: None,
        }
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("sandbox")
}

fn compile(sandbox: &Sandbox, bytes: &[u8]) -> Program {
    sandbox.compile(bytes).expect("compile")
}

/// Compiles and runs `bytes` with `spec` on a fresh sandbox.
fn run(bytes: &[u8], spec: &RunSpec) -> RunOutput {
    let sandbox = sandbox();
    let program = compile(&sandbox, bytes);
    sandbox.run(&program, spec, &TaskControl::new())
}

fn trap_message(output: &RunOutput) -> &str {
    match &output.outcome {
        Outcome::Trapped { message } => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Exits and traps

#[test]
fn hello_writes_stdout_and_exits_zero() {
    let dirs = Dirs::new();
    let output = run(&hello(), &dirs.spec());
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout, b"hello\n");
    assert!(!output.stdout_truncated);
    assert!(output.stderr.is_empty());
}

#[test]
fn proc_exit_code_is_the_exit_code() {
    let dirs = Dirs::new();
    let guest = wasm(r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#);
    let output = run(&guest, &dirs.spec());
    assert_eq!(output.outcome, Outcome::Exited { code: 3 });
}

#[test]
fn unreachable_is_a_trap() {
    let dirs = Dirs::new();
    let guest = wasm(r#"(func (export "_start") unreachable)"#);
    let output = run(&guest, &dirs.spec());
    let message = trap_message(&output);
    assert!(message.contains("unreachable"), "{message}");
}

#[test]
fn stack_overflow_is_a_trap_that_mentions_the_stack() {
    let dirs = Dirs::new();
    let guest = wasm(
        r#"
        (func $deeper (call $deeper))
        (func (export "_start") (call $deeper))
        "#,
    );
    let output = run(&guest, &dirs.spec());
    let message = trap_message(&output);
    assert!(message.contains("stack"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Time and cancellation

#[test]
fn infinite_loop_times_out_promptly() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.timeout = Duration::from_millis(200);
    let output = run(&spin(), &spec);
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 200 });
    assert!(
        output.elapsed >= Duration::from_millis(200),
        "{:?}",
        output.elapsed
    );
    assert!(
        output.elapsed < Duration::from_secs(5),
        "{:?}",
        output.elapsed
    );
}

#[test]
fn cancel_from_another_thread_stops_a_spinning_guest() {
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.timeout = Duration::from_secs(60);
    let control = TaskControl::new();
    let canceller = {
        let control = control.clone();
        // Whether the cancel lands before or during the run, the outcome is the same; the pause
        // only makes "during" the likely case.
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            control.cancel("the owner came back");
        })
    };
    let output = sandbox.run(&program, &spec, &control);
    canceller.join().expect("canceller thread");
    assert_eq!(
        output.outcome,
        Outcome::Cancelled {
            reason: "the owner came back".to_string()
        }
    );
    assert!(control.is_cancelled());
    assert!(
        output.elapsed < Duration::from_secs(5),
        "{:?}",
        output.elapsed
    );
}

#[test]
fn cancelled_before_the_run_never_starts_the_guest() {
    let dirs = Dirs::new();
    let control = TaskControl::new();
    control.cancel("first");
    control.cancel("second");
    let sandbox = sandbox();
    let program = compile(&sandbox, &hello());
    let output = sandbox.run(&program, &dirs.spec(), &control);
    assert_eq!(
        output.outcome,
        Outcome::Cancelled {
            reason: "first".to_string()
        }
    );
    assert!(output.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Memory

#[test]
fn memory_bomb_is_memory_exceeded() {
    let dirs = Dirs::new();
    let guest = memory_bomb();
    let mut spec = dirs.spec();
    spec.memory_limit = 2 * MIB;
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::MemoryExceeded { limit: 2 * MIB });
}

#[test]
fn guest_that_handles_refused_memory_exits_normally() {
    let dirs = Dirs::new();
    let guest = wasm(
        r#"
        (func (export "_start")
          (if (i32.ne (memory.grow (i32.const 1000)) (i32.const -1))
            (then (call $proc_exit (i32.const 9)))))
        "#,
    );
    let mut spec = dirs.spec();
    spec.memory_limit = 2 * MIB;
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
}

#[test]
fn initial_memory_above_the_cap_is_memory_exceeded() {
    let dirs = Dirs::new();
    // 100 pages = 6.4 MB; the prelude's memory is replaced by a module of its own.
    let guest = wat::parse_str(r#"(module (memory 100) (func (export "_start")))"#).expect("wat");
    let mut spec = dirs.spec();
    spec.memory_limit = MIB;
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::MemoryExceeded { limit: MIB });
}

#[test]
fn all_memories_count_together() {
    let dirs = Dirs::new();
    // Two memories of 12 pages (768 KiB) each: each fits under 1 MiB, both together do not.
    let guest =
        wat::parse_str(r#"(module (memory $a 12) (memory $b 12) (func (export "_start")))"#)
            .expect("wat");
    let mut spec = dirs.spec();
    spec.memory_limit = MIB;
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::MemoryExceeded { limit: MIB });
}

// ---------------------------------------------------------------------------------------------
// Output capture

#[test]
fn output_flood_is_truncated_and_the_guest_carries_on() {
    let dirs = Dirs::new();
    // 100 writes of 64 KiB each; any failed or short write exits with code 2 or 3. The buffer
    // is the prelude's whole page (the iovec at its start is part of it).
    let guest = wasm(
        r#"
        (func (export "_start") (local $i i32)
          (i32.store (i32.const 0) (i32.const 0))
          (i32.store (i32.const 4) (i32.const 65536))
          (loop $again
            (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
              (then (call $proc_exit (i32.const 2))))
            (if (i32.ne (i32.load (i32.const 8)) (i32.const 65536))
              (then (call $proc_exit (i32.const 3))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $again (i32.lt_u (local.get $i) (i32.const 100)))))
        "#,
    );
    let output = run(&guest, &dirs.spec());
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout.len() as u64, MIB);
    assert!(output.stdout_truncated);
    assert!(!output.stderr_truncated);
}

#[test]
fn args_env_and_stdin_reach_the_guest() {
    // Prints the argument strings, then the environment strings (each NUL-terminated), then
    // stdin.
    let guest = wasm(
        r#"
        (func $print (param $ptr i32) (param $len i32)
          (i32.store (i32.const 0) (local.get $ptr))
          (i32.store (i32.const 4) (local.get $len))
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
        (func (export "_start")
          (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
          (drop (call $args_get (i32.const 1024) (i32.const 4096)))
          (call $print (i32.const 4096) (i32.load (i32.const 20)))
          (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
          (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
          (call $print (i32.const 4096) (i32.load (i32.const 20)))
          (i32.store (i32.const 24) (i32.const 4096))
          (i32.store (i32.const 28) (i32.const 1024))
          (drop (call $fd_read (i32.const 0) (i32.const 24) (i32.const 1) (i32.const 32)))
          (call $print (i32.const 4096) (i32.load (i32.const 32))))
        "#,
    );
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.name = "prog".to_string();
    spec.args = vec!["a".to_string(), "b c".to_string()];
    spec.env = vec![("LULL_TASK_INDEX".to_string(), "7".to_string())];
    spec.stdin = b"from stdin".to_vec();
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(
        output.stdout,
        b"prog\0a\0b c\0LULL_TASK_INDEX=7\0from stdin".to_vec()
    );
}

// ---------------------------------------------------------------------------------------------
// The filesystem grants

/// `path_open` rights: `fd_read`.
const RIGHT_READ: u64 = 1 << 1;
/// `path_open` rights: `fd_write`.
const RIGHT_WRITE: u64 = 1 << 6;
/// `path_open` lookup flags: follow symlinks.
const FOLLOW: u32 = 1;
/// `path_open` open flags: create.
const CREATE: u32 = 1;
/// Preopened descriptors when the input directory is present.
const INPUT_FD: u32 = 3;
const OUTPUT_FD: u32 = 4;

fn wat_string(text: &str) -> String {
    text.bytes().map(|b| format!("\\{b:02x}")).collect()
}

/// A guest that opens `path` under preopened descriptor `dir` and exits with the errno if that
/// fails. When it succeeds: with `write: None` it copies (up to 4 KiB of) the file to stdout,
/// with `write: Some(text)` it writes `text` into it.
fn open_guest(dir: u32, path: &str, lookup: u32, oflags: u32, write: Option<&str>) -> Vec<u8> {
    let rights = if write.is_some() {
        RIGHT_WRITE
    } else {
        RIGHT_READ
    };
    let action = match write {
        None => r#"
          (i32.store (i32.const 16) (i32.const 4096))
          (i32.store (i32.const 20) (i32.const 4096))
          (local.set $errno (call $fd_read (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24)))
          (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
          (i32.store (i32.const 32) (i32.const 4096))
          (i32.store (i32.const 36) (i32.load (i32.const 24)))
          (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
        "#
        .to_string(),
        Some(text) => format!(
            r#"
          (i32.store (i32.const 16) (i32.const 2048))
          (i32.store (i32.const 20) (i32.const {len}))
          (local.set $errno (call $fd_write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24)))
          (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
            "#,
            len = text.len()
        ),
    };
    wasm(&format!(
        r#"
        (data (i32.const 1024) "{path_bytes}")
        (data (i32.const 2048) "{text_bytes}")
        (func (export "_start") (local $errno i32) (local $fd i32)
          (local.set $errno
            (call $path_open (i32.const {dir}) (i32.const {lookup})
              (i32.const 1024) (i32.const {path_len}) (i32.const {oflags})
              (i64.const {rights}) (i64.const {rights}) (i32.const 0) (i32.const 0)))
          (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
          (local.set $fd (i32.load (i32.const 0)))
          {action})
        "#,
        path_bytes = wat_string(path),
        path_len = path.len(),
        text_bytes = wat_string(write.unwrap_or("")),
    ))
}

/// The guest's open failed: it exited with a (non-zero) errno.
fn assert_open_failed(output: &RunOutput, secret: &[u8]) {
    match output.outcome {
        Outcome::Exited { code } if code != 0 => {}
        ref other => panic!("expected the open to fail with an errno, got {other:?}"),
    }
    assert!(
        !output
            .stdout
            .windows(secret.len())
            .any(|window| window == secret),
        "the secret leaked: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn guest_reads_input() {
    let dirs = Dirs::new();
    std::fs::write(dirs.input.path().join("data.txt"), "input bytes\n").expect("write input");
    let guest = open_guest(INPUT_FD, "data.txt", FOLLOW, 0, None);
    let output = run(&guest, &dirs.spec());
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout, b"input bytes\n");
}

#[test]
fn without_inputs_output_is_the_first_preopen() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.input_dir = None;
    let guest = open_guest(3, "result.txt", FOLLOW, CREATE, Some("done"));
    let output = run(&guest, &spec);
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    let written = std::fs::read(dirs.output.path().join("result.txt")).expect("result.txt");
    assert_eq!(written, b"done");
}

/// A directory next to the input directory, holding `secret`, which the guest must never read.
struct Secret {
    _dir: TempDir,
    path: PathBuf,
}

const SECRET: &[u8] = b"the host's secret";

fn secret() -> Secret {
    let dir = tempfile::tempdir().expect("secret dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).expect("write secret");
    Secret { _dir: dir, path }
}

#[test]
fn dot_dot_cannot_leave_input() {
    let dirs = Dirs::new();
    let secret = secret();
    std::fs::create_dir(dirs.input.path().join("sub")).expect("mkdir sub");
    // A path that would reach the secret from the input directory on the host.
    let relative = format!("../{}", relative_path(dirs.input.path(), &secret.path));
    for path in ["../secret", relative.as_str(), "sub/../../secret"] {
        let output = run(&open_guest(INPUT_FD, path, FOLLOW, 0, None), &dirs.spec());
        assert_open_failed(&output, SECRET);
    }
}

#[test]
fn absolute_paths_cannot_leave_input() {
    let dirs = Dirs::new();
    let secret = secret();
    let absolute = secret.path.to_str().expect("utf-8 temp path");
    for path in [absolute, "/etc/passwd"] {
        let output = run(&open_guest(INPUT_FD, path, FOLLOW, 0, None), &dirs.spec());
        assert_open_failed(&output, SECRET);
        assert!(!output.stdout.starts_with(b"root:"));
    }
}

#[cfg(unix)]
#[test]
fn symlinks_cannot_leave_input() {
    let dirs = Dirs::new();
    let secret = secret();
    std::os::unix::fs::symlink(&secret.path, dirs.input.path().join("link")).expect("symlink");
    std::os::unix::fs::symlink(
        format!("../{}", relative_path(dirs.input.path(), &secret.path)),
        dirs.input.path().join("relative-link"),
    )
    .expect("symlink");
    for (path, lookup) in [("link", FOLLOW), ("link", 0), ("relative-link", FOLLOW)] {
        let output = run(&open_guest(INPUT_FD, path, lookup, 0, None), &dirs.spec());
        assert_open_failed(&output, SECRET);
    }
}

#[test]
fn input_is_read_only_and_output_is_writable() {
    let dirs = Dirs::new();
    let output = run(
        &open_guest(INPUT_FD, "new.txt", FOLLOW, CREATE, Some("nope")),
        &dirs.spec(),
    );
    assert_open_failed(&output, b"nope");
    assert!(!dirs.input.path().join("new.txt").exists());

    let output = run(
        &open_guest(OUTPUT_FD, "result.txt", FOLLOW, CREATE, Some("42\n")),
        &dirs.spec(),
    );
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    let written = std::fs::read(dirs.output.path().join("result.txt")).expect("result.txt");
    assert_eq!(written, b"42\n");
}

/// `to` relative to the parent of `from`, both under the same temporary root: `<name>/secret`.
fn relative_path(from: &Path, to: &Path) -> String {
    let parent = from.parent().expect("input dir has a parent");
    to.strip_prefix(parent)
        .expect("secret is a sibling of the input dir")
        .to_str()
        .expect("utf-8 temp path")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Components

/// A component that imports nothing and exports `wasi:cli/run`, whose `run` is the core function
/// `body` (returning 0 for `ok` and 1 for `err`) in a core module with one page of memory.
fn run_component(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"
        (component
          (core module $m
            (memory 1)
            (func (export "run") (result i32) {body}))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $run-instance)))
        "#
    ))
    .expect("component wat")
}

/// A component whose `run` calls `wasi:cli/exit.exit` with `ok` (`status` 0) or `err` (1).
fn exiting_component(status: i32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"
        (component
          (import "wasi:cli/exit@0.2.0" (instance $exit
            (export "exit" (func (param "status" (result))))))
          (core func $exit (canon lower (func $exit "exit")))
          (core instance $host (export "exit" (func $exit)))
          (core module $m
            (import "host" "exit" (func $exit (param i32)))
            (func (export "run") (result i32) (call $exit (i32.const {status})) unreachable))
          (core instance $i (instantiate $m (with "host" (instance $host))))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $run-instance)))
        "#
    ))
    .expect("component wat")
}

#[test]
fn minimal_component_runs() {
    let sandbox = sandbox();
    let dirs = Dirs::new();
    let ok = compile(&sandbox, &run_component("i32.const 0"));
    assert!(ok.is_component());
    let output = sandbox.run(&ok, &dirs.spec(), &TaskControl::new());
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });

    let err = compile(&sandbox, &run_component("i32.const 1"));
    let output = sandbox.run(&err, &dirs.spec(), &TaskControl::new());
    assert_eq!(output.outcome, Outcome::Exited { code: 1 });

    let traps = compile(&sandbox, &run_component("unreachable"));
    let output = sandbox.run(&traps, &dirs.spec(), &TaskControl::new());
    assert!(trap_message(&output).contains("unreachable"));
}

#[test]
fn component_exit_is_the_exit_code() {
    let sandbox = sandbox();
    let dirs = Dirs::new();
    for (status, code) in [(0, 0), (1, 1)] {
        let program = compile(&sandbox, &exiting_component(status));
        let output = sandbox.run(&program, &dirs.spec(), &TaskControl::new());
        assert_eq!(output.outcome, Outcome::Exited { code });
    }
}

#[test]
fn components_have_the_same_limits() {
    let sandbox = sandbox();
    let dirs = Dirs::new();

    let mut spec = dirs.spec();
    spec.timeout = Duration::from_millis(100);
    let spins = compile(
        &sandbox,
        &run_component("(loop $again (br $again)) i32.const 0"),
    );
    let output = sandbox.run(&spins, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 100 });

    let mut spec = dirs.spec();
    spec.memory_limit = 2 * MIB;
    let bomb = compile(
        &sandbox,
        &run_component(
            "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) \
             unreachable",
        ),
    );
    let output = sandbox.run(&bomb, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::MemoryExceeded { limit: 2 * MIB });
}

const WORDCOUNT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/target/wasm32-wasip2/release/wordcount.wasm"
);

#[test]
fn wordcount_component_counts_input() {
    let bytes = std::fs::read(WORDCOUNT).unwrap_or_else(|e| {
        panic!(
            "cannot read {WORDCOUNT} ({e}): build it with `cargo build --release --target \
             wasm32-wasip2 -p wordcount` in examples/ (`cargo xtask test` does)"
        )
    });
    let dirs = Dirs::new();
    std::fs::write(dirs.input.path().join("a.txt"), "one two\nthree\n").expect("write input");
    let mut spec = dirs.spec();
    spec.name = "wordcount".to_string();
    spec.memory_limit = 64 * MIB;
    spec.timeout = Duration::from_secs(60);
    let sandbox = sandbox();
    let program = compile(&sandbox, &bytes);
    assert!(program.is_component());
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(
        output.outcome,
        Outcome::Exited { code: 0 },
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts =
        std::fs::read_to_string(dirs.output.path().join("counts.tsv")).expect("counts.tsv");
    assert!(counts.contains("2\t3\t14\ta.txt"), "{counts}");
    assert_eq!(output.stdout, counts.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The sandbox survives its guests

#[test]
fn sandbox_is_reusable_after_traps_and_limits() {
    let sandbox = sandbox();
    let dirs = Dirs::new();
    let hello = compile(&sandbox, &hello());

    let traps = compile(&sandbox, &wasm(r#"(func (export "_start") unreachable)"#));
    trap_message(&sandbox.run(&traps, &dirs.spec(), &TaskControl::new()));

    let overflows = compile(
        &sandbox,
        &wasm(r#"(func $deeper (call $deeper)) (func (export "_start") (call $deeper))"#),
    );
    trap_message(&sandbox.run(&overflows, &dirs.spec(), &TaskControl::new()));

    let mut short = dirs.spec();
    short.timeout = Duration::from_millis(50);
    let spins = compile(&sandbox, &spin());
    let output = sandbox.run(&spins, &short, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 50 });

    for _ in 0..2 {
        let output = sandbox.run(&hello, &dirs.spec(), &TaskControl::new());
        assert_eq!(output.outcome, Outcome::Exited { code: 0 });
        assert_eq!(output.stdout, b"hello\n");
    }
}

#[test]
fn programs_of_another_sandbox_are_refused() {
    let dirs = Dirs::new();
    let first = sandbox();
    let second = sandbox();
    let program = compile(&first, &hello());
    let output = second.run(&program, &dirs.spec(), &TaskControl::new());
    assert!(
        matches!(output.outcome, Outcome::Refused { .. }),
        "{:?}",
        output.outcome
    );
}

#[test]
fn missing_directories_are_refused_not_panics() {
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.output_dir = dirs.output.path().join("does-not-exist");
    let output = run(&hello(), &spec);
    match output.outcome {
        Outcome::Refused { reason } => assert!(reason.contains("/output"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// What compile refuses

#[test]
fn random_bytes_are_not_wasm() {
    let sandbox = sandbox();
    let error = sandbox
        .compile(b"\x7fELF this is not WebAssembly at all")
        .expect_err("not wasm");
    assert!(matches!(error, SandboxError::NotWasm), "{error:?}");
    assert!(error.to_string().contains("not a WebAssembly"), "{error}");

    // Text is not accepted either: compile takes binaries.
    let error = sandbox.compile(b"(module)").expect_err("text");
    assert!(matches!(error, SandboxError::NotWasm), "{error:?}");
}

#[test]
fn corrupt_wasm_is_invalid() {
    let sandbox = sandbox();
    let mut bytes = hello();
    bytes.truncate(bytes.len() / 2);
    let error = sandbox.compile(&bytes).expect_err("truncated");
    assert!(matches!(error, SandboxError::Invalid { .. }), "{error:?}");
}

#[test]
fn unknown_imports_are_named() {
    let sandbox = sandbox();
    let guest = wat::parse_str(
        r#"(module
             (import "env" "printf" (func (param i32 i32) (result i32)))
             (func (export "_start")))"#,
    )
    .expect("wat");
    let error = sandbox.compile(&guest).expect_err("env::printf");
    match &error {
        SandboxError::UnsupportedImport { import, .. } => assert_eq!(import, "env::printf"),
        other => panic!("expected UnsupportedImport, got {other:?}"),
    }
    assert!(error.to_string().contains("env::printf"), "{error}");

    // A WASI function that does not exist is just as unknown.
    let guest = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "launch_missiles" (func))
             (func (export "_start")))"#,
    )
    .expect("wat");
    let error = sandbox.compile(&guest).expect_err("launch_missiles");
    assert!(
        error
            .to_string()
            .contains("wasi_snapshot_preview1::launch_missiles"),
        "{error}"
    );
}

#[test]
fn component_imports_are_named() {
    let sandbox = sandbox();
    let guest = wat::parse_str(
        r#"
        (component
          (import "lull:nope/thing" (instance (export "f" (func))))
          (core module $m (func (export "run") (result i32) i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $run-instance)))
        "#,
    )
    .expect("wat");
    let error = sandbox.compile(&guest).expect_err("lull:nope/thing");
    match &error {
        SandboxError::UnsupportedImport { import, .. } => assert_eq!(import, "lull:nope/thing"),
        other => panic!("expected UnsupportedImport, got {other:?}"),
    }
}

#[test]
fn non_commands_are_refused() {
    let sandbox = sandbox();
    let library =
        wat::parse_str(r#"(module (func (export "add") (param i32) (result i32) local.get 0))"#)
            .expect("wat");
    let error = sandbox.compile(&library).expect_err("no _start");
    assert!(
        matches!(error, SandboxError::NotACommand { .. }),
        "{error:?}"
    );

    let component = wat::parse_str("(component)").expect("wat");
    let error = sandbox.compile(&component).expect_err("no wasi:cli/run");
    assert!(
        matches!(error, SandboxError::NotACommand { .. }),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Getting out of the way: pause, duty cycle, eviction, priority

/// A sandbox whose epoch only advances when the test calls [`Sandbox::increment_epoch`].
fn manual_sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        epoch_tick: Duration::ZERO,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

/// Counts to `n` in a local, then writes the count to stdout as 4 little-endian bytes: a guest
/// whose output shows whether its state survived being stopped.
fn counter(n: u32) -> Vec<u8> {
    let text = lull_agent::selftest::counter(n);
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

/// Serialises the tests that measure time or CPU, so that they do not compete with each other
/// for the cores (the others are short).
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The CPU time of one thread (Linux: `pthread_getcpuclockid`).
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
struct ThreadClock(libc::clockid_t);

#[cfg(target_os = "linux")]
impl ThreadClock {
    /// The calling thread's clock; valid while the thread lives.
    fn current() -> ThreadClock {
        let mut id: libc::clockid_t = 0;
        // SAFETY: `id` is a valid out-pointer; `pthread_self` is the calling thread.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        assert_eq!(rc, 0, "pthread_getcpuclockid");
        ThreadClock(id)
    }

    fn cpu_time(self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime on a guest thread's clock");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// The share of one core the thread used over `window` of wall time.
    fn share_over(self, window: Duration) -> f64 {
        let (wall, cpu) = (std::time::Instant::now(), self.cpu_time());
        thread::sleep(window);
        (self.cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64()
    }
}

/// A guest running on a thread of its own, as the agent runs them.
struct Guest<'scope> {
    handle: thread::ScopedJoinHandle<'scope, RunOutput>,
    #[cfg(target_os = "linux")]
    clock: ThreadClock,
    /// The guest thread's Linux thread ID.
    #[cfg(target_os = "linux")]
    tid: libc::pid_t,
}

impl Guest<'_> {
    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    fn join(self) -> RunOutput {
        self.handle.join().expect("guest thread")
    }
}

/// Starts `sandbox.run(program, spec, control)` on a new thread of `scope`.
fn start<'scope>(
    scope: &'scope thread::Scope<'scope, '_>,
    sandbox: &'scope Sandbox,
    program: &'scope Program,
    spec: &'scope RunSpec,
    control: &'scope TaskControl,
) -> Guest<'scope> {
    // What the guest's thread says about itself: on Linux its CPU clock and thread ID.
    #[cfg(target_os = "linux")]
    type Started = (ThreadClock, libc::pid_t);
    #[cfg(not(target_os = "linux"))]
    type Started = ();
    let (clock_tx, clock_rx) = std::sync::mpsc::channel::<Started>();
    let handle = thread::Builder::new()
        .name("guest".to_string())
        .spawn_scoped(scope, move || {
            #[cfg(target_os = "linux")]
            clock_tx
                // SAFETY: gettid has no arguments and cannot fail.
                .send((ThreadClock::current(), unsafe { libc::gettid() }))
                .expect("send clock");
            #[cfg(not(target_os = "linux"))]
            drop(clock_tx);
            sandbox.run(program, spec, control)
        })
        .expect("spawn guest thread");
    #[cfg(target_os = "linux")]
    let (clock, tid) = clock_rx.recv().expect("guest clock");
    #[cfg(not(target_os = "linux"))]
    drop(clock_rx);
    Guest {
        handle,
        #[cfg(target_os = "linux")]
        clock,
        #[cfg(target_os = "linux")]
        tid,
    }
}

#[test]
fn paused_before_the_run_waits_then_finishes() {
    let sandbox = manual_sandbox();
    let program = compile(&sandbox, &counter(1_000_000));
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    control.pause();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(300));
        assert!(!guest.is_finished(), "the guest ran while paused");
        assert!(control.is_paused());
        control.resume();
        guest.join()
    });
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout, 1_000_000u32.to_le_bytes());
    // It waited at its first check, before it was instantiated.
    assert!(
        control.paused_for() >= Duration::from_millis(200),
        "{:?}",
        control.paused_for()
    );
}

/// Iterations of [`counter`] that take well over the few tens of milliseconds before the pause
/// lands (about 0.9 s here).
const LONG_COUNT: u32 = 3 << 30;

#[test]
fn pause_stops_a_guest_where_it_is_and_resume_loses_nothing() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &counter(LONG_COUNT));
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(20));
        let took = control
            .pause_and_wait(Duration::from_secs(5))
            .expect("the guest stops");
        println!("pause_and_wait mid-loop: {took:?}");
        assert!(
            !guest.is_finished(),
            "the guest finished before it was paused: raise LONG_COUNT"
        );
        thread::sleep(Duration::from_millis(300));
        assert!(!guest.is_finished(), "the guest ran while paused");
        control.resume();
        guest.join()
    });
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout, LONG_COUNT.to_le_bytes());
    assert!(control.paused_for() >= Duration::from_millis(300));
    println!(
        "counted to {LONG_COUNT} in {:?}, paused for {:?}",
        output.elapsed,
        control.paused_for()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn pause_and_wait_returns_once_the_guest_is_parked_not_spinning() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        let mut took = Vec::new();
        for round in 0..20 {
            let d = control
                .pause_and_wait(Duration::from_secs(5))
                .expect("the guest stops");
            took.push(d);
            if round == 0 {
                let share = guest.clock.share_over(Duration::from_millis(300));
                println!("CPU share of the paused guest's thread over 300 ms: {share:.4}");
                assert!(
                    share < 50.0 / 300.0,
                    "the paused guest used {share:.3} of a core"
                );
            }
            control.resume();
            thread::sleep(Duration::from_millis(20));
        }
        took.sort();
        println!(
            "pause_and_wait over {} pauses: min {:?}, p50 {:?}, max {:?}",
            took.len(),
            took[0],
            took[took.len() / 2],
            took[took.len() - 1]
        );
        assert!(
            took[took.len() - 1] < Duration::from_millis(500),
            "{took:?}"
        );
        control.cancel("done");
        guest.join()
    });
    assert_eq!(
        output.outcome,
        Outcome::Cancelled {
            reason: "done".to_string()
        }
    );
}

#[cfg(target_os = "linux")]
#[test]
fn pause_and_wait_waits_for_every_guest_of_the_task() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    thread::scope(|s| {
        let first = start(s, &sandbox, &program, &spec, &control);
        let second = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        let took = control
            .pause_and_wait(Duration::from_secs(5))
            .expect("both guests stop");
        println!("pause_and_wait for two guests: {took:?}");
        let (a, b) = (first.clock.cpu_time(), second.clock.cpu_time());
        thread::sleep(Duration::from_millis(200));
        let used = (first.clock.cpu_time() - a) + (second.clock.cpu_time() - b);
        assert!(used < Duration::from_millis(30), "{used:?}");
        control.cancel("done");
        for guest in [first, second] {
            assert!(matches!(guest.join().outcome, Outcome::Cancelled { .. }));
        }
    });
}

#[test]
fn paused_time_does_not_count_toward_the_timeout() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.timeout = Duration::from_millis(300);
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        control
            .pause_and_wait(Duration::from_secs(5))
            .expect("the guest stops");
        thread::sleep(Duration::from_millis(600));
        assert!(!guest.is_finished(), "the guest timed out while paused");
        control.resume();
        guest.join()
    });
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 300 });
    println!(
        "timed out after {:?} of wall time, {:?} of it paused",
        output.elapsed,
        control.paused_for()
    );
    assert!(
        output.elapsed >= Duration::from_millis(800),
        "{:?}",
        output.elapsed
    );
    assert!(
        output.elapsed < Duration::from_secs(5),
        "{:?}",
        output.elapsed
    );
}

#[test]
fn cancel_while_paused_stops_promptly() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let (output, took) = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        control
            .pause_and_wait(Duration::from_secs(5))
            .expect("the guest stops");
        let cancelled = std::time::Instant::now();
        control.cancel("the owner came back");
        let output = guest.join();
        (output, cancelled.elapsed())
    });
    assert_eq!(
        output.outcome,
        Outcome::Cancelled {
            reason: "the owner came back".to_string()
        }
    );
    println!("cancel of a paused guest to run returning: {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn cpu_share_duty_cycles_the_guest() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        // At idle priority the guest gets next to nothing on a busy machine, whatever its share;
        // at normal priority it competes like any program, so that its share shows.
        // SAFETY: plain data; all zero is priority 0 (musl's struct has more fields).
        let param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: a plain system call on a thread of this process that is alive (it spins
        // until cancelled below).
        let raised = unsafe { libc::sched_setscheduler(guest.tid, libc::SCHED_OTHER, &param) };
        assert_eq!(
            raised,
            0,
            "raising the guest to normal priority: {}",
            std::io::Error::last_os_error()
        );
        let uncapped = guest.clock.share_over(Duration::from_millis(300));
        control.set_cpu_share(0.25);
        thread::sleep(Duration::from_millis(50));
        let capped = guest.clock.share_over(Duration::from_secs(1));
        // Uncapped again: load that started meanwhile shows here.
        control.set_cpu_share(1.0);
        thread::sleep(Duration::from_millis(50));
        let after = guest.clock.share_over(Duration::from_millis(300));
        println!(
            "CPU share of a spinning guest: {uncapped:.3} uncapped, {capped:.3} capped at 0.25, \
             {after:.3} uncapped again"
        );
        // The cap holds however busy the machine is: the guest rests through three quarters of
        // every period.
        assert!(capped <= 0.45, "capped at 0.25: {capped:.3}");
        // And it runs in the rest: at least 40 % of what a quarter of the CPU the machine left
        // it uncapped comes to (other programs compete for its run parts too).
        let available = uncapped.min(after).min(1.0);
        assert!(
            capped >= 0.25 * available * 0.4,
            "capped at 0.25: {capped:.3}, with {available:.3} of a core to be had"
        );
        control.cancel("done");
        guest.join()
    });
    assert!(matches!(output.outcome, Outcome::Cancelled { .. }));
}

#[test]
fn duty_cycle_rests_do_not_count_toward_the_timeout() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.timeout = Duration::from_millis(200);
    let control = TaskControl::new();
    control.set_cpu_share(0.25);
    let output = sandbox.run(&program, &spec, &control);
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 200 });
    println!(
        "a 200 ms timeout at CPU share 0.25 ended after {:?}",
        output.elapsed
    );
    // About 200 ms / 0.3 (runs end at the first tick past the share).
    assert!(
        output.elapsed >= Duration::from_millis(450),
        "{:?}",
        output.elapsed
    );
    assert!(
        output.elapsed < Duration::from_secs(10),
        "{:?}",
        output.elapsed
    );
}

#[test]
fn evict_stops_the_guest_when_its_grace_runs_out() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let (output, took) = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        let evicted = std::time::Instant::now();
        control.evict("the owner needs the memory", Duration::from_millis(200));
        let output = guest.join();
        (output, evicted.elapsed())
    });
    assert_eq!(
        output.outcome,
        Outcome::Evicted {
            reason: "the owner needs the memory".to_string()
        }
    );
    println!("evict with 200 ms grace to run returning: {took:?}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn evict_without_grace_stops_at_the_next_check() {
    let _timing = timing();
    let sandbox = sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let (output, took) = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(50));
        let evicted = std::time::Instant::now();
        control.evict("reclaimed", Duration::ZERO);
        let output = guest.join();
        (output, evicted.elapsed())
    });
    assert_eq!(
        output.outcome,
        Outcome::Evicted {
            reason: "reclaimed".to_string()
        }
    );
    println!("evict without grace to run returning: {took:?}");
    // About a tick; generous, because an idle-priority guest waits for a free core.
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn evicted_guest_that_finishes_in_its_grace_keeps_its_outcome() {
    // Manual epochs: once resumed, the guest makes no further check, so it surely finishes
    // within the grace.
    let sandbox = manual_sandbox();
    let program = compile(&sandbox, &counter(1_000_000));
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    control.pause();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(100));
        assert!(!guest.is_finished(), "the guest ran while paused");
        // Eviction resumes the paused guest for its grace.
        control.evict("the owner is back", Duration::from_secs(60));
        assert!(!control.is_paused());
        guest.join()
    });
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
    assert_eq!(output.stdout, 1_000_000u32.to_le_bytes());
}

#[test]
fn manual_epochs_decide_when_guests_check() {
    let sandbox = manual_sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.timeout = Duration::from_millis(50);
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        thread::sleep(Duration::from_millis(200));
        // Past its time limit, but no epoch has passed, so it has not checked.
        assert!(!guest.is_finished());
        sandbox.increment_epoch();
        guest.join()
    });
    assert_eq!(output.outcome, Outcome::TimedOut { limit_ms: 50 });
}

#[cfg(target_os = "linux")]
#[test]
fn run_lowers_its_thread_to_sched_idle() {
    use lull_agent::sandbox::current_thread_is_idle_priority;

    let sandbox = sandbox();
    let program = compile(&sandbox, &hello());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let (before, outcome, after) = thread::scope(|s| {
        s.spawn(|| {
            let before = current_thread_is_idle_priority();
            let output = sandbox.run(&program, &spec, &TaskControl::new());
            (before, output.outcome, current_thread_is_idle_priority())
        })
        .join()
        .expect("guest thread")
    });
    assert!(!before, "a fresh thread already at idle priority");
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert!(after, "run left its thread above SCHED_IDLE");
    // Only that thread: this one is untouched.
    assert!(!current_thread_is_idle_priority());
}

/// The scheduling policy of thread `tid` of this process.
#[cfg(target_os = "linux")]
fn policy_of(tid: libc::pid_t) -> libc::c_int {
    // SAFETY: no pointers.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    assert!(policy >= 0, "sched_getscheduler({tid})");
    policy
}

/// Whether this process may take a thread from `SCHED_IDLE` back to `SCHED_OTHER` (root,
/// `CAP_SYS_NICE` or `RLIMIT_NICE`), tried on a thread of its own.
#[cfg(target_os = "linux")]
fn may_raise_priority() -> bool {
    thread::spawn(|| {
        // SAFETY: plain data; all zero is priority 0 (musl's struct has more fields).
        let param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: `param` outlives the calls; pid 0 is this short-lived thread.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                && (libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0
                    || (libc::setpriority(libc::PRIO_PROCESS, 0, 19) == 0
                        && libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0))
        }
    })
    .join()
    .expect("probe thread")
}

/// Waits until the guest thread has used `cpu` of CPU time: it is then inside its loop.
#[cfg(target_os = "linux")]
fn wait_until_spinning(guest: &Guest<'_>, cpu: Duration) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while guest.clock.cpu_time() < cpu {
        assert!(std::time::Instant::now() < until, "the guest never ran");
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_guest_asked_to_pause_is_raised_until_it_parks() {
    let may_raise = may_raise_priority();
    let sandbox = manual_sandbox();
    let program = compile(&sandbox, &spin());
    let dirs = Dirs::new();
    let spec = dirs.spec();
    let control = TaskControl::new();
    let output = thread::scope(|s| {
        let guest = start(s, &sandbox, &program, &spec, &control);
        wait_until_spinning(&guest, Duration::from_millis(30));
        assert_eq!(policy_of(guest.tid), libc::SCHED_IDLE, "guests run idle");

        // Asked to pause, it runs at normal priority until it gets to its check...
        control.pause();
        let raised = if may_raise {
            libc::SCHED_OTHER
        } else {
            libc::SCHED_IDLE
        };
        assert_eq!(policy_of(guest.tid), raised, "may raise: {may_raise}");
        // ... and parks back at idle priority.
        sandbox.increment_epoch();
        assert!(control.pause_and_wait(Duration::from_secs(10)).is_some());
        assert_eq!(policy_of(guest.tid), libc::SCHED_IDLE);

        // A pause lifted before the guest got to its check lowers it again too.
        control.resume();
        let used = guest.clock.cpu_time();
        wait_until_spinning(&guest, used + Duration::from_millis(30));
        control.pause();
        assert_eq!(policy_of(guest.tid), raised);
        control.resume();
        assert_eq!(policy_of(guest.tid), libc::SCHED_IDLE);

        control.cancel("done");
        sandbox.increment_epoch();
        guest.join()
    });
    assert!(
        matches!(output.outcome, Outcome::Cancelled { .. }),
        "{:?}",
        output.outcome
    );
}

#[test]
fn the_reported_wasmtime_version_is_the_one_built_in() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("reading Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .expect("wasmtime in Cargo.lock")
        .trim_end_matches('"');
    assert_eq!(version, lull_agent::sandbox::WASMTIME_VERSION);
}

// ---------------------------------------------------------------------------------------------
// The pool and compiled artifacts

fn pooled_sandbox(guests: u32, memory: u64) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pooled_guests: guests,
        pooled_memory: memory,
        ..SandboxConfig::default()
    })
    .expect("sandbox with a pool")
}

#[test]
fn pooled_guests_run_again_and_again_in_reused_slots() {
    let sandbox = pooled_sandbox(2, 64 * MIB);
    let program = compile(&sandbox, &hello());
    assert!(program.fits_pool());
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.pooled = true;
    // More runs than slots: each run gives its slot back.
    for _ in 0..5 {
        let output = sandbox.run(&program, &spec, &TaskControl::new());
        assert_eq!(output.outcome, Outcome::Exited { code: 0 });
        assert_eq!(output.stdout, b"hello\n");
    }
}

#[test]
fn pooled_guests_keep_their_memory_cap() {
    let sandbox = pooled_sandbox(1, 64 * MIB);
    let guest = memory_bomb();
    let program = compile(&sandbox, &guest);
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.pooled = true;
    spec.memory_limit = 2 * MIB;
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::MemoryExceeded { limit: 2 * MIB });
}

#[test]
fn a_program_larger_than_a_slot_runs_outside_the_pool() {
    let sandbox = pooled_sandbox(1, MIB);
    // 32 pages (2 MiB) at start: more than a 1 MiB slot holds.
    let guest = wat::parse_str(r#"(module (memory 32) (func (export "_start")))"#).expect("wat");
    let program = compile(&sandbox, &guest);
    let dirs = Dirs::new();
    let mut spec = dirs.spec();
    spec.pooled = true;
    spec.memory_limit = 4 * MIB;
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::Exited { code: 0 });
}

#[test]
fn a_kept_artifact_loads_in_another_sandbox_of_the_same_configuration() {
    let first = sandbox();
    let artifact = first.precompile(&hello()).expect("precompile");
    let kept = artifact.bytes().to_vec();
    // The pool does not change compiled code: one key for both.
    let second = pooled_sandbox(1, 64 * MIB);
    assert_eq!(first.compatibility_key(), second.compatibility_key());
    assert_eq!(first.compatibility_key().len(), 16);
    // SAFETY: the bytes are exactly what `precompile` produced.
    let again = unsafe { lull_agent::sandbox::Artifact::from_trusted_bytes(kept) }
        .expect("recognised as an artifact");
    let program = second.load(&again).expect("load");
    let dirs = Dirs::new();
    let output = second.run(&program, &dirs.spec(), &TaskControl::new());
    assert_eq!(output.stdout, b"hello\n");
}

#[test]
fn a_truncated_artifact_is_refused_not_run() {
    let sandbox = sandbox();
    let artifact = sandbox.precompile(&hello()).expect("precompile");
    let mut bytes = artifact.bytes().to_vec();
    bytes.truncate(bytes.len() / 2);
    // SAFETY: deliberately damaged; wasmtime's own checks must refuse it before running it.
    match unsafe { lull_agent::sandbox::Artifact::from_trusted_bytes(bytes) } {
        None => {}
        Some(a) => assert!(matches!(
            sandbox.load(&a),
            Err(SandboxError::Artifact { .. })
        )),
    }
    assert!(unsafe { lull_agent::sandbox::Artifact::from_trusted_bytes(hello()) }.is_none());
}

// ---------------------------------------------------------------------------------------------
// lull:guest/host

/// Records what a guest hands over.
#[derive(Default)]
struct Recorder {
    progress: std::sync::Mutex<Vec<f64>>,
    /// Each state, and whether the guest left after it.
    checkpoints: std::sync::Mutex<Vec<(Vec<u8>, bool)>>,
}

impl lull_agent::sandbox::GuestHooks for Recorder {
    fn task_index(&self) -> u32 {
        3
    }
    fn attempt(&self) -> u32 {
        2
    }
    fn progress(&self, fraction: f64) {
        self.progress.lock().unwrap().push(fraction);
    }
    fn checkpoint(&self, state: Vec<u8>, leaving: bool) -> Result<(), String> {
        if state.len() > 16 {
            return Err("over the cap".into());
        }
        self.checkpoints.lock().unwrap().push((state, leaving));
        Ok(())
    }
    fn restore(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A component that reports progress `task-index / 10` and then 2.0, then keeps the checkpoint
/// `state` (`len` bytes of "state-and-more") and leaves.
fn leaving_component(len: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"
        (component
          (import "lull:guest/host@0.1.0" (instance $host
            (export "progress" (func (param "fraction" f64)))
            (export "task-index" (func (result u32)))
            (export "checkpoint-and-leave"
              (func (param "state" (list u8)) (result (result (error string)))))))
          (core module $mem
            (memory (export "memory") 1)
            (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 2048)))
          (core instance $mi (instantiate $mem))
          (core func $progress (canon lower (func $host "progress")))
          (core func $index (canon lower (func $host "task-index")))
          (core func $leave (canon lower (func $host "checkpoint-and-leave")
            (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
          (core instance $hi
            (export "progress" (func $progress))
            (export "index" (func $index))
            (export "leave" (func $leave)))
          (core module $m
            (import "mem" "memory" (memory 1))
            (import "host" "progress" (func $progress (param f64)))
            (import "host" "index" (func $index (result i32)))
            (import "host" "leave" (func $leave (param i32 i32 i32)))
            (data (i32.const 16) "state-and-more-and-more-and-more")
            (func (export "run") (result i32)
              (call $progress (f64.div (f64.convert_i32_u (call $index)) (f64.const 10)))
              (call $progress (f64.const 2))
              (call $leave (i32.const 16) (i32.const {len}) (i32.const 64))
              ;; Only reached when the checkpoint was refused: exit with err.
              (i32.const 1)))
          (core instance $i (instantiate $m (with "mem" (instance $mi)) (with "host" (instance $hi))))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $run-instance)))
        "#
    ))
    .expect("component wat")
}

#[test]
fn a_component_reports_progress_and_leaves_with_its_checkpoint() {
    let sandbox = sandbox();
    let dirs = Dirs::new();
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut spec = dirs.spec();
    spec.hooks = Some(lull_agent::sandbox::Hooks(recorder.clone()));

    let program = compile(&sandbox, &leaving_component(5));
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(
        output.outcome,
        Outcome::Left {
            reason: "the guest left after keeping a checkpoint".into()
        }
    );
    assert_eq!(*recorder.progress.lock().unwrap(), [0.3, 1.0]);
    assert_eq!(
        *recorder.checkpoints.lock().unwrap(),
        [(b"state".to_vec(), true)],
        "kept as the guest left"
    );

    // Under notice, the eviction's reason is the outcome's.
    let control = TaskControl::new();
    control.evict("the agent is being drained", Duration::from_secs(60));
    let output = sandbox.run(&program, &spec, &control);
    assert_eq!(
        output.outcome,
        Outcome::Evicted {
            reason: "the agent is being drained".into()
        }
    );

    // A checkpoint the agent refuses comes back to the guest, which carries on (here it exits
    // with err).
    let program = compile(&sandbox, &leaving_component(30));
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::Exited { code: 1 });

    // Without hooks the guest still links, and its checkpoint is refused.
    spec.hooks = None;
    let output = sandbox.run(&program, &spec, &TaskControl::new());
    assert_eq!(output.outcome, Outcome::Exited { code: 1 });
}

#[test]
fn notices_come_from_the_task_control() {
    let control = TaskControl::new();
    assert_eq!(control.notice(), None);
    assert_eq!(control.wait_notice(Duration::from_millis(10)), None);
    let theirs = control.clone();
    let waiter = thread::spawn(move || theirs.wait_notice(Duration::from_secs(30)));
    thread::sleep(Duration::from_millis(50));
    control.evict("low memory", Duration::from_secs(10));
    let (reason, left) = waiter.join().unwrap().expect("the notice");
    assert_eq!(reason, "low memory");
    assert!(
        left <= Duration::from_secs(10) && left > Duration::from_secs(9),
        "{left:?}"
    );
}
