//! Simulated agents: each with its own key, its own UDP socket and QUIC connection (the agent's
//! own `Dialer`, pinning the coordinator's key and presenting the agent's certificate), enrolled
//! with a join token, saying hello and then reporting at the interval the welcome gives. They
//! answer an assignment at once with `Started` and a successful result (no guest runs) and
//! count the acknowledgements.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lull_agent::link::{self, Dialer};
use lull_protocol::Digest;
use lull_protocol::identity::Identity;
use lull_protocol::message::{
    AgentMessage, AgentStatus, AttemptId, Capacity, CoordinatorMessage, Outcome, TaskResult,
};
use tokio::sync::{Semaphore, mpsc};

/// Where the simulated agents connect, and with what.
#[derive(Debug, Clone)]
pub struct Target {
    /// The coordinator's QUIC address.
    pub quic: String,
    /// Its key, pinned.
    pub key: Digest,
    /// A join token with uses enough for every agent.
    pub join_token: String,
}

/// What the simulated agents saw, added up over all of them. The `window_*` counters are reset
/// at the start of each measured window.
#[derive(Debug)]
pub struct Counters {
    /// Welcomed and still connected.
    pub connected: AtomicUsize,
    /// Connections that ended after their welcome.
    pub closed: AtomicUsize,
    /// Agents that never got a welcome (refused, or the connection failed).
    pub failed: AtomicUsize,
    /// Reports sent in the window.
    pub window_reports: AtomicU64,
    /// Reports sent in the window more than half an interval after their tick was due (this
    /// process running late, not the coordinator).
    pub window_late_ticks: AtomicU64,
    /// The latest a report was sent after its tick was due, in µs, in the window.
    pub window_max_tick_late_us: AtomicU64,
    /// Assignments received.
    pub assigned: AtomicU64,
    /// Results acknowledged.
    pub acked: AtomicU64,
    /// When the first assignment arrived, µs after [`Counters::epoch`] (`u64::MAX`: none yet).
    pub first_assign_us: AtomicU64,
    /// When the last acknowledgement arrived, µs after [`Counters::epoch`].
    pub last_ack_us: AtomicU64,
    /// The report interval the coordinator's welcome gave, in ms (0 until one came).
    pub report_interval_ms: AtomicU64,
    /// The time the `_us` counters are measured from.
    pub epoch: Instant,
    /// The first error of an agent that failed, for the log.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn new() -> Self {
        Self {
            connected: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            window_reports: AtomicU64::new(0),
            window_late_ticks: AtomicU64::new(0),
            window_max_tick_late_us: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            first_assign_us: AtomicU64::new(u64::MAX),
            last_ack_us: AtomicU64::new(0),
            report_interval_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            first_error: std::sync::Mutex::new(None),
        }
    }

    /// Starts a measured window.
    pub fn reset_window(&self) {
        self.window_reports.store(0, Ordering::Relaxed);
        self.window_late_ticks.store(0, Ordering::Relaxed);
        self.window_max_tick_late_us.store(0, Ordering::Relaxed);
    }

    /// Starts a job's count.
    pub fn reset_dispatch(&self) {
        self.assigned.store(0, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        self.first_assign_us.store(u64::MAX, Ordering::Relaxed);
        self.last_ack_us.store(0, Ordering::Relaxed);
    }

    fn since_epoch_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn failed_with(&self, e: &anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}

/// The simulated fleet.
#[derive(Debug)]
pub struct Fleet {
    target: Target,
    /// Agents started so far.
    started: usize,
    /// Closing every connection when the fleet ends.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

/// The ID of the `i`th simulated agent.
pub fn agent_id(i: usize) -> String {
    format!("fleet-{i:06}")
}

/// Whether an agent ID is one of the fleet's.
pub fn is_fleet_id(id: &str) -> bool {
    id.starts_with("fleet-")
}

impl Fleet {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            started: 0,
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
            counters: Arc::new(Counters::new()),
        }
    }

    /// Agents started so far.
    pub fn len(&self) -> usize {
        self.started
    }

    /// Starts agents until there are `n`, at most `rate` new connections a second and at
    /// most `concurrent` handshakes, enrollments and hellos under way at once; returns once
    /// each of them is welcomed or has failed.
    pub async fn grow_to(&mut self, n: usize, rate: f64, concurrent: usize) {
        let gate = Arc::new(Semaphore::new(concurrent));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut waiting = 0usize;
        while self.started < n {
            pace.tick().await;
            let permit = gate
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let i = self.started;
            self.started += 1;
            waiting += 1;
            let (target, counters) = (self.target.clone(), self.counters.clone());
            let (stop, done) = (self.stop.subscribe(), done_tx.clone());
            self.tasks.push(tokio::spawn(async move {
                let welcomed = move || {
                    drop(permit);
                    let _ = done.send(());
                };
                if let Err(e) = agent(i, &target, &counters, stop, welcomed).await {
                    counters.failed_with(&e);
                }
            }));
        }
        drop(done_tx);
        // Each agent says once that it is through (welcomed or failed): its sender is dropped
        // either way.
        while waiting > 0 && done_rx.recv().await.is_some() {
            waiting -= 1;
        }
    }

    /// Closes every connection and waits for the agents to end.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// What a simulated agent offers: a 4-core, 16 GiB Linux machine lending 4 slots.
fn capacity() -> Capacity {
    Capacity {
        cores: 4,
        memory_total: 16 << 30,
        memory_available: 12 << 30,
        slots: 4,
        max_task_memory: 4 << 30,
        os: "linux".into(),
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        wasmtime: "48.0.8".into(),
    }
}

/// One simulated agent: connects, enrolls, says hello, then reports and answers until its
/// connection ends or the fleet stops. `welcomed` is called once, when the welcome arrives or
/// the agent fails before it.
async fn agent(
    i: usize,
    target: &Target,
    counters: &Counters,
    mut stop: tokio::sync::watch::Receiver<bool>,
    welcomed: impl FnOnce(),
) -> anyhow::Result<()> {
    let id = agent_id(i);
    let identity = Identity::ephemeral(&["lull-agent"])?;
    let dialer = Dialer::new(Some(target.key), Some(&identity))?;
    let conn = dialer.connect(&target.quic).await?;
    link::enroll(&conn, &target.join_token, &id, &id).await?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
    let hello = AgentMessage::Hello {
        protocol_version: lull_protocol::PROTOCOL_VERSION,
        agent_id: id.clone(),
        name: id.clone(),
        capacity: capacity(),
        running: vec![],
        status: AgentStatus::default(),
        compiled: vec![],
    };
    link::write_frame(&mut send, &hello).await?;
    let every = match link::read_frame::<CoordinatorMessage>(&mut recv).await? {
        Some(CoordinatorMessage::Welcome {
            report_interval_ms, ..
        }) => Duration::from_millis(report_interval_ms.max(100)),
        Some(CoordinatorMessage::Refused { reason }) => bail!("agent {id} refused: {reason}"),
        other => bail!("agent {id}: expected a welcome, got {other:?}"),
    };
    counters
        .report_interval_ms
        .store(every.as_millis() as u64, Ordering::Relaxed);
    counters.connected.fetch_add(1, Ordering::Relaxed);
    welcomed();
    // Frames are read on their own task and handed over whole: a read cut off halfway by the
    // report timer would lose the bytes it had taken.
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(msg)) = link::read_frame::<CoordinatorMessage>(&mut recv).await {
            if frames_tx.send(msg).is_err() {
                break;
            }
        }
    });
    let result = session(&mut send, &mut frames, every, counters, &mut stop).await;
    reader.abort();
    counters.connected.fetch_sub(1, Ordering::Relaxed);
    if *stop.borrow() {
        conn.close(0u32.into(), b"");
        dialer.wait_idle().await;
    } else {
        counters.closed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// The welcomed part of an agent's connection: a report every `every`, and an instant answer
/// to each assignment.
async fn session(
    send: &mut quinn::SendStream,
    frames: &mut mpsc::UnboundedReceiver<CoordinatorMessage>,
    every: Duration,
    counters: &Counters,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut report = tokio::time::interval(every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Attempts assigned whose result is not acknowledged yet: reported as running, as the
    // agent reports what it holds.
    let mut held: HashSet<AttemptId> = HashSet::new();
    loop {
        tokio::select! {
            msg = frames.recv() => match msg {
                Some(CoordinatorMessage::Assign(a)) => {
                    let received = Instant::now();
                    let attempt = a.attempt;
                    let first = counters.since_epoch_us();
                    counters.first_assign_us.fetch_min(first, Ordering::Relaxed);
                    counters.assigned.fetch_add(1, Ordering::Relaxed);
                    held.insert(attempt);
                    let started = AgentMessage::Started {
                        attempt,
                        setup_us: received.elapsed().as_micros() as u64,
                    };
                    link::write_frame(send, &started).await?;
                    let result = TaskResult::uniform(attempt, &a.job, Outcome::Exited { code: 0 });
                    link::write_frame(send, &AgentMessage::Result(result)).await?;
                }
                Some(CoordinatorMessage::ResultAck { attempt }) => {
                    if held.remove(&attempt) {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        counters
                            .last_ack_us
                            .fetch_max(counters.since_epoch_us(), Ordering::Relaxed);
                    }
                }
                Some(CoordinatorMessage::Cancel { attempt, .. } | CoordinatorMessage::Evict { attempt, .. }) => {
                    held.remove(&attempt);
                }
                Some(CoordinatorMessage::Refused { reason }) => bail!("refused: {reason}"),
                Some(_) => {}
                None => bail!("the coordinator closed the control stream"),
            },
            due = report.tick() => {
                let late = due.elapsed();
                counters.window_reports.fetch_add(1, Ordering::Relaxed);
                if late > every / 2 {
                    counters.window_late_ticks.fetch_add(1, Ordering::Relaxed);
                }
                counters
                    .window_max_tick_late_us
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                let msg = AgentMessage::Report {
                    capacity: capacity(),
                    running: held.iter().copied().collect(),
                    status: AgentStatus::default(),
                    progress: vec![],
                };
                link::write_frame(send, &msg).await?;
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
