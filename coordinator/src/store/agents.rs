//! Agents as the store knows them: their IDs, the keys they proved them with, enrollment with a
//! join token, and revocation.
//!
//! An agent's ID belongs to one key: the one it enrolled with (or, on a coordinator that does
//! not require enrollment, the first it connected with). A key belongs to one ID. A revoked
//! agent stays revoked: its ID and its key are never admitted again.

use lull_protocol::Digest;
use lull_protocol::message::Capacity;
use sqlx::Row;

use super::tokens::{TokenKind, TokenRefusal, take_token};
use super::{Result, Store};

/// What the store holds of an agent's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// The key its ID is bound to, if any.
    pub key: Option<Digest>,
    /// When its key was enrolled with a join token (ms since the Unix epoch).
    pub enrolled_ms: Option<i64>,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
    /// While it is being drained: when its running attempts are evicted.
    pub drain_deadline_ms: Option<i64>,
    /// Whose machine it is (the user its join token named; empty when none did).
    pub owner: String,
    /// How many of its results differed from the one other agents agreed on.
    pub disagreements: u64,
}

/// An agent's cluster, when the store knows the agent.
pub type ClusterId = String;

impl AgentRecord {
    /// Whether `key` is this agent's enrolled key, and the agent is not revoked.
    pub fn admits(&self, key: Option<Digest>) -> bool {
        self.enrolled_ms.is_some() && self.revoked_ms.is_none() && key.is_some() && self.key == key
    }
}

/// How an enrollment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    /// The key is now enrolled under the ID; the token counted one use.
    New,
    /// The key was enrolled under the ID already; the token was not used.
    Already,
}

/// Why an enrollment was refused. The messages are for the person installing the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    /// The join token does not admit anyone (unknown, expired, used up, or a submitter's).
    #[error("the join token was refused: {0}")]
    Token(TokenRefusal),
    /// The ID is bound to another key.
    #[error("agent ID {0} belongs to another key")]
    IdTaken(String),
    /// The key is bound to another ID.
    #[error("this agent's key is already enrolled as agent {0}")]
    KeyTaken(String),
    /// The agent was revoked.
    #[error("agent {0} was revoked")]
    Revoked(String),
}

