//! What the vault stores about a state beyond its envelope: app-defined columns, the fungible
//! shape (owner, issuer, token, quantity) and the linear id.
//!
//! The vault routes and stores states without the app's types. An application that wants its
//! states queryable by their content registers a [`StateSchema`] for its type id: from the
//! state's [`StateData`] it extracts [`StateColumns`] — named typed columns (text or integer),
//! optionally the [`FungibleColumns`] that coin selection and balances use, and optionally the
//! linear id, and optionally a [`ScheduledActivity`] — a flow the node runs when a time comes
//! (white paper "Event scheduling"). [`TypedSchema`] builds one from closures over the app's own
//! state type, decoding the state once; [`fungible`] is the shortcut for a fungible token.
//!
//! Columns are extracted when a state is recorded; registering a schema later does not fill
//! them in for states already in the vault.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use treaty_core::{
    AbstractParty, Amount, ContractState, Issued, StateData, StateRef, Timestamp, TokenType, TransactionState, UniqueIdentifier,
};

use crate::error::VaultError;

/// The type of an app-defined column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text, compared and sorted bytewise.
    Text,
    /// A signed 64-bit integer.
    Integer,
}

impl ColumnType {
    /// `"text"` or `"integer"`.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "integer",
        }
    }
}

/// A value of an app-defined column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ColumnValue {
    /// Text.
    Text(String),
    /// An integer.
    Integer(i64),
}

impl ColumnValue {
    /// The value's type.
    pub fn ty(&self) -> ColumnType {
        match self {
            ColumnValue::Text(_) => ColumnType::Text,
            ColumnValue::Integer(_) => ColumnType::Integer,
        }
    }
}

impl fmt::Display for ColumnValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnValue::Text(s) => f.write_str(s),
            ColumnValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for ColumnValue {
    fn from(s: &str) -> Self {
        ColumnValue::Text(s.to_string())
    }
}

impl From<String> for ColumnValue {
    fn from(s: String) -> Self {
        ColumnValue::Text(s)
    }
}

impl From<i64> for ColumnValue {
    fn from(i: i64) -> Self {
        ColumnValue::Integer(i)
    }
}

/// An app-defined column a schema declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    /// Its name: lower-case ASCII letters, digits and `_`, starting with a letter, at most 63
    /// characters, and not one of the built-in sort names.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
}

/// The fungible shape of a state: who owns how much of which token, issued by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FungibleColumns {
    /// The owner (its key is what coin selection filters on).
    pub owner: AbstractParty,
    /// The issuer, as text (for cash, the issuing party's X.500 name). Amounts of different
    /// issuers are never summed together.
    pub issuer: String,
    /// The token, as text (for cash, the currency code: `USD`).
    pub token: String,
    /// How much, in the token's smallest unit. At most `i64::MAX` (recording a larger one
    /// fails with [`VaultError::Extraction`]).
    pub quantity: u64,
}

impl FungibleColumns {
    /// The columns of `amount` owned by `owner`: the token's display name (a currency's code)
    /// and the issuing party as text (the issuer's reference is not part of the issuer).
    pub fn issued<T: TokenType>(owner: &AbstractParty, amount: &Amount<Issued<T>>) -> FungibleColumns {
        FungibleColumns {
            owner: owner.clone(),
            issuer: amount.token.issuer.party.to_string(),
            token: amount.token.product.display_name(),
            quantity: amount.quantity,
        }
    }
}

impl From<(AbstractParty, String, String, u64)> for FungibleColumns {
    /// `(owner, issuer, token, quantity)`.
    fn from((owner, issuer, token, quantity): (AbstractParty, String, String, u64)) -> Self {
        FungibleColumns { owner, issuer, token, quantity }
    }
}

/// A flow a state asks to have run at a time (white paper "Event scheduling").
///
/// The vault keeps it when the state is recorded, if the node holds the key of `by`; the node's
/// scheduler starts `flow` with `args` once `at` has come, exactly once (even across restarts),
/// unless the state has been consumed by then. A state that wants another activity after this
/// one is replaced by a new state naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledActivity {
    /// When to run it (the node's clock).
    pub at: Timestamp,
    /// The registered name of the flow to start.
    pub flow: String,
    /// Its arguments: a JSON document, as text.
    pub args: String,
    /// Which participant runs it: only a node holding this party's key schedules it.
    pub by: AbstractParty,
}

/// What a schema extracts from one state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateColumns {
    /// The linear id, for a linear state (stored as `linear_id` and `external_id`).
    pub linear: Option<UniqueIdentifier>,
    /// The fungible shape, for a fungible state.
    pub fungible: Option<FungibleColumns>,
    /// App-defined column values, each named by a column the schema declares (a column left
    /// out is NULL for this state).
    pub values: Vec<(String, ColumnValue)>,
    /// The flow this state asks the node to run at a time.
    pub scheduled: Option<ScheduledActivity>,
}

