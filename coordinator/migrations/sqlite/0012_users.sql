-- People's tokens belong to a user with a role, optionally limited to clusters (a
-- comma-separated list; empty: every cluster). Tokens made before users existed could do
-- everything: they become `operate` tokens of the user `admin`, and their jobs admin's.
ALTER TABLE tokens ADD COLUMN user_name TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN clusters TEXT NOT NULL DEFAULT '';
UPDATE tokens SET user_name = 'admin', role = 'operate' WHERE kind = 'submitter';

-- Each job's owner and cluster, for the lists each user may see.
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE jobs ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default';
UPDATE jobs SET cluster = COALESCE(json_extract(spec, '$.cluster'), 'default');
CREATE INDEX jobs_by_owner ON jobs(owner, id);
