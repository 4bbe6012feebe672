-- The MCP gateway: agents' sessions (kept in the database so a gateway restart does not end
-- them) and tool calls parked for approval (a retried call re-attaches to its pending row, so a
-- restart loses no decision; the decisions themselves live in the run's workflow).

CREATE TABLE mcp_sessions (
    session_id       TEXT PRIMARY KEY,
    run_id           TEXT NOT NULL,
    protocol_version TEXT NOT NULL,
    client           TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX mcp_sessions_by_run ON mcp_sessions (run_id);

CREATE TABLE parked_tool_calls (
    call_id     TEXT   PRIMARY KEY,
    run_id      TEXT   NOT NULL,
    tool        TEXT   NOT NULL,
    args_sha256 TEXT   NOT NULL,
    released    BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT   NOT NULL
);
CREATE INDEX parked_tool_calls_lookup ON parked_tool_calls (run_id, tool, args_sha256, released);
