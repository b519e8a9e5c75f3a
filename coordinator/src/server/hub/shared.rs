//! Coordinators sharing a PostgreSQL database: what each does about the others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lull_protocol::message::TaskId;

use super::{Hub, lock};
use crate::store::StoreError;

/// How often a coordinator looks at what the others did.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How often it looks for held jobs no coordinator may be watching.
const ADOPT_INTERVAL: Duration = Duration::from_secs(10);

/// Where the sync with other coordinators stands.
#[derive(Debug, Default)]
pub(super) struct SharedSync {
    /// The last pending task seen in the database, in (time, task) order.
    cursor: (i64, TaskId),
    /// When this coordinator last renewed its agents' leases in the database.
    renewed: Option<Instant>,
    /// When it last synced.
    synced: Option<Instant>,
    /// When it last looked for held jobs to watch.
    adopted: Option<Instant>,
}

impl Hub {
    /// About once a second: renews in the database the leases of the attempts this
    /// coordinator's agents run (every quarter lease); ends the attempts whose database lease
    /// ran out (their coordinator died or lost them); follows the others' revocations, drains,
    /// cancels and quotas; and queues the tasks that became pending anywhere. Claims stay safe without
    /// it: assigning a task succeeds only while it is pending.
    pub(super) async fn sync_shared(&self) {
        let now = Instant::now();
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let (renew, cursor) = {
            let shared = lock(&self.shared);
            if shared
                .synced
                .is_some_and(|t| now.duration_since(t) < SYNC_INTERVAL)
            {
                return;
            }
            let renew = shared
                .renewed
                .is_none_or(|t| now.duration_since(t) >= self.config.lease / 4);
            (renew, shared.cursor)
        };
        if renew {
            let agents: Vec<String> =
                self.read_core(|core| core.agents().map(|(id, _)| id.to_owned()).collect());
            // Clocks drift: the database's is measured again now and then.
            if let Err(e) = self.store.sync_clock().await {
                tracing::warn!(error = %e, "could not read the database's clock");
            }
            match self
                .store
                .renew_leases(&agents, self.store.now_ms().saturating_add(lease_ms))
                .await
            {
                Ok(_) => lock(&self.shared).renewed = Some(now),
                Err(e) => tracing::warn!(error = %e, "could not renew leases in the database"),
            }
        }
        match self.store.expired_leases(self.store.now_ms()).await {
            Ok(expired) => self.with_core(|core| {
                for (attempt, agent) in expired {
                    core.handle_lost_elsewhere(attempt, &agent);
                }
            }),
            Err(e) => tracing::warn!(error = %e, "could not look for expired leases"),
        }
        if let Err(e) = self.follow_shared_decisions().await {
            tracing::warn!(error = %e, "could not read other coordinators' decisions");
        }
        if let Err(e) = self.load_cluster_settings().await {
            tracing::warn!(error = %e, "could not read the clusters' quotas and settings");
        }
        if lock(&self.shared)
            .adopted
            .is_none_or(|t| now.duration_since(t) >= ADOPT_INTERVAL)
        {
            match self.adopt_held().await {
                Ok(()) => lock(&self.shared).adopted = Some(now),
                Err(e) => tracing::warn!(error = %e, "could not look for held jobs"),
            }
        }
        if let Err(e) = self.find_pending(cursor).await {
            tracing::warn!(error = %e, "could not look for pending tasks");
            return;
        }
        lock(&self.shared).synced = Some(now);
    }

    /// Watches the held jobs this coordinator does not know yet: the one they were submitted
    /// to may have died, and nobody would release them. Several coordinators watching one job
    /// is safe: the store releases it once, and the others find its tasks pending.
    async fn adopt_held(&self) -> Result<(), StoreError> {
        let held = self.store.held_jobs().await?;
        let now = Instant::now();
        self.with_core(|core| {
            for (id, after, hold) in held {
                if core.held(id).is_none() && !core.knows_job(id) {
                    core.handle_held(now, id, &after, hold);
                }
            }
        });
        Ok(())
    }

    /// Queues the tasks that became pending after `cursor` (submitted or requeued through
    /// another coordinator), loading the jobs this one does not know.
    async fn find_pending(&self, cursor: (i64, TaskId)) -> Result<(), StoreError> {
        let found = self.store.pending_after(cursor, 10_000).await?;
        let Some(last) = found.last().map(|(t, at)| (*at, *t)) else {
            return Ok(());
        };
        let unknown: HashSet<u64> = self.read_core(|core| {
            found
                .iter()
                .map(|(t, _)| t.job)
                .filter(|j| !core.knows_job(*j))
                .collect()
        });
        let mut loaded = Vec::new();
        for job in unknown {
            match self.store.job(job).await {
                // A held job is loaded once it is released (its tasks are found again then).
                Ok(row) if !row.cancelled && !row.held => {
                    let age = row.age(self.store.now_ms());
                    loaded.push((job, Arc::new(row.spec), age));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job, error = %e, "could not load a job"),
            }
        }
        // Tasks of verified jobs go on from the runs other coordinators recorded.
        let verified: HashSet<u64> = loaded
            .iter()
            .filter(|(_, spec, _)| spec.verified())
            .map(|(id, _, _)| *id)
            .chain(self.read_core(|core| {
                found
                    .iter()
                    .map(|(t, _)| t.job)
                    .filter(|j| core.job(*j).is_some_and(|spec| spec.verified()))
                    .collect::<HashSet<u64>>()
            }))
            .collect();
        let mut replicas = Vec::new();
        for job in verified {
            match self.store.replicas(job).await {
                Ok(found) => replicas.extend(found),
                Err(e) => tracing::warn!(job, error = %e, "could not load a verified job's runs"),
            }
        }
        self.with_core(|core| {
            core.handle_replicas(replicas);
            core.handle_found_pending(Instant::now(), loaded, found.iter().map(|(t, _)| *t))
        });
        lock(&self.shared).cursor = last;
        Ok(())
    }

    /// Applies what another coordinator on the same database decided about this one's agents
    /// and attempts: revocations, drains and cancelled jobs.
    async fn follow_shared_decisions(&self) -> Result<(), StoreError> {
        let (agents, jobs) = self.read_core(|core| {
            let agents: Vec<String> = core.agents().map(|(id, _)| id.to_owned()).collect();
            (agents, core.running_jobs())
        });
        for (agent, revoked, drain) in self.store.agent_standings(&agents).await? {
            if revoked {
                tracing::warn!(%agent, "agent revoked through another coordinator");
                self.with_core(|core| core.handle_revoked(&agent));
                continue;
            }
            let now_ms = self.store.now_ms();
            let changed = self.with_core(|core| {
                let changed = core.agent(&agent).is_some_and(|a| a.draining != drain);
                if changed {
                    core.handle_drain(now_ms, &agent, drain);
                }
                changed
            });
            if changed {
                tracing::info!(%agent, draining = drain.is_some(), "drain changed through another coordinator");
            }
        }
        for job in self.store.cancelled_among(&jobs).await? {
            self.with_core(|core| core.handle_cancelled(job));
            tracing::info!(job, "job cancelled through another coordinator");
        }
        Ok(())
    }
}
