//! Jobs: stored, listed, counted, cancelled and deleted.

use super::*;

/// Jobs of this many tasks or more have PostgreSQL update its statistics of the tasks when
/// they are stored: with fewer, a query planned on stale statistics reads no more than a
/// page's worth of tasks too many.
const ANALYZE_FROM: u32 = 10_000;

impl Store {
    /// Stores a job of the user `admin` (as jobs stored before users were); returns its number.
    #[cfg(test)]
    pub async fn insert_job(&self, spec: &JobSpec, now_ms: i64) -> Result<u64> {
        Ok(self
            .insert_job_of(spec, "admin", None, now_ms, &[])
            .await?
            .expect("no token to refuse"))
    }

    /// Stores a job of `owner` and its tasks (all pending), with each task's own part
    /// (`items`, in index order, or none); returns its number. With `token`, the submission
    /// takes one use of that person's token in the same transaction: a token used up refuses
    /// it, and nothing is stored.
    pub async fn insert_job_of(
        &self,
        spec: &JobSpec,
        owner: &str,
        token: Option<&str>,
        now_ms: i64,
        items: &[TaskItem],
    ) -> Result<std::result::Result<u64, super::tokens::TokenRefusal>> {
        let mut tx = self.begin_write().await?;
        if let Some(token) = token
            && let Err(refusal) =
                super::tokens::take_token(&mut tx, token, super::TokenKind::Submitter, now_ms)
                    .await?
        {
            return Ok(Err(refusal));
        }
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (name, spec, created_ms, owner, cluster, held) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&spec.name)
        .bind(serde_json::to_string(spec)?)
        .bind(now_ms)
        .bind(owner)
        .bind(&spec.cluster)
        .bind(i64::from(!spec.after.is_empty()))
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        // Every task in one statement, numbered by the database: nothing per task travels or
        // is parsed. PostgreSQL counts with `generate_series`; SQLite, which has no such
        // function built in, with a recursive common table expression.
        let sql = match self.backend {
            Backend::Postgres => {
                "INSERT INTO tasks (job_id, idx, state, attempt, updated_ms) \
                 SELECT $1, i, 'pending', 0, $2 FROM generate_series(0, $3 - 1) AS n(i)"
            }
            Backend::Sqlite => {
                "WITH RECURSIVE n(i) AS (SELECT 0 WHERE 0 < $3 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $3) \
                 INSERT INTO tasks (job_id, idx, state, attempt, updated_ms) \
                 SELECT $1, i, 'pending', 0, $2 FROM n"
            }
        };
        sqlx::query(sql)
            .bind(id)
            .bind(now_ms)
            .bind(i64::from(spec.count))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO job_counts (job_id, pending) VALUES ($1, $2)")
            .bind(id)
            .bind(i64::from(spec.count))
            .execute(&mut *tx)
            .await?;
        // Many rows per statement, within both databases' limits on bound values.
        for (n, chunk) in items.chunks(300).enumerate() {
            let rows = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO task_items (job_id, idx, item) VALUES {rows}");
            let mut q = sqlx::query(&sql).bind(id);
            for (i, item) in chunk.iter().enumerate() {
                q = q
                    .bind((n * 300 + i) as i64)
                    .bind(serde_json::to_string(item)?);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // PostgreSQL plans a query by what it knows of the tables, and a job of many tasks
        // changes that at once: it learns it now rather than at its next automatic look, so
        // that the first pages of the job are read through the index, not by sorting the job.
        if self.backend == Backend::Postgres
            && spec.count >= ANALYZE_FROM
            && let Err(e) = sqlx::query("ANALYZE tasks").execute(&self.pool).await
        {
            tracing::warn!(job = id, error = %e, "could not update the statistics of the tasks");
        }
        Ok(Ok(id as u64))
    }

    /// A job by number.
    pub async fn job(&self, id: u64) -> Result<JobRow> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoJob(id))?;
        job_row(&row)
    }

    /// A job's owner and cluster, without reading its definition: what access is decided by.
    pub async fn job_owner(&self, id: u64) -> Result<(String, String)> {
        let row = sqlx::query("SELECT owner, cluster FROM jobs WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NoJob(id))?;
        Ok((row.get(0), row.get(1)))
    }

    /// All jobs, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_row).collect()
    }

    /// The newest jobs that `filter` admits (all of them, or the newest `limit`), newest
    /// first, with their task counts but not their definitions: cheap enough to read every
    /// second.
    pub async fn newest_jobs(
        &self,
        limit: Option<u32>,
        filter: &crate::access::JobFilter,
    ) -> Result<Vec<JobHeader>> {
        // Cluster IDs hold no commas, `%` or `_`: the list is matched as text.
        let clusters = filter
            .clusters
            .as_ref()
            .map(|cs| format!(",{},", cs.join(",")));
        let rows = sqlx::query(&format!(
            "SELECT j.id, j.name, j.created_ms, j.cancelled, {COUNTS}, j.owner, j.held FROM jobs j \
             LEFT JOIN job_counts c ON c.job_id = j.id \
             WHERE ($2 = '' OR j.owner = $2) AND ($3 = '' OR $3 LIKE ('%,' || j.cluster || ',%')) \
             ORDER BY j.id DESC LIMIT $1"
        ))
        .bind(limit.map_or(i64::MAX, i64::from))
        .bind(filter.owner.clone().unwrap_or_default())
        .bind(clusters.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| JobHeader {
                id: r.get::<i64, _>(0) as u64,
                name: r.get(1),
                created_ms: r.get(2),
                cancelled: r.get::<i64, _>(3) != 0,
                counts: counts_from(r, 4),
                owner: r.get(9),
                held: r.get::<i64, _>(10) != 0,
            })
            .collect())
    }

    /// Task counts by state over every job.
    pub async fn total_counts(&self) -> Result<Counts> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT), CAST(COALESCE(SUM(running), 0) AS BIGINT), \
             CAST(COALESCE(SUM(succeeded), 0) AS BIGINT), CAST(COALESCE(SUM(failed), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cancelled), 0) AS BIGINT) FROM job_counts",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(counts_from(&row, 0))
    }

    /// Jobs that still have pending or running tasks.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN \
             (SELECT DISTINCT job_id FROM tasks WHERE state IN ('pending', 'running'))"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// The held jobs not cancelled: each with the jobs it comes after, and why it stays held
    /// for good when it does.
    pub async fn held_jobs(&self) -> Result<Vec<(u64, Vec<u64>, Option<String>)>> {
        let rows = sqlx::query("SELECT id, spec, hold FROM jobs WHERE held = 1 AND cancelled = 0")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let spec: JobSpec = serde_json::from_str(&r.get::<String, _>(1))?;
                Ok((r.get::<i64, _>(0) as u64, spec.after, r.get(2)))
            })
            .collect()
    }

    /// Every task's own part of a job that gave them, in index order (none otherwise).
    pub async fn task_items(&self, job: u64) -> Result<Vec<TaskItem>> {
        let rows = sqlx::query("SELECT item FROM task_items WHERE job_id = $1 ORDER BY idx")
            .bind(job as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(&r.get::<String, _>(0))?))
            .collect()
    }

    /// A task's own part, if its job gave it one.
    pub async fn task_item(&self, task: TaskId) -> Result<Option<TaskItem>> {
        item_in(&mut *self.pool.acquire().await?, task).await
    }

    /// Every blob a stored job refers to: its modules and files (the tasks' own too), and the outputs and logs of
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
        let mut items = sqlx::query("SELECT item FROM task_items").fetch(&self.pool);
        while let Some(row) = items.try_next().await? {
            let item: TaskItem = serde_json::from_str(&row.get::<String, _>(0))?;
            out.extend(item.blobs().map(|f| f.digest));
        }
        drop(items);
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
        for table in [
            "checkpoints",
            "attempts",
            "tasks",
            "job_counts",
            "result_cache",
            "task_items",
        ] {
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
        let c = self.total_counts().await?;
        Ok([
            (TaskState::Pending, c.pending),
            (TaskState::Running, c.running),
            (TaskState::Succeeded, c.succeeded),
            (TaskState::Failed, c.failed),
            (TaskState::Cancelled, c.cancelled),
        ]
        .into_iter()
        .map(|(state, n)| (state.as_str().to_owned(), n))
        .collect())
    }

    /// Task counts of one job (none for a job that does not exist).
    pub async fn job_counts(&self, job: u64) -> Result<Counts> {
        let row = sqlx::query(&format!(
            "SELECT {COUNTS} FROM job_counts c WHERE c.job_id = $1"
        ))
        .bind(job as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| counts_from(&r, 0)).unwrap_or_default())
    }

    /// Writes the count changes a transaction gathered, in that transaction: one statement per
    /// job.
    pub(super) async fn apply_recounts(
        &self,
        tx: &mut sqlx::AnyConnection,
        recounts: Recounts,
    ) -> Result<()> {
        for (job, deltas) in recounts.0 {
            let moved: Vec<(&str, i64)> = deltas.into_iter().filter(|(_, d)| *d != 0).collect();
            if moved.is_empty() {
                continue;
            }
            // The columns are named after the states.
            let set: Vec<String> = moved
                .iter()
                .enumerate()
                .map(|(i, (state, _))| format!("{state} = {state} + ${}", i + 1))
                .collect();
            let sql = format!(
                "UPDATE job_counts SET {} WHERE job_id = ${}",
                set.join(", "),
                moved.len() + 1
            );
            let mut query = sqlx::query(&sql);
            for (_, delta) in &moved {
                query = query.bind(*delta);
            }
            query.bind(job as i64).execute(&mut *tx).await?;
        }
        Ok(())
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
        let stopped = sqlx::query(
            "UPDATE tasks SET state = 'cancelled', cause = 'cancelled before it started', updated_ms = $1 \
             WHERE job_id = $2 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(job as i64)
        .execute(&mut *tx)
        .await?;
        let mut recounts = Recounts::default();
        recounts.moved(
            job,
            TaskState::Pending,
            TaskState::Cancelled,
            stopped.rows_affected(),
        );
        self.apply_recounts(&mut tx, recounts).await?;
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

/// The columns of `job_counts c` that [`counts_from`] reads, none of them NULL.
const COUNTS: &str = "COALESCE(c.pending, 0), COALESCE(c.running, 0), COALESCE(c.succeeded, 0), \
                      COALESCE(c.failed, 0), COALESCE(c.cancelled, 0)";

/// Counts from the five columns of a row from `first` on, in the order of [`COUNTS`].
fn counts_from(r: &AnyRow, first: usize) -> Counts {
    let n = |i: usize| u64::try_from(r.get::<i64, _>(first + i)).unwrap_or(0);
    Counts {
        pending: n(0),
        running: n(1),
        succeeded: n(2),
        failed: n(3),
        cancelled: n(4),
    }
}

/// The columns [`job_row`] reads, in its order.
const JOB_COLUMNS: &str = "id, spec, created_ms, cancelled, owner, held, hold, released_ms";

fn job_row(r: &AnyRow) -> Result<JobRow> {
    let spec: String = r.get(1);
    let mut spec: JobSpec = serde_json::from_str(&spec)?;
    // The column is the owner of record: jobs stored before owners were kept in the
    // definition have theirs there only.
    spec.owner = r.get(4);
    Ok(JobRow {
        id: r.get::<i64, _>(0) as u64,
        spec,
        created_ms: r.get(2),
        cancelled: r.get::<i64, _>(3) != 0,
        held: r.get::<i64, _>(5) != 0,
        hold: r.get(6),
        released_ms: r.get(7),
    })
}

/// Changes to the task counts of jobs (`job_counts`) gathered while a transaction moves tasks,
/// written together before it commits ([`Store::apply_recounts`]): one statement per job
/// however many tasks moved. Every change of `job_counts` goes through it.
#[derive(Debug, Default)]
pub(super) struct Recounts(
    std::collections::BTreeMap<u64, std::collections::BTreeMap<&'static str, i64>>,
);

impl Recounts {
    /// `n` tasks of `job` moved from `from` to `to`.
    pub(super) fn moved(&mut self, job: u64, from: TaskState, to: TaskState, n: u64) {
        if from == to || n == 0 {
            return;
        }
        let n = n as i64;
        let deltas = self.0.entry(job).or_default();
        *deltas.entry(from.as_str()).or_default() -= n;
        *deltas.entry(to.as_str()).or_default() += n;
    }
}

/// A task's own part, if its job gave it one.
pub(super) async fn item_in(
    conn: &mut sqlx::AnyConnection,
    task: TaskId,
) -> Result<Option<TaskItem>> {
    let row = sqlx::query("SELECT item FROM task_items WHERE job_id = $1 AND idx = $2")
        .bind(task.job as i64)
        .bind(i64::from(task.index))
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => Some(serde_json::from_str(&row.get::<String, _>(0))?),
        None => None,
    })
}

