//! The hub: the driver around the dispatch core ([`lull_dispatch::Dispatch`]).
//!
//! The core decides; the hub does the IO. Every input — an agent's message, a person's
//! request, time passing — is fed to the core under one lock with the time, and what the core
//! asks for is carried out in `Hub::with_core`'s drain: messages go to the agents'
//! connections at once, changes to persist join a queue that [`Hub::run`] writes to the store
//! in order, telling the core each outcome. Nothing the core decides is acted on before it is
//! stored, so a crash between the two is repaired at restart by [`Hub::recover`].
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the hub, its driver loop and the persisting of changes |
//! | `agents.rs` | agents: admission, enrollment, messages, checkpoints, drains, revocation |
//! | `jobs.rs` | jobs and clusters: submit, cancel, delete, what people see |
//! | `shared.rs` | coordinators sharing a PostgreSQL database |
//! | `collect.rs` | collection of blobs nothing refers to |

mod accounting;
mod agents;

pub use agents::Refusal;
mod collect;
mod jobs;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lull_dispatch::{Change, Command, Config, Conn, Dispatch, OpId, Persisted};
use lull_protocol::Digest;
use lull_protocol::job::JobSpec;
use lull_protocol::message::{AttemptId, CoordinatorMessage};
use lull_protocol::signature::TrustList;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::blobs::BlobStore;
use crate::store::{Backend, Store, StoreError, TaskState};
use lull_protocol::sync::lock;

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
    /// The half-life of users' recent usage, which fair share goes by.
    pub fair_share_half_life: Duration,
    /// In clusters that allow preemption: how long an attempt runs before waiting work may
    /// evict it.
    pub preempt_min_runtime: Duration,
    /// The time an attempt evicted for waiting work has to checkpoint and stop.
    pub preempt_grace: Duration,
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
            fair_share_half_life: lull_scheduler::DEFAULT_HALF_LIFE,
            preempt_min_runtime: Duration::from_secs(60),
            preempt_grace: Duration::from_secs(30),
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
    /// Not allowed to the one who asked; the message says why.
    #[error("{0}")]
    Forbidden(String),
    /// The coordinator's disk failed.
    #[error("{0}")]
    Io(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The core and what carries out its commands, under one lock.
#[derive(Debug)]
struct Live {
    core: Dispatch,
    /// Each connection's outgoing messages.
    senders: HashMap<Conn, mpsc::UnboundedSender<CoordinatorMessage>>,
    /// Changes waiting to be persisted, in the order the core asked for them.
    to_persist: VecDeque<(OpId, Change)>,
    /// Held jobs released, to hand back to the core as submitted.
    to_release: VecDeque<(u64, Arc<JobSpec>)>,
    /// Who waits for a change to be persisted (an agent's result, so that a connection has a
    /// bounded number in flight), and when the result was read.
    waiters: HashMap<OpId, (oneshot::Sender<()>, Instant)>,
}

/// The coordinator's live state.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    blobs: BlobStore,
    config: HubConfig,
    live: Mutex<Live>,
    /// Wakes [`Hub::run`]: changes to persist, or a new timeout.
    wake: Notify,
    /// The agents' recent reports and the harvest per minute, for the dashboard.
    history: Mutex<super::history::History>,
    /// Counters for `/metrics`.
    metrics: super::metrics::Metrics,
    /// Where the sync with other coordinators on the same database stands.
    shared: Mutex<shared::SharedSync>,
    /// Blob collection's state.
    collector: collect::Collector,
    /// Usage gathered and not yet added to the store's totals.
    usage: Mutex<accounting::Pending>,
    /// Questions to agents about their running guests' output, waiting for answers.
    tails: Mutex<Tails>,
}

/// Questions of [`Hub::tail`] in flight.
#[derive(Debug, Default)]
struct Tails {
    next: u64,
    /// Each by its number: the agent asked, and who waits for the answer.
    waiting: HashMap<
        u64,
        (
            String,
            oneshot::Sender<Option<lull_protocol::message::LiveOutput>>,
        ),
    >,
}

/// How long [`Hub::tail`] waits for an agent's answer.
const TAIL_WAIT: Duration = Duration::from_secs(5);

/// How long an agent may take, beyond a lease, to come back to a restarted coordinator: to see
/// its old connection gone (the QUIC idle timeout, 5 s) and to dial again (its backoff, at most
/// 3 s and half as much again of jitter).
const RECONNECT_ALLOWANCE: Duration = Duration::from_secs(10);

