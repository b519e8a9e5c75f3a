//! The agent's main loop: stay connected to the coordinator (reconnecting with backoff), report
//! capacity, run assignments on their own threads, and deliver every result — results finished
//! while disconnected wait on disk in the outbox and are sent on reconnect.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lull_protocol::identity::Identity;
use lull_protocol::message::{
    AgentMessage, AgentStatus, Assignment, AttemptId, CoordinatorMessage, TaskResult,
};
use lull_protocol::signature::TrustList;
use lull_protocol::{Digest, PROTOCOL_VERSION, units};
use tokio::sync::{Notify, mpsc, watch};

use crate::cache::compiled::CompiledCache;
use crate::cache::{BlobCache, DigestMismatch, Lru};
use crate::config::AgentConfig;
use crate::link::{self, Dialer};
use crate::outbox::Outbox;
use crate::owner::{self, OwnerRequest};
use crate::policy::{OwnerCommand, State};
use crate::pool::{PoolConfig, Pools};
use crate::runner::{self, Runner};
use crate::sampler::Sampler;
use crate::sandbox::{Sandbox, SandboxConfig, TaskControl};
use crate::scavenger::{self, Events, ScavengerConfig, Shared};
use lull_protocol::sync::lock;

/// How long an agent the coordinator refused waits before asking again.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// How long a result sent may go unacknowledged before it is sent again.
const RESEND_UNACKNOWLEDGED: Duration = Duration::from_secs(10);
/// Messages to the coordinator written together at most, when they queue up.
const WRITE_BATCH: usize = 256;

/// How long an agent stopped by its owner waits for its last results and checkpoints to reach
/// the coordinator before it exits.
const FLUSH_ON_STOP: Duration = Duration::from_secs(10);

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    id: String,
    name: String,
    data_dir: PathBuf,
    coordinator: String,
    pin: Option<Digest>,
    /// The key the agent proves its ID with.
    identity: Identity,
    /// A join token to enroll the key with, at each connection (no use once enrolled).
    join_token: Option<String>,
    slots: u32,
    max_task_memory: u64,
    /// What the owner lends at most (`max_cores`, `max_memory`).
    lend: Lend,
    /// Below this much free disk where `data_dir` is, no new work is taken.
    min_free_disk: u64,
    labels: std::collections::BTreeMap<String, String>,
    runner: Arc<Runner>,
    cache: BlobCache,
    /// Results not yet acknowledged (their blobs are never evicted meanwhile).
    outbox: Outbox,
    sampler: Mutex<Sampler>,
    /// Running tasks' controls, the gate new tasks pass, the reported status: shared with the
    /// scavenger thread.
    shared: Arc<Shared>,
    scavenger: ScavengerConfig,
    owner: Mutex<Option<std::sync::mpsc::Sender<OwnerCommand>>>,
    stop: Notify,
    /// One permit per slot: the owner's limit holds even if a coordinator assigns more.
    free_slots: Arc<tokio::sync::Semaphore>,
    /// Memory slots for guests.
    pools: Arc<Pools>,
    /// The blobs each assignment on the agent needs (never evicted from the cache meanwhile).
    pinned: Mutex<HashMap<AttemptId, Vec<Digest>>>,
    /// Checkpoints kept and not yet reported, per attempt (results wait for theirs).
    pending_checkpoints: Arc<crate::checkpoint::Pending>,
    /// The guests' checkpoints, from the task threads to the reporter.
    checkpoints: Mutex<Option<mpsc::UnboundedReceiver<crate::checkpoint::Kept>>>,
    /// The progress guests reported, for the coordinator.
    progress: Arc<crate::checkpoint::ProgressBoard>,
    /// Checkpoint states not yet reported (never evicted meanwhile).
    unreported: Mutex<HashSet<Digest>>,
    /// Blobs being fetched: tasks needing the same blob wait for one download.
    fetching: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    conn: watch::Sender<Option<quinn::Connection>>,
    /// The coordinator's lease, from its welcome: out of its reach for longer, the agent's
    /// attempts have been given to other agents.
    lease: Mutex<Option<Duration>>,
    events: Mutex<Option<mpsc::UnboundedSender<AgentMessage>>>,
}

