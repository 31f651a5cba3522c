-- The hold queue reads approval events by type (`approval_requested`, `approval_decision`), and a
-- proxy waiting for an operator's decision is woken through LISTEN mcp_ledger_approvals.

CREATE INDEX events_event_type ON mcp_ledger.events (event_type);

-- Runs as the inserting role (pg_notify needs no privilege). The notification is delivered when
-- the inserting transaction commits, and never if it rolls back. Payload: the call id.
CREATE FUNCTION mcp_ledger.notify_approval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mcp_ledger_approvals', COALESCE(NEW.data ->> 'call_id', ''));
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify_approval AFTER INSERT ON mcp_ledger.events
    FOR EACH ROW WHEN (NEW.event_type IN ('approval_requested', 'approval_decision'))
    EXECUTE FUNCTION mcp_ledger.notify_approval();
