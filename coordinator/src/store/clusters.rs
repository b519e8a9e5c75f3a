//! Clusters: named sets of agents. A job names the cluster whose agents run it; an agent joins
//! the cluster its join token names. Every store has the cluster `default`.

use lull_protocol::job::check_cluster_id;
use serde::Serialize;
use sqlx::Row;

use super::{Result, Store};

/// A cluster as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterInfo {
    /// Its ID.
    pub id: String,
    /// When it was made (ms since the Unix epoch; 0 for `default`).
    pub created_ms: i64,
    /// A note for people.
    pub description: String,
    /// Agents enrolled into it and not revoked.
    pub agents: i64,
    /// Whether waiting work may evict running work that stands in its way.
    pub preempt: bool,
}

/// Why a cluster could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterRefusal {
    /// The ID is not acceptable.
    #[error(transparent)]
    BadId(lull_protocol::job::NameError),
    /// There is one already.
    #[error("cluster {0} exists already")]
    Exists(String),
}

impl Store {
    /// Makes a cluster. The outer error is the database's.
    pub async fn create_cluster(
        &self,
        id: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<(), ClusterRefusal>> {
        if let Err(e) = check_cluster_id(id) {
            return Ok(Err(ClusterRefusal::BadId(e)));
        }
        let done = sqlx::query(
            "INSERT INTO clusters (id, created_ms, description) VALUES ($1, $2, $3) ON CONFLICT(id) DO NOTHING",
        )
        .bind(id)
        .bind(now_ms)
        .bind(description)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Err(ClusterRefusal::Exists(id.to_owned())));
        }
        Ok(Ok(()))
    }

    /// Whether a cluster exists.
    pub async fn cluster_exists(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Every cluster, oldest first, with how many agents are enrolled into each.
    pub async fn clusters(&self) -> Result<Vec<ClusterInfo>> {
        let rows = sqlx::query(
            "SELECT c.id, c.created_ms, c.description, \
             (SELECT COUNT(*) FROM agents a WHERE a.cluster = c.id AND a.revoked_ms IS NULL), c.preempt \
             FROM clusters c ORDER BY c.created_ms, c.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ClusterInfo {
                id: r.get(0),
                created_ms: r.get(1),
                description: r.get(2),
                agents: r.get(3),
                preempt: r.get::<i64, _>(4) != 0,
            })
            .collect())
    }

    /// Sets whether waiting work in cluster `id` may evict running work; `false` when there is
    /// no such cluster.
    pub async fn set_preemption(&self, id: &str, preempt: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE clusters SET preempt = $1 WHERE id = $2")
            .bind(i64::from(preempt))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(clusters_are_made_once_and_listed_with_their_agents);

    async fn clusters_are_made_once_and_listed_with_their_agents(store: Store) {
        assert!(store.cluster_exists("default").await.unwrap());
        assert!(!store.cluster_exists("gpu").await.unwrap());
        assert_eq!(
            store
                .create_cluster("gpu", "the GPU room", 5)
                .await
                .unwrap(),
            Ok(())
        );
        assert_eq!(
            store.create_cluster("gpu", "", 6).await.unwrap(),
            Err(ClusterRefusal::Exists("gpu".into()))
        );
        assert!(matches!(
            store.create_cluster("GPU room", "", 6).await.unwrap(),
            Err(ClusterRefusal::BadId(_))
        ));
        store
            .upsert_agent("a-1", "one", &Default::default(), 1)
            .await
            .unwrap();
        let listed = store.clusters().await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["default", "gpu"]);
        assert_eq!(listed[0].agents, 1);
        assert_eq!(listed[1].agents, 0);
        assert_eq!(listed[1].description, "the GPU room");
        assert!(!listed[1].preempt, "off unless turned on");
        assert!(store.set_preemption("gpu", true).await.unwrap());
        assert!(!store.set_preemption("nowhere", true).await.unwrap());
        assert!(store.clusters().await.unwrap()[1].preempt);
    }
}
