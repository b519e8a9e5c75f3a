-- Each task's own part of a job whose tasks differ by more than their index: its row of the
-- job file's items table and its own standard input and input files, as JSON (a TaskItem).
-- Written with the job; read when the task is assigned.
CREATE TABLE task_items (
    job_id BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    item   TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
