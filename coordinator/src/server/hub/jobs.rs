//! Jobs and clusters: what people submit, cancel and delete, and what they see.

use std::sync::Arc;

use lull_protocol::job::{JobSpec, MAX_ITEM_BYTES, TaskItem};

use super::{Hub, HubError};
use crate::store::StoreError;

impl Hub {
    /// Accepts a job of `owner`: checks it, checks that every blob is here and every signature
    /// trusted, stores it and queues its tasks. With `token` (the submitter's), the job takes
    /// one of its uses. Returns its number.
    pub async fn submit(
        &self,
        mut spec: JobSpec,
        owner: &str,
        token: Option<&str>,
    ) -> Result<u64, HubError> {
        owner.clone_into(&mut spec.owner);
        spec.check()
            .map_err(|e| HubError::BadRequest(e.to_string()))?;
        if !self.store.cluster_exists(&spec.cluster).await? {
            return Err(HubError::BadRequest(format!(
                "cluster: there is no cluster {:?} (`lull clusters list` shows them)",
                spec.cluster
            )));
        }
        for (i, m) in spec.modules.iter().enumerate() {
            for (j, mount) in m.mounts.iter().enumerate() {
                if mount.job.is_some() && !mount.files.is_empty() {
                    return Err(HubError::BadRequest(format!(
                        "modules[{i}].mount[{j}]: the files of another job's outputs are filled in by the coordinator; send none"
                    )));
                }
            }
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
        let items = self.read_items(&spec).await?;
        let id = self
            .store
            .insert_job_of(&spec, owner, token, self.store.now_ms(), &items)
            .await?
            .map_err(|refusal| HubError::Forbidden(format!("submitting: {refusal}")))?;
        let spec = Arc::new(spec);
        tracing::info!(job = id, name = %spec.name, tasks = spec.count, %owner, "job submitted");
        if !spec.after.is_empty() {
            // It waits for the jobs it comes after; its cached results are taken on release.
            self.with_core(|core| {
                core.handle_held(std::time::Instant::now(), id, &spec.after, None)
            });
            return Ok(id);
        }
        let cached = if spec.cache {
            self.take_cached(id, &spec, items).await
        } else {
            Vec::new()
        };
        self.with_core(|core| core.handle_submitted(std::time::Instant::now(), id, spec, &cached));
        Ok(id)
    }

    /// Starts a held job the store released: as a new submission, its tasks taking cached
    /// results first when it caches.
    pub(super) async fn start_released(&self, id: u64, spec: Arc<JobSpec>) {
        tracing::info!(job = id, name = %spec.name, "released: the jobs it comes after succeeded");
        let cached = if spec.cache {
            match self.store.task_items(id).await {
                Ok(items) => self.take_cached(id, &spec, items).await,
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "could not read the tasks' own parts; the tasks run");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        self.with_core(|core| core.handle_submitted(std::time::Instant::now(), id, spec, &cached));
    }

    /// Gives the tasks of a new job that caches the results offered under their keys; returns
    /// their indexes. A store error leaves the tasks to run.
    async fn take_cached(&self, id: u64, spec: &Arc<JobSpec>, items: Vec<TaskItem>) -> Vec<u32> {
        let keyed = Arc::clone(spec);
        let keys = tokio::task::spawn_blocking(move || {
            (0..keyed.count)
                .map(|i| (i, keyed.task_key(i, items.get(i as usize))))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        match self.store.take_cached(id, &keys, self.store.now_ms()).await {
            Ok(cached) => {
                if !cached.is_empty() {
                    tracing::info!(job = id, tasks = cached.len(), "tasks took cached results");
                }
                cached
            }
            Err(e) => {
                tracing::warn!(job = id, error = %e, "could not look for cached results; the tasks run");
                Vec::new()
            }
        }
    }

    /// Reads and checks the tasks' own parts of a job that has them ([`JobSpec::items`]): one
    /// line of JSON per task, each within [`MAX_ITEM_BYTES`], fitting the job, every file
    /// uploaded. Errors name the line.
    async fn read_items(&self, spec: &JobSpec) -> Result<Vec<TaskItem>, HubError> {
        let Some(items) = &spec.items else {
            return Ok(Vec::new());
        };
        let bad = |why: String| HubError::BadRequest(format!("items: {why}"));
        let limit = u64::from(spec.count) * (MAX_ITEM_BYTES as u64 + 1);
        if items.size > limit {
            return Err(bad(format!(
                "the table of the tasks' own parts is {} bytes; for {} task(s) the most is {limit}",
                items.size, spec.count
            )));
        }
        let path = self.blobs.path(&items.digest);
        let job = spec.clone();
        let read = tokio::task::spawn_blocking(move || read_item_lines(&path, &job))
            .await
            .map_err(|e| HubError::Io(e.to_string()))?;
        let read = read.map_err(bad)?;
        for (i, item) in read.iter().enumerate() {
            for f in item.blobs() {
                match self.blobs.size(&f.digest) {
                    Some(stored) if stored == f.size => {}
                    Some(stored) => {
                        return Err(bad(format!(
                            "task {i}: {:?} is {stored} bytes, but the job says {}",
                            f.path, f.size
                        )));
                    }
                    None => {
                        return Err(bad(format!(
                            "task {i}: {:?} (blob {}) has not been uploaded",
                            f.path, f.digest
                        )));
                    }
                }
            }
        }
        Ok(read)
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

    /// Gives the core every cluster's quotas and preemption setting as the store holds them (after a change here, at
    /// start, and as other coordinators on the same database change them).
    pub async fn load_cluster_settings(&self) -> Result<(), StoreError> {
        let rows = self.store.quotas().await?;
        let stored = self.store.clusters().await?;
        let preempting: Vec<(String, bool)> =
            stored.iter().map(|c| (c.id.clone(), c.preempt)).collect();
        let clusters: Vec<String> = stored.into_iter().map(|c| c.id).collect();
        let mut by_cluster: std::collections::BTreeMap<
            String,
            std::collections::HashMap<String, lull_scheduler::Quota>,
        > = clusters
            .into_iter()
            .map(|c| (c, Default::default()))
            .collect();
        for r in rows {
            by_cluster.entry(r.cluster).or_default().insert(
                r.user,
                lull_scheduler::Quota {
                    max_tasks: r.max_tasks,
                    max_cpu_millis: r.max_cpu_millis,
                },
            );
        }
        self.with_core(|core| {
            for (cluster, quotas) in by_cluster {
                core.set_quotas(&cluster, quotas);
            }
            for (cluster, preempt) in preempting {
                core.set_preemption(&cluster, preempt);
            }
        });
        Ok(())
    }

    /// Changes a cluster's settings.
    pub async fn set_cluster(
        &self,
        id: &str,
        settings: &lull_protocol::api::ClusterSettings,
    ) -> Result<(), HubError> {
        if let Some(preempt) = settings.preempt {
            if !self.store.set_preemption(id, preempt).await? {
                return Err(HubError::NotFound(format!("no cluster {id}")));
            }
            tracing::info!(cluster = %id, preempt, "preemption set");
        } else if !self.store.cluster_exists(id).await? {
            return Err(HubError::NotFound(format!("no cluster {id}")));
        }
        Ok(self.load_cluster_settings().await?)
    }

    /// A cluster's quotas.
    pub async fn quotas(&self, cluster: &str) -> Result<Vec<lull_protocol::api::Quota>, HubError> {
        Ok(self
            .store
            .quotas()
            .await?
            .into_iter()
            .filter(|q| q.cluster == cluster)
            .map(|q| lull_protocol::api::Quota {
                user: q.user,
                max_tasks: q.max_tasks,
                max_cores: q.max_cpu_millis.map(|m| m as f64 / 1000.0),
            })
            .collect())
    }

    /// Sets (or, with no limit, removes) the quota of `user` (`*`: everyone without their own;
    /// `@name`: the jobs of group `name`) in `cluster`.
    pub async fn set_quota(
        &self,
        cluster: &str,
        user: &str,
        limits: &lull_protocol::api::SetQuota,
    ) -> Result<(), HubError> {
        if !self.store.cluster_exists(cluster).await? {
            return Err(HubError::NotFound(format!("no cluster {cluster}")));
        }
        if let Some(group) = user.strip_prefix(lull_protocol::api::GROUP_PREFIX) {
            lull_protocol::api::check_group_name(group)
                .map_err(|e| HubError::BadRequest(format!("group: {e}")))?;
        } else if user != lull_scheduler::EVERY_USER {
            lull_protocol::api::check_user_name(user)
                .map_err(|e| HubError::BadRequest(format!("user: {e}")))?;
        }
        let max_cpu_millis = match limits.max_cores {
            None => None,
            Some(c) if c.is_finite() && c > 0.0 && c <= 1e6 => Some((c * 1000.0).round() as u64),
            Some(c) => {
                return Err(HubError::BadRequest(format!(
                    "max_cores: {c} is not a number of cores above 0"
                )));
            }
        };
        if limits.max_tasks == Some(0) {
            return Err(HubError::BadRequest(
                "max_tasks: 0 would stop the user altogether; give at least 1, or none".into(),
            ));
        }
        self.store
            .set_quota(&crate::store::QuotaRow {
                cluster: cluster.to_owned(),
                user: user.to_owned(),
                max_tasks: limits.max_tasks,
                max_cpu_millis,
            })
            .await?;
        tracing::info!(%cluster, %user, ?limits, "quota set");
        Ok(self.load_cluster_settings().await?)
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
                    preempt: c.preempt,
                }
            })
            .collect())
    }

    /// `/metrics`: the counters, and the gauges read now.
    pub async fn metrics(&self) -> Result<String, HubError> {
        let mut gauges = super::super::metrics::Gauges {
            tasks: self.store.task_state_counts().await?,
            accounting: Some(self.accounting().await?),
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

/// Reads the lines of a job's items blob: exactly one [`TaskItem`] per task, each checked
/// against the job; a line longer than [`MAX_ITEM_BYTES`] is refused before it is all read.
fn read_item_lines(path: &std::path::Path, job: &JobSpec) -> Result<Vec<TaskItem>, String> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(|e| format!("the blob is not here: {e}"))?;
    let mut reader = std::io::BufReader::new(file);
    let mut items = Vec::with_capacity(job.count as usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_ITEM_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the blob: {e}"))?;
        if n == 0 {
            break;
        }
        let task = items.len();
        if task >= job.count as usize {
            return Err(format!("more lines than the job's {} task(s)", job.count));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n > MAX_ITEM_BYTES {
            return Err(format!(
                "line {} (task {task}) is longer than {MAX_ITEM_BYTES} bytes",
                task + 1
            ));
        }
        let item: TaskItem = serde_json::from_slice(&line)
            .map_err(|e| format!("line {} (task {task}): {e}", task + 1))?;
        item.check(job)
            .map_err(|e| format!("line {} (task {task}): {e}", task + 1))?;
        items.push(item);
    }
    if items.len() != job.count as usize {
        return Err(format!(
            "{} line(s) for the job's {} task(s)",
            items.len(),
            job.count
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_protocol::job::Items;

    fn read(lines: &str, count: u32) -> Result<Vec<TaskItem>, String> {
        let mut job = crate::store::tests::spec(count, 1);
        job.items = Some(Items {
            digest: lull_protocol::Digest::of(lines.as_bytes()),
            size: lines.len() as u64,
            columns: vec!["n".into()],
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items");
        std::fs::write(&path, lines).unwrap();
        read_item_lines(&path, &job)
    }

    #[test]
    fn the_tasks_parts_are_one_line_each_and_every_line_is_checked() {
        let items = read("{\"values\":{\"n\":\"1\"}}\n{}\n", 2).unwrap();
        assert_eq!(items[0].values["n"], "1");
        assert_eq!(items[1], TaskItem::default());
        assert_eq!(
            read("{}", 1).unwrap().len(),
            1,
            "the last newline may be left out"
        );
        for (lines, count, why) in [
            ("{}\n", 2, "1 line(s) for the job's 2 task(s)"),
            ("{}\n{}\n", 1, "more lines than the job's 1 task(s)"),
            ("{}\nnot json\n", 2, "line 2 (task 1): expected"),
            (
                "{\"values\":{\"m\":\"1\"}}\n",
                1,
                "line 1 (task 0): a value for \"m\"",
            ),
            ("{\"other\":1}\n", 1, "line 1 (task 0): unknown field"),
        ] {
            let e = read(lines, count).unwrap_err();
            assert!(e.contains(why), "{lines:?}: {e}");
        }
        let long = format!(
            "{{\"values\":{{\"n\":\"{}\"}}}}\n",
            "x".repeat(MAX_ITEM_BYTES + 10)
        );
        let e = read(&long, 1).unwrap_err();
        assert!(e.contains("longer than"), "{e}");
    }
}
