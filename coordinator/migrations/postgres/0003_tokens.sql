-- Join and access tokens: only their sha256 is kept.
CREATE TABLE tokens (
    hash        TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('agent', 'submitter')),
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT,
    uses_left   BIGINT,
    description TEXT    NOT NULL DEFAULT ''
);
