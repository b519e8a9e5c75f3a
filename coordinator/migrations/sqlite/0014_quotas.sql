-- What one user may run at once in a cluster; `user_name` '*' is everyone without their own.
-- NULL: no limit of that kind.
CREATE TABLE quotas (
    cluster          TEXT NOT NULL,
    user_name        TEXT NOT NULL,
    max_tasks        BIGINT,
    max_cpu_millis   BIGINT,
    PRIMARY KEY (cluster, user_name)
);
