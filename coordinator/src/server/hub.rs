//! The hub: the coordinator's live state around the durable store — connected agents, leases,
//! the scheduler's queue — and the loop that turns placements into assignments.
//!
//! Every change is written to the store first and acted on second, so a crash between the two
//! is repaired at restart by [`Hub::recover`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lull_protocol::job::JobSpec;
use lull_protocol::message::{
    AgentMessage, AgentState, AgentStatus, Assignment, AttemptId, Capacity, CoordinatorMessage,
    EnrollReply, TaskId,
};
use lull_protocol::signature::TrustList;
use lull_protocol::{Digest, PROTOCOL_VERSION, units};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::blobs::BlobStore;
use crate::leases::Leases;
use crate::store::{
    AgentRecord, Backend, CheckpointRecorded, Enrolled, Recorded, Store, StoreError, TaskState,
};
use lull_scheduler::{JobPlacement, Scheduler};

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long an assignment's lease lasts without a report.
    pub lease: Duration,
    /// How often agents report.
    pub report_interval: Duration,
    /// The largest blob accepted, in bytes.
    pub max_blob: u64,
    /// Who may sign workloads submitted here; `None` accepts any signature (or none).
    pub trust: Option<TrustList>,
    /// How long a failed task waits before its next attempt; it doubles with each failure, up
    /// to a minute.
    pub retry_backoff: Duration,
    /// Whether this is a development cluster (`lull dev`): its submitters sign with the
    /// development key and need no token, and its agents need no enrollment. Elsewhere an agent
    /// is admitted only with the key it enrolled with a join token.
    pub dev: bool,
    /// How long a blob no job refers to is kept after its last use before it is collected.
    pub blob_grace: Duration,
    /// How often unreferenced blobs are collected.
    pub gc_interval: Duration,
    /// The largest checkpoint kept, in bytes.
    pub max_checkpoint: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            max_blob: 1 << 30,
            trust: None,
            retry_backoff: Duration::from_secs(1),
            dev: false,
            blob_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(600),
            max_checkpoint: 64 << 20,
        }
    }
}

/// Why a request was refused; shown to people.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the thing's present state; the message says what to do first.
    #[error("{0}")]
    Conflict(String),
    /// The coordinator's disk failed.
    #[error("{0}")]
    Io(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct AgentConn {
    conn: u64,
    name: String,
    capacity: Capacity,
    status: AgentStatus,
    tx: mpsc::UnboundedSender<CoordinatorMessage>,
    running: HashSet<AttemptId>,
    connected_at: SystemTime,
    /// While it is being drained: when its attempts are evicted (ms since the Unix epoch).
    draining: Option<i64>,
    /// The cluster it belongs to.
    cluster: String,
    /// Blobs downloaded on this connection, and their bytes.
    blobs_served: u64,
    bytes_served: u64,
    /// Whether a lease of its ran out since it last reported.
    silent: bool,
}

impl AgentConn {
    /// Whether it takes new work: its policy says so, it is not being drained, and it has not
    /// gone silent.
    fn accepting(&self) -> bool {
        self.status.accepting && self.draining.is_none() && !self.silent
    }
}

#[derive(Debug)]
struct Inner {
    /// One scheduler per cluster: a cluster's jobs run only on its agents.
    schedulers: Schedulers,
    leases: Leases,
    agents: HashMap<String, AgentConn>,
    jobs: HashMap<u64, Arc<JobSpec>>,
    next_conn: u64,
    /// Failed tasks waiting out their backoff before they are queued again.
    delayed: BinaryHeap<Reverse<(Instant, TaskId)>>,
    /// The agents each retried task failed on, which its next attempts avoid.
    failed_on: HashMap<TaskId, Vec<String>>,
    /// Tasks queued in a scheduler and not yet placed, or waiting out a backoff (a task is
    /// queued once).
    queued: HashSet<TaskId>,
    /// Where the sync with other coordinators on the same database stands.
    shared: SharedSync,
    /// Jobs known to be cancelled (their running attempts were told to stop).
    cancelled: HashSet<u64>,
    /// Attempts assigned here that wait on their agent before starting, and why.
    waiting: HashMap<AttemptId, String>,
    /// The checkpoint each attempt assigned here restores (its agent may fetch it).
    restoring: HashMap<AttemptId, Digest>,
    /// The progress running attempts' guests reported (0..=1).
    progress: HashMap<AttemptId, f64>,
    /// The agents' recent reports and the harvest per minute, for the dashboard.
    history: super::history::History,
}

/// The state of [`Hub::sync_shared`].
#[derive(Debug, Default)]
struct SharedSync {
    /// The last pending task seen in the database, in (time, task) order.
    cursor: (i64, TaskId),
    /// When this coordinator last renewed its agents' leases in the database.
    renewed: Option<Instant>,
    /// When it last synced.
    synced: Option<Instant>,
}

/// The schedulers of the clusters, made as clusters get agents or jobs.
#[derive(Debug)]
struct Schedulers {
    by_cluster: BTreeMap<String, Scheduler>,
    seed: u64,
    /// Where the next round of polling starts, so that no cluster goes first every time.
    next: usize,
}

impl Schedulers {
    /// The scheduler of a cluster.
    fn get(&mut self, cluster: &str) -> &mut Scheduler {
        let seed = self.seed;
        self.by_cluster
            .entry(cluster.to_owned())
            .or_insert_with(|| Scheduler::new(seed))
    }

    /// The next placement in any cluster, taking the clusters in turn.
    fn poll_placement(&mut self) -> Option<lull_scheduler::Placement> {
        let mut order: Vec<&mut Scheduler> = self.by_cluster.values_mut().collect();
        if order.is_empty() {
            return None;
        }
        let start = self.next % order.len();
        self.next = self.next.wrapping_add(1);
        order.rotate_left(start);
        order.into_iter().find_map(Scheduler::poll_placement)
    }
}

impl Inner {
    /// Tells the agent's cluster scheduler whether the agent takes work now.
    fn refresh_accepting(&mut self, agent: &str) {
        if let Some(a) = self.agents.get(agent) {
            let accepting = a.accepting();
            self.schedulers
                .get(&a.cluster)
                .agent_accepting(agent, accepting);
        }
    }

    /// Starts (with its deadline) or ends a drain of a connected agent: its running attempts
    /// are told when they are evicted, and its scheduler whether it takes work. Returns how
    /// many attempts it runs, or `None` when it is not connected here.
    fn set_draining(
        &mut self,
        agent: &str,
        deadline_ms: Option<i64>,
        now_ms: i64,
    ) -> Option<usize> {
        let a = self.agents.get_mut(agent)?;
        a.draining = deadline_ms;
        if let Some(deadline) = deadline_ms {
            for attempt in &a.running {
                let _ = a.tx.send(drain_eviction(*attempt, deadline, now_ms));
            }
        }
        let running = a.running.len();
        self.refresh_accepting(agent);
        Some(running)
    }

    /// The scheduler of a job's cluster, when the hub knows the job.
    fn job_scheduler(&mut self, job: u64) -> Option<&mut Scheduler> {
        let cluster = self.jobs.get(&job)?.cluster.clone();
        Some(self.schedulers.get(&cluster))
    }
}

/// What `lull agents` shows of one agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its policy's view: accepting work or not, and why.
    pub status: AgentStatus,
    /// Attempts running on it.
    pub running: usize,
    /// When it connected (ms since the Unix epoch).
    pub connected_ms: i64,
    /// While it is being drained: when its running attempts are evicted.
    pub draining_until_ms: Option<i64>,
    /// The cluster it belongs to.
    pub cluster: String,
    /// Blobs it downloaded on this connection, and their bytes.
    pub blobs_served: u64,
    /// The bytes of those blobs.
    pub bytes_served: u64,
}