/// How often a result the store failed to record is tried again before the agent is left to
/// resend it.
const RESULT_TRIES: u32 = 5;

/// The most changes written in one transaction.
const MAX_BATCH: usize = 512;

/// The longest the driver loop sleeps with nothing to do.
const IDLE_TICK: Duration = Duration::from_millis(500);

impl Hub {
    /// A hub over a store and blob store.
    pub fn new(store: Store, blobs: BlobStore, config: HubConfig, seed: u64) -> Arc<Self> {
        let core = Dispatch::new(Config {
            lease: config.lease,
            report_interval: config.report_interval,
            retry_backoff: config.retry_backoff,
            seed,
            fair_share_half_life: config.fair_share_half_life,
            preempt_min_runtime: config.preempt_min_runtime,
            preempt_grace: config.preempt_grace,
        });
        Arc::new(Self {
            store: store.with_lease(config.lease),
            blobs,
            live: Mutex::new(Live {
                core,
                senders: HashMap::new(),
                to_persist: VecDeque::new(),
                to_release: VecDeque::new(),
                waiters: HashMap::new(),
            }),
            config,
            wake: Notify::new(),
            history: Default::default(),
            metrics: Default::default(),
            shared: Default::default(),
            collector: Default::default(),
            usage: Default::default(),
            tails: Default::default(),
        })
    }

    /// What module `module` of the running `attempt` has written to `stream` so far, from
    /// `offset`, as its agent keeps it: asked of the agent, when it is connected here. `None`
    /// when no agent here runs that module of the attempt (it has not started, or has ended:
    /// its streams then come with its result).
    pub async fn tail(
        &self,
        attempt: AttemptId,
        module: &str,
        stream: lull_protocol::message::Stream,
        offset: u64,
    ) -> Result<Option<lull_protocol::message::LiveOutput>, HubError> {
        let Some(agent) = self.read_core(|core| core.holder(attempt).map(str::to_owned)) else {
            return Ok(None);
        };
        let (tx, rx) = oneshot::channel();
        let request = {
            let mut tails = lock(&self.tails);
            tails.next += 1;
            let request = tails.next;
            tails.waiting.insert(request, (agent.clone(), tx));
            request
        };
        self.with_core(|core| {
            core.tell(
                &agent,
                CoordinatorMessage::Tail {
                    request,
                    attempt,
                    module: module.to_owned(),
                    stream,
                    offset,
                },
            )
        });
        let answer = tokio::time::timeout(TAIL_WAIT, rx).await;
        lock(&self.tails).waiting.remove(&request);
        match answer {
            Ok(Ok(live)) => Ok(live),
            _ => Err(HubError::Conflict(format!(
                "agent {agent} did not say within {} s what attempt {attempt} wrote; try again",
                TAIL_WAIT.as_secs()
            ))),
        }
    }

