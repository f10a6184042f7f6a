//! A state as the vault holds it ([`VaultState`]), and what the vault derives from it when it
//! records it (participants, fungible shape, app columns): the rows written beside it and the
//! facts the update feed's filter reads.

use treaty_core::{AbstractParty, PublicKey, SecureHash, StateRef, Timestamp, TransactionState, UniqueIdentifier, encoding};

use crate::error::VaultError;
use crate::locks::LockId;
use crate::schema::{ColumnValue, Registry, StateColumns};

/// Whether a state is still unspent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not consumed by any transaction the vault has applied.
    Unconsumed,
    /// Consumed by a transaction the vault has applied.
    Consumed,
}

impl Status {
    /// As stored: `"unconsumed"` or `"consumed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unconsumed => "unconsumed",
            Status::Consumed => "consumed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Status, VaultError> {
        match s {
            "unconsumed" => Ok(Status::Unconsumed),
            "consumed" => Ok(Status::Consumed),
            other => Err(VaultError::Corrupt { what: "treaty_vault_states.status".into(), reason: format!("{other:?}") }),
        }
    }
}

/// A state the vault holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultState {
    /// Where it was created.
    pub state_ref: StateRef,
    /// The state, decoded from `state_bytes`.
    pub state: TransactionState,
    /// Its canonical bytes, exactly as in the transaction that created it.
    pub state_bytes: Vec<u8>,
    /// Unconsumed or consumed.
    pub status: Status,
    /// When the vault recorded it (the time the caller of `apply` passed).
    pub recorded_at: Timestamp,
    /// When the vault recorded the transaction consuming it.
    pub consumed_at: Option<Timestamp>,
    /// The transaction consuming it.
    pub consuming_tx: Option<SecureHash>,
    /// Its linear id, when a registered schema supplied one.
    pub linear_id: Option<UniqueIdentifier>,
    /// The soft lock holding it.
    pub lock_id: Option<LockId>,
}

/// The columns of one row of `treaty_vault_states` that a [`VaultState`] is read from, in the
/// order every query selects them (prefix `s.`).
pub(crate) const STATE_COLUMNS: &str = "s.seq, s.tx_id, s.output_index, s.status, s.recorded_at, s.consumed_at, s.consuming_tx, s.state_bytes, s.linear_id, s.external_id, s.lock_id";

/// How many columns [`STATE_COLUMNS`] has.
pub(crate) const STATE_COLUMN_COUNT: usize = 11;

/// A row of [`STATE_COLUMNS`], backend-neutral.
pub(crate) struct StateRow {
    pub seq: i64,
    pub tx_id: Vec<u8>,
    pub output_index: i64,
    pub status: String,
    pub recorded_at: i64,
    pub consumed_at: Option<i64>,
    pub consuming_tx: Option<Vec<u8>>,
    pub state_bytes: Vec<u8>,
    pub linear_id: Option<String>,
    pub external_id: Option<String>,
    pub lock_id: Option<String>,
}

/// Reads a [`StateRow`] from the first columns of a sqlx row (either backend).
macro_rules! state_row {
    ($row:expr, $what:expr) => {{
        use sqlx::Row as _;
        let r = &$row;
        (|| -> Result<$crate::record::StateRow, sqlx::Error> {
            Ok($crate::record::StateRow {
                seq: r.try_get(0)?,
                tx_id: r.try_get(1)?,
                output_index: r.try_get(2)?,
                status: r.try_get(3)?,
                recorded_at: r.try_get(4)?,
                consumed_at: r.try_get(5)?,
                consuming_tx: r.try_get(6)?,
                state_bytes: r.try_get(7)?,
                linear_id: r.try_get(8)?,
                external_id: r.try_get(9)?,
                lock_id: r.try_get(10)?,
            })
        })()
        .map_err(|e| $crate::error::VaultError::query($what, e))
    }};
}
pub(crate) use state_row;

