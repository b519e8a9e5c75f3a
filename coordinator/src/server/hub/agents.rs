//! Agents: admission and enrollment, their messages, checkpoints, drains and revocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lull_dispatch::{Hello, Report};
use lull_protocol::message::{
    AgentMessage, AgentState, AttemptId, CoordinatorMessage, EnrollReply, MAX_OUTCOME_MESSAGE,
    Outcome, TaskResult, truncate_message,
};
use lull_protocol::{Digest, PROTOCOL_VERSION, units};
use tokio::sync::{mpsc, oneshot};

use super::{Hub, HubError, lock};
use crate::store::{AgentRecord, CheckpointRecorded, Enrolled, StoreError};

impl Hub {
    /// An agent said hello. Returns the connection number, or why it is refused.
    pub async fn agent_connected(
        &self,
        hello: &AgentMessage,
        key: Option<Digest>,
        tx: mpsc::UnboundedSender<CoordinatorMessage>,
    ) -> Result<u64, Refusal> {
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
            return Err(Refusal::NotHello);
        };
        if *protocol_version != PROTOCOL_VERSION {
            return Err(Refusal::Version(*protocol_version));
        }
        check_agent_id(agent_id)?;
        let record = match self.store.agent_record(agent_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not look up the agent");
                return Err(Refusal::Store("check the agent's key"));
            }
        };
        admission(agent_id, record.as_ref(), key, !self.config.dev)?;
        let cluster = match self.store.agent_cluster(agent_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not look up the agent's cluster");
                return Err(Refusal::Store("look up the agent's cluster"));
            }
        };
        if let Err(e) = self
            .store
            .upsert_agent(agent_id, name, capacity, self.store.now_ms())
            .await
        {
            tracing::error!(error = %e, "could not record agent");
            return Err(Refusal::Store("record the agent"));
        }
        if let Some(key) = key
            && let Err(e) = self.store.bind_agent_key(agent_id, key).await
        {
            tracing::error!(error = %e, "could not record the agent's key");
            return Err(Refusal::Store("record the agent's key"));
        }
        let hello = Hello {
            agent: agent_id.clone(),
            name: name.clone(),
            capacity: capacity.clone(),
            status: status.clone(),
            running: running.clone(),
            compiled: compiled.clone(),
            cluster,
            draining: record.as_ref().and_then(|r| r.drain_deadline_ms),
            disagreements: record.as_ref().map_or(0, |r| r.disagreements),
            owner: record.map(|r| r.owner).unwrap_or_default(),
        };
        let now_ms = self.store.now_ms();
        let conn = self.with_live(|live| {
            let conn = live.core.handle_hello(Instant::now(), now_ms, hello);
            live.senders.insert(conn, tx);
            conn
        });
        tracing::info!(agent = %agent_id, %name, slots = capacity.slots, "agent connected");
        Ok(conn)
    }

    /// An agent's control stream ended. Its leases run on: it may reconnect in time.
    pub fn agent_disconnected(&self, agent: &str, conn: u64) {
        self.with_core(|core| core.handle_disconnected(agent, conn));
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
            return refused(reason.to_string());
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
    /// attempts it was running go back to pending. Returns how many do.
    pub async fn revoke(&self, agent: &str) -> Result<usize, HubError> {
        match self.store.revoke_agent(agent, self.store.now_ms()).await? {
            None => return Err(HubError::NotFound(format!("no agent {agent}"))),
            Some(false) => tracing::info!(%agent, "agent was revoked already"),
            Some(true) => tracing::warn!(%agent, "agent revoked"),
        }
        Ok(self.with_core(|core| core.handle_revoked(agent)))
    }

    /// Drains an agent: it takes no new work from now on, and its running attempts are evicted
    /// (and run again elsewhere) unless they end within `deadline`. It stays drained across
    /// reconnects and coordinator restarts until [`Hub::undrain`]. Returns how many attempts
    /// it was running.
    pub async fn drain(&self, agent: &str, deadline: Duration) -> Result<usize, HubError> {
        let now_ms = self.store.now_ms();
        let deadline_ms =
            now_ms.saturating_add(i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX));
        if !self.store.set_drain(agent, Some(deadline_ms)).await? {
            return Err(HubError::NotFound(format!("no agent {agent}")));
        }
        let Some(running) =
            self.with_core(|core| core.handle_drain(now_ms, agent, Some(deadline_ms)))
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
        let now_ms = self.store.now_ms();
        self.with_core(|core| core.handle_drain(now_ms, agent, None));
        tracing::info!(%agent, "agent no longer draining");
        Ok(())
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
                let harvested = self.harvested(&capacity, &status);
                let sample = (capacity.clone(), status.clone());
                let report = Report {
                    capacity,
                    running,
                    status,
                    progress,
                };
                // The report and the credit of its CPU under one lock of the core.
                let (known, credit) = self.with_core(|core| {
                    let known = core.handle_report(Instant::now(), agent, report);
                    (known, known.then(|| core.handle_harvest(agent, harvested)))
                });
                if known {
                    self.credit(credit.flatten(), harvested);
                    self.record_report(agent, &sample.0, &sample.1, harvested);
                }
            }
            AgentMessage::Heartbeat => {
                self.with_core(|core| core.handle_heartbeat(Instant::now(), agent));
            }
            AgentMessage::Tail { request, live } => self.tail_answered(agent, request, live),
            AgentMessage::Started { attempt, setup_us } => {
                let now = Instant::now();
                let (started, accepted) = self.with_core(|core| {
                    (
                        core.handle_started(agent, attempt, setup_us),
                        core.accepted(attempt.task.job),
                    )
                });
                if started {
                    self.metrics.dispatched(setup_us as f64 / 1e6);
                    if let Some(accepted) = accepted.filter(|_| attempt.attempt == 1) {
                        self.metrics
                            .submitted_to_started((now - accepted).as_secs_f64());
                    }
                } else {
                    tracing::warn!(%agent, %attempt, "start reported for an attempt not assigned to this agent; ignored");
                }
            }
            AgentMessage::Waiting { attempt, reason } => {
                let shown = reason.clone();
                if self.with_core(|core| core.handle_waiting(agent, attempt, reason)) {
                    tracing::info!(%agent, %attempt, reason = %shown, "attempt waits on its agent");
                } else {
                    tracing::warn!(%agent, %attempt, "wait reported for an attempt not assigned to this agent; ignored");
                }
            }
            AgentMessage::Holds { compiled, dropped } => {
                self.with_core(|core| core.handle_holds(agent, compiled, dropped));
            }
            AgentMessage::Result(result) => {
                if let Some(recorded) = self.agent_result(agent, result).await {
                    let _ = recorded.await;
                }
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
                self.with_core(|core| core.handle_state_changed(agent, to, &reason));
                let event = crate::store::AgentEvent {
                    at_ms: self.store.now_ms(),
                    from,
                    to,
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

    /// The core-seconds a report says its guests used: their share of the machine over the
    /// last report interval.
    fn harvested(
        &self,
        capacity: &lull_protocol::message::Capacity,
        status: &lull_protocol::message::AgentStatus,
    ) -> f64 {
        let harvested = status.guest_cpu
            * f64::from(capacity.cores)
            * self.config.report_interval.as_secs_f64();
        if harvested.is_finite() {
            harvested.max(0.0)
        } else {
            0.0
        }
    }

    /// Keeps a report for the dashboard and counts the CPU its guests harvested.
    fn record_report(
        &self,
        agent: &str,
        capacity: &lull_protocol::message::Capacity,
        status: &lull_protocol::message::AgentStatus,
        harvested: f64,
    ) {
        self.metrics.harvested(harvested);
        let memory_used = if capacity.memory_total > 0 {
            1.0 - capacity.memory_available as f64 / capacity.memory_total as f64
        } else {
            0.0
        };
        lock(&self.history).record(
            agent,
            super::super::history::Sample {
                at_ms: crate::clock::now_ms(),
                incumbent_cpu: status.incumbent_cpu,
                guest_cpu: status.guest_cpu,
                memory_used: memory_used.clamp(0.0, 1.0),
                state: status.state,
            },
            harvested,
        );
    }

    /// A result: checked against its job like anything else from outside, then given to the
    /// core, which decides the task's next state. Returns, when the result went to the core, a
    /// receipt that fires once its write is done (the acknowledgement to the agent, if any,
    /// sent): a connection keeps a bounded number of results in flight with these, so that
    /// results from one agent share writes.
    pub async fn agent_result(
        &self,
        agent: &str,
        result: TaskResult,
    ) -> Option<oneshot::Receiver<()>> {
        let read = Instant::now();
        let attempt = result.attempt;
        let job = match self.read_core(|core| core.job(attempt.task.job).cloned()) {
            Some(j) => Some(j),
            None => match self.store.job(attempt.task.job).await {
                Ok(row) => Some(Arc::new(row.spec)),
                Err(StoreError::NoJob(_)) => None,
                Err(e) => {
                    tracing::warn!(%attempt, error = %e, "could not read the result's job; the agent resends it");
                    return None;
                }
            },
        };
        let Some(job) = job else {
            tracing::warn!(%agent, %attempt, "result for a job that does not exist; acknowledged and dropped");
            self.with_core(|core| core.tell(agent, CoordinatorMessage::ResultAck { attempt }));
            return None;
        };
        // A result whose names would reach out of their folders, or that does not match its
        // job, ends the attempt as failed with the reason, and nothing of it is kept.
        let result = match result.check(&job) {
            Ok(()) => result,
            Err(reason) => {
                tracing::warn!(%agent, %attempt, %reason, "the agent sent an invalid result");
                let mut reason = format!("agent {agent} sent a result that is not valid: {reason}");
                truncate_message(&mut reason, MAX_OUTCOME_MESSAGE);
                TaskResult::uniform(attempt, &job, Outcome::Unreportable { reason })
            }
        };
        if let Some(missing) = result.blobs().into_iter().find(|d| !self.blobs.contains(d)) {
            tracing::warn!(%agent, %attempt, %missing, "result refers to a blob not uploaded; not acknowledged");
            return None;
        }
        tracing::debug!(%agent, %attempt, cause = ?result.cause(&job), "result received");
        let (done, recorded) = oneshot::channel();
        self.with_live(|live| {
            let op = live.core.handle_result(read, agent, result, &job);
            live.waiters.insert(op, (done, read));
        });
        Some(recorded)
    }

    /// An agent reports a checkpoint of `attempt`, whose seal the connection layer checked
    /// (`sealed`). Kept as the task's latest if the attempt is the agent's, the seal is good,
    /// the state is within [`super::HubConfig::max_checkpoint`] and uploaded, and it is newer
    /// than the one kept; otherwise refused, telling the agent why.
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
        let refusal = if !self.read_core(|core| core.holds(agent, attempt)) {
            Some(format!("attempt {attempt} is not assigned to this agent"))
        } else if !sealed {
            Some("its seal is not this agent's signature over the attempt and the state".into())
        } else if size > self.config.max_checkpoint {
            Some(format!(
                "it is {}, over this coordinator's cap of {}",
                units::format_size(size),
                units::format_size(self.config.max_checkpoint)
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
                let refused = CoordinatorMessage::CheckpointRefused {
                    attempt,
                    seq,
                    reason,
                };
                self.with_core(|core| core.tell(agent, refused));
            }
        }
    }
}

/// How to enroll an agent, said to one that is not.
const ENROLL: &str = "enroll it with a join token from `lull-coordinator token create` \
                      (`lull-agent install --token T`, or `lull-agent run --join-token T`)";

/// Why an agent's hello is refused; sent to the agent, which says it in its log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The control stream did not start with a hello.
    #[error("the first message on a control stream must be hello")]
    NotHello,
    /// The agent speaks another protocol version.
    #[error(
        "this coordinator speaks protocol version {PROTOCOL_VERSION}, the agent speaks {0}: upgrade the older of the two"
    )]
    Version(u32),
    /// The ID is empty or too long.
    #[error("agent ID must be 1 to 128 characters")]
    BadId,
    /// The agent was revoked (at this time, ms since the Unix epoch).
    #[error("agent {0} was revoked (at {1} ms since the epoch); it is not admitted again")]
    Revoked(String, i64),
    /// The ID is bound to another key than the connection's.
    #[error("agent ID {id} belongs to another key ({bound}); {}", presented(.key))]
    OtherKey {
        /// The agent's ID.
        id: String,
        /// The key bound to it.
        bound: Digest,
        /// The connection's key, if it presented one.
        key: Option<Digest>,
    },
    /// Enrollment is required and the agent's key is not enrolled under its ID.
    #[error("agent {0} is not enrolled with this coordinator: {ENROLL}")]
    NotEnrolled(String),
    /// The store failed while the coordinator was doing this.
    #[error("the coordinator could not {0}")]
    Store(&'static str),
}