/// The coordinator's live state.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    blobs: BlobStore,
    config: HubConfig,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Held shared while a job is checked and stored, exclusively while blobs are collected:
    /// a job never refers to a blob collected under it.
    collecting: tokio::sync::RwLock<()>,
    /// States that stopped being a task's latest checkpoint, deleted at the next collection
    /// rather than after the grace period; with their bytes.
    superseded: std::sync::Mutex<(HashSet<Digest>, u64)>,
    /// Asks for a collection before the next one is due (superseded states pile up).
    collect_soon: Notify,
    /// Counters for `/metrics`.
    metrics: super::metrics::Metrics,
    /// The pool once a second, shared by every `/api/v1/stream` client.
    pool_feed: super::http::PoolFeed,
}

/// Superseded checkpoints that make a collection come early.
const SUPERSEDED_COLLECT_BYTES: u64 = 256 << 20;
/// The least time between such early collections.
const SUPERSEDED_COLLECT_SPACING: Duration = Duration::from_secs(10);

/// How long an agent may take, beyond a lease, to come back to a restarted coordinator: to see
/// its old connection gone (the QUIC idle timeout, 5 s) and to dial again (its backoff, at most
/// 3 s and half as much again of jitter).
const RECONNECT_ALLOWANCE: Duration = Duration::from_secs(10);