impl Agent {
    /// Prepares an agent from its configuration and the owner's trust list.
    pub fn new(config: &AgentConfig, trust: TrustList) -> anyhow::Result<Arc<Self>> {
        let data = &config.data_dir;
        // The ID, and the key the agent proves it with (the coordinator binds the ID to it).
        let (id, identity) = crate::enroll::local_identity(data)?;
        let sampler = Sampler::new();
        let lend = Lend {
            cores: match config.max_cores {
                Some(0) => bail!("max_cores: must be at least 1"),
                n => n,
            },
            memory: config
                .max_memory
                .as_deref()
                .map(units::parse_size)
                .transpose()
                .context("max_memory")?,
        };
        let max_task_memory = match &config.max_task_memory {
            Some(text) => units::parse_size(text).context("max_task_memory")?,
            None => (sampler.memory_total() / 4).clamp(64 << 20, 4 << 30),
        };
        let max_task_memory = max_task_memory.min(lend.memory.unwrap_or(u64::MAX));
        let output_cap = units::parse_size(&config.output_cap).context("output_cap")?;
        let outputs_cap = units::parse_size(&config.outputs_cap).context("outputs_cap")?;
        let task_disk = crate::disk::DiskCap {
            bytes: units::parse_size(&config.task_disk).context("task_disk")?,
            files: config.task_files,
        };
        let min_free_disk = units::parse_size(&config.min_free_disk).context("min_free_disk")?;
        let checkpoint_interval =
            units::parse_duration(&config.checkpoint_interval).context("checkpoint_interval")?;
        let sample_interval =
            units::parse_duration(&config.sample_interval).context("sample_interval")?;
        if sample_interval < Duration::from_millis(1) {
            bail!("sample_interval: must be at least 1ms");
        }
        config.policy.validate().context("policy")?;
        let rules = crate::rules::Rules::new(&config.owner).map_err(|e| anyhow::anyhow!(e))?;
        let pin = config
            .coordinator_key
            .as_deref()
            .map(|k| k.parse::<Digest>().context("coordinator_key"))
            .transpose()?;
        if config.join_token.is_some() && pin.is_none() {
            bail!(
                "a join token needs the coordinator's key pinned (coordinator_key, or \
                 --coordinator-key): sent to an unchecked coordinator, the token could be stolen"
            );
        }
        if trust.is_empty() {
            tracing::warn!(
                "the trust list is empty: every workload will be refused (set allowed_signers in agent.toml)"
            );
        }
        let cache_size = units::parse_size(&config.cache_size).context("cache_size")?;
        let pool = PoolConfig::from_settings(&config.pool, max_task_memory)?;
        // What the coordinator is told a module may have: no more than a slot can hold, so that
        // it sends no task the pools could never take.
        let max_task_memory = max_task_memory.min(pool.largest_guest());
        if max_task_memory == 0 {
            bail!("pool: no slot can hold a guest (no classes and no variable pool)");
        }
        let lru = Lru::new(cache_size);
        let cache = BlobCache::open(&data.join("blobs"), lru.clone())?;
        let outbox = Outbox::open(&data.join("outbox"))?;
        let work_root = data.join("work");
        // Directories of tasks that were running when the agent last stopped are stale.
        let _ = std::fs::remove_dir_all(&work_root);
        std::fs::create_dir_all(&work_root)?;
        let sandbox = Sandbox::new(SandboxConfig {
            output_cap,
            pooled_guests: pool.fixed_slots(),
            pooled_memory: pool.largest_class().unwrap_or(0),
            ..SandboxConfig::default()
        })?;
        let compiled =
            CompiledCache::open(&data.join("compiled"), &sandbox.compatibility_key(), lru)?;
        let checkpoint_cap = units::parse_size(&config.checkpoint_cap).context("checkpoint_cap")?;
        let pending_checkpoints = Arc::new(crate::checkpoint::Pending::default());
        let (checkpoint_tx, checkpoint_rx) = mpsc::unbounded_channel();
        let progress = Arc::new(crate::checkpoint::ProgressBoard::default());
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "agent".into()));
        let slots = config
            .slots
            .unwrap_or_else(|| sampler.cores())
            .min(lend.cores.unwrap_or(u32::MAX))
            .max(1);
        let agent = Arc::new(Self {
            data_dir: data.clone(),
            free_slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            pools: Pools::new(pool),
            pinned: Mutex::default(),
            fetching: Mutex::default(),
            unreported: Mutex::default(),
            progress: progress.clone(),
            pending_checkpoints: pending_checkpoints.clone(),
            checkpoints: Mutex::new(Some(checkpoint_rx)),
            id,
            name,
            coordinator: config.coordinator.clone(),
            pin,
            identity,
            join_token: config.join_token.clone(),
            slots,
            max_task_memory,
            lend,
            min_free_disk,
            labels: config.labels.clone(),
            runner: Arc::new(Runner {
                sandbox: Arc::new(sandbox),
                cache: cache.clone(),
                trust: Arc::new(trust),
                work: crate::workdir::WorkDirs::new(work_root),
                max_task_memory,
                outputs_cap,
                task_disk,
                compiled,
                loaded: Default::default(),
                guests: Default::default(),
                checkpoints: Some(crate::checkpoint::Sink {
                    cache: cache.clone(),
                    tx: checkpoint_tx,
                    pending: pending_checkpoints,
                    cap: checkpoint_cap,
                    interval: checkpoint_interval,
                    progress: progress.clone(),
                }),
            }),
            cache,
            outbox,
            sampler: Mutex::new(sampler),
            shared: Arc::new(Shared::default()),
            scavenger: ScavengerConfig {
                policy: config.policy.clone(),
                sample_interval,
                dedicated: config.dedicated,
                rules,
            },
            owner: Mutex::new(None),
            stop: Notify::new(),
            conn: watch::channel(None).0,
            lease: Mutex::new(None),
            events: Mutex::new(None),
        });
        let weak = Arc::downgrade(&agent);
        agent.cache.lru().protect_with(move || {
            weak.upgrade()
                .map(|agent| agent.protected_blobs())
                .unwrap_or_default()
        });
        Ok(agent)
    }

    /// Blobs the cache may not evict: those of assignments on the agent, and those of results
    /// not yet acknowledged.
    fn protected_blobs(&self) -> HashSet<Digest> {
        let mut keep: HashSet<Digest> = lock(&self.pinned).values().flatten().copied().collect();
        keep.extend(lock(&self.unreported).iter().copied());
        keep.extend(self.outbox.blobs());
        keep
    }

    /// The agent's stable ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until the task is dropped or the owner stops the agent: starts the scavenger and the
    /// owner's control socket, then connects, serves, reconnects.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let (owner_tx, owner_rx) = std::sync::mpsc::channel();
        *lock(&self.owner) = Some(owner_tx);
        scavenger::start(
            self.scavenger.clone(),
            self.shared.clone(),
            owner_rx,
            ToAgent(Arc::downgrade(&self)),
        )
        .context("starting the load sampler")?;
        if let Some(rx) = lock(&self.checkpoints).take() {
            tokio::spawn(self.clone().report_checkpoints(rx));
        }
        tokio::spawn(self.clone().fence());
        {
            let agent = Arc::downgrade(&self);
            let data_dir = self.data_dir.clone();
            tokio::spawn(async move {
                let result = owner::serve(&data_dir, move |req| match agent.upgrade() {
                    Some(agent) => agent.owner_request(req),
                    None => serde_json::json!({ "error": "the agent is stopping" }),
                })
                .await;
                if let Err(e) = result {
                    tracing::warn!(error = %format!("{e:#}"), "the owner's control socket stopped");
                }
            });
        }
        let connection = self.clone().connect_loop();
        tokio::pin!(connection);
        tokio::select! {
            r = &mut connection => r,
            _ = self.stop.notified() => {
                // The guests are gone: their results (evictions) and the checkpoints they kept
                // on leaving go to the coordinator now, so that their tasks run again at once
                // and from there, rather than after their leases run out.
                tracing::info!(
                    "stopped by the owner; handing back results and checkpoints (at most {:?})",
                    FLUSH_ON_STOP
                );
                let flushed = async {
                    // Without a coordinator there is no one to hand them to: the outbox keeps
                    // the results for the next start.
                    while !self.handed_back() && self.conn.borrow().is_some() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = &mut connection => {}
                    r = tokio::time::timeout(FLUSH_ON_STOP, flushed) => {
                        if r.is_err() {
                            tracing::warn!("stopping with results or checkpoints not yet handed back; results are sent at the next start");
                        }
                        let lost = self.outbox.only_in_memory();
                        if lost > 0 {
                            tracing::warn!(results = lost, "results that were never on disk are lost; their tasks run again when their leases run out");
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Whether every result is acknowledged and every checkpoint reported.
    fn handed_back(&self) -> bool {
        self.outbox.is_empty() && self.pending_checkpoints.is_empty()
    }

    /// Answers `lull-agent pause|resume|stop|status`.
    fn owner_request(&self, req: OwnerRequest) -> serde_json::Value {
        let cmd = match req {
            OwnerRequest::Pause => Some(OwnerCommand::Pause),
            OwnerRequest::Snooze(d) => Some(OwnerCommand::Snooze(d)),
            OwnerRequest::Finish => Some(OwnerCommand::Finish),
            OwnerRequest::Resume => Some(OwnerCommand::Resume),
            OwnerRequest::Stop => Some(OwnerCommand::Stop),
            OwnerRequest::Status => None,
        };
        if let Some(cmd) = cmd {
            tracing::info!(command = req.as_str(), "the owner asked");
            if let Some(tx) = lock(&self.owner).as_ref() {
                let _ = tx.send(cmd);
            }
            // Let the scavenger act before answering with the new status.
            std::thread::sleep(Duration::from_millis(50));
        }
        let running: Vec<String> = self.running().iter().map(|a| a.to_string()).collect();
        serde_json::json!({
            "agent": self.id,
            "name": self.name,
            "status": self.status(),
            "running": running,
            "coordinator": self.coordinator,
            "connected": self.conn.borrow().is_some(),
            "pools": self.pools.usage(),
            "cache": {
                "used": self.cache.lru().total(),
                "budget": self.cache.lru().budget(),
                "compiled": self.cache.lru().compiled().len(),
            },
        })
    }

    async fn connect_loop(self: Arc<Self>) -> anyhow::Result<()> {
        let dialer = Dialer::new(self.pin, Some(&self.identity))?;
        if self.pin.is_none() {
            tracing::warn!("no coordinator_key pinned: accepting any coordinator certificate");
        }
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        let mut refused = false;
        loop {
            match dialer.connect(&self.coordinator).await {
                Ok(conn) => {
                    failures = 0;
                    let started = Instant::now();
                    match self.clone().session(conn.clone()).await {
                        Ok(()) => tracing::info!("coordinator closed the connection"),
                        Err(e) if e.downcast_ref::<link::Refused>().is_some() => {
                            // A person has to act (enroll, or un-revoke by enrolling anew):
                            // ask again only now and then.
                            tracing::error!(error = %format!("{e:#}"), retry_in_s = REFUSED_RETRY.as_secs(), "the coordinator refused this agent");
                            refused = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "connection to the coordinator lost")
                        }
                    }
                    self.conn.send_replace(None);
                    *lock(&self.events) = None;
                    conn.close(0u32.into(), b"");
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                }
                Err(e) => {
                    // Say why once, loudly (a wrong key or address needs a person); then quietly.
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(coordinator = %self.coordinator, error = %format!("{e:#}"), "cannot reach the coordinator; retrying");
                    } else {
                        tracing::debug!(error = %format!("{e:#}"), "cannot reach the coordinator");
                    }
                }
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            if std::mem::take(&mut refused) {
                tokio::time::sleep(REFUSED_RETRY + jitter).await;
                continue;
            }
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(3));
        }
    }

    fn capacity(&self) -> lull_protocol::message::Capacity {
        let machine = lock(&self.sampler).capacity(self.slots, self.max_task_memory, &self.labels);
        self.lend.cap(machine)
    }

    fn status(&self) -> AgentStatus {
        let mut status = lock(&self.shared.status).clone();
        // The process's CPU is all this agent's, unless agents share the process.
        status.guest_cpu *= self.runner.guests.share();
        if let Some(reason) = self.low_disk() {
            status.accepting = false;
            status.reason = reason;
        }
        status
    }

    /// Why the agent takes no new work for want of disk, if it does not.
    fn low_disk(&self) -> Option<String> {
        let free = crate::disk::free_space(&self.data_dir);
        crate::disk::low_disk(&self.data_dir, free, self.min_free_disk)
    }

    fn running(&self) -> Vec<AttemptId> {
        lock(&self.shared.running).keys().copied().collect()
    }

    /// The attempts this agent holds: running, or ended with a result not yet acknowledged.
    /// Reporting the latter keeps their leases while a large result is still being uploaded,
    /// so that finished work is not taken for lost and run again.
    fn held(&self) -> Vec<AttemptId> {
        let mut held = self.running();
        held.extend(self.outbox.attempts());
        held.sort_unstable();
        held.dedup();
        held
    }

    async fn session(self: Arc<Self>, conn: quinn::Connection) -> anyhow::Result<()> {
        if let Some(token) = &self.join_token {
            let already = link::enroll(&conn, token, &self.id, &self.name).await?;
            if !already {
                tracing::info!(agent = %self.id, key = %self.identity.public_key_hash, "enrolled with the coordinator");
            }
        }
        let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
        let hello = AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_id: self.id.clone(),
            name: self.name.clone(),
            capacity: self.capacity(),
            running: self.held(),
            status: self.status(),
            compiled: {
                // The hello says everything; changes are reported from here on.
                let lru = self.cache.lru();
                lru.take_compiled_changes();
                lru.compiled()
            },
        };
        link::write_frame(&mut send, &hello).await?;
        let report_every = match link::read_frame::<CoordinatorMessage>(&mut recv).await? {
            Some(CoordinatorMessage::Welcome {
                report_interval_ms,
                lease_ms,
                ..
            }) => {
                *lock(&self.lease) = Some(Duration::from_millis(lease_ms));
                Duration::from_millis(report_interval_ms.max(100))
            }
            Some(CoordinatorMessage::Refused { reason }) => {
                return Err(link::Refused(reason).into());
            }
            Some(other) => bail!("expected welcome, got {other:?}"),
            None => bail!("the coordinator closed the control stream"),
        };
        tracing::info!(coordinator = %self.coordinator, agent = %self.id, "connected");
        let (tx, mut rx) = mpsc::unbounded_channel();
        *lock(&self.events) = Some(tx);
        self.conn.send_replace(Some(conn.clone()));
        // Results sent on this connection and not yet acknowledged, with when they went.
        let mut sent: HashMap<AttemptId, Instant> = HashMap::new();
        self.outbox.ready().notify_one();
        let mut report = tokio::time::interval(report_every);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend = tokio::time::interval(RESEND_UNACKNOWLEDGED / 2);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames are read by a task of their own: a read interrupted by the loop's other
        // branches would lose the part of a frame already read and put the stream out of step.
        let (frames_tx, mut frames) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            loop {
                let msg = link::read_frame::<CoordinatorMessage>(&mut recv).await;
                let last = !matches!(msg, Ok(Some(_)));
                if frames_tx.send(msg).await.is_err() || last {
                    break;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        loop {
            tokio::select! {
                msg = frames.recv() => {
                    match msg.transpose()?.flatten() {
                        Some(CoordinatorMessage::Refused { reason }) => {
                            return Err(link::Refused(reason).into());
                        }
                        Some(m) => self.handle(m, &mut sent),
                        None => return Ok(()),
                    }
                }
                Some(ev) = rx.recv() => {
                    // What queued up meanwhile (results and starts come in bursts) goes in the
                    // same write.
                    let mut batch = vec![ev];
                    while batch.len() < WRITE_BATCH
                        && let Ok(ev) = rx.try_recv()
                    {
                        batch.push(ev);
                    }
                    lull_protocol::frame::stream::write_batch(&mut send, &batch, |_, e| {
                        tracing::error!(error = %e, "a message to the coordinator could not be framed; dropped");
                    })
                    .await?;
                }
                _ = report.tick() => {
                    let msg = AgentMessage::Report { capacity: self.capacity(), running: self.held(), status: self.status(), progress: self.progress.snapshot() };
                    link::write_frame(&mut send, &msg).await?;
                    let (compiled, dropped) = self.cache.lru().take_compiled_changes();
                    if !compiled.is_empty() || !dropped.is_empty() {
                        link::write_frame(&mut send, &AgentMessage::Holds { compiled, dropped }).await?;
                    }
                }
                _ = self.outbox.ready().notified() => {
                    let now = Instant::now();
                    for result in self.outbox.to_send(|a| sent.contains_key(a)) {
                        sent.insert(result.attempt, now);
                        let agent = self.clone();
                        let conn = conn.clone();
                        tokio::spawn(async move { agent.deliver(conn, result).await });
                    }
                }
                _ = resend.tick() => {
                    // The coordinator may have failed to keep a result (its disk full, its
                    // database restarting), or an upload may have failed: unacknowledged for
                    // long, it goes again (copies are acknowledged without counting twice).
                    let before = sent.len();
                    sent.retain(|_, at| at.elapsed() < RESEND_UNACKNOWLEDGED);
                    if sent.len() < before {
                        tracing::info!(results = before - sent.len(), "results not acknowledged yet; sending them again");
                        self.outbox.ready().notify_one();
                    }
                }
            }
        }
    }

    fn handle(self: &Arc<Self>, msg: CoordinatorMessage, sent: &mut HashMap<AttemptId, Instant>) {
        match msg {
            CoordinatorMessage::Assign(a) => {
                let attempt = a.attempt;
                let control = TaskControl::new();
                {
                    let mut running = lock(&self.shared.running);
                    if running.contains_key(&attempt) {
                        return;
                    }
                    running.insert(attempt, control.clone());
                    // A task starting while guests are paused or capped starts the same way.
                    lock(&self.shared.gate).apply(&control);
                }
                lock(&self.pinned).insert(attempt, a.blobs());
                tracing::info!(%attempt, job = %a.job.name, "assigned");
                tokio::spawn(self.clone().execute(*a, control, Instant::now()));
            }
            CoordinatorMessage::Cancel { attempt, reason } => {
                if let Some(c) = lock(&self.shared.running).get(&attempt) {
                    tracing::info!(%attempt, %reason, "cancelling");
                    c.cancel(reason);
                }
            }
            CoordinatorMessage::Evict {
                attempt,
                reason,
                grace_ms,
            } => {
                if let Some(c) = lock(&self.shared.running).get(&attempt) {
                    tracing::info!(%attempt, %reason, grace_ms, "evicting at the coordinator's request");
                    c.evict(reason, Duration::from_millis(grace_ms));
                }
            }
            CoordinatorMessage::CheckpointRefused {
                attempt,
                seq,
                reason,
            } => {
                tracing::warn!(%attempt, seq, %reason, "the coordinator refused a checkpoint");
            }
            CoordinatorMessage::ResultAck { attempt } => {
                sent.remove(&attempt);
                self.outbox.acknowledged(attempt);
                tracing::debug!(%attempt, "result acknowledged");
            }
            CoordinatorMessage::Tail {
                request,
                attempt,
                module,
                stream,
                offset,
            } => {
                let live = lock(&self.shared.running)
                    .get(&attempt)
                    .and_then(|c| c.read_output(&module, stream, offset));
                self.send_event(AgentMessage::Tail { request, live });
            }
            CoordinatorMessage::Welcome { .. } | CoordinatorMessage::Refused { .. } => {
                tracing::warn!("unexpected welcome mid-session");
            }
        }
    }

    fn send_event(&self, msg: AgentMessage) {
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(msg);
        }
    }

    async fn execute(self: Arc<Self>, a: Assignment, control: TaskControl, received: Instant) {
        let attempt = a.attempt;
        let job = a.job.clone();
        let result = self.clone().run_attempt(a, control, received).await;
        lock(&self.pinned).remove(&attempt);
        self.progress.forget(attempt);
        let Some(result) = result else {
            lock(&self.shared.running).remove(&attempt);
            return;
        };
        tracing::info!(%attempt, cause = ?result.cause(&job), "attempt ended");
        // Into the outbox before it leaves the running: reported as held throughout.
        self.outbox.put(result);
        lock(&self.shared.running).remove(&attempt);
    }

    /// Fetches an attempt's blobs, waits for a task slot and memory slots, and runs it on a
    /// thread of its own; `None` when it ended without a result (the agent is stopping).
    async fn run_attempt(
        self: Arc<Self>,
        a: Assignment,
        control: TaskControl,
        received: Instant,
    ) -> Option<TaskResult> {
        let attempt = a.attempt;
        // Sent before the coordinator heard that the disk is low: handed back, not the task's
        // fault, to run elsewhere.
        if let Some(reason) = self.low_disk() {
            tracing::warn!(%attempt, %reason, "handing an assignment back");
            return Some(runner::ended_before_start(
                &a,
                lull_protocol::message::Outcome::Evicted { reason },
            ));
        }
        if let Err(reason) = self.fetch_all(&a).await {
            return Some(runner::refused(&a, &reason));
        }
        // Past its slots, an assignment waits here (still reported, so its lease holds); a
        // cancel or an eviction meanwhile ends it at once.
        let permit = match self.free_slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let reason = format!("waiting for a task slot: all {} in use", self.slots);
                tracing::info!(%attempt, %reason);
                self.send_event(AgentMessage::Waiting { attempt, reason });
                match unless_stopped(&control, self.free_slots.clone().acquire_owned()).await {
                    Ok(p) => p.ok()?,
                    Err(outcome) => return Some(runner::ended_before_start(&a, outcome)),
                }
            }
        };
        let guests = a.job.modules.len() as u32;
        let memory = a.job.resources.memory;
        let grant = self.pools.acquire(memory, guests, |reason| {
            tracing::info!(%attempt, %reason);
            self.send_event(AgentMessage::Waiting { attempt, reason });
        });
        let grant = match unless_stopped(&control, grant).await {
            Ok(Ok(g)) => g,
            Ok(Err(reason)) => return Some(runner::refused(&a, &reason)),
            Err(outcome) => return Some(runner::ended_before_start(&a, outcome)),
        };
        let pooled = grant.slot().pooled();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runner = self.runner.clone();
        let agent = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("task {attempt}"))
            .spawn(move || {
                let result = runner.run(&a, &control, pooled, || {
                    agent.send_event(AgentMessage::Started {
                        attempt,
                        setup_us: received.elapsed().as_micros() as u64,
                    });
                });
                let _ = tx.send(result);
            });
        let result = match spawned {
            Ok(_) => match rx.await {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::error!(%attempt, "task thread ended without a result");
                    None
                }
            },
            Err(e) => {
                tracing::error!(%attempt, error = %e, "could not start a task thread");
                None
            }
        };
        drop((grant, permit));
        result
    }

    /// Brings every blob of the assignment into the cache. A digest mismatch refuses the task;
    /// a lost connection waits for the next one.
    async fn fetch_all(&self, a: &Assignment) -> Result<(), String> {
        for digest in a.blobs() {
            let mut tries = 0;
            if self.cache.contains(&digest) {
                self.cache.touch(&digest);
                continue;
            }
            // One download per blob, however many tasks wait for it.
            let one = lock(&self.fetching).entry(digest).or_default().clone();
            let fetched = async {
                let _downloading = one.lock().await;
                while !self.cache.contains(&digest) {
                    tries += 1;
                    let conn = self.connection().await;
                    match link::fetch_blob(&conn, &self.cache, digest).await {
                        Ok(()) => {}
                        Err(e) if e.downcast_ref::<DigestMismatch>().is_some() => {
                            tracing::error!(attempt = %a.attempt, error = %e, "blob refused");
                            return Err(e.to_string());
                        }
                        Err(e) if tries >= 5 => {
                            return Err(format!("could not fetch blob {digest}: {e:#}"));
                        }
                        Err(e) => {
                            tracing::warn!(%digest, error = %format!("{e:#}"), "blob fetch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                        }
                    }
                }
                Ok(())
            }
            .await;
            // Success or not, the entry goes (a failed blob left it behind for good).
            lock(&self.fetching).remove(&digest);
            fetched?;
        }
        Ok(())
    }

    async fn connection(&self) -> quinn::Connection {
        let mut rx = self.conn.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                return c;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the agent; wait forever otherwise.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reports the guests' checkpoints in the order they were kept: uploads each state, seals
    /// it with the agent's key (bound to its attempt) and sends it.
    async fn report_checkpoints(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<crate::checkpoint::Kept>,
    ) {
        let mut queue: std::collections::VecDeque<crate::checkpoint::Kept> = Default::default();
        loop {
            // Whatever arrived while the last one went: an attempt's newer checkpoint makes its
            // older ones waiting here useless, so they are dropped unsent.
            // Each is spared by the cache from its arrival until it is sent or dropped.
            while let Ok(k) = rx.try_recv() {
                lock(&self.unreported).insert(k.digest);
                queue.push_back(k);
            }
            let k = match queue.pop_front() {
                Some(k) => k,
                None => match rx.recv().await {
                    Some(k) => {
                        lock(&self.unreported).insert(k.digest);
                        k
                    }
                    None => return,
                },
            };
            if queue.iter().any(|newer| newer.attempt == k.attempt) {
                tracing::debug!(attempt = %k.attempt, seq = k.seq, "a newer checkpoint supersedes one not yet sent");
                if queue.iter().all(|other| other.digest != k.digest) {
                    lock(&self.unreported).remove(&k.digest);
                }
                self.pending_checkpoints.done(k.attempt);
                continue;
            }
            let mut tries = 0u32;
            let uploaded = loop {
                let conn = self.connection().await;
                match link::upload_blob(&conn, &self.cache, k.digest).await {
                    Ok(()) => break true,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::warn!(attempt = %k.attempt, seq = k.seq, error = %format!("{e:#}"), "could not upload a checkpoint; retrying");
                        tokio::time::sleep(Duration::from_millis(200 << tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(attempt = %k.attempt, seq = k.seq, error = %format!("{e:#}"), "could not upload a checkpoint; giving it up");
                        break false;
                    }
                }
            };
            if uploaded {
                let message = lull_protocol::message::checkpoint_seal_message(
                    k.attempt, &k.digest, k.size, k.seq,
                );
                match self.identity.sign(&message) {
                    Ok(seal) => {
                        tracing::debug!(attempt = %k.attempt, seq = k.seq, size = k.size, "checkpoint reported");
                        self.send_event(AgentMessage::Checkpoint {
                            attempt: k.attempt,
                            digest: k.digest,
                            size: k.size,
                            seq: k.seq,
                            progress: k.progress,
                            seal: hex::encode(seal),
                        });
                    }
                    Err(e) => {
                        tracing::error!(attempt = %k.attempt, error = %e, "could not seal a checkpoint")
                    }
                }
            }
            if queue.iter().all(|other| other.digest != k.digest) {
                lock(&self.unreported).remove(&k.digest);
            }
            self.pending_checkpoints.done(k.attempt);
        }
    }

    /// Self-fencing: once the coordinator has been out of reach for longer than its lease, it
    /// has taken the agent's attempts for lost and given their tasks to other agents; running
    /// them on would only hold the machine. They are evicted (their results, sent when the
    /// coordinator is back, are ignored there as late). The agent itself notices a lost
    /// connection within the QUIC idle timeout, after the coordinator's lease started to run,
    /// so it never stops an attempt the coordinator still counts on.
    async fn fence(self: Arc<Self>) {
        let mut conn = self.conn.subscribe();
        loop {
            // Connected: wait for the connection to go.
            while conn.borrow_and_update().is_some() {
                if conn.changed().await.is_err() {
                    return;
                }
            }
            let Some(lease) = *lock(&self.lease) else {
                // Never welcomed: nothing runs on a coordinator's behalf.
                if conn.changed().await.is_err() {
                    return;
                }
                continue;
            };
            tokio::select! {
                changed = conn.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(lease) => {
                    let reason = format!(
                        "the coordinator was out of reach for longer than its lease of {}: the task runs elsewhere",
                        humantime::format_duration(lease)
                    );
                    for (attempt, control) in lock(&self.shared.running).iter() {
                        tracing::warn!(%attempt, %reason, "stopping a stale attempt");
                        control.evict(reason.clone(), Duration::ZERO);
                    }
                    // Until the next connection, assignments are only those already here.
                    if conn.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Uploads a result's blobs (its attempt's last checkpoints first), then sends it. The
    /// coordinator acknowledges it; until then the session sends it again every
    /// [`RESEND_UNACKNOWLEDGED`], and the next connection anew.
    async fn deliver(self: Arc<Self>, conn: quinn::Connection, result: TaskResult) {
        let attempt = result.attempt;
        // The attempt's last checkpoints go first: the next attempt starts from them.
        self.pending_checkpoints
            .flushed(attempt, Duration::from_secs(60))
            .await;
        // Every coordinator holds the empty blob (logs of guests that printed nothing).
        for digest in result.blobs().into_iter().filter(|d| *d != Digest::EMPTY) {
            if let Err(e) = link::upload_blob(&conn, &self.cache, digest).await {
                tracing::warn!(%attempt, error = %format!("{e:#}"), "could not upload a result blob; trying again later");
                return;
            }
        }
        if self.outbox.contains(attempt) {
            self.send_event(AgentMessage::Result(result));
        }
    }
}

/// Waits for `wait` unless the attempt of `control` is cancelled or evicted meanwhile (looked at
/// every 50 ms): then the outcome it ends with.
async fn unless_stopped<T>(
    control: &TaskControl,
    wait: impl std::future::Future<Output = T>,
) -> Result<T, lull_protocol::message::Outcome> {
    tokio::pin!(wait);
    loop {
        if let Some(outcome) = control.outcome_before_start() {
            return Err(outcome);
        }
        tokio::select! {
            done = &mut wait => return Ok(done),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

pub use lull_protocol::process::shutdown_signal;

/// The scavenger's line to the agent (weak: the agent may be going away).
struct ToAgent(std::sync::Weak<Agent>);

impl Events for ToAgent {
    fn state_changed(&self, from: State, to: State, reason: &str, attempts: Vec<AttemptId>) {
        if let Some(agent) = self.0.upgrade() {
            agent.send_event(AgentMessage::StateChanged {
                from,
                to,
                reason: reason.to_owned(),
                attempts,
            });
        }
    }

    fn stop(&self) {
        if let Some(agent) = self.0.upgrade() {
            agent.stop.notify_one();
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::message::Outcome;

    #[tokio::test]
    async fn a_wait_ends_when_its_attempt_is_cancelled_or_evicted() {
        let control = TaskControl::new();
        let theirs = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            theirs.cancel("the job was cancelled");
        });
        let waited = unless_stopped(&control, std::future::pending::<()>()).await;
        assert_eq!(
            waited,
            Err(Outcome::Cancelled {
                reason: "the job was cancelled".into()
            })
        );

        // An eviction ends a wait at once, whatever its grace.
        let control = TaskControl::new();
        control.evict("the owner needs the machine", Duration::from_secs(3600));
        let waited = unless_stopped(&control, std::future::pending::<()>()).await;
        assert!(matches!(waited, Err(Outcome::Evicted { .. })), "{waited:?}");

        // A wait that ends first is just that.
        let control = TaskControl::new();
        assert_eq!(unless_stopped(&control, async { 7 }).await, Ok(7));
    }
}

/// What the owner lends at most: `max_cores` and `max_memory` of `agent.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lend {
    /// The most cores.
    pub cores: Option<u32>,
    /// The most bytes of memory.
    pub memory: Option<u64>,
}

impl Lend {
    /// The machine's capacity as lent: no more cores, memory (total and available) and
    /// largest task than the owner allows.
    pub fn cap(&self, mut c: lull_protocol::message::Capacity) -> lull_protocol::message::Capacity {
        if let Some(cores) = self.cores {
            c.cores = c.cores.min(cores);
            c.slots = c.slots.min(cores);
        }
        if let Some(memory) = self.memory {
            c.memory_total = c.memory_total.min(memory);
            c.memory_available = c.memory_available.min(memory);
            c.max_task_memory = c.max_task_memory.min(memory);
        }
        c
    }
}

#[cfg(test)]
mod lend_tests {
    use super::*;

    #[test]
    fn the_owner_lends_no_more_cores_or_memory_than_allowed() {
        let machine = lull_protocol::message::Capacity {
            cores: 8,
            slots: 8,
            memory_total: 32 << 30,
            memory_available: 20 << 30,
            max_task_memory: 4 << 30,
            ..Default::default()
        };
        assert_eq!(Lend::default().cap(machine.clone()), machine);
        let lent = Lend {
            cores: Some(2),
            memory: Some(3 << 30),
        }
        .cap(machine.clone());
        assert_eq!(
            (
                lent.cores,
                lent.slots,
                lent.memory_total,
                lent.memory_available,
                lent.max_task_memory
            ),
            (2, 2, 3 << 30, 3 << 30, 3 << 30)
        );
        let roomy = Lend {
            cores: Some(64),
            memory: Some(1 << 40),
        }
        .cap(machine.clone());
        assert_eq!(roomy, machine, "a cap above the machine changes nothing");
    }
}
