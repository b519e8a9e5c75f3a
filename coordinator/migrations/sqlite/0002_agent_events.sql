-- Each agent's scavenging state changes (pause, resume, throttle, eviction), with their reasons.
CREATE TABLE agent_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id  TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    from_state TEXT   NOT NULL,
    to_state  TEXT    NOT NULL,
    reason    TEXT    NOT NULL,
    attempts  TEXT    NOT NULL
);
CREATE INDEX agent_events_by_agent ON agent_events(agent_id, id);
