-- When rows stopped being in use, so the maintenance pass (store/sql.rs,
-- `maintain`) can delete them once their retention has passed. Its
-- PostgreSQL twin is migrations/postgres/0002_retention.sql.

-- Set when a node is first revoked. The row (and with it the node's UNIQUE
-- addresses, name and key) is deleted `revoked_node_retention_secs` later.
ALTER TABLE nodes ADD COLUMN revoked_at INTEGER;
-- Set when a token is revoked or its last use is consumed; an expired token
-- counts from `expires_at`. Deleted `token_retention_secs` later.
ALTER TABLE tokens ADD COLUMN ended_at INTEGER;

CREATE INDEX nodes_revoked_at ON nodes (revoked_at) WHERE revoked_at IS NOT NULL;

-- Rows that ended before this migration: the audit log says when (names were
-- never reused before rows could be deleted, so the first `node.revoke` of a
-- name is that node's). Without an audit row, the time of the upgrade: late,
-- never early, so nothing is deleted before its retention has passed.
UPDATE nodes SET revoked_at = COALESCE(
    (SELECT MIN(a.at) FROM audit_log a
      WHERE a.action = 'node.revoke' AND json_extract(a.details, '$.node') = nodes.name),
    CAST(strftime('%s', 'now') AS INTEGER))
WHERE revoked = 1;

-- The last enrollment or revocation through the token: when a used-up token
-- was used up, or not earlier than when a revoked one was revoked.
UPDATE tokens SET ended_at = COALESCE(
    (SELECT MAX(a.at) FROM audit_log a
      WHERE a.action IN ('token.revoke', 'node.enroll')
        AND json_extract(a.details, '$.token') = tokens.id),
    CAST(strftime('%s', 'now') AS INTEGER))
WHERE revoked = 1 OR uses_left = 0;
