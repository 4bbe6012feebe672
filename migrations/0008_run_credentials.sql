-- Run credentials: the key they are minted under lives in a key file outside the database
-- (engine/src/gateway/keys.rs), so the old in-database key goes; what stays here is when each
-- run's credential was issued (just before its runner started) and revoked (as soon as its
-- agent exited). A credential admits calls only in between.
DROP TABLE gateway_key;

CREATE TABLE run_credentials (
    run_id     TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    revoked_at TEXT
);
