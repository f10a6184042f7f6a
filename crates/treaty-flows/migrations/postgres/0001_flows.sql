-- Flows and their journals (owned by treaty-flows).
CREATE TABLE treaty_flows (
    seq               BIGSERIAL PRIMARY KEY,
    flow_id           BYTEA   NOT NULL UNIQUE,
    name              TEXT    NOT NULL,
    version           BIGINT  NOT NULL,
    args              BYTEA   NOT NULL,
    status            TEXT    NOT NULL,
    result            BYTEA,
    error             TEXT,
    client_id         TEXT    UNIQUE,
    initiator_party   TEXT,
    initiator_session BIGINT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX treaty_flows_status ON treaty_flows (status);

CREATE TABLE treaty_flow_journal (
    flow_id BYTEA  NOT NULL,
    idx     BIGINT NOT NULL,
    entry   BYTEA  NOT NULL,
    PRIMARY KEY (flow_id, idx)
);