/// How soon the loss of an attempt is tried again when the store could not record it.
const LOST_RETRY: Duration = Duration::from_secs(1);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Hub {
    /// A hub over a store and blob store.
    pub fn new(store: Store, blobs: BlobStore, config: HubConfig, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            store: store.with_lease(config.lease),
            blobs,
            inner: Mutex::new(Inner {
                schedulers: Schedulers {
                    by_cluster: BTreeMap::new(),
                    seed,
                    next: 0,
                },
                leases: Leases::new(config.lease),
                agents: HashMap::new(),
                jobs: HashMap::new(),
                next_conn: 1,
                delayed: BinaryHeap::new(),
                failed_on: HashMap::new(),
                queued: HashSet::new(),
                shared: SharedSync::default(),
                cancelled: HashSet::new(),
                waiting: HashMap::new(),
                restoring: HashMap::new(),
                progress: HashMap::new(),
                history: Default::default(),
            }),
            config,
            wake: Notify::new(),
            collecting: tokio::sync::RwLock::new(()),
            superseded: Default::default(),
            collect_soon: Notify::new(),
            metrics: Default::default(),
            pool_feed: Default::default(),
        })
    }

    /// `/metrics`: the counters, and the gauges read now.
    pub async fn metrics(&self) -> Result<String, HubError> {
        let mut gauges = super::metrics::Gauges {
            tasks: self.store.task_state_counts().await?,
            ..Default::default()
        };
        for a in self.agents() {
            *gauges
                .agents
                .entry(a.status.state.name().to_owned())
                .or_default() += 1;
        }
        gauges.blob_bytes = self
            .blobs
            .stored_bytes()
            .await
            .map_err(|e| HubError::Io(format!("reading the blob store: {e}")))?;
        Ok(self.metrics.render(&gauges))
    }

    /// Deletes the blobs no job refers to that went unused for the grace period, and
    /// unfinished uploads as old. Jobs are not stored meanwhile.
    pub async fn collect_blobs(&self) -> Result<crate::blobs::Collected, HubError> {
        let _exclusive = self.collecting.write().await;
        let superseded =
            std::mem::take(&mut *self.superseded.lock().unwrap_or_else(|p| p.into_inner())).0;
        let before = SystemTime::now();
        let referenced = self.store.referenced_blobs().await?;
        let (dropped, dropped_bytes) = self
            .blobs
            .drop_superseded(superseded, &referenced, before)
            .await;
        if dropped > 0 {
            tracing::info!(
                blobs = dropped,
                bytes = dropped_bytes,
                "deleted superseded checkpoints"
            );
        }
        let mut done = self
            .blobs
            .collect(&referenced, self.config.blob_grace)
            .await
            .map_err(|e| HubError::Io(format!("collecting blobs: {e}")))?;
        done.blobs += dropped;
        done.bytes += dropped_bytes;
        if done.blobs > 0 || done.uploads > 0 {
            tracing::info!(
                blobs = done.blobs,
                bytes = done.bytes,
                uploads = done.uploads,
                kept = done.referenced,
                in_grace = done.in_grace,
                "collected unreferenced blobs"
            );
        }
        Ok(done)
    }

    /// Collects blobs every [`HubConfig::gc_interval`], for ever.
    pub async fn collect_blobs_periodically(self: Arc<Self>) {
        let mut every =
            tokio::time::interval(self.config.gc_interval.max(Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.collect_soon.notified() => {
                    // Not more often than this, however fast checkpoints come.
                    tokio::time::sleep(SUPERSEDED_COLLECT_SPACING).await;
                }
            }
            if let Err(e) = self.collect_blobs().await {
                tracing::warn!(error = %e, "blob collection failed; trying again later");
            }
        }
    }

    /// Deletes a finished job with its tasks and results; its blobs go at the next collection
    /// after the grace period, unless other jobs use them.
    pub async fn delete_job(&self, id: u64) -> Result<(), HubError> {
        if !self.store.delete_job(id).await? {
            return Err(HubError::Conflict(format!(
                "job {id} still has pending or running tasks: cancel it first (`lull cancel {id}`)"
            )));
        }
        let inner = &mut *self.lock();
        inner.jobs.remove(&id);
        inner.cancelled.remove(&id);
        tracing::info!(job = id, "job deleted");
        Ok(())
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The pool's shared feed for `/api/v1/stream`.
    pub fn pool_feed(&self) -> &super::http::PoolFeed {
        &self.pool_feed
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the live state from the store after a start: unfinished jobs, the queue of
    /// pending tasks, and a fresh lease for every running attempt so its agent can reconnect.
    pub async fn recover(&self) -> Result<(), StoreError> {
        // Running tasks' agents get a lease's time to come back, and the time they may take to
        // notice and reconnect, in the database too: a restart is not their tasks' fault.
        let grace = self.config.lease + RECONNECT_ALLOWANCE;
        self.store
            .extend_running_leases(self.store.now_ms().saturating_add(grace.as_millis() as i64))
            .await?;
        let jobs = self.store.unfinished_jobs().await?;
        let pending = self.store.tasks_in_state(TaskState::Pending).await?;
        let running = self.store.tasks_in_state(TaskState::Running).await?;
        let now = Instant::now();
        let mut inner = self.lock();
        for j in jobs {
            inner.jobs.insert(j.id, Arc::new(j.spec));
        }
        for t in &pending {
            queue_task(&mut inner, t.id);
        }
        for t in &running {
            let attempt = AttemptId {
                task: t.id,
                attempt: t.attempt,
            };
            inner
                .leases
                .grant_for(now, attempt, t.agent.as_deref().unwrap_or_default(), grace);
        }
        tracing::info!(
            jobs = inner.jobs.len(),
            pending = pending.len(),
            running = running.len(),
            "recovered state from the store"
        );
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }

    /// Accepts a job: checks it, checks that every blob is here and every signature trusted,
    /// stores it and queues its tasks. Returns its number.
    pub async fn submit(&self, spec: JobSpec) -> Result<u64, HubError> {
        spec.check()
            .map_err(|e| HubError::BadRequest(e.to_string()))?;
        if !self.store.cluster_exists(&spec.cluster).await? {
            return Err(HubError::BadRequest(format!(
                "cluster: there is no cluster {:?} (`lull clusters list` shows them)",
                spec.cluster
            )));
        }
        // From the check to the insert, no collection deletes what the job refers to.
        let _shared = self.collecting.read().await;
        for (digest, size) in spec.blobs() {
            match self.blobs.size(&digest) {
                None => {
                    return Err(HubError::BadRequest(format!(
                        "blob {digest} has not been uploaded"
                    )));
                }
                Some(stored) if size != 0 && stored != size => {
                    return Err(HubError::BadRequest(format!(
                        "blob {digest} is {stored} bytes, but the job says {size}"
                    )));
                }
                Some(_) => {}
            }
        }
        for m in &spec.modules {
            let bytes = self
                .blobs
                .read(&m.digest)
                .await
                .map_err(|e| HubError::BadRequest(format!("module {}: {e}", m.name)))?;
            lull_protocol::module_check::check(&bytes)
                .map_err(|e| HubError::BadRequest(format!("module {}: {e}", m.name)))?;
            if let Some(trust) = &self.config.trust {
                trust
                    .verify(&bytes, m.signature.as_deref())
                    .map_err(|e| HubError::BadRequest(format!("module {}: {e}", m.name)))?;
            }
        }
        let id = self.store.insert_job(&spec, self.store.now_ms()).await?;
        let spec = Arc::new(spec);
        {
            let mut inner = self.lock();
            inner.jobs.insert(id, spec.clone());
            for index in 0..spec.count {
                queue_task(&mut inner, TaskId { job: id, index });
            }
        }
        tracing::info!(job = id, name = %spec.name, tasks = spec.count, "job submitted");
        self.wake.notify_one();
        Ok(id)
    }

    /// Cancels a job: its waiting tasks at once, its running ones as their agents stop them.
    pub async fn cancel(&self, job: u64) -> Result<usize, HubError> {
        let running = self
            .store
            .cancel_job(job, self.store.now_ms())
            .await
            .map_err(|e| match e {
                StoreError::NoJob(_) => HubError::NotFound(format!("no job {job}")),
                e => e.into(),
            })?;
        let inner = &mut *self.lock();
        if let Some(s) = inner.job_scheduler(job) {
            s.remove_job(job);
        }
        inner.delayed.retain(|Reverse((_, t))| t.job != job);
        inner.queued.retain(|t| t.job != job);
        inner.failed_on.retain(|t, _| t.job != job);
        inner.cancelled.insert(job);
        for (attempt, agent) in &running {
            if let Some(a) = inner.agents.get(agent) {
                let _ = a.tx.send(CoordinatorMessage::Cancel {
                    attempt: *attempt,
                    reason: "the job was cancelled".into(),
                });
            }
        }
        tracing::info!(job, running = running.len(), "job cancelled");
        Ok(running.len())
    }

    /// An agent said hello. Returns the connection number, or why it is refused.
    pub async fn agent_connected(
        &self,
        hello: &AgentMessage,
        key: Option<Digest>,
        tx: mpsc::UnboundedSender<CoordinatorMessage>,
    ) -> Result<u64, String> {
        let AgentMessage::Hello {
            protocol_version,
            agent_id,
            name,
            capacity,
            running,
            status,
            compiled,
        } = hello
        else {
            return Err("the first message on a control stream must be hello".into());
        };
        if *protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "this coordinator speaks protocol version {PROTOCOL_VERSION}, the agent speaks {protocol_version}: upgrade the older of the two"
            ));
        }
        check_agent_id(agent_id)?;
        let record = match self.store.agent_record(agent_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not look up the agent");
                return Err("the coordinator could not check the agent's key".into());
            }
        };
        admission(agent_id, record, key, !self.config.dev)?;
        let draining = record.and_then(|r| r.drain_deadline_ms);
        let cluster = match self.store.agent_cluster(agent_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not look up the agent's cluster");
                return Err("the coordinator could not look up the agent's cluster".into());
            }
        };
        if let Err(e) = self
            .store
            .upsert_agent(agent_id, name, capacity, self.store.now_ms())
            .await
        {
            tracing::error!(error = %e, "could not record agent");
            return Err("the coordinator could not record the agent".into());
        }
        if let Some(key) = key
            && let Err(e) = self.store.bind_agent_key(agent_id, key).await
        {
            tracing::error!(error = %e, "could not record the agent's key");
            return Err("the coordinator could not record the agent's key".into());
        }
        let now = Instant::now();
        let inner = &mut *self.lock();
        let conn = inner.next_conn;
        inner.next_conn += 1;
        // The welcome comes first: the agent expects it before anything else.
        let _ = tx.send(CoordinatorMessage::Welcome {
            protocol_version: PROTOCOL_VERSION,
            lease_ms: self.config.lease.as_millis() as u64,
            report_interval_ms: self.config.report_interval.as_millis() as u64,
        });
        let mut mine = HashSet::new();
        for attempt in running {
            if inner.leases.renew(now, *attempt, agent_id) {
                mine.insert(*attempt);
            } else {
                let _ = tx.send(CoordinatorMessage::Cancel {
                    attempt: *attempt,
                    reason: "the attempt is no longer assigned to this agent".into(),
                });
            }
        }
        let scheduler = inner.schedulers.get(&cluster);
        scheduler.agent_up(agent_id, capacity, status.accepting && draining.is_none());
        scheduler.agent_holds(agent_id, compiled.iter().copied());
        if let Some(deadline) = draining {
            for attempt in &mine {
                let _ = tx.send(drain_eviction(*attempt, deadline, self.store.now_ms()));
            }
        }
        for attempt in &mine {
            if ensure_job(inner, attempt.task.job)
                && let Some(s) = inner.job_scheduler(attempt.task.job)
            {
                s.task_running(agent_id, attempt.task);
            }
        }
        if let Some(old) = inner.agents.insert(
            agent_id.clone(),
            AgentConn {
                conn,
                name: name.clone(),
                capacity: capacity.clone(),
                status: status.clone(),
                tx,
                running: mine,
                connected_at: SystemTime::now(),
                draining,
                cluster: cluster.clone(),
                blobs_served: 0,
                bytes_served: 0,
                silent: false,
            },
        ) {
            tracing::info!(agent = %agent_id, old = old.conn, "agent reconnected; old connection replaced");
        }
        tracing::info!(agent = %agent_id, %name, slots = capacity.slots, "agent connected");
        self.wake.notify_one();
        Ok(conn)
    }

    /// Enrolls the key a connection presented (`key`) under `agent_id` with a join token.
    pub async fn enroll(
        &self,
        key: Option<Digest>,
        agent_id: &str,
        name: &str,
        token: &str,
    ) -> EnrollReply {
        let refused = |reason: String| {
            tracing::warn!(agent = %agent_id, %name, %reason, "enrollment refused");
            EnrollReply::Refused { reason }
        };
        let Some(key) = key else {
            return refused("the connection presented no client key to enroll".into());
        };
        if let Err(reason) = check_agent_id(agent_id) {
            return refused(reason);
        }
        match self
            .store
            .enroll_agent(agent_id, name, key, token, self.store.now_ms())
            .await
        {
            Ok(Ok(how)) => {
                let already = how == Enrolled::Already;
                if !already {
                    tracing::info!(agent = %agent_id, %name, %key, "agent enrolled");
                }
                EnrollReply::Enrolled { already }
            }
            Ok(Err(refusal)) => refused(refusal.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "could not enroll an agent");
                refused("the coordinator could not record the enrollment".into())
            }
        }
    }

    /// Revokes an agent: it is refused from now on, its connection is closed at once, and the
    /// attempts it was running go back to pending. Returns how many were requeued.
    pub async fn revoke(&self, agent: &str) -> Result<usize, HubError> {
        match self.store.revoke_agent(agent, self.store.now_ms()).await? {
            None => return Err(HubError::NotFound(format!("no agent {agent}"))),
            Some(false) => tracing::info!(%agent, "agent was revoked already"),
            Some(true) => tracing::warn!(%agent, "agent revoked"),
        }
        Ok(self.cut_off(agent).await?)
    }

    /// Cuts a revoked agent off here: its connection is closed with the reason and the
    /// attempts it held go back to pending. Returns how many did.
    async fn cut_off(&self, agent: &str) -> Result<usize, StoreError> {
        let running: Vec<AttemptId> = {
            let inner = &mut *self.lock();
            let mut running = inner.leases.held_by(agent);
            if let Some(a) = inner.agents.remove(agent) {
                inner.schedulers.get(&a.cluster).agent_down(agent);
                // The connection closes once this is written.
                let _ = a.tx.send(CoordinatorMessage::Refused {
                    reason: format!("agent {agent} was revoked"),
                });
                running.extend(a.running);
            }
            running.sort();
            running.dedup();
            running
        };
        let mut requeued = 0;
        for attempt in running {
            match self
                .store
                .attempt_lost(attempt, "lost: its agent was revoked", self.store.now_ms())
                .await?
            {
                Recorded::Stored(state) => {
                    requeued += 1;
                    self.end_attempt(&mut self.lock(), attempt, agent, state);
                }
                Recorded::Stale => {}
            }
        }
        self.wake.notify_one();
        Ok(requeued)
    }

    /// Applies what another coordinator on the same database decided about this one's agents
    /// and attempts: revocations, drains and cancelled jobs.
    async fn follow_shared_decisions(&self) -> Result<(), StoreError> {
        let (agents, jobs): (Vec<String>, Vec<u64>) = {
            let inner = self.lock();
            let mut jobs: Vec<u64> = inner
                .agents
                .values()
                .flat_map(|a| a.running.iter().map(|at| at.task.job))
                .filter(|j| !inner.cancelled.contains(j))
                .collect();
            jobs.sort_unstable();
            jobs.dedup();
            (inner.agents.keys().cloned().collect(), jobs)
        };
        for (agent, revoked, drain) in self.store.agent_standings(&agents).await? {
            if revoked {
                tracing::warn!(%agent, "agent revoked through another coordinator");
                self.cut_off(&agent).await?;
                continue;
            }
            let inner = &mut *self.lock();
            if inner
                .agents
                .get(&agent)
                .is_some_and(|a| a.draining != drain)
            {
                inner.set_draining(&agent, drain, self.store.now_ms());
                tracing::info!(%agent, draining = drain.is_some(), "drain changed through another coordinator");
            }
        }
        let cancelled = self.store.cancelled_among(&jobs).await?;
        if !cancelled.is_empty() {
            let inner = &mut *self.lock();
            for job in cancelled {
                inner.cancelled.insert(job);
                if let Some(s) = inner.job_scheduler(job) {
                    s.remove_job(job);
                }
                inner.queued.retain(|t| t.job != job);
                for a in inner.agents.values() {
                    for attempt in a.running.iter().filter(|at| at.task.job == job) {
                        let _ = a.tx.send(CoordinatorMessage::Cancel {
                            attempt: *attempt,
                            reason: "the job was cancelled".into(),
                        });
                    }
                }
                tracing::info!(job, "job cancelled through another coordinator");
            }
        }
        Ok(())
    }

    /// Drains an agent: it takes no new work from now on, and its running attempts are evicted
    /// (and run again elsewhere) unless they end within `deadline`. It stays drained across
    /// reconnects and coordinator restarts until [`Hub::undrain`]. Returns how many attempts
    /// it was running.
    pub async fn drain(&self, agent: &str, deadline: Duration) -> Result<usize, HubError> {
        let deadline_ms = self
            .store
            .now_ms()
            .saturating_add(i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX));
        if !self.store.set_drain(agent, Some(deadline_ms)).await? {
            return Err(HubError::NotFound(format!("no agent {agent}")));
        }
        let Some(running) = self
            .lock()
            .set_draining(agent, Some(deadline_ms), self.store.now_ms())
        else {
            tracing::info!(%agent, "agent drained while disconnected");
            return Ok(0);
        };
        tracing::info!(%agent, running, deadline_ms, "agent draining");
        Ok(running)
    }

    /// Ends a drain: the agent takes work again (evictions already sent stand).
    pub async fn undrain(&self, agent: &str) -> Result<(), HubError> {
        if !self.store.set_drain(agent, None).await? {
            return Err(HubError::NotFound(format!("no agent {agent}")));
        }
        self.lock().set_draining(agent, None, self.store.now_ms());
        self.wake.notify_one();
        tracing::info!(%agent, "agent no longer draining");
        Ok(())
    }

    /// Whether `agent` holds the lease of `attempt`.
    fn holds(&self, agent: &str, attempt: AttemptId) -> bool {
        self.lock().leases.holder(&attempt) == Some(agent)
    }

    /// Whether `agent` may download the blob `digest`: only the modules and inputs of the
    /// attempts assigned to it.
    pub fn agent_may_fetch(&self, agent: &str, digest: &Digest) -> bool {
        let inner = self.lock();
        let Some(a) = inner.agents.get(agent) else {
            return false;
        };
        a.running.iter().any(|attempt| {
            inner.restoring.get(attempt) == Some(digest)
                || inner
                    .jobs
                    .get(&attempt.task.job)
                    .is_some_and(|job| job.blobs().any(|(d, _)| d == *digest))
        })
    }

    /// An agent reports a checkpoint of `attempt`, whose seal the connection layer checked
    /// (`sealed`). Kept as the task's latest if the attempt is the agent's, the seal is good,
    /// the state is within [`HubConfig::max_checkpoint`] and uploaded, and it is newer than the
    /// one kept; otherwise refused, telling the agent why.
    #[allow(clippy::too_many_arguments)]
    pub async fn agent_checkpoint(
        &self,
        agent: &str,
        attempt: AttemptId,
        digest: Digest,
        size: u64,
        seq: u64,
        progress: Option<f64>,
        sealed: bool,
    ) {
        let refusal = if !self.holds(agent, attempt) {
            Some(format!("attempt {attempt} is not assigned to this agent"))
        } else if !sealed {
            Some("its seal is not this agent's signature over the attempt and the state".into())
        } else if size > self.config.max_checkpoint {
            Some(format!(
                "it is {}, over this coordinator's cap of {}",
                lull_protocol::units::format_size(size),
                lull_protocol::units::format_size(self.config.max_checkpoint)
            ))
        } else if self.blobs.size(&digest) != Some(size) {
            Some(format!(
                "its state {digest} of {size} bytes was not uploaded"
            ))
        } else {
            match self
                .store
                .record_checkpoint(
                    agent,
                    attempt,
                    &digest,
                    size,
                    seq,
                    progress,
                    self.store.now_ms(),
                )
                .await
            {
                Ok(CheckpointRecorded::Kept { superseded }) => {
                    if let Some(old) = superseded {
                        self.superseded_checkpoint(old);
                    }
                    None
                }
                Ok(CheckpointRecorded::Stale) => {
                    Some("a newer checkpoint is kept, or the attempt ended".into())
                }
                Err(e) => {
                    tracing::error!(%attempt, error = %e, "could not record a checkpoint");
                    Some("the coordinator could not record it".into())
                }
            }
        };
        match refusal {
            None => tracing::info!(%agent, %attempt, seq, %digest, size, "checkpoint kept"),
            Some(reason) => {
                tracing::warn!(%agent, %attempt, seq, %reason, "checkpoint refused");
                if let Some(a) = self.lock().agents.get(agent) {
                    let _ = a.tx.send(CoordinatorMessage::CheckpointRefused {
                        attempt,
                        seq,
                        reason,
                    });
                }
            }
        }
    }

    /// Notes a state that is no longer its task's latest checkpoint, for deletion at the next
    /// collection; asks for that collection early once such states add up.
    fn superseded_checkpoint(&self, digest: Digest) {
        let size = self.blobs.size(&digest).unwrap_or(0);
        let mut superseded = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
        if superseded.0.insert(digest) {
            superseded.1 += size;
        }
        if superseded.1 >= SUPERSEDED_COLLECT_BYTES {
            superseded.1 = 0;
            self.collect_soon.notify_one();
        }
    }

    /// Counts a blob served to an agent.
    pub fn blob_served(&self, agent: &str, bytes: u64) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.blobs_served += 1;
            a.bytes_served += bytes;
        }
    }

    /// The progress of each job's running attempts, added up (a job with two running tasks
    /// each half done has 1.0).
    pub fn running_progress(&self) -> HashMap<u64, f64> {
        let mut sums: HashMap<u64, f64> = HashMap::new();
        for (attempt, fraction) in &self.lock().progress {
            *sums.entry(attempt.task.job).or_default() += fraction;
        }
        sums
    }

    /// Each connected agent's reports after `since_ms` and up to `until_ms`, oldest first.
    pub fn agent_samples(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> HashMap<String, Vec<super::history::Sample>> {
        let inner = self.lock();
        inner
            .agents
            .keys()
            .map(|id| (id.clone(), inner.history.samples(id, since_ms, until_ms)))
            .collect()
    }

    /// The core-seconds harvested since this coordinator started, and per minute for the
    /// minutes that end after `since_ms`.
    pub fn harvest(&self, since_ms: i64) -> (f64, Vec<super::history::Minute>) {
        let minutes = self.lock().history.minutes(since_ms);
        (self.metrics.harvested_total(), minutes)
    }

    /// The progress an attempt's guest reported last, if it runs here and reported any.
    pub fn attempt_progress(&self, attempt: AttemptId) -> Option<f64> {
        self.lock().progress.get(&attempt).copied()
    }

    /// Why an attempt assigned here waits on its agent, if it does.
    pub fn attempt_waiting(&self, attempt: AttemptId) -> Option<String> {
        self.lock().waiting.get(&attempt).cloned()
    }

    /// An agent's control stream ended. Its leases run on: it may reconnect in time.
    pub fn agent_disconnected(&self, agent: &str, conn: u64) {
        let inner = &mut *self.lock();
        if inner.agents.get(agent).is_some_and(|a| a.conn == conn)
            && let Some(a) = inner.agents.remove(agent)
        {
            inner.schedulers.get(&a.cluster).agent_down(agent);
            for attempt in &a.running {
                inner.waiting.remove(attempt);
                inner.progress.remove(attempt);
            }
            tracing::info!(%agent, "agent disconnected");
        }
    }

    /// A message on an agent's control stream.
    pub async fn agent_message(&self, agent: &str, msg: AgentMessage) {
        match msg {
            AgentMessage::Report {
                capacity,
                running,
                status,
                progress,
            } => {
                let now = Instant::now();
                let inner = &mut *self.lock();
                let Inner {
                    agents,
                    leases,
                    schedulers,
                    progress: reported,
                    history,
                    ..
                } = inner;
                if let Some(a) = agents.get_mut(agent) {
                    // The guests' share of the machine over the last report interval.
                    let harvested = status.guest_cpu
                        * f64::from(capacity.cores)
                        * self.config.report_interval.as_secs_f64();
                    let harvested = if harvested.is_finite() {
                        harvested.max(0.0)
                    } else {
                        0.0
                    };
                    self.metrics.harvested(harvested);
                    let memory_used = if capacity.memory_total > 0 {
                        1.0 - capacity.memory_available as f64 / capacity.memory_total as f64
                    } else {
                        0.0
                    };
                    history.record(
                        agent,
                        super::history::Sample {
                            at_ms: now_ms(),
                            incumbent_cpu: status.incumbent_cpu,
                            guest_cpu: status.guest_cpu,
                            memory_used: memory_used.clamp(0.0, 1.0),
                            state: status.state,
                        },
                        harvested,
                    );
                    for (attempt, fraction) in progress {
                        if a.running.contains(&attempt) && fraction.is_finite() {
                            reported.insert(attempt, fraction.clamp(0.0, 1.0));
                        }
                    }
                    for attempt in &running {
                        if !leases.renew(now, *attempt, agent) {
                            let _ = a.tx.send(CoordinatorMessage::Cancel {
                                attempt: *attempt,
                                reason: "the attempt is no longer assigned to this agent".into(),
                            });
                        }
                    }
                    a.capacity = capacity;
                    a.status = status;
                    a.silent = false;
                    schedulers
                        .get(&a.cluster)
                        .agent_up(agent, &a.capacity, a.accepting());
                }
                self.wake.notify_one();
            }
            AgentMessage::Heartbeat => {
                let now = Instant::now();
                let inner = &mut *self.lock();
                if let Some(a) = inner.agents.get(agent) {
                    for attempt in &a.running {
                        inner.leases.renew(now, *attempt, agent);
                    }
                }
            }
            AgentMessage::Started { attempt, setup_us } => {
                if !self.holds(agent, attempt) {
                    tracing::warn!(%agent, %attempt, "start reported for an attempt not assigned to this agent; ignored");
                    return;
                }
                self.lock().waiting.remove(&attempt);
                self.metrics.dispatched(setup_us as f64 / 1e6);
                if let Err(e) = self
                    .store
                    .mark_started(attempt, setup_us, self.store.now_ms())
                    .await
                {
                    tracing::warn!(%attempt, error = %e, "could not record start");
                }
            }
            AgentMessage::Waiting { attempt, reason } => {
                if !self.holds(agent, attempt) {
                    tracing::warn!(%agent, %attempt, "wait reported for an attempt not assigned to this agent; ignored");
                    return;
                }
                tracing::info!(%agent, %attempt, %reason, "attempt waits on its agent");
                self.lock().waiting.insert(attempt, reason);
            }
            AgentMessage::Holds { compiled, dropped } => {
                let inner = &mut *self.lock();
                if let Some(cluster) = inner.agents.get(agent).map(|a| a.cluster.clone()) {
                    let scheduler = inner.schedulers.get(&cluster);
                    scheduler.agent_holds(agent, compiled);
                    scheduler.agent_drops(agent, dropped);
                }
            }
            AgentMessage::Result(result) => {
                {
                    let inner = &mut *self.lock();
                    inner.waiting.remove(&result.attempt);
                    inner.restoring.remove(&result.attempt);
                    inner.progress.remove(&result.attempt);
                }
                self.agent_result(agent, result).await
            }
            AgentMessage::StateChanged {
                from,
                to,
                reason,
                attempts,
            } => {
                tracing::info!(%agent, %from, %to, %reason, tasks = attempts.len(), "agent state changed");
                if to == AgentState::Paused {
                    self.metrics.paused(&reason);
                }
                {
                    let inner = &mut *self.lock();
                    if let Some(a) = inner.agents.get_mut(agent) {
                        a.status.state = to;
                        a.status.reason = reason.clone();
                        a.status.accepting = to.takes_work();
                        inner.refresh_accepting(agent);
                    }
                }
                self.wake.notify_one();
                let event = crate::store::AgentEvent {
                    at_ms: self.store.now_ms(),
                    from: from.name().to_owned(),
                    to: to.name().to_owned(),
                    reason,
                    attempts,
                };
                if let Err(e) = self.store.record_agent_event(agent, &event).await {
                    tracing::warn!(%agent, error = %e, "could not record an agent state change");
                }
            }
            other => tracing::warn!(%agent, ?other, "unexpected message on the control stream"),
        }
    }

    async fn agent_result(&self, agent: &str, result: lull_protocol::message::TaskResult) {
        let attempt = result.attempt;
        let job = self.lock().jobs.get(&attempt.task.job).cloned();
        let job = match job {
            Some(j) => Some(j),
            None => match self.store.job(attempt.task.job).await {
                Ok(row) => Some(Arc::new(row.spec)),
                Err(StoreError::NoJob(_)) => None,
                Err(e) => {
                    tracing::warn!(%attempt, error = %e, "could not read the result's job; the agent resends it");
                    return;
                }
            },
        };
        let Some(job) = job else {
            tracing::warn!(%agent, %attempt, "result for a job that does not exist; acknowledged and dropped");
            if let Some(a) = self.lock().agents.get(agent) {
                let _ = a.tx.send(CoordinatorMessage::ResultAck { attempt });
            }
            return;
        };
        // What an agent says is checked like anything else from outside: a result whose names
        // would reach out of their folders, or that does not match its job, ends the attempt as
        // failed with the reason, and nothing of it is kept.
        let result = match result.check(&job) {
            Ok(()) => result,
            Err(reason) => {
                tracing::warn!(%agent, %attempt, %reason, "the agent sent an invalid result");
                let mut reason = format!("agent {agent} sent a result that is not valid: {reason}");
                lull_protocol::message::truncate_message(
                    &mut reason,
                    lull_protocol::message::MAX_OUTCOME_MESSAGE,
                );
                lull_protocol::message::TaskResult::uniform(
                    attempt,
                    &job,
                    lull_protocol::message::Outcome::Unreportable { reason },
                )
            }
        };
        if let Some(missing) = result.blobs().into_iter().find(|d| !self.blobs.contains(d)) {
            tracing::warn!(%agent, %attempt, %missing, "result refers to a blob not uploaded; not acknowledged");
            return;
        }
        let mut tries = 0;
        let recorded = loop {
            match self
                .store
                .record_result(agent, &result, self.store.now_ms())
                .await
            {
                Ok(r) => break r,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(%attempt, error = %e, "could not record result; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                Err(e) => {
                    tracing::error!(%attempt, error = %e, "could not record result; the agent resends it when it reconnects");
                    return;
                }
            }
        };
        let inner = &mut *self.lock();
        match &recorded {
            Recorded::Stored(state) => {
                tracing::info!(%agent, %attempt, state = state.as_str(), cause = ?result.cause(), "result recorded");
                if let Some(reason) = result.modules.iter().find_map(|m| match &m.outcome {
                    lull_protocol::message::Outcome::Evicted { reason } => Some(reason),
                    _ => None,
                }) {
                    self.metrics.evicted(reason);
                }
                if *state == TaskState::Pending && !result.evicted() {
                    // It failed and has attempts left: elsewhere, after a backoff.
                    let wait = retry_backoff(self.config.retry_backoff, attempt.attempt);
                    tracing::info!(%attempt, wait_ms = wait.as_millis() as u64, "task failed; retrying after a backoff");
                    inner
                        .failed_on
                        .entry(attempt.task)
                        .or_default()
                        .push(agent.to_owned());
                    self.end_attempt_then(inner, attempt, agent, *state, Some(wait));
                } else {
                    self.end_attempt(inner, attempt, agent, *state);
                }
            }
            Recorded::Stale => {
                tracing::info!(%agent, %attempt, "late or duplicate result ignored");
            }
        }
        if let Some(a) = inner.agents.get(agent) {
            let _ = a.tx.send(CoordinatorMessage::ResultAck { attempt });
        }
        self.wake.notify_one();
    }

    fn end_attempt(&self, inner: &mut Inner, attempt: AttemptId, agent: &str, state: TaskState) {
        self.end_attempt_then(inner, attempt, agent, state, None);
    }

    /// Ends an attempt in the live state; a task back to pending is queued at once, or after
    /// `wait`.
    fn end_attempt_then(
        &self,
        inner: &mut Inner,
        attempt: AttemptId,
        agent: &str,
        state: TaskState,
        wait: Option<Duration>,
    ) {
        inner.leases.release(&attempt);
        if let Some(a) = inner.agents.get_mut(agent) {
            a.running.remove(&attempt);
        }
        if let Some(s) = inner.job_scheduler(attempt.task.job) {
            s.task_ended(attempt.task);
        }
        match (state, wait) {
            (TaskState::Pending, Some(wait)) => {
                // Counted as queued while it waits, so that nothing queues it sooner.
                inner.queued.insert(attempt.task);
                inner
                    .delayed
                    .push(Reverse((Instant::now() + wait, attempt.task)));
            }
            (TaskState::Pending, None) => queue_task(inner, attempt.task),
            _ => {
                inner.failed_on.remove(&attempt.task);
            }
        }
    }

    /// Queues the failed tasks whose backoff is over.
    fn release_delayed(&self) {
        let now = Instant::now();
        let inner = &mut *self.lock();
        while let Some(Reverse((due, task))) = inner.delayed.peek().copied() {
            if due > now {
                break;
            }
            inner.delayed.pop();
            inner.queued.remove(&task);
            queue_task(inner, task);
        }
    }

    /// Runs the placement loop forever: expires leases, then places pending tasks on agents
    /// with free slots.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = {
                let inner = self.lock();
                let backoff = inner.delayed.peek().map(|Reverse((due, _))| *due);
                match (inner.leases.poll_timeout(), backoff) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let tick = Duration::from_millis(500);
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()).min(tick))
                .unwrap_or(tick);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            self.expire_leases().await;
            if self.store.backend() == Backend::Postgres {
                self.sync_shared().await;
            }
            self.release_delayed();
            self.place().await;
        }
    }

    /// What coordinators sharing a PostgreSQL database do about each other, about once a
    /// second: renew in the database the leases of the attempts their own agents run (every
    /// quarter lease); requeue attempts whose database lease ran out (their coordinator died
    /// or lost them; one coordinator at a time looks); and queue the tasks that became pending
    /// anywhere (submitted or requeued through another coordinator). Claims stay safe without
    /// it: assigning a task succeeds only while it is pending.
    async fn sync_shared(&self) {
        let now = Instant::now();
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let (renew, cursor) = {
            let inner = self.lock();
            if inner
                .shared
                .synced
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            {
                return;
            }
            let renew = inner
                .shared
                .renewed
                .is_none_or(|t| now.duration_since(t) >= self.config.lease / 4);
            let agents: Vec<String> = if renew {
                inner.agents.keys().cloned().collect()
            } else {
                Vec::new()
            };
            ((renew, agents), inner.shared.cursor)
        };
        if renew.0 {
            // Clocks drift: the database's is measured again now and then.
            if let Err(e) = self.store.sync_clock().await {
                tracing::warn!(error = %e, "could not read the database's clock");
            }
            match self
                .store
                .renew_leases(&renew.1, self.store.now_ms().saturating_add(lease_ms))
                .await
            {
                Ok(_) => self.lock().shared.renewed = Some(now),
                Err(e) => tracing::warn!(error = %e, "could not renew leases in the database"),
            }
        }
        match self.store.expired_leases(self.store.now_ms()).await {
            Ok(expired) => {
                for (attempt, agent) in expired {
                    tracing::warn!(%attempt, %agent, "lease in the database ran out: requeueing");
                    // Not recorded: the database still says it ran out, and the next sync tries.
                    self.requeue_lost(attempt, &agent, "lost: nobody renewed its lease")
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for expired leases"),
        }
        if let Err(e) = self.follow_shared_decisions().await {
            tracing::warn!(error = %e, "could not read other coordinators' decisions");
        }
        let found = match self.store.pending_after(cursor, 10_000).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for pending tasks");
                return;
            }
        };
        // Jobs submitted through another coordinator.
        let unknown: HashSet<u64> = {
            let inner = self.lock();
            found
                .iter()
                .map(|(t, _)| t.job)
                .filter(|j| !inner.jobs.contains_key(j))
                .collect()
        };
        let mut loaded = Vec::new();
        for job in unknown {
            match self.store.job(job).await {
                Ok(row) if !row.cancelled => loaded.push((job, Arc::new(row.spec))),
                Ok(_) => {}
                Err(e) => tracing::warn!(job, error = %e, "could not load a job"),
            }
        }
        let inner = &mut *self.lock();
        for (job, spec) in loaded {
            inner.jobs.entry(job).or_insert(spec);
        }
        for (task, at) in &found {
            queue_task(inner, *task);
            inner.shared.cursor = (*at, *task);
        }
        inner.shared.synced = Some(now);
        if !found.is_empty() {
            self.wake.notify_one();
        }
    }

    async fn expire_leases(&self) {
        let expired = self.lock().leases.poll_expired(Instant::now());
        for (attempt, agent) in expired {
            tracing::warn!(%attempt, %agent, "lease expired: the agent stopped reporting");
            if !self
                .requeue_lost(attempt, &agent, "lost: the agent stopped reporting")
                .await
            {
                // The store did not take the loss (disk full, database restarting): the lease
                // comes back for a moment, so the loss is recorded as soon as the store answers
                // and the task does not stay running for good.
                self.lock()
                    .leases
                    .grant_for(Instant::now(), attempt, &agent, LOST_RETRY);
            }
        }
    }

    /// Ends an attempt whose lease ran out as lost (`why`), tells its agent to stop it if the
    /// agent is here, and requeues the task while it has attempts left. Returns `false` when the
    /// store could not record it.
    async fn requeue_lost(&self, attempt: AttemptId, agent: &str, why: &str) -> bool {
        match self
            .store
            .attempt_lost(attempt, why, self.store.now_ms())
            .await
        {
            Ok(Recorded::Stored(state)) => {
                let inner = &mut *self.lock();
                if let Some(a) = inner.agents.get_mut(agent) {
                    let _ = a.tx.send(CoordinatorMessage::Cancel {
                        attempt,
                        reason: "its lease expired".into(),
                    });
                    // An agent that let a lease run out is silent, maybe gone with its connection
                    // not yet timed out: no new work until it reports again.
                    a.silent = true;
                }
                inner.refresh_accepting(agent);
                // The retry goes elsewhere when it can.
                inner
                    .failed_on
                    .entry(attempt.task)
                    .or_default()
                    .push(agent.to_owned());
                self.end_attempt(inner, attempt, agent, state);
            }
            Ok(Recorded::Stale) => {}
            Err(e) => {
                tracing::error!(%attempt, error = %e, "could not requeue a lost attempt; trying again shortly");
                return false;
            }
        }
        true
    }

    async fn place(&self) {
        loop {
            // The placement reserves the task's slot, memory and CPU on the agent until the
            // task ends or the placement is given back.
            let Some(p) = ({
                let inner = &mut *self.lock();
                let p = inner.schedulers.poll_placement();
                if let Some(p) = &p {
                    inner.queued.remove(&p.task);
                }
                p
            }) else {
                return;
            };
            let task = p.task;
            let assigned = match self.store.assign(task, &p.agent, self.store.now_ms()).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(%task, error = %e, "could not assign; will retry");
                    {
                        let inner = &mut *self.lock();
                        if let Some(s) = inner.job_scheduler(task.job) {
                            s.task_ended(task);
                        }
                        queue_task(inner, task);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // A retried task starts from its latest checkpoint, if it kept one.
            let checkpoint = match assigned {
                Some(a) if a.attempt > 1 => match self.store.checkpoint(task).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(%task, error = %e, "could not look up the task's checkpoint; it starts afresh");
                        None
                    }
                },
                _ => None,
            };
            let inner = &mut *self.lock();
            let Some(attempt) = assigned else {
                // No longer pending (cancelled meanwhile): give the reservation back.
                if let Some(s) = inner.job_scheduler(task.job) {
                    s.task_ended(task);
                }
                continue;
            };
            inner.leases.grant(Instant::now(), attempt, &p.agent);
            let Some(job) = inner.jobs.get(&task.job).cloned() else {
                continue;
            };
            match inner.agents.get_mut(&p.agent) {
                Some(a) => {
                    a.running.insert(attempt);
                    if let Some(c) = &checkpoint {
                        inner.restoring.insert(attempt, c.digest);
                    }
                    let _ = a.tx.send(CoordinatorMessage::Assign(Box::new(Assignment {
                        attempt,
                        job: (*job).clone(),
                        checkpoint,
                    })));
                    tracing::debug!(%attempt, agent = %p.agent, "assigned");
                }
                None => {
                    // Gone since the placement; the lease will expire and requeue it.
                    tracing::debug!(%attempt, agent = %p.agent, "agent left before assignment");
                }
            }
        }
    }

    /// Makes a cluster.
    pub async fn create_cluster(&self, id: &str, description: &str) -> Result<(), HubError> {
        self.store
            .create_cluster(id, description, self.store.now_ms())
            .await?
            .map_err(|e| HubError::BadRequest(e.to_string()))?;
        tracing::info!(cluster = %id, "cluster created");
        Ok(())
    }

    /// The clusters, with how many of their agents are connected.
    pub async fn clusters(&self) -> Result<Vec<serde_json::Value>, HubError> {
        let stored = self.store.clusters().await?;
        let inner = self.lock();
        Ok(stored
            .into_iter()
            .map(|c| {
                let connected = inner.agents.values().filter(|a| a.cluster == c.id).count();
                serde_json::json!({
                    "id": c.id,
                    "description": c.description,
                    "created_ms": c.created_ms,
                    "agents_enrolled": c.agents,
                    "agents_connected": connected,
                })
            })
            .collect())
    }

    /// The connected agents.
    pub fn agents(&self) -> Vec<AgentView> {
        let inner = self.lock();
        let mut v: Vec<AgentView> = inner
            .agents
            .iter()
            .map(|(id, a)| AgentView {
                id: id.clone(),
                name: a.name.clone(),
                capacity: a.capacity.clone(),
                status: a.status.clone(),
                running: a.running.len(),
                connected_ms: a
                    .connected_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                draining_until_ms: a.draining,
                cluster: a.cluster.clone(),
                blobs_served: a.blobs_served,
                bytes_served: a.bytes_served,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Why a job's pending tasks are waiting, in words for `lull status`.
    pub fn waiting_reason(&self, spec: &JobSpec) -> String {
        let inner = self.lock();
        let agents: Vec<&AgentConn> = inner
            .agents
            .values()
            .filter(|a| a.cluster == spec.cluster)
            .collect();
        if agents.is_empty() {
            return if spec.cluster == lull_protocol::job::DEFAULT_CLUSTER {
                "no agent is connected".into()
            } else {
                format!("no agent of cluster {} is connected", spec.cluster)
            };
        }
        let largest = agents
            .iter()
            .map(|a| a.capacity.max_task_memory)
            .max()
            .unwrap_or(0);
        let constraints =
            lull_protocol::constraint::parse_all(&spec.placement.constraints).unwrap_or_default();
        if !agents
            .iter()
            .any(|a| constraints.iter().all(|c| c.holds(&a.capacity)))
        {
            return format!(
                "no connected agent satisfies the constraints ({})",
                spec.placement.constraints.join(", ")
            );
        }
        if largest < spec.resources.memory {
            return format!(
                "no connected agent accepts tasks of {} (the largest cap is {})",
                units::format_size(spec.resources.memory),
                units::format_size(largest)
            );
        }
        if !agents.iter().any(|a| a.accepting()) {
            let why: Vec<String> = agents
                .iter()
                .map(|a| match a.draining {
                    Some(_) => format!("{} draining", a.name),
                    None => format!("{} {} ({})", a.name, a.status.state, a.status.reason),
                })
                .collect();
            return format!("no agent is accepting work now: {}", why.join("; "));
        }
        "waiting for a free slot".into()
    }
}

/// Whether an agent ID is acceptable at all.
fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("agent ID must be 1 to 128 characters".into());
    }
    Ok(())
}

