-- The key each agent proved its ID with at its first connection (sha256 of its public key);
-- NULL for agents that have not presented one yet.
ALTER TABLE agents ADD COLUMN key_hash TEXT;
