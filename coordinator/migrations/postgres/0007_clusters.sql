-- Clusters: sets of agents that jobs name. Every coordinator has `default`.
CREATE TABLE clusters (
    id          TEXT    PRIMARY KEY,
    created_ms  BIGINT NOT NULL,
    description TEXT    NOT NULL DEFAULT ''
);
INSERT INTO clusters (id, created_ms, description) VALUES ('default', 0, 'the cluster jobs and agents belong to unless they say otherwise');
-- The cluster an agent's join token enrolls it into.
ALTER TABLE tokens ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default';
-- The cluster an agent belongs to.
ALTER TABLE agents ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default';
