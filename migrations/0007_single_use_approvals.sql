-- A parked tool call is approved for one execution of exactly that call: the policy version
-- that escalated it is part of what is approved, and `released` is claimed by the one
-- execution (a copy that finds it claimed parks as a new request).
ALTER TABLE parked_tool_calls ADD COLUMN policy_sha256 TEXT NOT NULL DEFAULT '';
