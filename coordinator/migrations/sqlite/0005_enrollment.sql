-- When an agent's key was enrolled with a join token (NULL: never; such an agent is admitted
-- only by a coordinator that does not require enrollment, as `lull dev`), and when the agent
-- was revoked (NULL: it is not).
ALTER TABLE agents ADD COLUMN enrolled_ms INTEGER;
ALTER TABLE agents ADD COLUMN revoked_ms INTEGER;
