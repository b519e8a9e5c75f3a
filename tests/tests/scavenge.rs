//! Scavenging: guests on a machine that is not theirs pause when its own programs (the
//! incumbents) need the CPU, and leave with notice when the owner or memory pressure takes the
//! machine back; the coordinator runs evicted tasks again elsewhere.
//!
//! A scavenging agent counts everything on the machine but its own process as incumbent: other
//! agents' guests, the coordinator, these tests. So the tests here run one at a time (see
//! [`one_at_a_time`]), each with at most one scavenging agent; any other agent is dedicated.
//! The incumbents are real processes: shell loops burning CPU, `dd` holding memory.
//!
//! Linux only, as the load sampler's procfs readings and the owner's control socket are.
#![cfg(target_os = "linux")]

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lull_tests::{AgentOptions, Cluster, WAIT, guests, summarize, wait_for};
use serde_json::Value;

/// The policy of every scavenging agent here: start at once, pause within two samples of a hot
/// spell, run again after 150 ms to half a second of quiet, give evicted guests one second.
const POLICY: &str = r#"
[policy]
start_after_idle = "0s"
pause_above = 0.3
pause_after = "40ms"
resume_below = 0.15
resume_after = "500ms"
eviction_grace = "1s"
"#;

const GIB: u64 = 1 << 30;

/// Serializes the tests of this file: each one's scavenging agent would take the others'
/// processes for incumbents.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch, the clock of the coordinator's `at_ms` and `*_ms` fields.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn mem_available() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("reading /proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("/proc/meminfo has no MemAvailable line")
}

/// A `sh -c SCRIPT` in a process group of its own, killed with the whole group (SIGKILL) when
/// dropped, whichever way the test ends.
struct Background {
    what: String,
    child: Child,
}

impl Background {
    fn start(what: &str, script: &str) -> Background {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} (`sh -c '{script}'`): {e}"));
        Background {
            what: what.to_owned(),
            child,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The group's ID is the shell's PID; kill with a negative ID signals the whole group
        // (`kill -KILL -PGID`: dash's kill takes no `--`).
        let group = format!("-{}", self.child.id());
        let killed = Command::new("sh")
            .args(["-c", "kill -KILL \"$0\"", &group])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !killed.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {}: {e}", self.what);
        }
    }
}

/// One real incumbent per core, each a shell spinning in a loop (for as long as this test
/// process lives, should it die without dropping them).
fn burn_every_core() -> Vec<Background> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..cores)
        .map(|_| {
            Background::start(
                "a CPU burner",
                "while kill -0 $PPID 2>/dev/null; do :; done",
            )
        })
        .collect()
}

/// Starts a single-slot agent named `name` under [`POLICY`] plus `extra` lines of `[policy]`,
/// and waits until the coordinator lists it as accepting work (its machine was found idle).
fn start_scavenging(cluster: &mut Cluster, name: &str, extra: &str) {
    let config = cluster.write_agent_config(name, &format!("{POLICY}{extra}"));
    cluster.start_agent(
        name,
        AgentOptions {
            slots: Some(1),
            scavenging_config: Some(config),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&[name]);
    wait_for_accepting(cluster, name, true);
}

/// Waits (at most [`WAIT`]) until the coordinator lists the agent's `status.accepting` as
/// `accepting`.
fn wait_for_accepting(cluster: &Cluster, name: &str, accepting: bool) {
    let what = format!("GET /api/v1/agents to list agent {name} with accepting = {accepting}");
    wait_for(&what, WAIT, || {
        cluster
            .agent_listing(name)
            .filter(|a| a["status"]["accepting"] == accepting)
            .map(|_| ())
    });
}

/// A job of one task running `wasm`, with at most `max_attempts` attempts.
fn one_task_job(cluster: &Cluster, name: &str, wasm: &[u8], max_attempts: u32) -> u64 {
    let job = cluster.write_job(
        name,
        &format!(
            r#"
name = "{name}"
count = 1
[[module]]
path = "guest.wasm"
args = ["{{index}}"]
[resources]
memory = "16MiB"
timeout = "2m"
[retry]
max_attempts = {max_attempts}
"#
        ),
        &[("guest.wasm", wasm)],
    );
    cluster.submit(&job)
}

/// Waits until the task's attempt `attempt` has started its guest on the agent named `agent`;
/// returns the task's detail.
fn wait_for_started(cluster: &Cluster, id: u64, attempt: u32, agent: &str) -> Value {
    let agent_id = cluster.agent_id(agent);
    let i = attempt as usize - 1;
    let what = format!("job {id}'s attempt {attempt} to start on agent {agent} ({agent_id})");
    wait_for(&what, WAIT, || {
        let task = cluster.task(id, 0);
        let a = &task["attempts"][i];
        assert!(
            a.is_null() || a["agent"] == agent_id.as_str(),
            "attempt {attempt} went to another agent than {agent}: {task}"
        );
        (a["started_ms"].is_i64() && a["finished_ms"].is_null()).then_some(task)
    })
}

/// The first of `events` (oldest first) after index `after` going to `to`; its index and itself.
fn find_event<'a>(events: &'a [Value], after: usize, to: &str) -> Option<(usize, &'a Value)> {
    events
        .iter()
        .enumerate()
        .skip(after)
        .find(|(_, e)| e["to"] == to)
}