/// Whether an agent saying hello as `agent_id` with the connection's `key` is admitted, given
/// what the store holds of that ID; the error says why not. Where enrollment is required only
/// the key enrolled under the ID is admitted; elsewhere an ID belongs to the first key it came
/// with. A revoked agent is never admitted.
fn admission(
    agent_id: &str,
    record: Option<AgentRecord>,
    key: Option<Digest>,
    require_enrollment: bool,
) -> Result<(), String> {
    const ENROLL: &str = "enroll it with a join token from `lull-coordinator token create` \
                          (`lull-agent install --token T`, or `lull-agent run --join-token T`)";
    if let Some(at) = record.and_then(|r| r.revoked_ms) {
        return Err(format!(
            "agent {agent_id} was revoked (at {} ms since the epoch); it is not admitted again",
            at
        ));
    }
    if let Some(bound) = record.and_then(|r| r.key)
        && key != Some(bound)
    {
        return Err(format!(
            "agent ID {agent_id} belongs to another key ({bound}); {}",
            match key {
                Some(k) => format!("this connection's key is {k}"),
                None => "this connection presented none".to_owned(),
            }
        ));
    }
    if require_enrollment && !record.is_some_and(|r| r.admits(key)) {
        return Err(format!(
            "agent {agent_id} is not enrolled with this coordinator: {ENROLL}"
        ));
    }
    Ok(())
}

