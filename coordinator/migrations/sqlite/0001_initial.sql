-- Jobs as submitted; `spec` is the resolved job definition (JSON).
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    cancelled   INTEGER NOT NULL DEFAULT 0
);

-- One row per task; `attempt` is the current (or last) attempt number, 0 before the first.
CREATE TABLE tasks (
    job_id      INTEGER NOT NULL REFERENCES jobs(id),
    idx         INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt     INTEGER NOT NULL DEFAULT 0,
    agent_id    TEXT,
    cause       TEXT,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX tasks_by_state ON tasks(state);

-- Every attempt, with its result once it ended. A result is recorded once per attempt.
CREATE TABLE attempts (
    job_id      INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    agent_id    TEXT    NOT NULL,
    assigned_ms INTEGER NOT NULL,
    started_ms  INTEGER,
    setup_us    INTEGER,
    finished_ms INTEGER,
    outcome     TEXT,
    result      TEXT,
    PRIMARY KEY (job_id, idx, attempt)
);

-- Agents seen, with their last capacity report.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    capacity      TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);