/// Each event on one line, for messages.
fn show(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "\n  {} {} -> {}: {}",
                e["at_ms"], e["from"], e["to"], e["reason"]
            )
        })
        .collect()
}

/// The module outcome of one attempt of task 0.
fn outcome(task: &Value, attempt: u32) -> &Value {
    &task["attempts"][attempt as usize - 1]["result"]["modules"][0]["outcome"]
}

/// Runs `xorshift(iterations)` as a job of one task, with `during` called once the guest has
/// started (with the job's number); returns its attempt's wall time (`elapsed_ms`) and its
/// stdout, after checking that it succeeded on its first and only attempt.
fn run_xorshift(
    cluster: &Cluster,
    name: &str,
    iterations: u64,
    during: impl FnOnce(u64),
) -> (u64, String) {
    let id = one_task_job(cluster, name, &guests::xorshift(iterations), 1);
    wait_for_started(cluster, id, 1, "scavenger");
    during(id);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().expect("the task's attempts");
    assert_eq!(attempts.len(), 1, "one attempt, never requeued: {task}");
    assert_eq!(attempts[0]["attempt"], 1, "{task}");
    assert_eq!(outcome(&task, 1)["kind"], "exited", "{task}");
    assert_eq!(outcome(&task, 1)["code"], 0, "{task}");
    let elapsed = attempts[0]["result"]["elapsed_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("the attempt's result has no elapsed_ms: {task}"));
    let stdout = std::fs::read_to_string(cluster.results(id).join("0/stdout"))
        .expect("reading the task's stdout");
    (elapsed, stdout)
}

#[test]
fn a_busy_incumbent_pauses_the_guest_and_the_result_is_unchanged() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    start_scavenging(&mut cluster, "scavenger", "");

    // The undisturbed run, calibrated to take 2-4 s on this machine: 1.5 billion steps take
    // about 3 s on a 3 GHz core; a faster machine gets more steps, once.
    let mut iterations: u64 = 1_500_000_000;
    let (mut undisturbed_ms, mut expected) =
        run_xorshift(&cluster, "undisturbed", iterations, |_| {});
    if undisturbed_ms < 2000 {
        iterations = iterations * 3000 / undisturbed_ms.max(100);
        eprintln!(
            "the undisturbed run took only {undisturbed_ms} ms; again with {iterations} steps"
        );
        (undisturbed_ms, expected) = run_xorshift(&cluster, "undisturbed-2", iterations, |_| {});
    }
    assert!(
        expected.len() == 17 && expected.ends_with('\n'),
        "the guest prints its final state in hex: {expected:?}"
    );
    eprintln!("undisturbed: {iterations} steps in {undisturbed_ms} ms, {expected:?}");

    // Again, with every core burned by incumbents for 2 s shortly after the guest starts.
    let mut burn = (0, 0);
    let (disturbed_ms, stdout) = run_xorshift(&cluster, "disturbed", iterations, |id| {
        std::thread::sleep(Duration::from_millis(300));
        burn.0 = now_ms();
        let burners = burn_every_core();
        std::thread::sleep(Duration::from_secs(2));
        let task = cluster.task(id, 0);
        assert_eq!(
            task["task"]["state"], "running",
            "the guest was still running when the incumbents stopped: {task}"
        );
        drop(burners);
        burn.1 = now_ms();
    });
    eprintln!(
        "disturbed: {disturbed_ms} ms, incumbents burned every core from {} to {}",
        burn.0, burn.1
    );

    assert_eq!(stdout, expected, "pausing did not change the result");
    assert!(
        disturbed_ms >= undisturbed_ms + 1000,
        "the guest really stopped while the incumbents ran: {disturbed_ms} ms with incumbents, \
         {undisturbed_ms} ms without"
    );

    let events = cluster.agent_events("scavenger");
    eprintln!("the agent's state changes:{}", show(&events));
    // The pause in force while the incumbents ran: one that began during their run, or one
    // that began before it (the machine's other programs, on a busy test machine) and had not
    // ended when they started.
    let ended_after_start = |i: usize| {
        events
            .iter()
            .skip(i + 1)
            .find(|e| e["from"] == "paused")
            .is_none_or(|e| e["at_ms"].as_i64() >= Some(burn.0))
    };
    let (paused_at, paused) = events
        .iter()
        .enumerate()
        .rev()
        .find(|(i, e)| {
            e["to"] == "paused" && e["at_ms"].as_i64() <= Some(burn.1) && ended_after_start(*i)
        })
        .unwrap_or_else(|| {
            panic!(
                "no pause while the incumbents ran from {} to {}: {}",
                burn.0,
                burn.1,
                show(&events)
            )
        });
    let reason = paused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("incumbent CPU"),
        "the pause names the incumbents' CPU: {reason:?}"
    );
    assert!(
        paused["at_ms"].as_i64() <= Some(burn.1),
        "the guest paused while the incumbents ran ({} to {}): {}",
        burn.0,
        burn.1,
        show(&events)
    );
    assert_eq!(
        paused["attempts"].as_array().map(Vec::len),
        Some(1),
        "the pause names the running attempt: {paused}"
    );
    let (_, resumed) = events
        .iter()
        .enumerate()
        .skip(paused_at + 1)
        .find(|(_, e)| e["from"] == "paused")
        .unwrap_or_else(|| panic!("the guest never left the pause: {}", show(&events)));
    assert_eq!(
        resumed["to"],
        "running",
        "the guest resumed once the incumbents were gone: {}",
        show(&events)
    );
    assert!(
        resumed["at_ms"].as_i64() >= Some(burn.1),
        "the guest resumed only after the incumbents stopped at {}: {}",
        burn.1,
        show(&events)
    );
}

