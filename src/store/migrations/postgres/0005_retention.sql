-- Retention: whole old ranges of a chain may be removed, but only by the owner, inside a
-- transaction that sets `mcp_ledger.retention = 'on'` (SET LOCAL), and only at or below a cut
-- recorded here, which must name a later `retention_cut` event of the chain. The writer role
-- still has no DELETE privilege on events, so it can never remove anything.

CREATE TABLE mcp_ledger.retention_cuts (
    chain_id     text        NOT NULL,
    up_to_seq    bigint      NOT NULL CHECK (up_to_seq >= 1),
    cut_event_id text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, up_to_seq)
);

CREATE FUNCTION mcp_ledger.require_retention_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM mcp_ledger.events
        WHERE event_id = NEW.cut_event_id
          AND chain_id = NEW.chain_id
          AND event_type = 'retention_cut'
          AND seq > NEW.up_to_seq
    ) THEN
        RAISE EXCEPTION 'mcp-ledger: a retention cut must name a later retention_cut event of its chain'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER retention_cuts_require_event BEFORE INSERT ON mcp_ledger.retention_cuts
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.require_retention_event();
CREATE TRIGGER retention_cuts_refuse_change BEFORE UPDATE OR DELETE ON mcp_ledger.retention_cuts
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_change();
CREATE TRIGGER retention_cuts_refuse_truncate BEFORE TRUNCATE ON mcp_ledger.retention_cuts
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_ledger.refuse_change();

-- Like refuse_change, except for a DELETE of a row at or below a recorded cut while the
-- transaction has opted in with SET LOCAL mcp_ledger.retention = 'on'.
CREATE FUNCTION mcp_ledger.refuse_change_but_retention() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('mcp_ledger.retention', true) = 'on'
       AND OLD.seq <= COALESCE(
           (SELECT max(up_to_seq) FROM mcp_ledger.retention_cuts WHERE chain_id = OLD.chain_id), 0)
    THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mcp-ledger: % on %.% is refused; the ledger is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER events_refuse_change ON mcp_ledger.events;
CREATE TRIGGER events_refuse_change BEFORE UPDATE OR DELETE ON mcp_ledger.events
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_change_but_retention();

GRANT SELECT ON mcp_ledger.retention_cuts TO mcp_ledger_writer, mcp_ledger_auditor;
