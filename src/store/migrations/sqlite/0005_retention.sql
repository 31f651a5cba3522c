-- Retention: whole old ranges of a chain may be removed, but only after a `retention_cut` event
-- recording the cut has been appended to that chain (and signed by a checkpoint). Each cut is
-- a row here; the delete trigger on events allows exactly the rows at or below a recorded cut.

CREATE TABLE retention_cuts (
    chain_id     TEXT    NOT NULL,
    up_to_seq    INTEGER NOT NULL CHECK (up_to_seq >= 1),
    cut_event_id TEXT    NOT NULL UNIQUE,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (chain_id, up_to_seq)
);

-- A cut must name a later `retention_cut` event of its chain: the store inserts the row only
-- when that event exists (a trigger here could not reference `events` without getting in the
-- way of schema changes to it).

CREATE TRIGGER retention_cuts_refuse_update BEFORE UPDATE ON retention_cuts
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: UPDATE on retention_cuts is refused; the ledger is append-only');
END;

CREATE TRIGGER retention_cuts_refuse_delete BEFORE DELETE ON retention_cuts
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: DELETE on retention_cuts is refused; the ledger is append-only');
END;

DROP TRIGGER events_refuse_delete;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
WHEN OLD.seq > COALESCE(
    (SELECT max(up_to_seq) FROM retention_cuts WHERE chain_id = OLD.chain_id), 0)
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: DELETE on events is refused; the ledger is append-only');
END;
