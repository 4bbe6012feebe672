-- cogward schema, portable across SQLite and PostgreSQL.

-- The audit ledger: append-only, hash-chained. hash = sha256(prev_hash || canonical entry bytes);
-- see engine/src/ledger/mod.rs for the canonical form.
CREATE TABLE ledger_entries (
    seq             BIGINT PRIMARY KEY,
    kind            TEXT   NOT NULL,
    namespace       TEXT   NOT NULL,
    workflow_id     TEXT   NOT NULL,
    temporal_run_id TEXT   NOT NULL,
    event_id        BIGINT,
    event_type      TEXT   NOT NULL,
    recorded_at     TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    prev_hash       TEXT   NOT NULL,
    hash            TEXT   NOT NULL
);

-- Each Temporal history event is mirrored exactly once; so is each application entry derived
-- from one.
CREATE UNIQUE INDEX ledger_history_event
    ON ledger_entries (namespace, workflow_id, temporal_run_id, event_id)
    WHERE kind = 'history';
CREATE UNIQUE INDEX ledger_app_event
    ON ledger_entries (namespace, workflow_id, temporal_run_id, event_id, event_type)
    WHERE kind = 'app';
CREATE INDEX ledger_by_workflow ON ledger_entries (workflow_id, seq);

-- The chain head: the last entry's seq and hash. Writers serialise on this row.
CREATE TABLE ledger_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);
INSERT INTO ledger_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Runs as the API knows them. Status is derived from workflow history by the mirror; this table
-- is an index for queries, not the record (the ledger is).
CREATE TABLE runs (
    run_id            TEXT   PRIMARY KEY,
    tenant            TEXT   NOT NULL,
    agent             TEXT   NOT NULL,
    idempotency_key   TEXT,
    spec_sha256       TEXT   NOT NULL,
    spec              TEXT   NOT NULL,
    submitted_by      TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    reason            TEXT,
    summary           TEXT,
    temporal_run_id   TEXT,
    created_at        TEXT   NOT NULL,
    updated_at        TEXT   NOT NULL,
    mirrored_event_id BIGINT NOT NULL DEFAULT 0,
    mirror_done       BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_mirror_pending ON runs (mirror_done);
