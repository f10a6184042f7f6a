-- Vault component, version 3: coin selection reads unconsumed fungible states only.
-- Selection asks for a token's unconsumed states, largest first. The fungible table keeps
-- every fungible state the node ever held, so through its owner or token index that read
-- walked all of them, consumed ones included: its cost grew with the node's history (most
-- of a paying node's writer thread after a few thousand payments). `consumed` mirrors the
-- state's status and is set in the same transaction; the partial index holds the spendable.
ALTER TABLE treaty_vault_fungible ADD COLUMN consumed SMALLINT NOT NULL DEFAULT 0 CHECK (consumed IN (0, 1));
UPDATE treaty_vault_fungible SET consumed = 1
    WHERE state_seq IN (SELECT seq FROM treaty_vault_states WHERE status = 'consumed');
CREATE INDEX treaty_vault_fungible_spendable ON treaty_vault_fungible (token, quantity) WHERE consumed = 0;
