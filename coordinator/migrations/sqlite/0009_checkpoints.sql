-- The latest checkpoint of each task: the blob of a guest's state, kept by the attempt
-- `attempt` (its `seq`-th), sealed by its agent; the task's next attempt restores it.
CREATE TABLE checkpoints (
    job_id      INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    agent_id    TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    progress    REAL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
