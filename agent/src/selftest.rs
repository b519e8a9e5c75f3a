//! `lull-agent self-test`: checks, on the machine at hand, the parts of the agent that depend on
//! its operating system — the load sampler and its signals, the sandbox running a guest, a
//! pause and resume of that guest, and the owner's control channel (a Unix socket, or a named
//! pipe on Windows) — without a coordinator. Installers and packagers run it to
//! see that a build works where it is installed; CI runs the Windows build under Wine with it.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lull_protocol::message::Outcome;

use crate::sampler::LoadSampler;
use crate::sandbox::{RunSpec, Sandbox, SandboxConfig, TaskControl};

/// A WASI module (text) that counts to `n`, then writes the count (4 bytes, little-endian) to
/// stdout: long enough, for large `n`, to be caught running and paused.
pub fn counter(n: u32) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start") (local $i i32)
            (loop $again
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const {n}))))
            (i32.store (i32.const 100) (local.get $i))
            (i32.store (i32.const 0) (i32.const 100))
            (i32.store (i32.const 4) (i32.const 4))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    )
}

/// Runs the checks, saying each on `out`; fails at the first that does not hold. Blocks: call
/// it off the async runtime, whose `runtime` handle serves the owner's channel.
pub fn run(out: &mut impl Write, runtime: &tokio::runtime::Handle) -> anyhow::Result<()> {
    writeln!(
        out,
        "lull-agent {} self-test on {} {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )?;
    sampler(out)?;
    sandbox(out)?;
    runtime.block_on(owner_channel(out))?;
    writeln!(out, "self-test passed")?;
    Ok(())
}

fn sampler(out: &mut impl Write) -> anyhow::Result<()> {
    let mut sampler = LoadSampler::new().context("opening the load sampler")?;
    // sysinfo's CPU figures need 200 ms between readings; a busy thread of this process must
    // show as the agent's own load, not the machine's.
    std::thread::sleep(Duration::from_millis(250));
    sampler.sample();
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let load = sampler.sample();
    writeln!(out, "sampler: {load:?}")?;
    ensure!(
        load.memory_available > 0,
        "the sampler reads no available memory"
    );
    for (name, f) in [("incumbent", load.incumbent_cpu), ("guest", load.guest_cpu)] {
        ensure!((0.0..=1.0).contains(&f), "{name} CPU {f} is not a fraction");
    }
    ensure!(
        load.guest_cpu > 0.0,
        "a busy thread of the agent did not show as its own CPU"
    );
    writeln!(
        out,
        "sampler: ok (own CPU {:.0} %, available memory {} MiB, user idle {}, on battery {}, memory low {})",
        load.guest_cpu * 100.0,
        load.memory_available >> 20,
        load.user_idle.map_or("unknown".to_owned(), |d| format!(
            "{:.0} s",
            d.as_secs_f64()
        )),
        load.on_battery,
        load.memory_low
    )?;
    Ok(())
}

fn sandbox(out: &mut impl Write) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::default()).context("making the sandbox")?;
    let dirs = tempfile::tempdir().context("making a directory for the guest")?;
    let output_dir = dirs.path().join("output");
    let scratch_dir = dirs.path().join("scratch");
    for d in [&output_dir, &scratch_dir] {
        std::fs::create_dir(d)?;
    }
    let spec = RunSpec {
        name: "self-test".to_owned(),
        args: Vec::new(),
        env: Vec::new(),
        stdin: Vec::new(),
        input_dir: None,
        mounts: Vec::new(),
        output_dir,
        scratch_dir,
        memory_limit: 16 << 20,
        timeout: Duration::from_secs(120),
        pooled: false,
        hooks: None,
        seed: None,
    };
    let started = Instant::now();
    let wasm = wat::parse_str(counter(1)).context("assembling the test guest")?;
    let program = sandbox.compile(&wasm).context("compiling the test guest")?;
    // A guest's thread is lowered to idle priority for good: run it on a thread of its own.
    let (quick, idle_priority) = std::thread::scope(|s| {
        s.spawn(|| {
            let output = sandbox.run(&program, &spec, &TaskControl::new());
            (output, crate::sandbox::current_thread_is_idle_priority())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the guest thread panicked"))
    })?;
    ensure!(
        quick.outcome == Outcome::Exited { code: 0 } && quick.stdout == 1u32.to_le_bytes(),
        "the test guest did not run to its end: {:?}, stdout {:?}",
        quick.outcome,
        quick.stdout
    );
    ensure!(
        idle_priority,
        "the guest's thread was not lowered to idle priority: guests would compete with the \
         machine's own programs (the agent's log says why)"
    );
    writeln!(
        out,
        "sandbox: ok (compiled and ran a guest in {} ms, its thread at idle priority)",
        started.elapsed().as_millis(),
    )?;

    // A guest long enough to be caught running: paused, held, resumed, and its count intact.
    const COUNT: u32 = 3 << 30;
    let program = sandbox
        .compile(&wat::parse_str(counter(COUNT))?)
        .context("compiling the long test guest")?;
    let control = TaskControl::new();
    let (held, output) = std::thread::scope(|s| {
        let guest = s.spawn(|| sandbox.run(&program, &spec, &control));
        std::thread::sleep(Duration::from_millis(20));
        let took = control.pause_and_wait(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let held = !guest.is_finished();
        control.resume();
        (
            took.map(|took| (took, held)),
            guest
                .join()
                .map_err(|_| anyhow::anyhow!("the guest thread panicked")),
        )
    });
    let output = output?;
    let Some((took, held)) = held else {
        bail!("the guest did not stop within 10 s of the pause");
    };
    ensure!(held, "the guest went on running while paused");
    ensure!(
        output.outcome == Outcome::Exited { code: 0 } && output.stdout == COUNT.to_le_bytes(),
        "the paused guest did not finish its count: {:?}, stdout {:?}",
        output.outcome,
        output.stdout
    );
    writeln!(
        out,
        "pause: ok (the guest stopped {:.1} ms after the pause, held 300 ms, resumed and finished its count in {} ms)",
        took.as_secs_f64() * 1e3,
        output.elapsed.as_millis()
    )?;
    Ok(())
}

/// Serves the owner's channel for a data directory of its own, and asks it for the status.
async fn owner_channel(out: &mut impl Write) -> anyhow::Result<()> {
    use crate::owner::{self, OwnerRequest};
    let dir = tempfile::tempdir().context("making a data directory")?;
    let data_dir = dir.path().to_owned();
    let server = tokio::spawn(async move {
        owner::serve(
            &data_dir,
            |req| serde_json::json!({ "answered": req.as_str() }),
        )
        .await
    });
    let asked = async {
        let mut last = None;
        for _ in 0..100 {
            match owner::send(dir.path(), OwnerRequest::Status).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
            if server.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
    }
    .await;
    server.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), server).await {
        return Err(e.context("serving the owner's channel"));
    }
    let answer = asked.context("asking over the owner's channel")?;
    ensure!(
        answer["answered"] == "status",
        "the owner's channel answered {answer}"
    );
    writeln!(out, "owner channel: ok (a status request answered)")?;
    Ok(())
}
