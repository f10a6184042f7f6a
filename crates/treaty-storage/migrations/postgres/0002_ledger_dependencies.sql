-- Ledger component, version 2: the dependency graph of recorded transactions.
-- One row per (transaction, transaction it depends on through an input or a reference), so a
-- back-chain is walked with one recursive query instead of one query per transaction.
-- Transactions recorded before this version have no rows; walkers fall back to decoding them.

CREATE TABLE treaty_transaction_dependencies (
    tx  BYTEA NOT NULL CHECK (length(tx) = 32),
    dep BYTEA NOT NULL CHECK (length(dep) = 32),
    PRIMARY KEY (tx, dep)
);
