//! Accounting: core-seconds of guest CPU harvested, per user whose tasks used them and per
//! lender whose agents gave them. Totals only grow; the hub adds what it gathered now and then.

use super::{Result, Store};
use sqlx::Row;

/// Who a total is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UsageKind {
    /// The user whose tasks used the CPU.
    User,
    /// The lender (agent owner) whose machines gave it.
    Lender,
}

impl UsageKind {
    fn as_str(self) -> &'static str {
        match self {
            UsageKind::User => "user",
            UsageKind::Lender => "lender",
        }
    }
}

impl Store {
    /// Adds core-seconds to totals, in one transaction.
    pub async fn add_usage(&self, deltas: &[(UsageKind, String, f64)]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (kind, name, core_seconds) in deltas {
            sqlx::query(
                "INSERT INTO usage (kind, name, core_seconds) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, name) DO UPDATE SET core_seconds = usage.core_seconds + excluded.core_seconds",
            )
            .bind(kind.as_str())
            .bind(name)
            .bind(*core_seconds)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every total of `kind`, largest first.
    pub async fn usage(&self, kind: UsageKind) -> Result<Vec<(String, f64)>> {
        let rows = sqlx::query(
            "SELECT name, core_seconds FROM usage WHERE kind = $1 ORDER BY core_seconds DESC, name",
        )
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(usage_adds_up_per_user_and_lender,);

    async fn usage_adds_up_per_user_and_lender(store: Store) {
        assert!(store.usage(UsageKind::User).await.unwrap().is_empty());
        store
            .add_usage(&[
                (UsageKind::User, "alice".into(), 1.5),
                (UsageKind::User, "bob".into(), 4.0),
                (UsageKind::Lender, "lab".into(), 5.5),
            ])
            .await
            .unwrap();
        store
            .add_usage(&[(UsageKind::User, "alice".into(), 3.0)])
            .await
            .unwrap();
        assert_eq!(
            store.usage(UsageKind::User).await.unwrap(),
            vec![("alice".to_owned(), 4.5), ("bob".to_owned(), 4.0)]
        );
        assert_eq!(
            store.usage(UsageKind::Lender).await.unwrap(),
            vec![("lab".to_owned(), 5.5)]
        );
    }
}
