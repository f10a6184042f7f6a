-- Ledger component, version 3: confidential identities (fresh keys linked to well-known names).
-- One row per confidential key this node knows the owner of: its own (key_index set: the
-- derivation index under the node's seed) and its counterparties' (key_index NULL), each with
-- the certificate signed by the owner's well-known identity key.

CREATE TABLE treaty_confidential_identities (
    public_key  BLOB    PRIMARY KEY NOT NULL,
    owner       TEXT    NOT NULL,
    certificate BLOB    NOT NULL,
    key_index   INTEGER UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE INDEX treaty_confidential_identities_by_owner ON treaty_confidential_identities (owner);
