-- Ledger component, version 1: transactions, attachments, identities.
-- Ids are 32-byte SHA-256 hashes (BYTEA); timestamps are milliseconds since the Unix epoch.

CREATE TABLE treaty_transactions (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          BYTEA  NOT NULL UNIQUE CHECK (length(id) = 32),
    bytes       BYTEA  NOT NULL,
    recorded_at BIGINT NOT NULL
);

CREATE TABLE treaty_attachments (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          BYTEA  NOT NULL UNIQUE CHECK (length(id) = 32),
    bytes       BYTEA  NOT NULL,
    uploaded_at BIGINT NOT NULL
);

CREATE TABLE treaty_identities (
    name              TEXT   PRIMARY KEY NOT NULL,
    owning_key        BYTEA  NOT NULL,
    certificate_chain BYTEA  NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE INDEX treaty_identities_by_key ON treaty_identities (owning_key);
