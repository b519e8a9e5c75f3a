-- A running attempt's lease in the database (ms since the Unix epoch), renewed by the
-- coordinator its agent is connected to, so that coordinators sharing a database requeue the
-- attempts of one that died. NULL for tasks not running.
ALTER TABLE tasks ADD COLUMN lease_until_ms BIGINT;
-- Finding tasks that became pending since a moment (coordinators sharing a database learn of
-- each other's work this way).
CREATE INDEX tasks_by_state_and_time ON tasks(state, updated_ms);
