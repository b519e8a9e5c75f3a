-- Whether waiting work in a cluster may evict running work that stands in its way (a user served
-- after it by fair share, or a lower priority of its own user): off unless an operator turns it on.
ALTER TABLE clusters ADD COLUMN preempt BIGINT NOT NULL DEFAULT 0;