impl StateRow {
    /// The [`VaultState`] it stores.
    pub fn decode(self) -> Result<VaultState, VaultError> {
        let state_ref = crate::sql::state_ref_from(&self.tx_id, self.output_index)?;
        let corrupt = |what: &str, reason: String| VaultError::Corrupt { what: format!("{what} of state {state_ref}"), reason };
        let state: TransactionState = encoding::decode(&self.state_bytes).map_err(|e| corrupt("state_bytes", e.to_string()))?;
        let linear_id = match self.linear_id {
            None => None,
            Some(id) => Some(UniqueIdentifier {
                external_id: self.external_id,
                id: id.parse().map_err(|e| corrupt("linear_id", format!("{id:?}: {e}")))?,
            }),
        };
        let lock_id = match self.lock_id {
            None => None,
            Some(id) => Some(LockId(id.parse().map_err(|e| corrupt("lock_id", format!("{id:?}: {e}")))?)),
        };
        Ok(VaultState {
            state_ref,
            state,
            state_bytes: self.state_bytes,
            status: Status::parse(&self.status)?,
            recorded_at: Timestamp(self.recorded_at),
            consumed_at: self.consumed_at.map(Timestamp),
            consuming_tx: self.consuming_tx.as_deref().map(|b| crate::sql::hash_from("treaty_vault_states.consuming_tx", b)).transpose()?,
            linear_id,
            lock_id,
        })
    }
}

/// The text form of a key as stored (`ed25519:<hex>`, ...).
pub(crate) fn key_text(key: &PublicKey) -> String {
    key.to_string()
}

/// The fungible columns as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FungibleRow {
    pub owner_key: String,
    pub owner_name: Option<String>,
    pub issuer: String,
    pub token: String,
    pub quantity: i64,
}

/// What the vault derives from a state when it records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Derived {
    /// Each participant's key (as text) and name, in order.
    pub participants: Vec<(String, Option<String>)>,
    /// The fungible columns.
    pub fungible: Option<FungibleRow>,
    /// App column values.
    pub values: Vec<(String, ColumnValue)>,
    /// The linear id.
    pub linear: Option<UniqueIdentifier>,
    /// The activity the state asks for (kept only if the node is the party to run it).
    pub scheduled: Option<crate::schema::ScheduledActivity>,
}

impl Derived {
    /// Derives the rows of a state through the registered schemas.
    pub fn of(registry: &Registry, state_ref: &StateRef, state: &TransactionState) -> Result<Derived, VaultError> {
        let StateColumns { linear, fungible, values, scheduled } = registry.extract(state_ref, state)?;
        let participants = state.data.participants.iter().map(|p| (key_text(p.owning_key()), p.name().map(|n| n.to_string()))).collect();
        // An encumbered state cannot be spent alone (its encumbrance must be consumed with it):
        // it is not money coin selection may take, nor part of the spendable balance.
        let fungible = fungible
            .filter(|_| state.encumbrance.is_none())
            .map(|f| {
                Ok::<_, VaultError>(FungibleRow {
                    owner_key: key_text(f.owner.owning_key()),
                    owner_name: f.owner.name().map(|n| n.to_string()),
                    issuer: f.issuer,
                    token: f.token,
                    // Checked by the registry.
                    quantity: i64::try_from(f.quantity).map_err(|_| VaultError::Extraction {
                        state_ref: *state_ref,
                        type_id: state.data.type_id.clone(),
                        reason: format!("quantity {} is too large", f.quantity),
                    })?,
                })
            })
            .transpose()?;
        Ok(Derived { participants, fungible, values, linear, scheduled })
    }
}

/// Whether `party` is one of ours: its owning key, or for a composite key any of its leaves,
/// satisfies `ours`. The vault's relevancy rule; a node's ledger asks it too (which outputs of
/// a received transaction it will hold), so the two cannot drift apart.
pub fn is_ours(party: &AbstractParty, ours: &dyn Fn(&PublicKey) -> bool) -> bool {
    let key = party.owning_key();
    ours(key) || (matches!(key, PublicKey::Composite(_)) && key.leaf_keys().into_iter().any(ours))
}