/// Releases the held `job` if every job it comes after has succeeded, filling in the mounts of
/// their outputs (each task's files under its index) and counting its time from now; records
/// why it stays held when one of them ended otherwise, or cannot be read from. See
/// [`lull_dispatch::Change::Release`] for the answers.
pub(super) async fn release_in(
    tx: &mut sqlx::AnyConnection,
    job: u64,
    now_ms: i64,
) -> Result<lull_dispatch::Persisted> {
    use lull_dispatch::Persisted;
    let row = sqlx::query("SELECT spec, held, cancelled FROM jobs WHERE id = $1")
        .bind(job as i64)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(Persisted::NotPending);
    };
    if row.get::<i64, _>(1) == 0 || row.get::<i64, _>(2) != 0 {
        return Ok(Persisted::NotPending);
    }
    let mut spec: JobSpec = serde_json::from_str(&row.get::<String, _>(0))?;
    let mut waiting = false;
    let mut blocked = None;
    for parent in &spec.after {
        let row = sqlx::query(&format!(
            "SELECT j.name, {COUNTS}, j.held, j.hold FROM jobs j \
             LEFT JOIN job_counts c ON c.job_id = j.id WHERE j.id = $1"
        ))
        .bind(*parent as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            blocked = Some(format!("job {parent}, which it comes after, was deleted"));
            break;
        };
        let name: String = row.get(0);
        let c = counts_from(&row, 1);
        let (held, hold): (i64, Option<String>) = (row.get(6), row.get(7));
        if let Some(why) = hold {
            blocked = Some(format!(
                "job {parent} ({name}), which it comes after, is held: {why}"
            ));
            break;
        }
        if held != 0 || c.pending + c.running > 0 {
            waiting = true;
        } else if c.failed + c.cancelled > 0 {
            blocked = Some(format!(
                "job {parent} ({name}), which it comes after, did not succeed: {} task(s) failed, {} cancelled",
                c.failed, c.cancelled
            ));
            break;
        }
    }
    if blocked.is_none()
        && !waiting
        && let Err(why) = fill_mounts(tx, &mut spec).await?
    {
        blocked = Some(why);
    }
    if let Some(why) = blocked {
        sqlx::query("UPDATE jobs SET hold = $1 WHERE id = $2")
            .bind(&why)
            .bind(job as i64)
            .execute(&mut *tx)
            .await?;
        return Ok(Persisted::Blocked(why));
    }
    if waiting {
        return Ok(Persisted::Done);
    }
    sqlx::query("UPDATE jobs SET spec = $1, held = 0, hold = NULL, released_ms = $2 WHERE id = $3")
        .bind(serde_json::to_string(&spec)?)
        .bind(now_ms)
        .bind(job as i64)
        .execute(&mut *tx)
        .await?;
    // Other coordinators on the same database find pending tasks by when they last changed.
    sqlx::query("UPDATE tasks SET updated_ms = $1 WHERE job_id = $2 AND state = 'pending'")
        .bind(now_ms)
        .bind(job as i64)
        .execute(&mut *tx)
        .await?;
    Ok(Persisted::Released(Box::new(spec)))
}

