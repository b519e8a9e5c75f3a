//! The sandbox's epoch ticker wakes only as often as guests need: every 10 ms while a guest runs
//! (for its time limit), besides once per 10 ms duty period while one is duty-cycled (where its
//! run part ends), never while every guest is parked by a pause. (A file of its own, so that the only ticker thread in the process is the
//! one under test.)

#![cfg(target_os = "linux")]

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use lull_agent::sandbox::{RunSpec, Sandbox, SandboxConfig, TaskControl};
use lull_protocol::message::Outcome;
use tempfile::TempDir;

/// The Linux thread ID of this process's thread named `name`.
fn thread_named(name: &str) -> Option<String> {
    fs::read_dir("/proc/self/task").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// How many times thread `tid` of this process has gone to sleep of its own accord.
fn voluntary_switches(tid: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/self/task/*/status")
}

/// How often thread `tid` woke up over `window`.
fn wakeups_over(tid: &str, window: Duration) -> u64 {
    let before = voluntary_switches(tid);
    thread::sleep(window);
    voluntary_switches(tid) - before
}

#[test]
fn the_ticker_ticks_only_as_often_as_guests_need() {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let spin = wat::parse_str(r#"(module (func (export "_start") (loop $again (br $again))))"#)
        .expect("WAT");
    let program = sandbox.compile(&spin).expect("compile");
    let (output, scratch) = (TempDir::new().expect("dir"), TempDir::new().expect("dir"));
    let spec = RunSpec {
        name: "spin".to_string(),
        args: Vec::new(),
        env: Vec::new(),
        stdin: Vec::new(),
        input_dir: None,
        mounts: Vec::new(),
        output_dir: output.path().to_path_buf(),
        scratch_dir: scratch.path().to_path_buf(),
        memory_limit: 16 << 20,
        timeout: Duration::from_secs(60),
        pooled: false,
        hooks: None,
        seed: None,
    };
    let control = TaskControl::new();
    let window = Duration::from_millis(300);
    let output = thread::scope(|s| {
        let guest = s.spawn(|| sandbox.run(&program, &spec, &control));
        let started = Instant::now();
        let ticker = loop {
            if let Some(tid) = thread_named("lull-epoch") {
                break tid;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no ticker");
            thread::sleep(Duration::from_millis(5));
        };
        thread::sleep(Duration::from_millis(50));

        // About 30 ticks in 300 ms while the guest runs (a 10 ms tick)...
        let running = wakeups_over(&ticker, window);
        // ... about twice that while it is duty-cycled (once more per 10 ms period, where the run
        // part ends), not a tick per millisecond ...
        control.set_cpu_share(0.5);
        thread::sleep(Duration::from_millis(20));
        let capped = wakeups_over(&ticker, window);
        control.set_cpu_share(1.0);
        thread::sleep(Duration::from_millis(20));
        let uncapped = wakeups_over(&ticker, window);
        // ... none while it is parked ...
        assert!(control.pause_and_wait(Duration::from_secs(10)).is_some());
        thread::sleep(Duration::from_millis(10));
        let parked = wakeups_over(&ticker, window);
        // ... and the 10 ms tick again once it is resumed.
        control.resume();
        thread::sleep(Duration::from_millis(20));
        let resumed = wakeups_over(&ticker, window);
        println!(
            "ticker wake-ups per {window:?}: running {running}, capped {capped}, uncapped {uncapped}, parked {parked}, resumed {resumed}"
        );
        // Wake-ups come late on a loaded machine, never early: bound the slow ones from above
        // and ask little of the fast one.
        for (what, n) in [
            ("running", running),
            ("uncapped", uncapped),
            ("resumed", resumed),
        ] {
            assert!((5..=45).contains(&n), "{what}: {n}");
        }
        assert!((5..=100).contains(&capped), "capped: {capped}");
        assert!(parked <= 2, "parked: {parked}");

        control.cancel("done");
        guest.join().expect("guest thread")
    });
    assert!(
        matches!(output.outcome, Outcome::Cancelled { .. }),
        "{:?}",
        output.outcome
    );
}