    /// An agent's answer to [`Hub::tail`]: taken only from the agent asked, and only when it
    /// fits.
    fn tail_answered(
        &self,
        agent: &str,
        request: u64,
        live: Option<lull_protocol::message::LiveOutput>,
    ) {
        let mut tails = lock(&self.tails);
        let Some((asked, _)) = tails.waiting.get(&request) else {
            return;
        };
        if asked != agent
            || live
                .as_ref()
                .is_some_and(|l| l.bytes.len() > lull_protocol::message::MAX_TAIL)
        {
            tracing::warn!(%agent, request, "an answer about output not asked of this agent, or too long; ignored");
            return;
        }
        if let Some((_, tx)) = tails.waiting.remove(&request) {
            let _ = tx.send(live);
        }
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Feeds the core under the lock, then carries out what it asks for.
    fn with_core<R>(&self, f: impl FnOnce(&mut Dispatch) -> R) -> R {
        self.with_live(|live| f(&mut live.core))
    }

    /// [`Hub::with_core`], with the senders and waiters at hand.
    fn with_live<R>(&self, f: impl FnOnce(&mut Live) -> R) -> R {
        let live = &mut *lock(&self.live);
        let r = f(live);
        let mut persist = false;
        while let Some(command) = live.core.poll_command() {
            match command {
                Command::Send {
                    agent,
                    conn,
                    message,
                } => {
                    let sent = live
                        .senders
                        .get(&conn)
                        .is_some_and(|tx| tx.send(message).is_ok());
                    if !sent {
                        tracing::debug!(%agent, conn, "message to a closed connection dropped");
                    }
                }
                Command::Close { conn, .. } => {
                    // Its writer sends what is queued, then ends.
                    live.senders.remove(&conn);
                }
                Command::Persist { op, change } => {
                    live.to_persist.push_back((op, change));
                    persist = true;
                }
                Command::Release { job, spec } => {
                    live.to_release.push_back((job, spec));
                    persist = true;
                }
            }
        }
        if persist {
            self.wake.notify_one();
        }
        r
    }

    /// Reads the core under the lock.
    fn read_core<R>(&self, f: impl FnOnce(&Dispatch) -> R) -> R {
        f(&lock(&self.live).core)
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
        let (held, jobs): (Vec<_>, Vec<_>) = self
            .store
            .unfinished_jobs()
            .await?
            .into_iter()
            .partition(|j| j.held);
        let held_ids: std::collections::HashSet<u64> = held.iter().map(|j| j.id).collect();
        let mut pending = self.store.tasks_in_state(TaskState::Pending).await?;
        pending.retain(|t| !held_ids.contains(&t.id.job));
        let running = self.store.tasks_in_state(TaskState::Running).await?;
        let counts = (jobs.len(), pending.len(), running.len());
        let mut replicas = Vec::new();
        for job in jobs.iter().filter(|j| j.spec.verified()) {
            replicas.extend(self.store.replicas(job.id).await?);
        }
        let now_ms = self.store.now_ms();
        self.with_core(|core| {
            for job in held {
                core.handle_held(Instant::now(), job.id, &job.spec.after, job.hold);
            }
            core.handle_replicas(replicas);
            core.handle_recovered(
                Instant::now(),
                jobs.into_iter().map(|j| {
                    let age = j.age(now_ms);
                    (j.id, Arc::new(j.spec), age)
                }),
                pending.iter().map(|t| t.id),
                running.iter().map(|t| {
                    let attempt = AttemptId {
                        task: t.id,
                        attempt: t.attempt,
                    };
                    (attempt, t.agent.clone().unwrap_or_default())
                }),
                grace,
            )
        });
        tracing::info!(
            jobs = counts.0,
            pending = counts.1,
            running = counts.2,
            "recovered state from the store"
        );
        self.load_cluster_settings().await?;
        Ok(())
    }

    /// Runs the driver loop for ever: persists the changes the core asks for, in order,
    /// telling it each outcome; tells it when time is up for a lease or a backoff; and, on a
    /// database shared with other coordinators, syncs with them.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            if self.read_core(|core| core.poll_timeout().is_some_and(|t| t <= now)) {
                self.with_core(|core| core.handle_timeout(now));
            }
            if self.store.backend() == Backend::Postgres {
                self.sync_shared().await;
            }
            let released = lock(&self.live).to_release.pop_front();
            if let Some((job, spec)) = released {
                self.start_released(job, spec).await;
                continue;
            }
            let (ops, changes): (Vec<OpId>, Vec<Change>) = {
                let live = &mut *lock(&self.live);
                let n = live.to_persist.len().min(MAX_BATCH);
                live.to_persist.drain(..n).unzip()
            };
            if !changes.is_empty() {
                let outcomes = self.persist_batch(&changes).await;
                self.with_live(|live| {
                    let now = Instant::now();
                    for (op, outcome) in ops.into_iter().zip(outcomes) {
                        live.core.handle_persisted(now, op, outcome);
                        if let Some((done, read)) = live.waiters.remove(&op) {
                            self.metrics.result_stored((now - read).as_secs_f64());
                            let _ = done.send(());
                        }
                    }
                });
                continue;
            }
            let wait = self
                .read_core(|core| core.poll_timeout())
                .map(|t| t.saturating_duration_since(Instant::now()).min(IDLE_TICK))
                .unwrap_or(IDLE_TICK);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Writes a batch of changes in one transaction. When that fails, each is written on its
    /// own, so that one change the store refuses does not fail the others, and a result gets
    /// its retries.
    async fn persist_batch(&self, changes: &[Change]) -> Vec<Persisted> {
        match self.store.persist(changes, self.store.now_ms()).await {
            Ok(outcomes) => {
                for (change, outcome) in changes.iter().zip(&outcomes) {
                    self.count_eviction(change, outcome);
                }
                outcomes
            }
            Err(e) => {
                if changes.len() > 1 {
                    tracing::warn!(changes = changes.len(), error = %e, "could not persist a batch; writing its changes one by one");
                }
                let mut outcomes = Vec::with_capacity(changes.len());
                for change in changes {
                    outcomes.push(self.persist(change).await);
                }
                outcomes
            }
        }
    }

