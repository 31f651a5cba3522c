-- The ledger: append-only events, content-addressed payloads, the auditors' provenance view,
-- and the roles that keep the application from changing history.

CREATE SCHEMA IF NOT EXISTS mcp_ledger;

CREATE TABLE mcp_ledger.events (
    chain_id    text   NOT NULL,
    seq         bigint NOT NULL CHECK (seq >= 1),
    event_id    text   NOT NULL UNIQUE,
    event_type  text   NOT NULL,
    "timestamp" text   NOT NULL,
    session_id  text,
    agent       text,
    server      text,
    data        jsonb  NOT NULL,
    prev_hash   text   NOT NULL,
    hash        text   NOT NULL,
    PRIMARY KEY (chain_id, seq)
);

CREATE INDEX events_call_id ON mcp_ledger.events ((data ->> 'call_id')) WHERE data ? 'call_id';
CREATE INDEX events_session_id ON mcp_ledger.events (session_id);

-- Bodies are referenced by events as sha256:<hex of their canonical JSON>; `body` is that JSON
-- (text, not jsonb, so it stays byte-for-byte what was hashed).
CREATE TABLE mcp_ledger.payloads (
    reference  text        PRIMARY KEY,
    body       text        NOT NULL,
    size       bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION mcp_ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'mcp-ledger: % on %.% is refused; the ledger is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_refuse_change BEFORE UPDATE OR DELETE ON mcp_ledger.events
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_change();
CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON mcp_ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_ledger.refuse_change();
CREATE TRIGGER payloads_refuse_update BEFORE UPDATE ON mcp_ledger.payloads
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_change();

CREATE VIEW mcp_ledger.provenance AS
SELECT
    c.data ->> 'call_id'                        AS call_id,
    c."timestamp"::timestamptz                  AS "timestamp",
    c.agent                                     AS agent,
    c.data ->> 'tool'                           AS action,
    c.data ->> 'target'                         AS target,
    c.data ->> 'authorized_by'                  AS authorized_by,
    (c.data ->> 'cost_credits')::numeric        AS cost_credits,
    c.data ->> 'input_ref'                      AS input_ref,
    r.data ->> 'output_ref'                     AS output_ref,
    COALESCE(r.data ->> 'outcome', 'pending')   AS outcome,
    c.server                                    AS server,
    c.session_id                                AS session_id,
    r.data ->> 'error'                          AS error
FROM mcp_ledger.events c
LEFT JOIN mcp_ledger.events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND r.data ->> 'call_id' = c.data ->> 'call_id'
WHERE c.event_type = 'tool_call';

-- Roles are cluster-wide and may already exist (another database, or a concurrent migration).
DO $$
BEGIN
    CREATE ROLE mcp_ledger_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE mcp_ledger_auditor NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The proxy needs nothing but INSERT and SELECT: it never changes a row it wrote.
GRANT USAGE ON SCHEMA mcp_ledger TO mcp_ledger_writer, mcp_ledger_auditor;
GRANT SELECT, INSERT ON mcp_ledger.events, mcp_ledger.payloads TO mcp_ledger_writer;
GRANT SELECT ON mcp_ledger.provenance TO mcp_ledger_writer;
GRANT SELECT ON mcp_ledger.events, mcp_ledger.payloads, mcp_ledger.provenance TO mcp_ledger_auditor;
-- Lets a writer-role process confirm the schema is current without trying to migrate it.
GRANT SELECT ON _sqlx_migrations TO mcp_ledger_writer, mcp_ledger_auditor;
