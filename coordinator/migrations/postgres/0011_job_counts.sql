-- Each job's tasks by state, changed by every transaction that changes a task's state, so that
-- a job's counts (its detail, the list of jobs, the dashboard) are one row to read, however
-- many tasks it has.
CREATE TABLE job_counts (
    job_id      BIGINT PRIMARY KEY,
    pending     BIGINT NOT NULL DEFAULT 0,
    running     BIGINT NOT NULL DEFAULT 0,
    succeeded   BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    cancelled   BIGINT NOT NULL DEFAULT 0
);
INSERT INTO job_counts (job_id, pending, running, succeeded, failed, cancelled)
SELECT id,
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'pending'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'running'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'succeeded'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'failed'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'cancelled')
FROM jobs;
