-- Vault component, version 2: scheduled activities (white paper "Event scheduling").
-- A state whose schema names a flow to run at a time, for a party this node holds the key of,
-- has one row here. The node's scheduler starts the flow when the time comes, once: it starts
-- it with the client id `scheduled:<state ref>` (the flow store keeps one flow per client id)
-- and then notes the flow id here. A consumed state's row is ignored.
CREATE TABLE treaty_vault_schedule (
    state_seq  INTEGER PRIMARY KEY NOT NULL REFERENCES treaty_vault_states (seq),
    due_at     INTEGER NOT NULL,
    flow       TEXT    NOT NULL,
    args       TEXT    NOT NULL,
    started    TEXT
);

CREATE INDEX treaty_vault_schedule_due ON treaty_vault_schedule (due_at) WHERE started IS NULL;
