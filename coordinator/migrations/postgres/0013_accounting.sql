-- Whose machine an agent is (its lender): the user named by the join token it enrolled with.
ALTER TABLE agents ADD COLUMN owner TEXT NOT NULL DEFAULT '';

-- Core-seconds of guest CPU harvested, per user whose tasks used them (`kind` = 'user') and per
-- lender whose agents gave them (`kind` = 'lender'); only ever added to.
CREATE TABLE usage (
    kind         TEXT NOT NULL CHECK (kind IN ('user', 'lender')),
    name         TEXT NOT NULL,
    core_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name)
);