#[test]
fn the_owner_taking_the_machine_back_evicts_the_task_which_completes_elsewhere() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    start_scavenging(&mut cluster, "owned", "");
    // One attempt allowed: an eviction is not the task's fault and does not use one up.
    let id = one_task_job(&cluster, "long", &guests::hello(6000), 1);
    wait_for_started(&cluster, id, 1, "owned");
    cluster.start_agent("spare", AgentOptions::slots(1));
    cluster.wait_for_agents(&["owned", "spare"]);

    let asked = now_ms();
    let paused = cluster.agent_command("owned", "pause");
    paused.assert_success();
    assert_eq!(
        paused.json()["status"]["accepting"],
        false,
        "a paused agent takes no work: {paused}"
    );

    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().expect("the task's attempts");
    assert_eq!(
        attempts.len(),
        2,
        "evicted once, then run elsewhere: {task}"
    );
    let first = &attempts[0];
    assert_eq!(first["agent"], cluster.agent_id("owned").as_str(), "{task}");
    assert_eq!(outcome(&task, 1)["kind"], "evicted", "{task}");
    let why = outcome(&task, 1)["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("owner"),
        "the eviction names the owner: {why:?}"
    );
    // The guest ignores the notice, so it ran out its grace of 1 s and was stopped.
    let ended = first["finished_ms"]
        .as_i64()
        .expect("the first attempt ended")
        - asked;
    assert!(
        (900..5000).contains(&ended),
        "the evicted attempt ended {ended} ms after `lull-agent pause`, not about 1 s: {task}"
    );
    assert_eq!(attempts[1]["attempt"], 2, "{task}");
    assert_eq!(
        attempts[1]["agent"],
        cluster.agent_id("spare").as_str(),
        "{task}"
    );
    assert_eq!(outcome(&task, 2)["kind"], "exited", "{task}");
    assert_eq!(outcome(&task, 2)["code"], 0, "{task}");

    let events = cluster.agent_events("owned");
    let (evicting_at, evicting) = find_event(&events, 0, "evicting")
        .unwrap_or_else(|| panic!("no eviction: {}", show(&events)));
    assert!(
        evicting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lull-agent pause")),
        "the eviction names the owner's command: {}",
        show(&events)
    );
    let (_, waiting) = find_event(&events, evicting_at + 1, "waiting_for_idle")
        .unwrap_or_else(|| panic!("the eviction never ended: {}", show(&events)));
    assert_eq!(waiting["from"], "evicting", "{}", show(&events));
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("owner") && r.contains("lull-agent resume")),
        "after the eviction the agent waits for the owner: {}",
        show(&events)
    );

    let status = cluster.agent_command("owned", "status");
    status.assert_success();
    let status = status.json();
    assert_eq!(status["status"]["accepting"], false, "{status}");
    assert_eq!(status["status"]["state"], "waiting_for_idle", "{status}");
    assert_eq!(
        cluster.agent_listing("owned").expect("the agent is listed")["status"]["accepting"],
        false
    );

    cluster.agent_command("owned", "resume").assert_success();
    wait_for_accepting(&cluster, "owned", true);
}

