//! Tasks and their attempts: assigned, started and ended as the dispatch core decides.

use std::collections::HashMap;

use lull_dispatch::{Change, Persisted, Replica, Verified};

use super::jobs::Recounts;

use super::*;

impl Store {
    /// The tasks of a job, by index.
    #[cfg(test)]
    pub async fn tasks(&self, job: u64) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT job_id, idx, state, attempt, agent_id, cause FROM tasks WHERE job_id = $1 ORDER BY idx",
        )
        .bind(job as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_row).collect()
    }

    /// A page of a job's tasks: those whose index is at least `from` (and whose state is
    /// `state`, when given), by index, at most `limit` of them, each with its last recorded
    /// result and its checkpoint's progress. One query, which reads only the page's rows (and
    /// the next task's index) through the tables' primary keys and `tasks_by_job_and_state`.
    pub async fn task_page(
        &self,
        job: u64,
        from: u32,
        limit: u32,
        state: Option<TaskState>,
    ) -> Result<TaskPage> {
        let sql = format!(
            "SELECT t.job_id, t.idx, t.state, t.attempt, t.agent_id, t.cause, \
             (SELECT a.result FROM attempts a WHERE a.job_id = t.job_id AND a.idx = t.idx \
              AND a.result IS NOT NULL ORDER BY a.attempt DESC LIMIT 1), \
             (SELECT c.progress FROM checkpoints c WHERE c.job_id = t.job_id AND c.idx = t.idx) \
             FROM tasks t WHERE t.job_id = $1 AND t.idx >= $2{} ORDER BY t.idx LIMIT $3",
            if state.is_some() {
                " AND t.state = $4"
            } else {
                ""
            }
        );
        let mut query = sqlx::query(&sql)
            .bind(job as i64)
            .bind(i64::from(from))
            // One more than asked for: whether more follow, and where.
            .bind(i64::from(limit) + 1);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let mut rows = query.fetch_all(&self.pool).await?;
        let next = if rows.len() > limit as usize {
            rows.pop().map(|r| r.get::<i64, _>(1) as u32)
        } else {
            None
        };
        let tasks = rows
            .iter()
            .map(|r| {
                let result: Option<String> = r.get(6);
                Ok(PagedTask {
                    task: task_row(r)?,
                    result: result.map(|s| serde_json::from_str(&s)).transpose()?,
                    checkpoint_progress: r.get(7),
                })
            })
            .collect::<Result<_>>()?;
        Ok(TaskPage { tasks, next })
    }

    /// Every task in a state, oldest job first.
    pub async fn tasks_in_state(&self, state: TaskState) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT job_id, idx, state, attempt, agent_id, cause FROM tasks WHERE state = $1 ORDER BY job_id, idx",
        )
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_row).collect()
    }

    /// The attempts of a task, oldest first.
    pub async fn attempts(&self, task: TaskId) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT attempt, agent_id, assigned_ms, started_ms, finished_ms, outcome, result, setup_us \
             FROM attempts WHERE job_id = $1 AND idx = $2 ORDER BY attempt",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let result: Option<String> = r.get(6);
                Ok(AttemptRow {
                    attempt: r.get::<i64, _>(0) as u32,
                    agent: r.get(1),
                    assigned_ms: r.get(2),
                    started_ms: r.get(3),
                    setup_us: r.get(7),
                    finished_ms: r.get(4),
                    outcome: r.get(5),
                    result: result.map(|s| serde_json::from_str(&s)).transpose()?,
                })
            })
            .collect()
    }

    /// Assigns a pending task to an agent, starting its next attempt. Returns the attempt, or
    /// `None` when the task was no longer pending.
    #[cfg(test)]
    pub async fn assign(
        &self,
        task: TaskId,
        agent: &str,
        now_ms: i64,
    ) -> Result<Option<AttemptId>> {
        let mut tx = self.begin_write().await?;
        let mut recounts = Recounts::default();
        let assigned = self
            .assign_in(&mut tx, &mut recounts, task, agent, now_ms)
            .await?;
        self.apply_recounts(&mut tx, recounts).await?;
        tx.commit().await?;
        Ok(assigned)
    }

    /// [`Store::assign`] within a write transaction.
    async fn assign_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        recounts: &mut Recounts,
        task: TaskId,
        agent: &str,
        now_ms: i64,
    ) -> Result<Option<AttemptId>> {
        let row = sqlx::query(
            "UPDATE tasks SET state = 'running', attempt = attempt + 1, agent_id = $1, updated_ms = $2, \
             lease_until_ms = $5 WHERE job_id = $3 AND idx = $4 AND state = 'pending' RETURNING attempt",
        )
        .bind(agent)
        .bind(now_ms)
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(now_ms.saturating_add(self.lease_ms))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let attempt = row.get::<i64, _>(0) as u32;
        recounts.moved(task.job, TaskState::Pending, TaskState::Running, 1);
        sqlx::query(
            "INSERT INTO attempts (job_id, idx, attempt, agent_id, assigned_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt as i64)
        .bind(agent)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        Ok(Some(AttemptId { task, attempt }))
    }

    /// Records that an attempt's guest started.
    async fn mark_started_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        attempt: AttemptId,
        setup_us: u64,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE attempts SET started_ms = $1, setup_us = $2 WHERE job_id = $3 AND idx = $4 AND attempt = $5 AND started_ms IS NULL",
        )
        .bind(now_ms)
        .bind(setup_us as i64)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Ends an attempt as the dispatch core decided ([`Ending`]): records its outcome and
    /// result, and moves the task to `ending.next` -- to cancelled instead of pending when its
    /// job was cancelled meanwhile, which is read in the same transaction. Applies only while
    /// the attempt is its task's current one and running (and held by `ending.holder`, when
    /// given), or, for a success that arrives after its lease ran out, while the task waits for
    /// its next attempt: then the work is done and nothing is gained by running it again.
    #[cfg(test)]
    pub async fn end_attempt(&self, ending: &Ending, now_ms: i64) -> Result<Recorded> {
        let mut tx = self.begin_write().await?;
        let mut recounts = Recounts::default();
        let recorded = self
            .end_attempt_in(&mut tx, &mut recounts, ending, now_ms)
            .await?;
        self.apply_recounts(&mut tx, recounts).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// [`Store::end_attempt`] within a write transaction.
    async fn end_attempt_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        recounts: &mut Recounts,
        ending: &Ending,
        now_ms: i64,
    ) -> Result<Recorded> {
        let attempt = ending.attempt;
        let result = ending
            .result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let late_success_ok = result.is_some() && ending.next == TaskState::Succeeded;
        // On PostgreSQL the job's row is read under a share lock: a cancel waits for this
        // transaction, or this one sees the cancel (SQLite's write transactions are exclusive).
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE OF j",
            Backend::Sqlite => "",
        };
        let current = sqlx::query(&format!(
            "SELECT t.agent_id, j.cancelled, t.state FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.job_id = $1 AND t.idx = $2 AND t.attempt = $3 \
             AND (t.state = 'running' OR (t.state = 'pending' AND $4)){lock}"
        ))
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(late_success_ok)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(current) = current else {
            return Ok(Recorded::Stale);
        };
        if let Some(agent) = &ending.holder {
            let holder: Option<String> = current.get(0);
            if holder.as_deref() != Some(agent.as_str()) {
                return Ok(Recorded::Stale);
            }
        }
        let cancelled = current.get::<i64, _>(1) != 0;
        let was: TaskState = current.get::<String, _>(2).parse()?;
        let state = match ending.next {
            TaskState::Pending | TaskState::Running if cancelled => TaskState::Cancelled,
            next => next,
        };
        let cause = match state {
            TaskState::Succeeded | TaskState::Pending | TaskState::Running => None,
            TaskState::Cancelled => Some("cancelled".to_owned()),
            TaskState::Failed => Some(ending.outcome.clone()),
        };
        sqlx::query(
            "UPDATE attempts SET finished_ms = $1, outcome = $2, result = $3 \
             WHERE job_id = $4 AND idx = $5 AND attempt = $6 AND (finished_ms IS NULL OR result IS NULL)",
        )
        .bind(now_ms)
        .bind(&ending.outcome)
        .bind(result)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .execute(&mut *tx)
        .await?;
        if let Some(verified) = &ending.verified {
            self.record_verified_in(tx, attempt, verified).await?;
        }
        sqlx::query(
            "UPDATE tasks SET state = $1, cause = $2, updated_ms = $3 WHERE job_id = $4 AND idx = $5",
        )
        .bind(state.as_str())
        .bind(cause)
        .bind(now_ms)
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .execute(&mut *tx)
        .await?;
        recounts.moved(attempt.task.job, was, state, 1);
        if let (TaskState::Succeeded, Some(key)) = (state, &ending.cache_key) {
            sqlx::query(
                "INSERT INTO result_cache (key, job_id, idx, attempt) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, idx = excluded.idx, \
                 attempt = excluded.attempt",
            )
            .bind(key.to_string())
            .bind(attempt.task.job as i64)
            .bind(attempt.task.index as i64)
            .bind(attempt.attempt as i64)
            .execute(&mut *tx)
            .await?;
        }
        Ok(Recorded::Stored(state))
    }

    /// Gives the pending tasks of `job` whose key (`keys`: index and [`JobSpec::task_key`])
    /// an earlier task's result was offered under the result of that task, as a succeeded
    /// first attempt saying where it came from; returns their indexes, ascending.
    pub async fn take_cached(
        &self,
        job: u64,
        keys: &[(u32, Digest)],
        now_ms: i64,
    ) -> Result<Vec<u32>> {
        let mut tx = self.begin_write().await?;
        let mut recounts = Recounts::default();
        let mut taken = Vec::new();
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT rc.key, rc.job_id, rc.idx, rc.attempt, a.agent_id, a.result \
                 FROM result_cache rc JOIN attempts a \
                 ON a.job_id = rc.job_id AND a.idx = rc.idx AND a.attempt = rc.attempt \
                 WHERE a.result IS NOT NULL AND rc.key IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for (_, key) in chunk {
                q = q.bind(key.to_string());
            }
            let found: HashMap<String, AnyRow> = q
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| (r.get::<String, _>(0), r))
                .collect();
            for (index, key) in chunk {
                let Some(from) = found.get(&key.to_string()) else {
                    continue;
                };
                let (from_job, from_index, from_attempt): (i64, i64, i64) =
                    (from.get(1), from.get(2), from.get(3));
                let agent: String = from.get(4);
                let outcome = format!(
                    "cached: the result of task {from_job}/{from_index} (attempt {from_attempt})"
                );
                let moved = sqlx::query(
                    "UPDATE tasks SET state = 'succeeded', attempt = 1, agent_id = $1, cause = $2, \
                     updated_ms = $3 WHERE job_id = $4 AND idx = $5 AND state = 'pending'",
                )
                .bind(&agent)
                .bind(&outcome)
                .bind(now_ms)
                .bind(job as i64)
                .bind(i64::from(*index))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO attempts (job_id, idx, attempt, agent_id, assigned_ms, finished_ms, \
                     outcome, result) VALUES ($1, $2, 1, $3, $4, $4, $5, $6)",
                )
                .bind(job as i64)
                .bind(i64::from(*index))
                .bind(&agent)
                .bind(now_ms)
                .bind(&outcome)
                .bind(from.get::<String, _>(5))
                .execute(&mut *tx)
                .await?;
                recounts.moved(job, TaskState::Pending, TaskState::Succeeded, 1);
                taken.push(*index);
            }
        }
        self.apply_recounts(&mut tx, recounts).await?;
        tx.commit().await?;
        taken.sort_unstable();
        Ok(taken)
    }

    /// Keeps a verified task's result digest with its attempt and, once agents agree, marks
    /// the earlier attempts whose results differ and counts them against their agents.
    async fn record_verified_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        attempt: AttemptId,
        verified: &Verified,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE attempts SET digest = $1 WHERE job_id = $2 AND idx = $3 AND attempt = $4",
        )
        .bind(verified.digest.to_string())
        .bind(attempt.task.job as i64)
        .bind(attempt.task.index as i64)
        .bind(attempt.attempt as i64)
        .execute(&mut *tx)
        .await?;
        for (number, agent) in &verified.dissenters {
            let marked = sqlx::query(
                "UPDATE attempts SET disagreed = 1, outcome = $1 \
                 WHERE job_id = $2 AND idx = $3 AND attempt = $4 AND agent_id = $5 AND disagreed = 0",
            )
            .bind(DISAGREED)
            .bind(attempt.task.job as i64)
            .bind(attempt.task.index as i64)
            .bind(i64::from(*number))
            .bind(agent)
            .execute(&mut *tx)
            .await?;
            if marked.rows_affected() > 0 {
                sqlx::query("UPDATE agents SET disagreements = disagreements + 1 WHERE id = $1")
                    .bind(agent)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// The successful runs of `job`'s undecided tasks (pending or running) whose results were
    /// kept for comparison: what the dispatch core needs to go on verifying them after a
    /// start, or when another coordinator's tasks reach this one.
    pub async fn replicas(&self, job: u64) -> Result<Vec<(TaskId, Replica)>> {
        let rows = sqlx::query(
            "SELECT a.idx, a.attempt, a.agent_id, COALESCE(g.owner, ''), a.digest \
             FROM attempts a JOIN tasks t ON t.job_id = a.job_id AND t.idx = a.idx \
             LEFT JOIN agents g ON g.id = a.agent_id \
             WHERE a.job_id = $1 AND a.digest IS NOT NULL AND t.state IN ('pending', 'running') \
             ORDER BY a.idx, a.attempt",
        )
        .bind(job as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let digest: String = r.get(4);
                Ok((
                    TaskId {
                        job,
                        index: r.get::<i64, _>(0) as u32,
                    },
                    Replica {
                        attempt: r.get::<i64, _>(1) as u32,
                        agent: r.get(2),
                        owner: r.get(3),
                        digest: digest.parse().map_err(|e| {
                            StoreError::Corrupt(serde::de::Error::custom(format!(
                                "attempt digest {digest:?}: {e}"
                            )))
                        })?,
                    },
                ))
            })
            .collect()
    }

    /// Persists a batch of the dispatch core's changes in one transaction (one fsync), and
    /// says what became of each, in order. Either all are written or, on an error, none.
    pub async fn persist(&self, changes: &[Change], now_ms: i64) -> Result<Vec<Persisted>> {
        let mut tx = self.begin_write().await?;
        let mut recounts = Recounts::default();
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            outcomes.push(match change {
                Change::Assign {
                    task,
                    agent,
                    with_item,
                } => {
                    match self
                        .assign_in(&mut tx, &mut recounts, *task, agent, now_ms)
                        .await?
                    {
                        Some(attempt) => Persisted::Assigned {
                            attempt,
                            // A retried task starts from its latest checkpoint, if it kept one.
                            checkpoint: if attempt.attempt > 1 {
                                self.checkpoint_in(&mut tx, *task).await?
                            } else {
                                None
                            },
                            item: if *with_item {
                                super::jobs::item_in(&mut tx, *task).await?.map(Box::new)
                            } else {
                                None
                            },
                        },
                        None => Persisted::NotPending,
                    }
                }
                Change::Start { attempt, setup_us } => {
                    self.mark_started_in(&mut tx, *attempt, *setup_us, now_ms)
                        .await?;
                    Persisted::Done
                }
                Change::End(ending) => match self
                    .end_attempt_in(&mut tx, &mut recounts, ending, now_ms)
                    .await?
                {
                    Recorded::Stored(state) => Persisted::Ended(state),
                    Recorded::Stale => Persisted::Stale,
                },
                Change::Expire { job, tasks, cause } => {
                    expire_in(
                        &mut tx,
                        &mut recounts,
                        *job,
                        tasks.as_deref(),
                        cause,
                        now_ms,
                    )
                    .await?;
                    Persisted::Done
                }
                Change::Release { job } => {
                    // The counts it reads include the changes before it in this batch.
                    self.apply_recounts(&mut tx, std::mem::take(&mut recounts))
                        .await?;
                    super::jobs::release_in(&mut tx, *job, now_ms).await?
                }
            });
        }
        self.apply_recounts(&mut tx, recounts).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// Fails the tasks of `job` that are still pending (these `tasks`, or every one) with `cause`.
async fn expire_in(
    tx: &mut sqlx::AnyConnection,
    recounts: &mut Recounts,
    job: u64,
    tasks: Option<&[u32]>,
    cause: &str,
    now_ms: i64,
) -> Result<()> {
    const UPDATE: &str = "UPDATE tasks SET state = 'failed', cause = $1, updated_ms = $2 \
                          WHERE job_id = $3 AND state = 'pending'";
    let mut failed = 0;
    match tasks {
        None => {
            failed += sqlx::query(UPDATE)
                .bind(cause)
                .bind(now_ms)
                .bind(job as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        Some(tasks) => {
            for chunk in tasks.chunks(500) {
                let sql = format!("{UPDATE} AND idx IN ({})", placeholders(4, chunk.len()));
                let mut q = sqlx::query(&sql).bind(cause).bind(now_ms).bind(job as i64);
                for index in chunk {
                    q = q.bind(i64::from(*index));
                }
                failed += q.execute(&mut *tx).await?.rows_affected();
            }
        }
    }
    recounts.moved(job, TaskState::Pending, TaskState::Failed, failed);
    Ok(())
}

/// The outcome of an attempt whose successful result differs from the one other agents agreed
/// on.
pub const DISAGREED: &str = "disagreed: its result differs from the one the other agents agree on";

/// A page of a job's tasks ([`Store::task_page`]).
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// The tasks, by index.
    pub tasks: Vec<PagedTask>,
    /// The index of the next task asked for, when more follow.
    pub next: Option<u32>,
}

/// A task of a [`TaskPage`].
#[derive(Debug, Clone)]
pub struct PagedTask {
    /// The task.
    pub task: TaskRow,
    /// The result of its last attempt that recorded one.
    pub result: Option<TaskResult>,
    /// The progress its latest checkpoint recorded.
    pub checkpoint_progress: Option<f64>,
}

fn task_row(r: &AnyRow) -> Result<TaskRow> {
    let state: String = r.get(2);
    Ok(TaskRow {
        id: TaskId {
            job: r.get::<i64, _>(0) as u64,
            index: r.get::<i64, _>(1) as u32,
        },
        state: state.parse()?,
        attempt: r.get::<i64, _>(3) as u32,
        agent: r.get(4),
        cause: r.get(5),
    })
}