/// Makes sure the scheduler knows the job (it forgets jobs with nothing waiting or running);
/// `false` when the hub does not know it either.
fn ensure_job(inner: &mut Inner, job: u64) -> bool {
    let Some(spec) = inner.jobs.get(&job).cloned() else {
        return false;
    };
    let scheduler = inner.schedulers.get(&spec.cluster);
    if scheduler.has_job(job) {
        return true;
    }
    match JobPlacement::of(&spec) {
        Ok(placement) => {
            scheduler.add_job(job, placement, spec.modules.len());
            true
        }
        Err(e) => {
            tracing::error!(job, error = %e, "the job's placement cannot be read; its tasks wait");
            false
        }
    }
}

/// Queues a task for placement, away from the agents it failed on.
fn queue_task(inner: &mut Inner, task: TaskId) {
    if !inner.queued.insert(task) {
        return;
    }
    if ensure_job(inner, task.job) {
        let avoid = inner.failed_on.get(&task).cloned();
        if let Some(s) = inner.job_scheduler(task.job) {
            s.task_queued(task);
            if let Some(agents) = avoid {
                s.avoid(task, agents);
            }
        }
    } else {
        inner.queued.remove(&task);
    }
}

/// How long a task waits before its next attempt after its `attempt`-th failed: `base`,
/// doubling with each failure, at most a minute.
fn retry_backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(60))
}