#[test]
fn memory_pressure_evicts_the_task_which_completes_elsewhere() {
    let available = mem_available();
    if available < 6 * GIB {
        eprintln!(
            "skipped: this test needs 6 GiB of available memory, the machine has {} MiB",
            available >> 20
        );
        return;
    }
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    // The reserve lies 1.5 GiB below what is available now: the hog's 3 GiB cross it.
    let reserve = mem_available() - 3 * GIB / 2;
    start_scavenging(
        &mut cluster,
        "roomy",
        &format!("memory_reserve = {reserve}\n"),
    );
    // While the hog fills its memory it keeps a core busy, which pauses the guest: the guest
    // cannot finish before the eviction, however slowly the memory fills.
    let id = one_task_job(&cluster, "long", &guests::hello(10_000), 1);
    wait_for_started(&cluster, id, 1, "roomy");

    // dd reads 3 GiB into one buffer, then blocks writing to a reader that never reads (for
    // two minutes at most, should this test process die without dropping it).
    let hog = Background::start(
        "a 3 GiB memory hog",
        "dd if=/dev/zero bs=3G count=1 iflag=fullblock 2>/dev/null | sleep 120",
    );
    let started = Instant::now();
    let what = format!(
        "agent roomy to evict its guest once available memory falls below {} MiB",
        reserve >> 20
    );
    let evicted = wait_for(&what, WAIT, || {
        let task = cluster.task(id, 0);
        task["attempts"][0]["finished_ms"].is_i64().then_some(task)
    });
    eprintln!(
        "evicted {:?} after the hog started; available memory now {} MiB, reserve {} MiB",
        started.elapsed(),
        mem_available() >> 20,
        reserve >> 20
    );
    assert_eq!(outcome(&evicted, 1)["kind"], "evicted", "{evicted}");
    let why = outcome(&evicted, 1)["reason"].as_str().unwrap_or_default();
    assert!(why.contains("memory"), "the eviction names memory: {why:?}");

    // A dedicated agent takes the task while the hog still holds the memory, so the scavenging
    // one (which would start again once the memory is back) cannot take it first.
    cluster.start_agent("spare", AgentOptions::slots(1));
    cluster.wait_for_agents(&["roomy", "spare"]);
    wait_for_started(&cluster, id, 2, "spare");
    drop(hog);

    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    let attempts = task["attempts"].as_array().expect("the task's attempts");
    assert_eq!(attempts.len(), 2, "{task}");
    assert_eq!(
        attempts[1]["agent"],
        cluster.agent_id("spare").as_str(),
        "{task}"
    );
    assert_eq!(outcome(&task, 2)["kind"], "exited", "{task}");
    assert_eq!(outcome(&task, 2)["code"], 0, "{task}");

    let events = cluster.agent_events("roomy");
    let (evicting_at, evicting) = find_event(&events, 0, "evicting")
        .unwrap_or_else(|| panic!("no eviction: {}", show(&events)));
    assert!(
        evicting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("memory")),
        "the eviction names memory: {}",
        show(&events)
    );
    let (_, waiting) = find_event(&events, evicting_at + 1, "waiting_for_idle")
        .unwrap_or_else(|| panic!("the eviction never ended: {}", show(&events)));
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("memory")),
        "the end of the eviction names memory: {}",
        show(&events)
    );
}