impl Store {
    /// The standing of the agent with this ID; `None` when the store has never seen it.
    pub async fn agent_record(&self, id: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(
            "SELECT key_hash, enrolled_ms, revoked_ms, drain_deadline_ms, owner, disagreements FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| AgentRecord {
            key: r
                .get::<Option<String>, _>(0)
                .and_then(|k| k.parse::<Digest>().ok()),
            enrolled_ms: r.get(1),
            revoked_ms: r.get(2),
            drain_deadline_ms: r.get(3),
            owner: r.get(4),
            disagreements: r.get::<i64, _>(5).max(0) as u64,
        }))
    }

    /// Binds an agent's ID to `key` unless it is bound already (the first key stays).
    pub async fn bind_agent_key(&self, id: &str, key: Digest) -> Result<()> {
        sqlx::query("UPDATE agents SET key_hash = $1 WHERE id = $2 AND key_hash IS NULL")
            .bind(key.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an agent's hello or report.
    pub async fn upsert_agent(
        &self,
        id: &str,
        name: &str,
        capacity: &Capacity,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, name, capacity, first_seen_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, capacity = excluded.capacity, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(id)
        .bind(name)
        .bind(serde_json::to_string(capacity)?)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enrolls `key` under the agent ID `id` with a join token, in one transaction: the token
    /// counts a use only when the key is enrolled. A key already enrolled under this ID needs
    /// no token (an agent may enroll again at every start). The outer error is the database's.
    pub async fn enroll_agent(
        &self,
        id: &str,
        name: &str,
        key: Digest,
        token: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<Enrolled, EnrollRefusal>> {
        // The token is checked with a plain read before the write lock is taken: a peer with a
        // wrong token costs one read and never holds up the coordinator's writers. (A key
        // already enrolled under the ID goes on without one, as below.)
        let enrolled_already = self.agent_record(id).await?.is_some_and(|r| {
            r.revoked_ms.is_none() && r.enrolled_ms.is_some() && r.key == Some(key)
        });
        if !enrolled_already
            && let Err(refusal) = self
                .use_token(token, TokenKind::Agent, false, now_ms)
                .await?
        {
            return Ok(Err(EnrollRefusal::Token(refusal)));
        }
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT key_hash, enrolled_ms, revoked_ms FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = &row {
            let bound: Option<String> = r.get(0);
            let enrolled: Option<i64> = r.get(1);
            let revoked: Option<i64> = r.get(2);
            if revoked.is_some() {
                return Ok(Err(EnrollRefusal::Revoked(id.to_owned())));
            }
            match bound {
                Some(b) if b != key.to_string() => {
                    return Ok(Err(EnrollRefusal::IdTaken(id.to_owned())));
                }
                Some(_) if enrolled.is_some() => return Ok(Ok(Enrolled::Already)),
                _ => {}
            }
        }
        let other = sqlx::query("SELECT id FROM agents WHERE key_hash = $1 AND id != $2 LIMIT 1")
            .bind(key.to_string())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(other) = other {
            return Ok(Err(EnrollRefusal::KeyTaken(other.get(0))));
        }
        let grant = match take_token(&mut tx, token, TokenKind::Agent, now_ms).await? {
            Ok(grant) => grant,
            Err(refusal) => return Ok(Err(EnrollRefusal::Token(refusal))),
        };
        sqlx::query(
            "INSERT INTO agents (id, name, capacity, first_seen_ms, last_seen_ms, key_hash, enrolled_ms, cluster, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT(id) DO UPDATE SET key_hash = excluded.key_hash, enrolled_ms = excluded.enrolled_ms, \
             cluster = excluded.cluster, owner = excluded.owner",
        )
        .bind(id)
        .bind(name)
        .bind(serde_json::to_string(&Capacity::default())?)
        .bind(now_ms)
        .bind(now_ms)
        .bind(key.to_string())
        .bind(now_ms)
        .bind(&grant.cluster)
        .bind(&grant.user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(Enrolled::New))
    }

    /// The cluster of the agent with this ID (`default` for agents the store does not know).
    pub async fn agent_cluster(&self, id: &str) -> Result<ClusterId> {
        let row = sqlx::query("SELECT cluster FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or_else(
            || lull_protocol::job::DEFAULT_CLUSTER.to_owned(),
            |r| r.get(0),
        ))
    }

    /// For each of these agents the store knows: whether it is revoked, and its drain
    /// deadline.
    pub async fn agent_standings(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, bool, Option<i64>)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, revoked_ms, drain_deadline_ms FROM agents WHERE id IN ({})",
                super::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.get(0), r.get::<Option<i64>, _>(1).is_some(), r.get(2)));
            }
        }
        Ok(out)
    }

    /// Starts draining an agent (its attempts are evicted at `deadline_ms`), or with `None`
    /// stops. Returns whether the agent exists.
    pub async fn set_drain(&self, id: &str, deadline_ms: Option<i64>) -> Result<bool> {
        let done = sqlx::query("UPDATE agents SET drain_deadline_ms = $1 WHERE id = $2")
            .bind(deadline_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes an agent for good. `None` when there is no agent with this ID; otherwise whether
    /// this call revoked it (`false`: it was revoked already, at the time it keeps).
    pub async fn revoke_agent(&self, id: &str, now_ms: i64) -> Result<Option<bool>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT revoked_ms FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.get::<Option<i64>, _>(0).is_some() {
            return Ok(Some(false));
        }
        sqlx::query("UPDATE agents SET revoked_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(
        enrollment_binds_id_and_key_and_uses_the_token_once,
        ids_and_keys_cannot_be_taken_over,
        a_revoked_agent_stays_out,
        a_key_bound_without_enrollment_can_enroll_later,
        a_wrong_token_is_refused_without_waiting_for_the_write_lock,
    );
    use crate::store::TokenSpec;

    async fn a_wrong_token_is_refused_without_waiting_for_the_write_lock(store: Store) {
        let token = join_token(&store, None).await;
        // Another writer holds the lock (on SQLite a peer would wait up to the busy timeout).
        let held = store.begin_write().await.unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.enroll_agent("a-1", "one", key(1), "lull_not-a-token", 10),
        )
        .await
        .expect("refused without waiting for the write lock");
        assert_eq!(
            got.unwrap(),
            Err(EnrollRefusal::Token(TokenRefusal::Unknown))
        );
        drop(held);
        // With the lock free, the right token still enrolls.
        let got = store.enroll_agent("a-1", "one", key(1), &token, 11).await;
        assert_eq!(got.unwrap(), Ok(Enrolled::New));
    }

    async fn join_token(store: &Store, uses: Option<u32>) -> String {
        let spec = TokenSpec {
            kind: TokenKind::Agent,
            expires_ms: None,
            uses,
            description: String::new(),
            cluster: "default".into(),
            user: String::new(),
            role: None,
            clusters: Vec::new(),
            groups: Vec::new(),
        };
        store
            .create_token(&spec, 0)
            .await
            .unwrap()
            .as_str()
            .to_owned()
    }

    fn key(n: u8) -> Digest {
        Digest::of(&[n])
    }

    async fn enrollment_binds_id_and_key_and_uses_the_token_once(store: Store) {
        let token = join_token(&store, Some(1)).await;
        assert_eq!(store.agent_record("a-1").await.unwrap(), None);
        let got = store.enroll_agent("a-1", "one", key(1), &token, 10).await;
        assert_eq!(got.unwrap(), Ok(Enrolled::New));
        let rec = store.agent_record("a-1").await.unwrap().unwrap();
        assert_eq!(rec.key, Some(key(1)));
        assert_eq!(rec.enrolled_ms, Some(10));
        assert!(rec.admits(Some(key(1))));
        assert!(!rec.admits(Some(key(2))));
        assert!(!rec.admits(None));

        // Again with the same key: no token use needed (the token is used up by now).
        let again = store.enroll_agent("a-1", "one", key(1), &token, 11).await;
        assert_eq!(again.unwrap(), Ok(Enrolled::Already));
        // A second agent with the used-up token is refused, and nothing of it is stored.
        let second = store.enroll_agent("a-2", "two", key(2), &token, 12).await;
        assert_eq!(
            second.unwrap(),
            Err(EnrollRefusal::Token(TokenRefusal::UsedUp))
        );
        assert_eq!(store.agent_record("a-2").await.unwrap(), None);
    }

    async fn ids_and_keys_cannot_be_taken_over(store: Store) {
        let token = join_token(&store, None).await;
        store
            .enroll_agent("a-1", "one", key(1), &token, 10)
            .await
            .unwrap()
            .unwrap();
        // Another key claiming the ID.
        let got = store.enroll_agent("a-1", "x", key(2), &token, 11).await;
        assert_eq!(got.unwrap(), Err(EnrollRefusal::IdTaken("a-1".into())));
        // The same key under a second ID.
        let got = store.enroll_agent("a-2", "x", key(1), &token, 11).await;
        assert_eq!(got.unwrap(), Err(EnrollRefusal::KeyTaken("a-1".into())));
        assert_eq!(
            store.agent_record("a-1").await.unwrap().unwrap().key,
            Some(key(1))
        );
    }

    async fn a_revoked_agent_stays_out(store: Store) {
        let token = join_token(&store, None).await;
        store
            .enroll_agent("a-1", "one", key(1), &token, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.revoke_agent("a-1", 20).await.unwrap(), Some(true));
        assert_eq!(store.revoke_agent("a-1", 30).await.unwrap(), Some(false));
        assert_eq!(store.revoke_agent("nobody", 30).await.unwrap(), None);
        assert!(store.set_drain("a-1", Some(99)).await.unwrap());
        assert!(!store.set_drain("nobody", Some(99)).await.unwrap());
        assert_eq!(
            store
                .agent_standings(&["a-1".into(), "nobody".into()])
                .await
                .unwrap(),
            vec![("a-1".to_owned(), true, Some(99))]
        );
        let rec = store.agent_record("a-1").await.unwrap().unwrap();
        assert_eq!(rec.revoked_ms, Some(20));
        assert_eq!(rec.drain_deadline_ms, Some(99));
        assert!(!rec.admits(Some(key(1))));
        // Enrolling again, even with a good token and its own key, is refused.
        let got = store.enroll_agent("a-1", "one", key(1), &token, 40).await;
        assert_eq!(got.unwrap(), Err(EnrollRefusal::Revoked("a-1".into())));
        // So is its key under a new ID.
        let got = store.enroll_agent("a-9", "one", key(1), &token, 40).await;
        assert_eq!(got.unwrap(), Err(EnrollRefusal::KeyTaken("a-1".into())));
    }

    async fn a_key_bound_without_enrollment_can_enroll_later(store: Store) {
        store
            .upsert_agent("a-1", "one", &Capacity::default(), 5)
            .await
            .unwrap();
        store.bind_agent_key("a-1", key(1)).await.unwrap();
        let rec = store.agent_record("a-1").await.unwrap().unwrap();
        assert!(!rec.admits(Some(key(1))), "bound but not enrolled");
        let token = join_token(&store, Some(1)).await;
        let got = store.enroll_agent("a-1", "one", key(1), &token, 10).await;
        assert_eq!(got.unwrap(), Ok(Enrolled::New));
        assert!(
            store
                .agent_record("a-1")
                .await
                .unwrap()
                .unwrap()
                .admits(Some(key(1)))
        );
    }
}
