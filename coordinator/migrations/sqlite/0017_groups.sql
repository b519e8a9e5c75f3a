-- A person's token may name groups (comma-separated): the groups its jobs may be counted in
-- for group quotas, the first being the default of jobs that name none.
ALTER TABLE tokens ADD COLUMN groups TEXT NOT NULL DEFAULT '';