#[test]
fn the_owner_s_stop_makes_an_idle_agent_exit() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    start_scavenging(&mut cluster, "leaving", "");

    let asked = Instant::now();
    let stop = cluster.agent_command("leaving", "stop");
    let code = cluster.wait_for_agent_exit("leaving", Duration::from_secs(5));
    eprintln!(
        "the agent exited {:?} after `lull-agent stop`",
        asked.elapsed()
    );
    assert_eq!(code, Some(0), "the agent exits cleanly");
    stop.assert_success();
}

#[test]
fn the_owner_s_finish_lets_the_running_task_end_takes_no_more_and_the_agent_exits() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    start_scavenging(&mut cluster, "finishing", "");
    let id = one_task_job(&cluster, "last", &guests::hello(3000), 1);
    wait_for_started(&cluster, id, 1, "finishing");
    let later = one_task_job(&cluster, "later", &guests::hello(0), 1);

    let finish = cluster.agent_command("finishing", "finish");
    finish.assert_success();
    assert_eq!(
        finish.json()["status"]["accepting"],
        false,
        "a finishing agent takes no new work: {finish}"
    );
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(
        task["attempts"].as_array().map(Vec::len),
        Some(1),
        "the running task ended on its own, not evicted: {task}"
    );
    assert_eq!(outcome(&task, 1)["kind"], "exited", "{task}");
    let code = cluster.wait_for_agent_exit("finishing", Duration::from_secs(30));
    assert_eq!(code, Some(0), "the agent exits cleanly once its task ended");
    let waiting = cluster.task(later, 0);
    assert_eq!(
        waiting["attempts"].as_array().map(Vec::len),
        Some(0),
        "the job behind it never started there: {waiting}"
    );
}

#[test]
fn a_snooze_evicts_and_the_agent_takes_work_again_by_itself() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    start_scavenging(&mut cluster, "snoozy", "");
    let id = one_task_job(&cluster, "long", &guests::hello(4000), 1);
    wait_for_started(&cluster, id, 1, "snoozy");

    let asked = Instant::now();
    let snooze = cluster.agent_command("snoozy", "snooze 3s");
    snooze.assert_success();
    assert_eq!(snooze.json()["status"]["accepting"], false, "{snooze}");
    wait_for_accepting(&cluster, "snoozy", false);
    // Nothing else to do but this agent: the task runs again on it once the snooze is over.
    let task = evicted_then_done_on(&cluster, id, "snoozy", "snoozed the agent for 3 s");
    let second = &task["attempts"][1];
    let restarted_after = second["started_ms"].as_i64().unwrap_or_default()
        - task["attempts"][0]["finished_ms"]
            .as_i64()
            .unwrap_or_default();
    assert!(
        restarted_after >= 1500,
        "the task came back only after the snooze, {restarted_after} ms after it left: {task}"
    );
    assert!(asked.elapsed() >= Duration::from_secs(3));
    let events = cluster.agent_events("snoozy");
    assert!(
        events.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("held until then, or until lull-agent resume"))),
        "the wait names the snooze: {}",
        show(&events)
    );
}

#[test]
fn an_exclusive_program_of_the_owner_evicts_the_guests_until_it_exits() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    // A program of the owner's, by its process name: sleep under another name.
    let program = cluster.root().join("render-suite");
    std::fs::copy("/bin/sleep", &program).expect("copying /bin/sleep");
    start_scavenging(
        &mut cluster,
        "gamer",
        "[owner]\nexclusive_programs = [\"render-suite\"]\n",
    );
    let id = one_task_job(&cluster, "long", &guests::hello(3000), 1);
    wait_for_started(&cluster, id, 1, "gamer");

    let mut running = Command::new(&program)
        .arg("600")
        .spawn()
        .expect("starting the owner's program");
    // Within about a second the agent sees it, evicts the guest and says why.
    wait_for("the agent to name the owner's program", WAIT, || {
        let status = cluster.agent_command("gamer", "status").json();
        status["status"]["reason"]
            .as_str()
            .is_some_and(|r| {
                r.contains("the owner's program render-suite is running (exclusive_programs)")
            })
            .then_some(())
    });
    wait_for_accepting(&cluster, "gamer", false);
    let _ = running.kill();
    let _ = running.wait();
    // Once it is gone, the agent takes work again, and the task runs to its end there.
    evicted_then_done_on(&cluster, id, "gamer", "render-suite");
}

