-- Signed checkpoints of each chain's Merkle tree (C2SP tlog-checkpoint notes), append-only like
-- events. `tree_state` is the compact tree (O(log n) hashes) at `tree_size`, from which the
-- checkpointer resumes without rereading the log. At most one checkpoint per chain and size.
CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id   TEXT    NOT NULL,
    tree_size  INTEGER NOT NULL CHECK (tree_size >= 0),
    root_hash  TEXT    NOT NULL,
    note       TEXT    NOT NULL,
    tree_state TEXT    NOT NULL CHECK (json_valid(tree_state)),
    created_at TEXT    NOT NULL,
    UNIQUE (chain_id, tree_size)
);

CREATE TRIGGER checkpoints_refuse_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: UPDATE on checkpoints is refused; the ledger is append-only');
END;

CREATE TRIGGER checkpoints_refuse_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'mcp-ledger: DELETE on checkpoints is refused; the ledger is append-only');
END;
