//! Leases in the database, which coordinators sharing it renew and watch, and the pending tasks they find.

use super::*;

impl Store {
    /// Renews, until `until_ms`, the leases of the tasks running on these agents (those
    /// connected to this coordinator).
    pub async fn renew_leases(&self, agents: &[String], until_ms: i64) -> Result<u64> {
        let mut done = 0;
        for chunk in agents.chunks(500) {
            let sql = format!(
                "UPDATE tasks SET lease_until_ms = $1 WHERE state = 'running' AND agent_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(until_ms);
            for a in chunk {
                q = q.bind(a);
            }
            done += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(done)
    }

    /// Gives every running task a lease until `until_ms` (at a coordinator's start, so that
    /// agents have a lease's time to come back).
    pub async fn extend_running_leases(&self, until_ms: i64) -> Result<()> {
        sqlx::query("UPDATE tasks SET lease_until_ms = $1 WHERE state = 'running'")
            .bind(until_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The running attempts whose lease in the database ran out before `now_ms`, with their
    /// agents. On PostgreSQL only one coordinator at a time gets them (the others get none
    /// while it looks); ending them is guarded by the attempt's state anyway.
    pub async fn expired_leases(&self, now_ms: i64) -> Result<Vec<(AttemptId, String)>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            let got: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
                .bind(HOUSEKEEPING_LOCK)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            if !got {
                return Ok(Vec::new());
            }
        }
        let rows = sqlx::query(
            "SELECT job_id, idx, attempt, agent_id FROM tasks \
             WHERE state = 'running' AND lease_until_ms IS NOT NULL AND lease_until_ms < $1",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.iter().map(attempt_and_agent).collect())
    }

    /// Pending tasks after `after` in the order (time they became pending, job, index), at
    /// most `limit`, with that time: how coordinators sharing a database learn of work
    /// submitted or requeued by another. Start from `(0, 0, 0)`; go on from the last one seen.
    pub async fn pending_after(
        &self,
        after: (i64, TaskId),
        limit: u32,
    ) -> Result<Vec<(TaskId, i64)>> {
        let (at, task) = after;
        let rows = sqlx::query(
            "SELECT job_id, idx, updated_ms FROM tasks WHERE state = 'pending' \
             AND (updated_ms, job_id, idx) > ($1, $2, $3) ORDER BY updated_ms, job_id, idx LIMIT $4",
        )
        .bind(at)
        .bind(task.job as i64)
        .bind(i64::from(task.index))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    TaskId {
                        job: r.get::<i64, _>(0) as u64,
                        index: r.get::<i64, _>(1) as u32,
                    },
                    r.get(2),
                )
            })
            .collect())
    }
}
