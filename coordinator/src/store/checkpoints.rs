//! Checkpoints: the latest state each task kept, and its progress.

use super::*;

impl Store {
    /// Keeps a checkpoint as its task's latest, if `attempt` is the task's running attempt on
    /// `agent` and the checkpoint is newer than the one kept (a later attempt, or a later `seq`
    /// of the same attempt). Returns whether it was kept, and the state it replaced.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_checkpoint(
        &self,
        agent: &str,
        attempt: AttemptId,
        digest: &Digest,
        size: u64,
        seq: u64,
        progress: Option<f64>,
        now_ms: i64,
    ) -> Result<CheckpointRecorded> {
        let task = attempt.task;
        let mut tx = self.begin_write().await?;
        let running = sqlx::query(
            "SELECT 1 FROM tasks WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND state = 'running' AND agent_id = $4",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(agent)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !running {
            return Ok(CheckpointRecorded::Stale);
        }
        let kept = sqlx::query(
            "SELECT attempt, seq, digest FROM checkpoints WHERE job_id = $1 AND idx = $2",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| {
            (
                (r.get::<i64, _>(0), r.get::<i64, _>(1)),
                r.get::<String, _>(2),
            )
        });
        if kept
            .as_ref()
            .is_some_and(|(k, _)| *k >= (attempt.attempt as i64, seq as i64))
        {
            return Ok(CheckpointRecorded::Stale);
        }
        let superseded = kept
            .and_then(|(_, d)| d.parse::<Digest>().ok())
            .filter(|d| d != digest);
        sqlx::query("DELETE FROM checkpoints WHERE job_id = $1 AND idx = $2")
            .bind(task.job as i64)
            .bind(task.index as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO checkpoints (job_id, idx, attempt, seq, agent_id, digest, size, progress, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .bind(attempt.attempt as i64)
        .bind(seq as i64)
        .bind(agent)
        .bind(digest.to_string())
        .bind(size as i64)
        .bind(progress)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CheckpointRecorded::Kept { superseded })
    }

    /// The latest checkpoint kept for a task.
    pub async fn checkpoint(&self, task: TaskId) -> Result<Option<CheckpointRef>> {
        let mut conn = self.pool.acquire().await?;
        self.checkpoint_in(&mut conn, task).await
    }

    /// [`Store::checkpoint`] on a connection (or within a transaction).
    pub(super) async fn checkpoint_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        task: TaskId,
    ) -> Result<Option<CheckpointRef>> {
        let row = sqlx::query(
            "SELECT digest, size, attempt FROM checkpoints WHERE job_id = $1 AND idx = $2",
        )
        .bind(task.job as i64)
        .bind(task.index as i64)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| {
            let digest: String = r.get(0);
            Ok(CheckpointRef {
                digest: digest
                    .parse()
                    .map_err(|e| StoreError::Corrupt(serde::de::Error::custom(e)))?,
                size: r.get::<i64, _>(1) as u64,
                attempt: r.get::<i64, _>(2) as u32,
            })
        })
        .transpose()
    }
}
