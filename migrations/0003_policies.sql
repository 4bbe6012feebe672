-- Policies: modules and data documents content-addressed (stored once however often pushed),
-- bundles immutable and versioned, bindings pointing a (tenant, agent, kind) at a bundle version.

CREATE TABLE policy_modules (
    sha256      TEXT   PRIMARY KEY,
    abi_version BIGINT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    wasm_base64 TEXT   NOT NULL,
    created_at  TEXT   NOT NULL
);

CREATE TABLE policy_data (
    sha256     TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE policy_bundles (
    name          TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    module_sha256 TEXT   NOT NULL REFERENCES policy_modules (sha256),
    data_sha256   TEXT   NOT NULL REFERENCES policy_data (sha256),
    created_by    TEXT   NOT NULL,
    created_at    TEXT   NOT NULL,
    PRIMARY KEY (name, version)
);

-- '*' in tenant or agent matches any. Lookup order: (tenant, agent), (tenant, '*'), ('*', '*').
CREATE TABLE policy_bindings (
    tenant   TEXT   NOT NULL,
    agent    TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    bound_by TEXT   NOT NULL,
    bound_at TEXT   NOT NULL,
    PRIMARY KEY (tenant, agent, kind),
    FOREIGN KEY (name, version) REFERENCES policy_bundles (name, version)
);