/// Waits for job `id`'s one task to succeed after its first attempt was evicted for a reason
/// holding `why`, and its second ran on the agent `name`; returns the task.
fn evicted_then_done_on(cluster: &Cluster, id: u64, name: &str, why: &str) -> Value {
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let task = cluster.task(id, 0);
    assert_eq!(outcome(&task, 1)["kind"], "evicted", "{task}");
    let reason = outcome(&task, 1)["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "{reason:?}");
    assert_eq!(
        task["attempts"][1]["agent"],
        cluster.agent_id(name).as_str(),
        "{task}"
    );
    task
}

#[test]
fn outside_its_owners_time_windows_an_agent_takes_no_work() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let today = usize::from(lull_agent::rules::local_now().weekday);
    // Every day but today, and today alone.
    let others = format!("{}-{}", DAYS[(today + 1) % 7], DAYS[(today + 6) % 7]);
    for (name, window) in [("elsewhen", others.as_str()), ("today", DAYS[today])] {
        let config = cluster.write_agent_config(
            name,
            &format!("{POLICY}[owner]\nwindows = [\"{window}\"]\n"),
        );
        cluster.start_agent(
            name,
            AgentOptions {
                slots: Some(1),
                scavenging_config: Some(config),
                ..AgentOptions::default()
            },
        );
    }
    cluster.wait_for_agents(&["elsewhen", "today"]);
    wait_for_accepting(&cluster, "today", true);
    wait_for_accepting(&cluster, "elsewhen", false);
    let status = cluster.agent_command("elsewhen", "status").json();
    assert!(
        status["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("outside the owner's time windows ({others})"))),
        "{status}"
    );
    // Work goes to the agent whose window is open.
    let id = one_task_job(&cluster, "now", &guests::hello(0), 1);
    let done = cluster.wait_for_job_end(id);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    assert_eq!(
        cluster.task(id, 0)["attempts"][0]["agent"],
        cluster.agent_id("today").as_str()
    );
    // A window that cannot be read stops the agent at its start, saying which.
    let bad = cluster.write_agent_config("bad", "[owner]\nwindows = [\"Mon-Fry\"]\n");
    cluster.start_agent(
        "bad",
        AgentOptions {
            scavenging_config: Some(bad),
            ..AgentOptions::default()
        },
    );
    let code = cluster.wait_for_agent_exit("bad", Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(
        cluster
            .agent_log("bad")
            .contains("owner.windows[0]: \"Mon-Fry\": \"Fry\" is not a day"),
        "{}",
        cluster.agent_log("bad")
    );
}

#[test]
fn an_agent_lends_no_more_cores_or_memory_than_its_owner_allows() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start();
    cluster.start_agent(
        "thrifty",
        AgentOptions {
            settings: Some("max_cores = 1\nmax_memory = \"512MiB\"\n".into()),
            ..AgentOptions::default()
        },
    );
    cluster.wait_for_agents(&["thrifty"]);
    let listing = cluster
        .agent_listing("thrifty")
        .expect("the agent is listed");
    let capacity = &listing["capacity"];
    assert_eq!(capacity["cores"], 1, "{listing}");
    assert_eq!(capacity["slots"], 1, "{listing}");
    assert_eq!(capacity["memory_total"], 512u64 << 20, "{listing}");
    assert!(
        capacity["memory_available"].as_u64() <= Some(512 << 20)
            && capacity["max_task_memory"].as_u64() <= Some(512 << 20),
        "{listing}"
    );
    // A task larger than what is lent waits for another agent, saying why; a small one runs.
    let big = cluster.write_job(
        "big",
        "name = \"big\"\n[[module]]\npath = \"hello.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"1GiB\"\n",
        &[("hello.wasm", &guests::hello(0))],
    );
    let big = cluster.submit(&big);
    let small = one_task_job(&cluster, "small", &guests::hello(0), 1);
    let done = cluster.wait_for_job_end(small);
    assert_eq!(done["state"], "succeeded", "{}", summarize(&done));
    let waiting = cluster.job(big);
    assert_eq!(waiting["state"], "pending", "{waiting}");
    assert!(
        waiting["waiting_reason"]
            .as_str()
            .is_some_and(|r| r.contains("tasks of 1 GiB (the largest cap is 512 MiB)")),
        "{waiting}"
    );
}
