-- Signed checkpoints of each chain's Merkle tree (C2SP tlog-checkpoint notes), append-only like
-- events. `tree_state` is the compact tree (O(log n) hashes) at `tree_size`, from which the
-- checkpointer resumes without rereading the log. At most one checkpoint per chain and size.
CREATE TABLE mcp_ledger.checkpoints (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id   text   NOT NULL,
    tree_size  bigint NOT NULL CHECK (tree_size >= 0),
    root_hash  text   NOT NULL,
    note       text   NOT NULL,
    tree_state jsonb  NOT NULL,
    created_at text   NOT NULL,
    UNIQUE (chain_id, tree_size)
);

CREATE TRIGGER checkpoints_refuse_change BEFORE UPDATE OR DELETE ON mcp_ledger.checkpoints
    FOR EACH ROW EXECUTE FUNCTION mcp_ledger.refuse_change();
CREATE TRIGGER checkpoints_refuse_truncate BEFORE TRUNCATE ON mcp_ledger.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_ledger.refuse_change();

GRANT SELECT, INSERT ON mcp_ledger.checkpoints TO mcp_ledger_writer;
GRANT SELECT ON mcp_ledger.checkpoints TO mcp_ledger_auditor;
