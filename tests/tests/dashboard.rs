//! The web dashboard in a real headless Chromium: against `lull dev` running a job, the agents
//! and the job's progress render and follow the live updates; against a coordinator that wants
//! tokens, the page asks for one. The first test saves a screenshot (the one in the README):
//! `target/tmp/dashboard.png`, or where `LULL_DASHBOARD_SCREENSHOT` says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lull_tests::browser::Browser;
use lull_tests::{AgentOptions, Cluster, guests};

/// `lull dev` with two agents of one slot, on ports of the system's choosing, its data and
/// development key in a temporary directory.
struct Dev {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("lull-dashboard-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut child = Command::new(lull_tests::binary("lull"))
            .args([
                "dev",
                "--agents",
                "2",
                "--slots",
                "1",
                "--http-listen",
                "127.0.0.1:0",
                "--quic-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting lull dev");
        let stdout = child.stdout.take().expect("lull dev's stdout");
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines
            .read_line(&mut first)
            .expect("reading lull dev's first line");
        // Read on, so that lull dev never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("lull dev did not print its address: {first:?}"))
            .to_owned();
        Dev { child, url, dir }
    }

    fn lull(&self, args: &[&str]) -> String {
        let out = Command::new(lull_tests::binary("lull"))
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .output()
            .expect("running lull");
        assert!(
            out.status.success(),
            "lull {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("lull's output is UTF-8")
    }

    /// Writes a job of `count` tasks running `guest` with the task's index as its argument,
    /// and returns its job file.
    fn write_job(&self, name: &str, count: u32, guest: &[u8]) -> PathBuf {
        let dir = self.dir.path().join("jobs").join(name);
        std::fs::create_dir_all(&dir).expect("creating the job's directory");
        std::fs::write(dir.join("guest.wasm"), guest).expect("writing the guest");
        let job = dir.join("job.toml");
        std::fs::write(
            &job,
            format!(
                "name = \"{name}\"\ncount = {count}\n\n[[module]]\npath = \"guest.wasm\"\nargs = [\"{{index}}\"]\n\n\
                 [resources]\nmemory = \"16MiB\"\ntimeout = \"10m\"\n"
            ),
        )
        .expect("writing job.toml");
        job
    }
}

impl Dev {
    /// Submits a job (signed with the development key) and returns its number.
    fn submit(&self, job: &Path) -> u64 {
        let out = self.lull(&["submit", job.to_str().expect("a UTF-8 path"), "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).expect("submit's JSON")["job"]
            .as_u64()
            .expect("a job number")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("LULL_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"))
}

/// A number the page shows, read with `expression`.
fn number(browser: &mut Browser, expression: &str) -> f64 {
    browser
        .eval(expression)
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| browser.eval(expression).as_f64())
        .unwrap_or_else(|| panic!("`{expression}` is not a number in the page"))
}

/// Clicks job `id` and waits for its `tasks` tasks in the detail panel.
fn open_job(browser: &mut Browser, id: u64, tasks: usize) {
    browser.eval(&format!(
        "document.querySelector('#jobs tr[data-job=\"{id}\"]').click()"
    ));
    browser.wait_until(
        &format!("job {id}'s {tasks} task(s)"),
        &format!("document.querySelectorAll('#detail-body tr[data-task]').length === {tasks}"),
        Duration::from_secs(10),
    );
}

#[test]
fn the_dashboard_shows_the_pool_and_follows_a_running_job() {
    let dev = Dev::start();
    let mut browser = Browser::open(&dev.url, 1280, 860);

    // Before any job: both agents, and the jobs' empty view saying what to do.
    browser.wait_until(
        "both agents",
        "document.querySelectorAll('#agents tbody tr[data-agent]').length === 2",
        Duration::from_secs(60),
    );
    browser.wait_until(
        "the empty jobs view",
        "!document.getElementById('jobs-empty').hidden \
         && document.getElementById('jobs-empty').innerText.includes('lull submit')",
        Duration::from_secs(10),
    );
    let names = browser.eval(
        "[...document.querySelectorAll('#agents tbody tr[data-agent] .name')]\
         .map(e => e.textContent).join(',')",
    );
    assert_eq!(names, "dev-0,dev-1");

    // A short job that prints and writes a file: its task shows its log and its output.
    let hello = dev.submit(&dev.write_job("hello", 1, &guests::hello(0)));
    browser.wait_until(
        "the short job succeeded",
        &format!(
            "document.querySelector('#jobs tr[data-job=\"{hello}\"]')?.innerText.includes('succeeded')"
        ),
        Duration::from_secs(60),
    );
    open_job(&mut browser, hello, 1);
    browser.eval("document.querySelector('#detail-body tr[data-task=\"0\"]').click()");
    browser.wait_until(
        "the task's stdout, stderr and output file",
        "['hello from task 0', 'done: task 0', 'result.txt', 'exited with code 0']\
         .every(t => document.getElementById('detail-body').innerText.includes(t))",
        Duration::from_secs(10),
    );

    // A job of two tasks that report their progress as they go.
    let id = dev.submit(&dev.write_job("creep", 2, &guests::progress_creep(4000, 30_000_000)));
    let progress = format!(
        "document.querySelector('#jobs tr[data-job=\"{id}\"] .progress')?.dataset.progress"
    );
    browser.wait_until(
        "the job with some progress",
        &format!("Number({progress} ?? 0) > 0"),
        Duration::from_secs(60),
    );
    browser.wait_until(
        "the job running on both agents",
        &format!(
            "document.querySelector('#jobs tr[data-job=\"{id}\"]').innerText.includes('2 running')"
        ),
        Duration::from_secs(60),
    );

    // Live: new events arrive and the job's progress grows without reloading the page.
    let updates = number(&mut browser, "document.body.dataset.updates");
    let first = number(&mut browser, &progress);
    browser.wait_until(
        "more live updates and more progress",
        &format!(
            "Number(document.body.dataset.updates) >= {} && Number({progress}) > {first}",
            updates + 2.0
        ),
        Duration::from_secs(60),
    );
    assert!(
        browser.eval("document.getElementById('live').classList.contains('on')") == true,
        "the page does not say it is live"
    );
    // Each agent's CPU over the last minutes is drawn, guests' share included.
    browser.wait_until(
        "CPU history drawn for both agents",
        "[...document.querySelectorAll('#agents tbody tr[data-agent]')]\
         .every(r => r.querySelector('svg.spark polygon.guest'))",
        Duration::from_secs(30),
    );
    let states = browser.eval(
        "[...document.querySelectorAll('#agents tbody tr[data-agent]')].map(r => r.dataset.state).join(',')",
    );
    assert_eq!(states, "running,running");
    let harvested = number(
        &mut browser,
        "document.getElementById('tile-harvest').textContent",
    );
    assert!(harvested > 0.0, "nothing harvested shown: {harvested}");

    // A job opens on its tasks; a task on its attempts.
    open_job(&mut browser, id, 2);
    browser.eval("document.querySelector('#detail-body tr[data-task=\"0\"]').click()");
    browser.wait_until(
        "task 0's attempt",
        &format!(
            "document.getElementById('detail-body').innerText.includes('Task {id}.0') \
             && document.getElementById('detail-body').innerText.includes('Attempt 1')"
        ),
        Duration::from_secs(10),
    );
    // An agent opens on its machine and its history of state changes (none under lull dev,
    // which lends the machine whole, and the view says so).
    browser.eval("document.querySelector('#agents tbody tr[data-agent]').click()");
    browser.wait_until(
        "an agent's detail",
        "['dev-0', '2 cores' , 'No state change recorded yet']\
         .every(t => document.getElementById('detail-body').innerText.includes(t))",
        Duration::from_secs(10),
    );
    browser.eval("document.getElementById('detail-close').click()");
    browser.wait_until(
        "the detail closed",
        "document.getElementById('detail').hidden",
        Duration::from_secs(10),
    );

    // The harvest over the last day, per hour, then back to the last hour.
    for (span, bars, start) in [("day", 24, "24 h ago"), ("hour", 60, "60 min ago")] {
        browser.eval(&format!(
            "document.querySelector('#harvest-span button[data-span=\"{span}\"]').click()"
        ));
        browser.wait_until(
            &format!("the harvest of the last {span}"),
            &format!(
                "document.getElementById('harvest-chart').textContent.includes('{start}') \
                 && document.querySelectorAll('#harvest-chart rect.bar').length === {bars}"
            ),
            Duration::from_secs(10),
        );
    }

    // Some history on the charts, then the picture for the README.
    let at = Instant::now();
    let seen = number(&mut browser, "document.body.dataset.updates");
    browser.wait_until(
        "fifteen more updates",
        &format!("Number(document.body.dataset.updates) >= {}", seen + 15.0),
        Duration::from_secs(90),
    );
    // One a second: fifteen take fourteen seconds at least.
    assert!(
        at.elapsed() >= Duration::from_secs(13),
        "updates came faster than once a second"
    );
    let shot = screenshot_path();
    browser.screenshot(&shot);
    println!("dashboard screenshot: {}", shot.display());
}

#[test]
fn a_job_of_many_tasks_opens_on_a_page_of_them_with_next_and_previous() {
    let dev = Dev::start();
    // 150 tasks that no agent can take: they stay pending, and the page has them all.
    let job = dev.write_job("waits", 150, &guests::hello(0));
    let text = std::fs::read_to_string(&job).expect("reading job.toml");
    std::fs::write(
        &job,
        format!("{text}\n[placement]\nconstraints = [\"label.site == nowhere\"]\n"),
    )
    .expect("writing job.toml");
    let id = dev.submit(&job);
    let mut browser = Browser::open(&dev.url, 1280, 860);
    browser.wait_until(
        "the job listed",
        &format!("document.querySelector('#jobs tr[data-job=\"{id}\"]') !== null"),
        Duration::from_secs(60),
    );
    let shown = |browser: &mut Browser, rows: usize, first: u32, text: &str| {
        browser.wait_until(
            &format!("{rows} tasks from task {first}: {text}"),
            &format!(
                "document.querySelectorAll('#detail-body tr[data-task]').length === {rows} \
                 && document.querySelector('#detail-body tr[data-task]')?.dataset.task === '{first}' \
                 && document.getElementById('tasks-shown').textContent === '{text}'"
            ),
            Duration::from_secs(10),
        );
    };
    open_job(&mut browser, id, 100);
    shown(&mut browser, 100, 0, "Tasks 0 to 99: 100 of 150 tasks");
    assert_eq!(
        browser.eval("document.getElementById('tasks-previous').disabled"),
        true
    );
    browser.eval("document.getElementById('tasks-next').click()");
    shown(&mut browser, 50, 100, "Tasks 100 to 149: 50 of 150 tasks");
    assert_eq!(
        browser.eval("document.getElementById('tasks-next').disabled"),
        true
    );
    browser.eval("document.getElementById('tasks-previous').click()");
    shown(&mut browser, 100, 0, "Tasks 0 to 99: 100 of 150 tasks");
    // Only the tasks in a state: none runs.
    browser.eval(
        "{ const s = document.getElementById('task-state'); s.value = 'running'; \
         s.dispatchEvent(new Event('change')) }",
    );
    browser.wait_until(
        "no running task",
        "document.getElementById('tasks-shown').textContent === 'No running task' \
         && document.querySelectorAll('#detail-body tr[data-task]').length === 0",
        Duration::from_secs(10),
    );
}

#[test]
fn the_dashboard_asks_for_a_token_where_the_coordinator_wants_one() {
    let mut cluster = Cluster::start();
    cluster.start_agent("lender", AgentOptions::slots(1));
    cluster.wait_for_agents(&["lender"]);
    // Over HTTPS, the browser pinning the coordinator's key as `lull` does.
    let url = format!("{}/", cluster.api_url());
    assert!(url.starts_with("https://"), "{url}");
    let mut browser = Browser::open_pinned(&url, 1280, 800, cluster.http_key());
    browser.wait_until(
        "the token form",
        "!document.getElementById('login').hidden",
        Duration::from_secs(30),
    );
    // A wrong token is refused, and the form says so.
    browser.eval(
        "document.getElementById('login-token').value = 'lull_0000';\
         document.getElementById('login-form').requestSubmit()",
    );
    browser.wait_until(
        "the refusal",
        "!document.getElementById('login').hidden \
         && document.getElementById('login-why').textContent.includes('refused')",
        Duration::from_secs(30),
    );
    // Alice's token: the page shows whose it is, only her job, and both users' shares.
    let alice = cluster.user_token("alice", "submit", &[]);
    let bob = cluster.user_token("bob", "submit", &[]);
    for (user, token) in [("alice", &alice), ("bob", &bob)] {
        let job = cluster.many_tasks(&format!("{user}s"), 1, 50);
        let out = cluster.submit_with_token(token, &job);
        out.assert_success();
        let id = out.json()["job"].as_u64().unwrap();
        cluster.wait_for_job_end(id);
    }
    browser.eval(&format!(
        "document.getElementById('login-token').value = '{alice}';\
         document.getElementById('login-form').requestSubmit()"
    ));
    browser.wait_until(
        "the agent, with the right token",
        "document.getElementById('login').hidden \
         && document.querySelectorAll('#agents tbody tr[data-agent]').length === 1",
        Duration::from_secs(30),
    );
    browser.wait_until(
        "alice's view: her name, her job only, both users' shares",
        "document.getElementById('who').textContent === 'alice (submit)' \
         && document.querySelectorAll('#jobs tbody tr[data-job]').length === 1 \
         && document.querySelector('#jobs tbody td.owner').textContent === 'alice' \
         && !document.getElementById('shares-panel').hidden \
         && document.querySelectorAll('#shares tbody tr[data-user]').length === 2",
        Duration::from_secs(30),
    );
    browser.wait_until(
        "the accounting, alice and bob among its users",
        "!document.getElementById('accounting-panel').hidden \
         && document.querySelector('#accounting-users tr[data-name=\"alice\"]') !== null \
         && document.querySelector('#accounting-users tr[data-name=\"bob\"]') !== null",
        Duration::from_secs(30),
    );
    browser.wait_until(
        "live updates",
        "Number(document.body.dataset.updates) >= 2",
        Duration::from_secs(30),
    );
}