/// The eviction of a drained agent's attempt, with what is left of the drain's deadline at
/// `now_ms` (the store's clock).
fn drain_eviction(attempt: AttemptId, deadline_ms: i64, now_ms: i64) -> CoordinatorMessage {
    CoordinatorMessage::Evict {
        attempt,
        reason: "the agent is being drained".into(),
        grace_ms: u64::try_from(deadline_ms.saturating_sub(now_ms)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_up_to_a_minute() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|a| retry_backoff(base, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_backoff(base, 0), base);
        assert_eq!(retry_backoff(base, u32::MAX), Duration::from_secs(60));
        assert_eq!(retry_backoff(Duration::ZERO, 5), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_lost_attempt_the_store_cannot_record_keeps_its_lease_until_it_is_recorded() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("lull.db");
        let store = Store::open(&db).await.unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let config = HubConfig {
            lease: Duration::from_millis(200),
            dev: true,
            ..HubConfig::default()
        };
        let hub = Hub::new(store, blobs, config, 1);
        let spec = crate::store::tests::spec(1, 3);
        let job = hub.store().insert_job(&spec, now_ms()).await.unwrap();
        hub.recover().await.unwrap();
        let hello = AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_id: "a-1".into(),
            name: "one".into(),
            capacity: Capacity {
                cores: 2,
                memory_total: 8 << 30,
                memory_available: 4 << 30,
                slots: 1,
                max_task_memory: 1 << 30,
                os: "linux".into(),
                arch: "x86_64".into(),
                ..Capacity::default()
            },
            running: vec![],
            status: AgentStatus::default(),
            compiled: vec![],
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        hub.agent_connected(&hello, Some(Digest::of(b"key")), tx)
            .await
            .unwrap();
        hub.place().await;
        let state = |hub: Arc<Hub>| async move { hub.store().tasks(job).await.unwrap()[0].state };
        assert_eq!(state(hub.clone()).await, TaskState::Running);
        let attempt = AttemptId {
            task: TaskId { job, index: 0 },
            attempt: 1,
        };

        // The store now fails every change of a task, with a real SQLite error, as a full disk
        // or a restarting database would.
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE UPDATE ON tasks BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .execute(&mut other)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.expire_leases().await;
        assert_eq!(state(hub.clone()).await, TaskState::Running);
        assert_eq!(
            hub.lock().leases.holder(&attempt),
            Some("a-1"),
            "the lease is kept so that the loss is tried again"
        );

        // The store answers again: the next expiry records the loss and requeues the task.
        sqlx::query("DROP TRIGGER refuse")
            .execute(&mut other)
            .await
            .unwrap();
        tokio::time::sleep(LOST_RETRY + Duration::from_millis(100)).await;
        hub.expire_leases().await;
        assert_eq!(state(hub.clone()).await, TaskState::Pending);
        assert_eq!(hub.lock().leases.holder(&attempt), None);
    }

    fn record(key: Option<u8>, enrolled: bool, revoked: bool) -> AgentRecord {
        AgentRecord {
            key: key.map(|k| Digest::of(&[k])),
            enrolled_ms: enrolled.then_some(1),
            revoked_ms: revoked.then_some(2),
            drain_deadline_ms: None,
        }
    }

    #[test]
    fn admission_needs_the_enrolled_key_unless_enrollment_is_off() {
        let mine = Some(Digest::of(&[1]));
        let other = Some(Digest::of(&[2]));
        let enrolled = Some(record(Some(1), true, false));
        assert!(admission("a", enrolled, mine, true).is_ok());
        let err = admission("a", enrolled, other, true).unwrap_err();
        assert!(err.contains("belongs to another key"), "{err}");
        let err = admission("a", enrolled, None, true).unwrap_err();
        assert!(err.contains("presented none"), "{err}");
        let err = admission("a", None, mine, true).unwrap_err();
        assert!(err.contains("not enrolled"), "{err}");
        let bound = Some(record(Some(1), false, false));
        assert!(
            admission("a", bound, mine, true)
                .unwrap_err()
                .contains("not enrolled")
        );
        // A development cluster: the first key binds the ID.
        assert!(admission("a", None, mine, false).is_ok());
        assert!(admission("a", bound, mine, false).is_ok());
        assert!(admission("a", bound, other, false).is_err());
        // Revoked is revoked, everywhere.
        let revoked = Some(record(Some(1), true, true));
        for enrollment in [true, false] {
            let err = admission("a", revoked, mine, enrollment).unwrap_err();
            assert!(err.contains("was revoked"), "{err}");
        }
    }
}
