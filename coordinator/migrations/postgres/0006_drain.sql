-- When the agent is being drained: it takes no new work, and its running attempts are evicted
-- at this time (ms since the Unix epoch). NULL: not draining.
ALTER TABLE agents ADD COLUMN drain_deadline_ms BIGINT;
