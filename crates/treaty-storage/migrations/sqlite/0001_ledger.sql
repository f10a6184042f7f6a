-- Ledger component, version 1: transactions, attachments, identities.
-- Ids are 32-byte SHA-256 hashes (BLOB); timestamps are milliseconds since the Unix epoch.

CREATE TABLE treaty_transactions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL UNIQUE CHECK (length(id) = 32),
    bytes       BLOB    NOT NULL,
    recorded_at INTEGER NOT NULL
);

CREATE TABLE treaty_attachments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL UNIQUE CHECK (length(id) = 32),
    bytes       BLOB    NOT NULL,
    uploaded_at INTEGER NOT NULL
);

CREATE TABLE treaty_identities (
    name              TEXT    PRIMARY KEY NOT NULL,
    owning_key        BLOB    NOT NULL,
    certificate_chain BLOB    NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE INDEX treaty_identities_by_key ON treaty_identities (owning_key);
