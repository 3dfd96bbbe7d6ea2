-- segmesh coordinator state, SQLite flavour. Its PostgreSQL twin lives in
-- migrations/postgres/ with the same tables and columns.

-- Enrolled nodes. Addresses stay UNIQUE for as long as the row exists, revoked
-- or not, so an overlay address is never handed to a second node while the
-- first one still holds it.
CREATE TABLE nodes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL UNIQUE,
    labels         TEXT    NOT NULL,              -- JSON object, sorted keys
    public_key     TEXT    NOT NULL UNIQUE,       -- WireGuard key, base64
    addr_v4        TEXT    NOT NULL UNIQUE,
    addr_v6        TEXT    NOT NULL UNIQUE,
    endpoints      TEXT    NOT NULL DEFAULT '[]', -- JSON array of "ip:port"
    cert_serial    TEXT    NOT NULL,              -- hex; only this certificate is accepted
    revoked        INTEGER NOT NULL DEFAULT 0,
    token_id       INTEGER,
    created_at     INTEGER NOT NULL,              -- unix seconds
    netmap_version INTEGER NOT NULL DEFAULT 0,    -- last version sent (monotonic per node)
    acked_version  INTEGER NOT NULL DEFAULT 0,    -- last version the node applied
    acked_at       INTEGER
);

-- Join tokens. Only the SHA-256 of the secret is stored.
CREATE TABLE tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_sha256 TEXT    NOT NULL UNIQUE,
    name_prefix   TEXT,
    labels        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    uses_total    INTEGER NOT NULL,
    uses_left     INTEGER NOT NULL,
    revoked       INTEGER NOT NULL DEFAULT 0,
    created_by    TEXT    NOT NULL
);

-- Every applied policy, newest = current.
CREATE TABLE policy (
    version    INTEGER PRIMARY KEY,
    text       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL,
    applied_by TEXT    NOT NULL
);

-- Netmaps sent to nodes and not yet superseded by an acked one: the acked
-- row is what `policy audit` compares with the policy.
CREATE TABLE netmaps (
    node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    body    TEXT    NOT NULL,
    PRIMARY KEY (node_id, version)
);

-- Who changed what, when. Written in the same transaction as the change.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    details TEXT    NOT NULL                      -- JSON object
);
