-- A held call is authorized by the operator who approved it: the proxy records that on the call's
-- result, which the provenance view now prefers to the policy's verdict on the call itself.
-- CREATE OR REPLACE keeps the view's grants to the writer and auditor roles.
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
             CASE WHEN c.data #>> '{decision,effect}' = 'hold' THEN 'held' ELSE 'pending' END)
                                                AS outcome,
    c.server                                    AS server,
    c.session_id                                AS session_id,
    r.data ->> 'error'                          AS error
FROM mcp_ledger.events c
LEFT JOIN mcp_ledger.events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND r.data ->> 'call_id' = c.data ->> 'call_id'
WHERE c.event_type = 'tool_call';

-- Credits spent per agent and UTC day, counting the calls that ran or are still held.
CREATE VIEW mcp_ledger.agent_costs AS
SELECT
    agent,
    ("timestamp" AT TIME ZONE 'UTC')::date AS day,
    COUNT(*)                               AS calls,
    SUM(cost_credits)                      AS cost_credits
FROM mcp_ledger.provenance
WHERE outcome NOT IN ('denied', 'expired', 'cancelled')
GROUP BY agent, ("timestamp" AT TIME ZONE 'UTC')::date;

GRANT SELECT ON mcp_ledger.agent_costs TO mcp_ledger_writer, mcp_ledger_auditor;