    /// Counts an eviction for `/metrics` once its result is stored.
    fn count_eviction(&self, change: &Change, outcome: &Persisted) {
        if let (Change::End(ending), Persisted::Ended(_)) = (change, outcome)
            && let Some(reason) = ending
                .result
                .as_deref()
                .and_then(lull_dispatch::eviction_reason)
        {
            self.metrics.evicted(reason);
        }
    }

    /// Writes one change to the store, in a transaction of its own. A result is tried a few
    /// times: its agent resends it only when it reconnects.
    async fn persist(&self, change: &Change) -> Persisted {
        let tries = match change {
            Change::End(ending) if ending.result.is_some() => RESULT_TRIES,
            _ => 1,
        };
        let mut tried = 0;
        loop {
            tried += 1;
            match self
                .store
                .persist(std::slice::from_ref(change), self.store.now_ms())
                .await
            {
                Ok(mut outcomes) => {
                    let outcome = outcomes.pop().unwrap_or(Persisted::Stale);
                    self.count_eviction(change, &outcome);
                    return outcome;
                }
                Err(e) if tried < tries => {
                    tracing::warn!(error = %e, "could not record result; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << tried)).await;
                }
                Err(e) => return Persisted::Failed(e.to_string()),
            }
        }
    }

    /// The connected agents.
    pub fn agents(&self) -> Vec<lull_protocol::api::Agent> {
        let mut v: Vec<lull_protocol::api::Agent> = self.read_core(|core| {
            core.agents()
                .map(|(id, a)| lull_protocol::api::Agent {
                    id: id.to_owned(),
                    name: a.name.clone(),
                    capacity: a.capacity.clone(),
                    status: a.status.clone(),
                    running: a.running.len(),
                    connected_ms: a.connected_ms,
                    draining_until_ms: a.draining,
                    cluster: a.cluster.clone(),
                    blobs_served: a.blobs_served,
                    bytes_served: a.bytes_served,
                    owner: a.owner.clone(),
                    disagreements: a.disagreements,
                })
                .collect()
        });
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Whether `agent` may download the blob `digest`: only the modules and inputs of the
    /// attempts assigned to it, and the checkpoints they restore.
    pub fn agent_may_fetch(&self, agent: &str, digest: &Digest) -> bool {
        self.read_core(|core| core.may_fetch(agent, digest))
    }

    /// Counts a blob served to an agent.
    pub fn blob_served(&self, agent: &str, bytes: u64) {
        self.with_core(|core| core.handle_blob_served(agent, bytes));
    }

    /// Every user's standing in each cluster's fair share.
    pub fn shares(&self) -> Vec<lull_protocol::api::Share> {
        self.read_core(|core| {
            core.shares()
                .into_iter()
                .map(|(cluster, s)| lull_protocol::api::Share {
                    cluster,
                    user: s.user,
                    running_cores: s.running_cores,
                    recent_cores: s.recent_cores,
                    usage_core_seconds: s.usage_core_seconds,
                    waiting: s.waiting as u64,
                })
                .collect()
        })
    }

    /// The progress of each job's running attempts, added up (a job with two running tasks
    /// each half done has 1.0).
    pub fn running_progress(&self) -> HashMap<u64, f64> {
        self.read_core(Dispatch::running_progress)
    }

    /// The progress an attempt's guest reported last, if it runs here and reported any.
    pub fn attempt_progress(&self, attempt: AttemptId) -> Option<f64> {
        self.read_core(|core| core.progress(attempt))
    }

    /// Why an attempt assigned here waits on its agent, if it does.
    pub fn attempt_waiting(&self, attempt: AttemptId) -> Option<String> {
        self.read_core(|core| core.waiting(attempt).map(str::to_owned))
    }

    /// Each connected agent's reports after `since_ms` and up to `until_ms`, oldest first.
    pub fn agent_samples(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> HashMap<String, Vec<super::history::Sample>> {
        let ids: Vec<String> =
            self.read_core(|core| core.agents().map(|(id, _)| id.to_owned()).collect());
        let history = lock(&self.history);
        ids.into_iter()
            .map(|id| {
                let samples = history.samples(&id, since_ms, until_ms);
                (id, samples)
            })
            .collect()
    }

    /// The core-seconds harvested since this coordinator started, and per minute for the
    /// minutes that end after `since_ms`.
    pub fn harvest(&self, since_ms: i64) -> (f64, Vec<super::history::Minute>) {
        let minutes = lock(&self.history).minutes(since_ms);
        (self.metrics.harvested_total(), minutes)
    }
}

#[cfg(test)]
mod tests;
