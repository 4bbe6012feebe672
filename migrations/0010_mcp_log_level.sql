-- The level an agent asked for with logging/setLevel: sent to the upstream sessions of its own
-- (scope `session`) when they open, also after a gateway restart.
ALTER TABLE mcp_sessions ADD COLUMN log_level TEXT;
