-- What each agent's MCP client declared at `initialize` (its `capabilities`, JSON): the gateway
-- relays a server's sampling or elicitation request only to a client that declared it, also
-- after a restart.
ALTER TABLE mcp_sessions ADD COLUMN client_capabilities TEXT NOT NULL DEFAULT '{}';
