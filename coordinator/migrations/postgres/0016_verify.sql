-- Jobs with `verify` above 1: each successful attempt keeps its result's digest, compared with
-- the other agents' runs of the task; an attempt whose result differs from the agreed one is
-- marked, and its agent's count of such results goes up.
ALTER TABLE attempts ADD COLUMN digest TEXT;
ALTER TABLE attempts ADD COLUMN disagreed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN disagreements BIGINT NOT NULL DEFAULT 0;
