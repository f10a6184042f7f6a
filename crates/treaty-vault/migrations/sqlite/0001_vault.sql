-- Vault component, version 1: the states relevant to this node, their participants, fungible
-- and app-defined columns, the transactions applied, and the stable SQL views.
-- Transaction ids are 32-byte SHA-256 hashes (BLOB); times are microseconds since the Unix
-- epoch; keys are the text form of treaty_core::PublicKey (`ed25519:<hex>`, ...); names are
-- X.500 strings as X500Name displays them; lock ids are UUIDs in their hyphenated form.

-- Every transaction applied to the vault (relevant or not): applying one again is a no-op.
CREATE TABLE treaty_vault_transactions (
    tx_id      BLOB    PRIMARY KEY NOT NULL CHECK (length(tx_id) = 32),
    applied_at INTEGER NOT NULL
);

CREATE TABLE treaty_vault_states (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id          BLOB    NOT NULL CHECK (length(tx_id) = 32),
    output_index   INTEGER NOT NULL CHECK (output_index >= 0),
    type_id        TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    contract       TEXT    NOT NULL,
    notary         TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('unconsumed', 'consumed')),
    recorded_at    INTEGER NOT NULL,
    consumed_at    INTEGER,
    consuming_tx   BLOB    CHECK (consuming_tx IS NULL OR length(consuming_tx) = 32),
    linear_id      TEXT,
    external_id    TEXT,
    lock_id        TEXT,
    state_bytes    BLOB    NOT NULL,
    UNIQUE (tx_id, output_index),
    CHECK ((status = 'consumed') = (consumed_at IS NOT NULL)),
    CHECK ((status = 'consumed') = (consuming_tx IS NOT NULL)),
    CHECK (status = 'unconsumed' OR lock_id IS NULL)
);

CREATE INDEX treaty_vault_states_type ON treaty_vault_states (type_id, status);
CREATE INDEX treaty_vault_states_recorded ON treaty_vault_states (recorded_at, seq);
CREATE INDEX treaty_vault_states_consumed ON treaty_vault_states (consumed_at) WHERE consumed_at IS NOT NULL;
CREATE INDEX treaty_vault_states_linear ON treaty_vault_states (linear_id) WHERE linear_id IS NOT NULL;
CREATE INDEX treaty_vault_states_external ON treaty_vault_states (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX treaty_vault_states_lock ON treaty_vault_states (lock_id) WHERE lock_id IS NOT NULL;

CREATE TABLE treaty_vault_participants (
    state_seq  INTEGER NOT NULL REFERENCES treaty_vault_states (seq),
    position   INTEGER NOT NULL,
    owning_key TEXT    NOT NULL,
    name       TEXT,
    PRIMARY KEY (state_seq, position)
);

CREATE INDEX treaty_vault_participants_key ON treaty_vault_participants (owning_key, state_seq);

CREATE TABLE treaty_vault_fungible (
    state_seq  INTEGER PRIMARY KEY NOT NULL REFERENCES treaty_vault_states (seq),
    owner_key  TEXT    NOT NULL,
    owner_name TEXT,
    issuer     TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity >= 0)
);

CREATE INDEX treaty_vault_fungible_token ON treaty_vault_fungible (token, issuer, quantity);
CREATE INDEX treaty_vault_fungible_owner ON treaty_vault_fungible (owner_key);

CREATE TABLE treaty_vault_columns (
    state_seq  INTEGER NOT NULL REFERENCES treaty_vault_states (seq),
    name       TEXT    NOT NULL,
    int_value  INTEGER,
    text_value TEXT,
    PRIMARY KEY (state_seq, name),
    CHECK ((int_value IS NULL) <> (text_value IS NULL))
);

CREATE INDEX treaty_vault_columns_int ON treaty_vault_columns (name, int_value) WHERE int_value IS NOT NULL;
CREATE INDEX treaty_vault_columns_text ON treaty_vault_columns (name, text_value) WHERE text_value IS NOT NULL;

-- The stable views (docs/vault.md): readable columns, the same names on SQLite and PostgreSQL.
CREATE VIEW vault_states AS
SELECT
    s.seq                                                   AS seq,
    hex(s.tx_id) || '(' || s.output_index || ')'            AS state_ref,
    hex(s.tx_id)                                            AS tx_id,
    s.output_index                                          AS output_index,
    s.type_id                                               AS type_id,
    s.schema_version                                        AS schema_version,
    s.contract                                              AS contract,
    s.notary                                                AS notary,
    s.status                                                AS status,
    s.recorded_at                                           AS recorded_at,
    s.consumed_at                                           AS consumed_at,
    CASE WHEN s.consuming_tx IS NULL THEN NULL ELSE hex(s.consuming_tx) END AS consuming_tx,
    s.linear_id                                             AS linear_id,
    s.external_id                                           AS external_id,
    s.lock_id                                               AS lock_id,
    s.state_bytes                                           AS state_bytes
FROM treaty_vault_states s;

CREATE VIEW vault_fungible_states AS
SELECT v.*, f.owner_key AS owner_key, f.owner_name AS owner_name, f.issuer AS issuer, f.token AS token, f.quantity AS quantity
FROM vault_states v
JOIN treaty_vault_fungible f ON f.state_seq = v.seq;

CREATE VIEW vault_state_participants AS
SELECT hex(s.tx_id) || '(' || s.output_index || ')' AS state_ref, p.position AS position, p.owning_key AS owning_key, p.name AS name
FROM treaty_vault_participants p
JOIN treaty_vault_states s ON s.seq = p.state_seq;

CREATE VIEW vault_state_columns AS
SELECT hex(s.tx_id) || '(' || s.output_index || ')' AS state_ref, c.name AS name, c.int_value AS int_value, c.text_value AS text_value
FROM treaty_vault_columns c
JOIN treaty_vault_states s ON s.seq = c.state_seq;