/// How the vault extracts columns from the states of one type id.
pub trait StateSchema: Send + Sync + 'static {
    /// The type id ([`ContractState::TYPE_ID`]) of the states this schema reads.
    fn type_id(&self) -> &str;
    /// The contract its states must be governed by ([`ContractState::CONTRACT`]): a state of
    /// the type under another contract is not what the type means (any contract can make one,
    /// under rules of its own), so the vault stores it without these columns — no fungible
    /// shape, no balance, nothing coin selection could take.
    fn contract(&self) -> &str;
    /// The app-defined columns it may fill.
    fn columns(&self) -> Vec<ColumnDef>;
    /// The columns of one state, or why they cannot be extracted.
    fn extract(&self, data: &StateData) -> Result<StateColumns, String>;
}

type Extractor<S, T> = Box<dyn Fn(&S) -> T + Send + Sync>;

/// A [`StateSchema`] over the app's own state type `S`, built from closures: the state is
/// decoded once ([`StateData::unpack`]) and each closure reads from it.
pub struct TypedSchema<S> {
    linear: Option<Extractor<S, UniqueIdentifier>>,
    fungible: Option<Extractor<S, FungibleColumns>>,
    columns: Vec<(ColumnDef, Extractor<S, Option<ColumnValue>>)>,
    scheduled: Option<Extractor<S, Option<ScheduledActivity>>>,
    _state: PhantomData<fn() -> S>,
}

impl<S: ContractState> Default for TypedSchema<S> {
    fn default() -> Self {
        TypedSchema { linear: None, fungible: None, columns: Vec::new(), scheduled: None, _state: PhantomData }
    }
}

impl<S: ContractState> fmt::Debug for TypedSchema<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSchema")
            .field("type_id", &S::TYPE_ID)
            .field("linear", &self.linear.is_some())
            .field("fungible", &self.fungible.is_some())
            .field("columns", &self.columns.iter().map(|(d, _)| d).collect::<Vec<_>>())
            .field("scheduled", &self.scheduled.is_some())
            .finish()
    }
}

impl<S: ContractState> TypedSchema<S> {
    /// A schema extracting nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state's linear id.
    pub fn linear(mut self, f: impl Fn(&S) -> UniqueIdentifier + Send + Sync + 'static) -> Self {
        self.linear = Some(Box::new(f));
        self
    }

    /// The state's fungible shape (anything convertible, e.g. `(owner, issuer, token, quantity)`).
    pub fn fungible<R: Into<FungibleColumns>>(mut self, f: impl Fn(&S) -> R + Send + Sync + 'static) -> Self {
        self.fungible = Some(Box::new(move |s| f(s).into()));
        self
    }

    /// A text column (`None`: NULL for this state).
    pub fn text(mut self, name: &str, f: impl Fn(&S) -> Option<String> + Send + Sync + 'static) -> Self {
        let def = ColumnDef { name: name.to_string(), ty: ColumnType::Text };
        self.columns.push((def, Box::new(move |s| f(s).map(ColumnValue::Text))));
        self
    }

    /// An integer column (`None`: NULL for this state).
    pub fn integer(mut self, name: &str, f: impl Fn(&S) -> Option<i64> + Send + Sync + 'static) -> Self {
        let def = ColumnDef { name: name.to_string(), ty: ColumnType::Integer };
        self.columns.push((def, Box::new(move |s| f(s).map(ColumnValue::Integer))));
        self
    }

    /// The flow the state asks to have run at a time (`None`: nothing to run).
    pub fn scheduled(mut self, f: impl Fn(&S) -> Option<ScheduledActivity> + Send + Sync + 'static) -> Self {
        self.scheduled = Some(Box::new(f));
        self
    }
}

impl<S: ContractState + 'static> StateSchema for TypedSchema<S> {
    fn type_id(&self) -> &str {
        S::TYPE_ID
    }

    fn contract(&self) -> &str {
        S::CONTRACT
    }

    fn columns(&self) -> Vec<ColumnDef> {
        self.columns.iter().map(|(d, _)| d.clone()).collect()
    }

    fn extract(&self, data: &StateData) -> Result<StateColumns, String> {
        let state: S = data.unpack().map_err(|e| e.to_string())?;
        Ok(StateColumns {
            linear: self.linear.as_ref().map(|f| f(&state)),
            fungible: self.fungible.as_ref().map(|f| f(&state)),
            values: self.columns.iter().filter_map(|(d, f)| f(&state).map(|v| (d.name.clone(), v))).collect(),
            scheduled: self.scheduled.as_ref().and_then(|f| f(&state)),
        })
    }
}

