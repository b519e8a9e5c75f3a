-- Results offered by tasks of jobs that cache: a succeeded task's key (its modules,
-- arguments, environment and inputs, as one digest) and the attempt whose result it is. A job
-- that caches takes such a result for a task with the same key instead of running it.
CREATE TABLE result_cache (
    key     TEXT PRIMARY KEY,
    job_id  BIGINT NOT NULL,
    idx     BIGINT NOT NULL,
    attempt BIGINT NOT NULL
);
