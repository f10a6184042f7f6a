-- Flows and their journals (owned by treaty-flows).
CREATE TABLE treaty_flows (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    flow_id           BLOB    NOT NULL UNIQUE,
    name              TEXT    NOT NULL,
    version           INTEGER NOT NULL,
    args              BLOB    NOT NULL,
    status            TEXT    NOT NULL,
    result            BLOB,
    error             TEXT,
    client_id         TEXT    UNIQUE,
    initiator_party   TEXT,
    initiator_session INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX treaty_flows_status ON treaty_flows (status);

CREATE TABLE treaty_flow_journal (
    flow_id BLOB    NOT NULL,
    idx     INTEGER NOT NULL,
    entry   BLOB    NOT NULL,
    PRIMARY KEY (flow_id, idx)
);
