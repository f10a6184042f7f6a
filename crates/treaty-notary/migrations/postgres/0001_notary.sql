-- The notary's uniqueness log (owned by treaty-notary). Rows are only ever inserted.

-- One row per consumed state: which transaction consumed it, at which of its inputs, and
-- which party asked the notary for that transaction.
CREATE TABLE treaty_notary_states (
    state_tx     BYTEA  NOT NULL,  -- id of the transaction that created the state
    state_index  BIGINT NOT NULL,  -- the state's index among that transaction's outputs
    consuming_tx BYTEA  NOT NULL,  -- id of the transaction that consumed it
    input_index  BIGINT NOT NULL,  -- the state's index among the consuming transaction's inputs
    requester    TEXT   NOT NULL,  -- X.500 name of the party that requested the consuming transaction
    PRIMARY KEY (state_tx, state_index)
);

-- One row per committed transaction without inputs (a transaction with inputs is recorded by
-- its consumed states), so a retry is answered the same after its time window has closed.
CREATE TABLE treaty_notary_transactions (
    tx_id BYTEA PRIMARY KEY
);