/// Fills in the mounts of other jobs' outputs: each succeeded task's files under its index.
/// `Ok(Err(why))` when they do not fit a job definition.
async fn fill_mounts(
    tx: &mut sqlx::AnyConnection,
    spec: &mut JobSpec,
) -> Result<std::result::Result<(), String>> {
    let mut outputs: std::collections::HashMap<u64, Vec<lull_protocol::job::FileRef>> =
        std::collections::HashMap::new();
    for m in &spec.modules {
        for mount in &m.mounts {
            let Some(from) = mount.job else { continue };
            if outputs.contains_key(&from) {
                continue;
            }
            let mut files = Vec::new();
            let mut rows = sqlx::query(
                "SELECT t.idx, a.result FROM tasks t JOIN attempts a \
                 ON a.job_id = t.job_id AND a.idx = t.idx AND a.attempt = t.attempt \
                 WHERE t.job_id = $1 AND t.state = 'succeeded' AND a.result IS NOT NULL \
                 ORDER BY t.idx",
            )
            .bind(from as i64)
            .fetch(&mut *tx);
            while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
                let index: i64 = row.get(0);
                let result: TaskResult = serde_json::from_str(&row.get::<String, _>(1))?;
                for f in result.outputs {
                    files.push(lull_protocol::job::FileRef {
                        path: format!("{index}/{}", f.path),
                        digest: f.digest,
                        size: f.size,
                    });
                }
                if files.len() > lull_protocol::job::MAX_MOUNT_FILES {
                    return Ok(Err(format!(
                        "job {from} left more than {} output files; a job reads at most that many through its mounts",
                        lull_protocol::job::MAX_MOUNT_FILES
                    )));
                }
            }
            outputs.insert(from, files);
        }
    }
    for m in &mut spec.modules {
        for mount in &mut m.mounts {
            if let Some(from) = mount.job {
                mount.files = outputs.get(&from).cloned().unwrap_or_default();
            }
        }
    }
    Ok(spec
        .check()
        .map_err(|e| format!("the outputs of the jobs it comes after do not fit: {e}")))
}
