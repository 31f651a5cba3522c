-- A held call is authorized by the operator who approved it: the proxy records that on the call's
-- result, which the provenance view now prefers to the policy's verdict on the call itself.
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
             CASE WHEN json_extract(c.data, '$.decision.effect') = 'hold' THEN 'held' ELSE 'pending' END)
                                            AS outcome,
    c.server                                AS server,
    c.session_id                            AS session_id,
    json_extract(r.data, '$.error')         AS error
FROM events c
LEFT JOIN events r
    ON r.event_type = 'tool_result'
   AND r.chain_id = c.chain_id
   AND json_extract(r.data, '$.call_id') = json_extract(c.data, '$.call_id')
WHERE c.event_type = 'tool_call';

-- Credits spent per agent and UTC day, counting the calls that ran or are still held.
CREATE VIEW agent_costs AS
SELECT
    agent,
    substr(timestamp, 1, 10)        AS day,
    COUNT(*)                        AS calls,
    SUM(CAST(cost_credits AS REAL)) AS cost_credits
FROM provenance
WHERE outcome NOT IN ('denied', 'expired', 'cancelled')
GROUP BY agent, substr(timestamp, 1, 10);
