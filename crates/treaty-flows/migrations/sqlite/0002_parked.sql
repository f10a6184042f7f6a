-- Parked flows (owned by treaty-flows): evicted from memory while they wait for a message or a
-- time, found again by one of their sessions or by their wake time. A parking holds while the
-- flow's journal has exactly journal_len entries; a longer journal makes it stale.
CREATE TABLE treaty_flow_parked (
    flow_id     BLOB    PRIMARY KEY,
    journal_len INTEGER NOT NULL,
    wake_at     INTEGER
);

-- The sessions of parked flows: (counterparty, session id, whether the flow opened it).
CREATE TABLE treaty_flow_parked_sessions (
    party     TEXT    NOT NULL,
    session   INTEGER NOT NULL,
    initiator INTEGER NOT NULL,
    flow_id   BLOB    NOT NULL,
    PRIMARY KEY (party, session, initiator)
);
CREATE INDEX treaty_flow_parked_sessions_flow ON treaty_flow_parked_sessions (flow_id);
