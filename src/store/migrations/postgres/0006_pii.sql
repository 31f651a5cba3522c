-- PII scanning, storage modes and erasure.
--
-- * provenance gains where each body is kept (`input_body_ref`, `output_body_ref`: the reference
--   of the stored copy, redacted or not; NULL when none is kept) and the PII patterns found on
--   each side; a call whose result is held for an operator shows as `held`.
-- * pii_findings: one row per finding of every `pii_detected` event (pattern and JSON pointer,
--   never the value).
-- * A payload body may be deleted only by an erasure (an `erasure` event naming its reference is
--   already in the ledger) or by retention (SET LOCAL mcp_ledger.retention = 'on', owner only).
--   The writer role still has no DELETE privilege at all.

CREATE OR REPLACE VIEW mcp_ledger.provenance AS
SELECT
    c.data ->> 'call_id'                        AS call_id,
    c."timestamp"::timestamptz                  AS "timestamp",
    c.agent                                     AS agent,
    c.data ->> 'tool'                           AS action,
    c.data ->> 'target'                         AS target,
    COALESCE(r.data ->> 'authorized_by', c.data ->> 'authorized_by') AS authorized_by,
    (c.data ->> 'cost_credits')::numeric        AS cost_credits,
    c.data ->> 'input_ref'                      AS input_ref,
    r.data ->> 'output_ref'                     AS output_ref,
    COALESCE(r.data ->> 'outcome',
             CASE WHEN c.data #>> '{decision,effect}' = 'hold' THEN 'held'
                  WHEN EXISTS (SELECT 1 FROM mcp_ledger.events h
                               WHERE h.event_type = 'approval_requested'
                                 AND h.data ->> 'call_id' = c.data ->> 'call_id')
                  THEN 'held'
                  ELSE 'pending' END)
                                                AS outcome,
    c.server                                    AS server,
    c.session_id                                AS session_id,
    r.data ->> 'error'                          AS error,
    CASE c.data ->> 'input_stored'
        WHEN 'none' THEN NULL
        WHEN 'redacted' THEN c.data ->> 'input_stored_ref'
        ELSE c.data ->> 'input_ref' END         AS input_body_ref,
    CASE r.data ->> 'output_stored'
        WHEN 'none' THEN NULL
        WHEN 'redacted' THEN r.data ->> 'output_stored_ref'
        ELSE r.data ->> 'output_ref' END        AS output_body_ref,
    c.data ->> 'input_pii'                      AS input_pii,
    r.data ->> 'output_pii'                     AS output_pii
FROM mcp_ledger.events c
LEFT JOIN mcp_ledger.events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND r.data ->> 'call_id' = c.data ->> 'call_id'
WHERE c.event_type = 'tool_call';

CREATE VIEW mcp_ledger.pii_findings AS
SELECT
    e.data ->> 'call_id'            AS call_id,
    e."timestamp"::timestamptz      AS "timestamp",
    e.agent                         AS agent,
    e.server                        AS server,
    e.session_id                    AS session_id,
    e.data ->> 'method'             AS method,
    e.data ->> 'tool'               AS tool,
    e.data ->> 'direction'          AS direction,
    f.finding ->> 'pattern'         AS pattern,
    f.finding ->> 'pointer'         AS pointer,
    e.event_id                      AS event_id
FROM mcp_ledger.events e
CROSS JOIN LATERAL jsonb_array_elements(e.data -> 'findings') AS f(finding)
WHERE e.event_type = 'pii_detected';

GRANT SELECT ON mcp_ledger.pii_findings TO mcp_ledger_writer, mcp_ledger_auditor;

-- Finds the erasure event of a reference without reading the whole chain.
CREATE INDEX events_erasure_reference ON mcp_ledger.events ((data ->> 'reference'))
    WHERE event_type = 'erasure';

CREATE FUNCTION mcp_ledger.refuse_payload_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('mcp_ledger.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    IF EXISTS (SELECT 1 FROM mcp_ledger.events
               WHERE event_type = 'erasure' AND data ->> 'reference' = OLD.reference) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mcp-ledger: DELETE of payload % is refused; record an erasure first (mcp-ledger erase)',
        OLD.reference
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER payloads_refuse_delete BEFORE DELETE ON mcp_ledger.payloads
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_payload_delete();
CREATE TRIGGER payloads_refuse_truncate BEFORE TRUNCATE ON mcp_ledger.payloads
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_ledger.refuse_change();
