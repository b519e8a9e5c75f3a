//! Accounting: the guest CPU agents report, credited to the users whose tasks used it and to
//! the lenders whose machines gave it (BOINC's credit, HTCondor's accounting). Gathered in
//! memory as reports come and added to the store's totals every [`FLUSH_INTERVAL`] (and when
//! the coordinator stops), so a report costs no write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lull_protocol::api;
use lull_protocol::sync::lock;

use super::{Hub, HubError};
use crate::store::UsageKind;

/// How often gathered usage is added to the store's totals: what a crash can lose.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Usage gathered since the last flush.
#[derive(Debug, Default)]
pub(super) struct Pending(BTreeMap<(UsageKind, String), f64>);

impl Hub {
    /// Credits `core_seconds` of guest CPU to the lender and the users the core attributed it
    /// to (`Dispatch::handle_harvest`; nothing when it attributed it to no one).
    pub(super) fn credit(
        &self,
        attributed: Option<(String, Vec<(String, f64)>)>,
        core_seconds: f64,
    ) {
        let Some((lender, users)) = attributed else {
            return;
        };
        let mut pending = lock(&self.usage);
        if !lender.is_empty() {
            *pending.0.entry((UsageKind::Lender, lender)).or_default() += core_seconds;
        }
        for (user, part) in users {
            *pending.0.entry((UsageKind::User, user)).or_default() += part;
        }
    }

    /// Adds the usage gathered so far to the store's totals. What the store refuses is kept
    /// for the next try.
    pub async fn flush_usage(&self) -> Result<(), HubError> {
        let taken = std::mem::take(&mut *lock(&self.usage));
        let deltas: Vec<(UsageKind, String, f64)> = taken
            .0
            .iter()
            .map(|((kind, name), s)| (*kind, name.clone(), *s))
            .collect();
        if let Err(e) = self.store.add_usage(&deltas).await {
            let mut pending = lock(&self.usage);
            for ((kind, name), s) in taken.0 {
                *pending.0.entry((kind, name)).or_default() += s;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Flushes the gathered usage every 10 seconds (`FLUSH_INTERVAL`).
    pub async fn flush_usage_periodically(self: Arc<Self>) {
        let mut every = tokio::time::interval(FLUSH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = self.flush_usage().await {
                tracing::warn!(error = %e, "could not record usage; trying again later");
            }
        }
    }

    /// The totals per user and per lender, largest first: the store's, with what is gathered
    /// and not yet added.
    pub async fn accounting(&self) -> Result<api::Accounting, HubError> {
        let pending: Vec<((UsageKind, String), f64)> = lock(&self.usage)
            .0
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let totals = |kind: UsageKind, stored: Vec<(String, f64)>| {
            let mut all: BTreeMap<String, f64> = stored.into_iter().collect();
            for ((k, name), s) in &pending {
                if *k == kind {
                    *all.entry(name.clone()).or_default() += s;
                }
            }
            let mut v: Vec<api::Usage> = all
                .into_iter()
                .map(|(name, core_seconds)| api::Usage { name, core_seconds })
                .collect();
            v.sort_by(|a, b| {
                b.core_seconds
                    .total_cmp(&a.core_seconds)
                    .then_with(|| a.name.cmp(&b.name))
            });
            v
        };
        let users = totals(UsageKind::User, self.store.usage(UsageKind::User).await?);
        let lenders = totals(
            UsageKind::Lender,
            self.store.usage(UsageKind::Lender).await?,
        );
        Ok(api::Accounting { users, lenders })
    }
}
