-- PII scanning, storage modes and erasure (see the Postgres migration of the same name).
-- provenance gains where each body is kept and the PII patterns found on each side, and shows a
-- call whose result is held for an operator as `held`; pii_findings has one row per finding.
-- SQLite has no roles: whoever can write the file can delete payload bodies, so erasure is
-- enforced by the tool, not by a trigger here.

DROP VIEW provenance;

CREATE VIEW provenance AS
SELECT
    json_extract(c.data, '$.call_id')       AS call_id,
    c.timestamp                             AS timestamp,
    c.agent                                 AS agent,
    json_extract(c.data, '$.tool')          AS action,
    json_extract(c.data, '$.target')        AS target,
    COALESCE(json_extract(r.data, '$.authorized_by'), json_extract(c.data, '$.authorized_by'))
                                            AS authorized_by,
    json_extract(c.data, '$.cost_credits')  AS cost_credits,
    json_extract(c.data, '$.input_ref')     AS input_ref,
    json_extract(r.data, '$.output_ref')    AS output_ref,
    COALESCE(json_extract(r.data, '$.outcome'),
             CASE WHEN json_extract(c.data, '$.decision.effect') = 'hold' THEN 'held'
                  WHEN EXISTS (SELECT 1 FROM events h
                               WHERE h.event_type = 'approval_requested'
                                 AND json_extract(h.data, '$.call_id') = json_extract(c.data, '$.call_id'))
                  THEN 'held'
                  ELSE 'pending' END)
                                            AS outcome,
    c.server                                AS server,
    c.session_id                            AS session_id,
    json_extract(r.data, '$.error')         AS error,
    CASE json_extract(c.data, '$.input_stored')
        WHEN 'none' THEN NULL
        WHEN 'redacted' THEN json_extract(c.data, '$.input_stored_ref')
        ELSE json_extract(c.data, '$.input_ref') END   AS input_body_ref,
    CASE json_extract(r.data, '$.output_stored')
        WHEN 'none' THEN NULL
        WHEN 'redacted' THEN json_extract(r.data, '$.output_stored_ref')
        ELSE json_extract(r.data, '$.output_ref') END  AS output_body_ref,
    json_extract(c.data, '$.input_pii')     AS input_pii,
    json_extract(r.data, '$.output_pii')    AS output_pii
FROM events c
LEFT JOIN events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND json_extract(r.data, '$.call_id') = json_extract(c.data, '$.call_id')
WHERE c.event_type = 'tool_call';

CREATE VIEW pii_findings AS
SELECT
    json_extract(e.data, '$.call_id')       AS call_id,
    e.timestamp                             AS timestamp,
    e.agent                                 AS agent,
    e.server                                AS server,
    e.session_id                            AS session_id,
    json_extract(e.data, '$.method')        AS method,
    json_extract(e.data, '$.tool')          AS tool,
    json_extract(e.data, '$.direction')     AS direction,
    json_extract(f.value, '$.pattern')      AS pattern,
    json_extract(f.value, '$.pointer')      AS pointer,
    e.event_id                              AS event_id
FROM events e, json_each(e.data, '$.findings') AS f
WHERE e.event_type = 'pii_detected';

CREATE INDEX events_erasure_reference ON events (json_extract(data, '$.reference'))
    WHERE event_type = 'erasure';
