-- The gateway: the key run credentials are derived under, and the events journal of every
-- model and tool call (the operational record; the ledger holds the compliance record of the
-- same calls). Budgets are summed from the journal.

CREATE TABLE gateway_key (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    key_hex    TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);

CREATE TABLE gateway_calls (
    call_id        TEXT   PRIMARY KEY,
    at             TEXT   NOT NULL,
    day            TEXT   NOT NULL,
    run_id         TEXT   NOT NULL,
    tenant         TEXT   NOT NULL,
    agent          TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    target         TEXT   NOT NULL,
    decision       TEXT   NOT NULL,
    outcome        TEXT   NOT NULL,
    upstream_status BIGINT,
    latency_us     BIGINT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    args_sha256    TEXT   NOT NULL,
    policy_sha256  TEXT,
    ledger_seq     BIGINT
);
CREATE INDEX gateway_calls_by_run ON gateway_calls (run_id, at);
CREATE INDEX gateway_calls_by_tenant_day ON gateway_calls (tenant, day);
