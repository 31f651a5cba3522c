-- The ledger: append-only events, content-addressed payloads, and the auditors' provenance view.

CREATE TABLE events (
    chain_id   TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    event_id   TEXT    NOT NULL UNIQUE,
    event_type TEXT    NOT NULL,
    timestamp  TEXT    NOT NULL,
    session_id TEXT,
    agent      TEXT,
    server     TEXT,
    data       TEXT    NOT NULL CHECK (json_valid(data)),
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    PRIMARY KEY (chain_id, seq)
);

CREATE INDEX events_call_id ON events (json_extract(data, '$.call_id'))
    WHERE json_extract(data, '$.call_id') IS NOT NULL;
CREATE INDEX events_session_id ON events (session_id);

-- The database refuses to change history, whatever the application does. (SQLite has no
-- TRUNCATE; its truncate optimisation is disabled for tables with a DELETE trigger.)
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: UPDATE on events is refused; the ledger is append-only');
END;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: DELETE on events is refused; the ledger is append-only');
END;

-- Bodies are referenced by events as sha256:<hex of their canonical JSON>; `body` is that JSON.
CREATE TABLE payloads (
    reference  TEXT    PRIMARY KEY,
    body       TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    created_at TEXT    NOT NULL
);

CREATE TRIGGER payloads_refuse_update BEFORE UPDATE ON payloads
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: UPDATE on payloads is refused; bodies are content-addressed');
END;

CREATE VIEW provenance AS
SELECT
    json_extract(c.data, '$.call_id')       AS call_id,
    c.timestamp                             AS timestamp,
    c.agent                                 AS agent,
    json_extract(c.data, '$.tool')          AS action,
    json_extract(c.data, '$.target')        AS target,
    json_extract(c.data, '$.authorized_by') AS authorized_by,
    json_extract(c.data, '$.cost_credits')  AS cost_credits,
    json_extract(c.data, '$.input_ref')     AS input_ref,
    json_extract(r.data, '$.output_ref')    AS output_ref,
    COALESCE(json_extract(r.data, '$.outcome'), 'pending') AS outcome,
    c.server                                AS server,
    c.session_id                            AS session_id,
    json_extract(r.data, '$.error')         AS error
FROM events c
LEFT JOIN events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND json_extract(r.data, '$.call_id') = json_extract(c.data, '$.call_id')
WHERE c.event_type = 'tool_call';