/// What key a connection presented, in words.
fn presented(key: &Option<Digest>) -> String {
    match key {
        Some(k) => format!("this connection's key is {k}"),
        None => "this connection presented none".to_owned(),
    }
}

/// Whether an agent ID is acceptable at all.
fn check_agent_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > 128 {
        return Err(Refusal::BadId);
    }
    Ok(())
}

/// Whether an agent saying hello as `agent_id` with the connection's `key` is admitted, given
/// what the store holds of that ID. Where enrollment is required only the key enrolled under
/// the ID is admitted; elsewhere an ID belongs to the first key it came with. A revoked agent
/// is never admitted.
fn admission(
    agent_id: &str,
    record: Option<&AgentRecord>,
    key: Option<Digest>,
    require_enrollment: bool,
) -> Result<(), Refusal> {
    if let Some(at) = record.and_then(|r| r.revoked_ms) {
        return Err(Refusal::Revoked(agent_id.to_owned(), at));
    }
    if let Some(bound) = record.and_then(|r| r.key)
        && key != Some(bound)
    {
        return Err(Refusal::OtherKey {
            id: agent_id.to_owned(),
            bound,
            key,
        });
    }
    if require_enrollment && !record.is_some_and(|r| r.admits(key)) {
        return Err(Refusal::NotEnrolled(agent_id.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<u8>, enrolled: bool, revoked: bool) -> AgentRecord {
        AgentRecord {
            key: key.map(|k| Digest::of(&[k])),
            enrolled_ms: enrolled.then_some(1),
            revoked_ms: revoked.then_some(2),
            drain_deadline_ms: None,
            owner: String::new(),
            disagreements: 0,
        }
    }

    #[test]
    fn admission_needs_the_enrolled_key_unless_enrollment_is_off() {
        let mine = Some(Digest::of(&[1]));
        let other = Some(Digest::of(&[2]));
        let enrolled = Some(record(Some(1), true, false));
        assert!(admission("a", enrolled.as_ref(), mine, true).is_ok());
        let err = admission("a", enrolled.as_ref(), other, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to another key"), "{err}");
        let err = admission("a", enrolled.as_ref(), None, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("presented none"), "{err}");
        let err = admission("a", None, mine, true).unwrap_err().to_string();
        assert!(err.contains("not enrolled"), "{err}");
        let bound = Some(record(Some(1), false, false));
        assert!(
            admission("a", bound.as_ref(), mine, true)
                .unwrap_err()
                .to_string()
                .contains("not enrolled")
        );
        // A development cluster: the first key binds the ID.
        assert!(admission("a", None, mine, false).is_ok());
        assert!(admission("a", bound.as_ref(), mine, false).is_ok());
        assert!(admission("a", bound.as_ref(), other, false).is_err());
        // Revoked is revoked, everywhere.
        let revoked = Some(record(Some(1), true, true));
        for enrollment in [true, false] {
            let err = admission("a", revoked.as_ref(), mine, enrollment)
                .unwrap_err()
                .to_string();
            assert!(err.contains("was revoked"), "{err}");
        }
    }
}
