//! Jobs and clusters: what people submit, cancel and delete, and what they see.

use std::sync::Arc;

use lull_protocol::job::JobSpec;

use super::{Hub, HubError};
use crate::store::StoreError;

impl Hub {
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
        let _shared = self.collector.hold().await;
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
        tracing::info!(job = id, name = %spec.name, tasks = spec.count, "job submitted");
        self.with_core(|core| core.handle_submitted(std::time::Instant::now(), id, spec));
        Ok(id)
    }

    /// Cancels a job: its waiting tasks at once, its running ones as their agents stop them.
    /// Returns how many were running.
    pub async fn cancel(&self, job: u64) -> Result<usize, HubError> {
        let running = self
            .store
            .cancel_job(job, self.store.now_ms())
            .await
            .map_err(|e| match e {
                StoreError::NoJob(_) => HubError::NotFound(format!("no job {job}")),
                e => e.into(),
            })?;
        self.with_core(|core| core.handle_cancelled(job));
        tracing::info!(job, running = running.len(), "job cancelled");
        Ok(running.len())
    }

    /// Deletes a finished job with its tasks and results; its blobs go at the next collection
    /// after the grace period, unless other jobs use them.
    pub async fn delete_job(&self, id: u64) -> Result<(), HubError> {
        if !self.store.delete_job(id).await? {
            return Err(HubError::Conflict(format!(
                "job {id} still has pending or running tasks: cancel it first (`lull cancel {id}`)"
            )));
        }
        self.with_core(|core| core.handle_deleted(id));
        tracing::info!(job = id, "job deleted");
        Ok(())
    }

    /// Why a job's pending tasks are waiting, in words for `lull status`.
    pub fn waiting_reason(&self, spec: &JobSpec) -> String {
        self.read_core(|core| core.waiting_reason(spec))
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
    pub async fn clusters(&self) -> Result<Vec<lull_protocol::api::Cluster>, HubError> {
        let stored = self.store.clusters().await?;
        let connected: Vec<String> =
            self.read_core(|core| core.agents().map(|(_, a)| a.cluster.clone()).collect());
        Ok(stored
            .into_iter()
            .map(|c| {
                let agents_connected = connected.iter().filter(|id| **id == c.id).count() as u64;
                lull_protocol::api::Cluster {
                    id: c.id,
                    description: c.description,
                    created_ms: c.created_ms,
                    agents_enrolled: u64::try_from(c.agents).unwrap_or(0),
                    agents_connected,
                }
            })
            .collect())
    }

    /// `/metrics`: the counters, and the gauges read now.
    pub async fn metrics(&self) -> Result<String, HubError> {
        let mut gauges = super::super::metrics::Gauges {
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
}
