//! Quotas: what one user may run at once in a cluster (`*`: everyone without their own).

use sqlx::Row;

use super::{Result, Store};

/// A quota as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRow {
    /// The cluster.
    pub cluster: String,
    /// The user, or `*`.
    pub user: String,
    /// Tasks running at once.
    pub max_tasks: Option<u32>,
    /// CPU reserved at once, in thousandths of a core.
    pub max_cpu_millis: Option<u64>,
}

impl Store {
    /// Sets a quota, or removes it when both limits are `None`.
    pub async fn set_quota(&self, quota: &QuotaRow) -> Result<()> {
        if quota.max_tasks.is_none() && quota.max_cpu_millis.is_none() {
            sqlx::query("DELETE FROM quotas WHERE cluster = $1 AND user_name = $2")
                .bind(&quota.cluster)
                .bind(&quota.user)
                .execute(&self.pool)
                .await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO quotas (cluster, user_name, max_tasks, max_cpu_millis) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (cluster, user_name) DO UPDATE SET max_tasks = excluded.max_tasks, \
             max_cpu_millis = excluded.max_cpu_millis",
        )
        .bind(&quota.cluster)
        .bind(&quota.user)
        .bind(quota.max_tasks.map(i64::from))
        .bind(quota.max_cpu_millis.map(|m| i64::try_from(m).unwrap_or(i64::MAX)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every quota, by cluster and user.
    pub async fn quotas(&self) -> Result<Vec<QuotaRow>> {
        let rows = sqlx::query(
            "SELECT cluster, user_name, max_tasks, max_cpu_millis FROM quotas ORDER BY cluster, user_name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| QuotaRow {
                cluster: r.get(0),
                user: r.get(1),
                max_tasks: r
                    .get::<Option<i64>, _>(2)
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                max_cpu_millis: r
                    .get::<Option<i64>, _>(3)
                    .map(|n| u64::try_from(n).unwrap_or(0)),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(quotas_are_set_replaced_and_removed,);

    async fn quotas_are_set_replaced_and_removed(store: Store) {
        let q = |user: &str, tasks: Option<u32>, millis: Option<u64>| QuotaRow {
            cluster: "default".into(),
            user: user.into(),
            max_tasks: tasks,
            max_cpu_millis: millis,
        };
        store.set_quota(&q("alice", Some(4), None)).await.unwrap();
        store.set_quota(&q("*", None, Some(8000))).await.unwrap();
        store
            .set_quota(&q("alice", Some(2), Some(1000)))
            .await
            .unwrap();
        assert_eq!(
            store.quotas().await.unwrap(),
            vec![q("*", None, Some(8000)), q("alice", Some(2), Some(1000))]
        );
        store.set_quota(&q("alice", None, None)).await.unwrap();
        assert_eq!(
            store.quotas().await.unwrap(),
            vec![q("*", None, Some(8000))]
        );
    }
}
