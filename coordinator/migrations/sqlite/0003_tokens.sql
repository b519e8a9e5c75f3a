-- Join and access tokens: only their sha256 is kept.
CREATE TABLE tokens (
    hash        TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('agent', 'submitter')),
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    uses_left   INTEGER,
    description TEXT    NOT NULL DEFAULT ''
);
