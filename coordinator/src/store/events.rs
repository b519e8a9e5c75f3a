//! Agents' state changes, kept for `lull agents events`.

use lull_protocol::message::AgentState;

use super::*;

impl Store {
    /// Records a change of an agent's scavenging state.
    pub async fn record_agent_event(&self, agent: &str, event: &AgentEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_events (agent_id, at_ms, from_state, to_state, reason, attempts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(agent)
        .bind(event.at_ms)
        .bind(event.from.name())
        .bind(event.to.name())
        .bind(&event.reason)
        .bind(serde_json::to_string(&event.attempts)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An agent's latest state changes, newest first.
    pub async fn agent_events(&self, agent: &str, limit: u32) -> Result<Vec<AgentEvent>> {
        let rows = sqlx::query(
            "SELECT at_ms, from_state, to_state, reason, attempts FROM agent_events \
             WHERE agent_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(agent)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let attempts: String = r.get(4);
                let state = |i: usize| {
                    let name: String = r.get(i);
                    AgentState::from_name(&name).ok_or_else(|| {
                        StoreError::Corrupt(serde::de::Error::custom(format!(
                            "unknown agent state {name:?}"
                        )))
                    })
                };
                Ok(AgentEvent {
                    at_ms: r.get(0),
                    from: state(1)?,
                    to: state(2)?,
                    reason: r.get(3),
                    attempts: serde_json::from_str(&attempts)?,
                })
            })
            .collect()
    }
}
