-- Vault component, version 4: coin selection reads candidates in the index's order.
-- Selection takes the largest states first and, among states of the same quantity, the oldest
-- (lowest seq) first. The spendable index of version 3 held (token, quantity) only, so for
-- each run of equal quantities the database read the whole run and sorted it before the
-- first row came out: a vault of many coins of one size (the common case) was read in full
-- at every payment. Now the index holds the tie-break too, in selection order, and a
-- selection reads as many rows as it takes (plus those locked by other flows).
DROP INDEX treaty_vault_fungible_spendable;
CREATE INDEX treaty_vault_fungible_spendable ON treaty_vault_fungible (token, quantity DESC, state_seq) WHERE consumed = 0;
