-- A job's tasks in one state, by index: a page of them (`GET /api/v1/jobs/{id}?state=...`),
-- and the pending and running tasks of a job being cancelled, however large the job.
CREATE INDEX tasks_by_job_and_state ON tasks(job_id, state, idx);
-- Pending tasks in (time, job, index) order, read from where the last look stopped: with the
-- task in the index, a look reads only the tasks it returns, even when a million tasks of one
-- job share a time. Every query by state alone uses it too, so `tasks_by_state` goes: one
-- index less to write for each task inserted or changed.
DROP INDEX tasks_by_state_and_time;
CREATE INDEX tasks_by_state_and_time ON tasks(state, updated_ms, job_id, idx);
DROP INDEX tasks_by_state;