/// A schema for a fungible state type `S`: `f` returns its owner, issuer, token and quantity
/// (a [`FungibleColumns`], or the tuple `(owner, issuer, token, quantity)`).
///
/// ```
/// # use treaty_core::{AbstractParty, Amount, ContractState, Currency, Issued};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Cash { amount: Amount<Issued<Currency>>, owner: AbstractParty }
/// # impl ContractState for Cash {
/// #     const TYPE_ID: &'static str = "treaty.finance.Cash";
/// #     fn participants(&self) -> Vec<AbstractParty> { vec![self.owner.clone()] }
/// # }
/// use treaty_vault::{FungibleColumns, fungible};
/// let schema = fungible(|c: &Cash| FungibleColumns::issued(&c.owner, &c.amount));
/// ```
pub fn fungible<S, R>(f: impl Fn(&S) -> R + Send + Sync + 'static) -> TypedSchema<S>
where
    S: ContractState,
    R: Into<FungibleColumns>,
{
    TypedSchema::new().fungible(f)
}

/// Names a sort specification may use for built-in columns; app columns may not take them.
pub(crate) const BUILTIN_SORT_NAMES: &[&str] = &["recorded_at", "consumed_at", "state_ref", "quantity", "type_id"];

/// The registered schemas and the app columns they declare.
#[derive(Default)]
pub(crate) struct Registry {
    schemas: HashMap<String, Arc<dyn StateSchema>>,
    columns: BTreeMap<String, ColumnType>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("schemas", &self.schemas.keys().collect::<Vec<_>>()).field("columns", &self.columns).finish()
    }
}

fn valid_column_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Registry {
    /// A copy with `schema` added, or why it cannot be.
    pub fn with(&self, schema: Arc<dyn StateSchema>) -> Result<Registry, VaultError> {
        let type_id = schema.type_id().to_string();
        let bad = |reason: String| VaultError::InvalidSchema { type_id: type_id.clone(), reason };
        if self.schemas.contains_key(&type_id) {
            return Err(bad("a schema for this type id is already registered".into()));
        }
        let mut columns = self.columns.clone();
        let mut seen = std::collections::HashSet::new();
        for def in schema.columns() {
            if !valid_column_name(&def.name) {
                return Err(bad(format!(
                    "column name {:?} is not valid (lower-case letters, digits and _, starting with a letter, at most 63 characters)",
                    def.name
                )));
            }
            if BUILTIN_SORT_NAMES.contains(&def.name.as_str()) {
                return Err(bad(format!("column name {:?} is reserved for a built-in column", def.name)));
            }
            if !seen.insert(def.name.clone()) {
                return Err(bad(format!("column {:?} is declared twice", def.name)));
            }
            match columns.get(&def.name) {
                Some(ty) if *ty != def.ty => {
                    return Err(bad(format!(
                        "column {:?} is declared {} here but {} by another schema",
                        def.name,
                        def.ty.name(),
                        ty.name()
                    )));
                }
                _ => {
                    columns.insert(def.name.clone(), def.ty);
                }
            }
        }
        let mut schemas = self.schemas.clone();
        schemas.insert(type_id, schema);
        Ok(Registry { schemas, columns })
    }

    /// The type of app column `name`, or [`VaultError::UnknownColumn`].
    pub fn column_type(&self, name: &str) -> Result<ColumnType, VaultError> {
        self.columns.get(name).copied().ok_or_else(|| VaultError::UnknownColumn { name: name.to_string(), known: self.known_columns() })
    }

    /// Whether `name` is a registered app column.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.contains_key(name)
    }

    /// The registered app columns, for error messages.
    pub fn known_columns(&self) -> String {
        if self.columns.is_empty() { "none".into() } else { self.columns.keys().cloned().collect::<Vec<_>>().join(", ") }
    }

    /// The columns of a state about to be recorded, checked: declared names of the right type,
    /// each at most once, a quantity that fits the column.
    /// A state governed by another contract than its type's gets no columns (see
    /// [`StateSchema::contract`]).
    pub fn extract(&self, state_ref: &StateRef, state: &TransactionState) -> Result<StateColumns, VaultError> {
        let data = &state.data;
        let Some(schema) = self.schemas.get(&data.type_id) else { return Ok(StateColumns::default()) };
        if schema.contract() != state.contract {
            return Ok(StateColumns::default());
        }
        let bad = |reason: String| VaultError::Extraction { state_ref: *state_ref, type_id: data.type_id.clone(), reason };
        let columns = schema.extract(data).map_err(bad)?;
        let declared: HashMap<String, ColumnType> = schema.columns().into_iter().map(|d| (d.name, d.ty)).collect();
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &columns.values {
            match declared.get(name) {
                None => return Err(bad(format!("column {name:?} is not declared by the schema"))),
                Some(ty) if *ty != value.ty() => {
                    return Err(bad(format!("column {name:?} is {} but the value is {}", ty.name(), value.ty().name())));
                }
                Some(_) => {}
            }
            if !seen.insert(name.as_str()) {
                return Err(bad(format!("column {name:?} has two values")));
            }
        }
        if let Some(f) = &columns.fungible
            && i64::try_from(f.quantity).is_err()
        {
            return Err(bad(format!("quantity {} is above the largest storable quantity {}", f.quantity, i64::MAX)));
        }
        if let Some(a) = &columns.scheduled
            && a.flow.is_empty()
        {
            return Err(bad("the scheduled activity names no flow".into()));
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names() {
        assert!(valid_column_name("trade_ref"));
        assert!(valid_column_name("a1"));
        for bad in ["", "1a", "Trade", "trade-ref", "trade ref", &"a".repeat(64)] {
            assert!(!valid_column_name(bad), "{bad}");
        }
    }
}
