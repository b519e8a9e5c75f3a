-- Jobs that come after others (a workflow's later steps) are stored held: their tasks are
-- pending but not queued until every job they come after has succeeded. `hold` says why a
-- held job stays held for good (one of those jobs did not succeed); `released_ms` is when it
-- was released, which its deadline and queue timeout count from.
ALTER TABLE jobs ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN hold TEXT;
ALTER TABLE jobs ADD COLUMN released_ms BIGINT;
