-- The latest checkpoint of each task: the blob of a guest's state, kept by the attempt
-- `attempt` (its `seq`-th), sealed by its agent; the task's next attempt restores it.
CREATE TABLE checkpoints (
    job_id      BIGINT NOT NULL,
    idx         BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    agent_id    TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    size        BIGINT NOT NULL,
    progress    DOUBLE PRECISION,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
