//! Jobs: stored, listed, counted, cancelled and deleted.

use super::*;

impl Store {
    /// Stores a job and its tasks (all pending); returns its number.
    pub async fn insert_job(&self, spec: &JobSpec, now_ms: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (name, spec, created_ms) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(&spec.name)
        .bind(serde_json::to_string(spec)?)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        // Tasks in chunks of rows sharing the job, state and time: `($1, idx, 'pending', 0,
        // $2)`, with the indexes written into the SQL (they are numbers we made).
        const CHUNK: u32 = 1000;
        let mut start = 0u32;
        while start < spec.count {
            let end = (start + CHUNK).min(spec.count);
            let rows: Vec<String> = (start..end)
                .map(|idx| format!("($1, {idx}, 'pending', 0, $2)"))
                .collect();
            let sql = format!(
                "INSERT INTO tasks (job_id, idx, state, attempt, updated_ms) VALUES {}",
                rows.join(", ")
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            start = end;
        }
        tx.commit().await?;
        Ok(id as u64)
    }

    /// A job by number.
    pub async fn job(&self, id: u64) -> Result<JobRow> {
        let row = sqlx::query("SELECT id, spec, created_ms, cancelled FROM jobs WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoJob(id))?;
        job_row(&row)
    }

    /// All jobs, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query("SELECT id, spec, created_ms, cancelled FROM jobs ORDER BY id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// The newest jobs (all of them, or the newest `limit`), newest first, with their task
    /// counts but not their definitions: cheap enough to read every second.
    pub async fn newest_jobs(&self, limit: Option<u32>) -> Result<Vec<JobHeader>> {
        let rows = sqlx::query(
            "SELECT id, name, created_ms, cancelled FROM jobs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.map_or(i64::MAX, i64::from))
        .fetch_all(&self.pool)
        .await?;
        let mut jobs: Vec<JobHeader> = rows
            .iter()
            .map(|r| JobHeader {
                id: r.get::<i64, _>(0) as u64,
                name: r.get(1),
                created_ms: r.get(2),
                cancelled: r.get::<i64, _>(3) != 0,
                counts: Counts::default(),
            })
            .collect();
        let Some(oldest) = jobs.last().map(|j| j.id) else {
            return Ok(jobs);
        };
        let rows = sqlx::query(
            "SELECT job_id, state, COUNT(*) FROM tasks WHERE job_id >= $1 GROUP BY job_id, state",
        )
        .bind(oldest as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = job_state_counts(&rows)?;
        for j in &mut jobs {
            j.counts = counts.remove(&j.id).unwrap_or_default();
        }
        Ok(jobs)
    }

    /// Task counts by state over every job.
    pub async fn total_counts(&self) -> Result<Counts> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        state_counts(&rows)
    }

    /// Jobs that still have pending or running tasks.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(
            "SELECT id, spec, created_ms, cancelled FROM jobs WHERE id IN \
             (SELECT DISTINCT job_id FROM tasks WHERE state IN ('pending', 'running'))",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// Every blob a stored job refers to: its modules and files, and the outputs and logs of
    /// its recorded results. Reads every job and result: the blob collector's query, run
    /// now and then.
    pub async fn referenced_blobs(&self) -> Result<std::collections::HashSet<Digest>> {
        use futures::TryStreamExt;
        let mut out = std::collections::HashSet::new();
        let mut jobs = sqlx::query("SELECT spec FROM jobs").fetch(&self.pool);
        while let Some(row) = jobs.try_next().await? {
            let spec: JobSpec = serde_json::from_str(&row.get::<String, _>(0))?;
            out.extend(spec.blobs().map(|(d, _)| d));
        }
        drop(jobs);
        let mut checkpoints = sqlx::query("SELECT digest FROM checkpoints").fetch(&self.pool);
        while let Some(row) = checkpoints.try_next().await? {
            let digest: String = row.get(0);
            out.extend(digest.parse::<Digest>().ok());
        }
        drop(checkpoints);
        let mut results =
            sqlx::query("SELECT result FROM attempts WHERE result IS NOT NULL").fetch(&self.pool);
        while let Some(row) = results.try_next().await? {
            let result: TaskResult = serde_json::from_str(&row.get::<String, _>(0))?;
            out.extend(result.blobs());
        }
        Ok(out)
    }

    /// Deletes a job whose tasks have all ended, with its tasks, attempts and results (its
    /// blobs are collected later, unless other jobs refer to them). `Ok(false)` when some task
    /// is still pending or running.
    pub async fn delete_job(&self, id: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT 1 FROM jobs WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NoJob(id));
        }
        let unfinished: i64 = sqlx::query(
            "SELECT COUNT(*) FROM tasks WHERE job_id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id as i64)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if unfinished > 0 {
            return Ok(false);
        }
        for table in ["checkpoints", "attempts", "tasks"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                .bind(id as i64)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every task's count, by state (for `/metrics`).
    pub async fn task_state_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Task counts of one job.
    pub async fn job_counts(&self, job: u64) -> Result<Counts> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) FROM tasks WHERE job_id = $1 GROUP BY state")
                .bind(job as i64)
                .fetch_all(&self.pool)
                .await?;
        state_counts(&rows)
    }

    /// Cancels a job: pending tasks become cancelled at once; returns the running attempts and
    /// their agents, which the caller asks to stop.
    pub async fn cancel_job(&self, job: u64, now_ms: i64) -> Result<Vec<(AttemptId, String)>> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE jobs SET cancelled = 1 WHERE id = $1")
            .bind(job as i64)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoJob(job));
        }
        sqlx::query(
            "UPDATE tasks SET state = 'cancelled', cause = 'cancelled before it started', updated_ms = $1 \
             WHERE job_id = $2 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(job as i64)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT job_id, idx, attempt, agent_id FROM tasks WHERE job_id = $1 AND state = 'running'",
        )
        .bind(job as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.iter().map(attempt_and_agent).collect())
    }

    /// Which of these jobs are cancelled.
    pub async fn cancelled_among(&self, jobs: &[u64]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for chunk in jobs.chunks(500) {
            let sql = format!(
                "SELECT id FROM jobs WHERE cancelled != 0 AND id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for j in chunk {
                q = q.bind(*j as i64);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(r.get::<i64, _>(0) as u64);
            }
        }
        Ok(out)
    }
}

/// Rows of `(state, count)` added up.
fn state_counts(rows: &[AnyRow]) -> Result<Counts> {
    let mut c = Counts::default();
    for r in rows {
        let state: String = r.get(0);
        c.add(state.parse()?, r.get::<i64, _>(1) as u64);
    }
    Ok(c)
}

/// Rows of `(job, state, count)` added up per job.
fn job_state_counts(rows: &[AnyRow]) -> Result<std::collections::HashMap<u64, Counts>> {
    let mut out = std::collections::HashMap::<u64, Counts>::new();
    for r in rows {
        let state: String = r.get(1);
        out.entry(r.get::<i64, _>(0) as u64)
            .or_default()
            .add(state.parse()?, r.get::<i64, _>(2) as u64);
    }
    Ok(out)
}

fn job_row(r: &AnyRow) -> Result<JobRow> {
    let spec: String = r.get(1);
    Ok(JobRow {
        id: r.get::<i64, _>(0) as u64,
        spec: serde_json::from_str(&spec)?,
        created_ms: r.get(2),
        cancelled: r.get::<i64, _>(3) != 0,
    })
}
