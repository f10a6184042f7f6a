//! Query criteria: which states a query, a count, an aggregate or an update feed is about.
//!
//! [`Criteria`] is a tree of conditions on what the vault stores about a state, composed with
//! [`Criteria::and`] / [`Criteria::or`]. It is evaluated two ways that must agree: compiled to
//! SQL for queries, and matched in memory against freshly applied states for the update feed.
//! No criterion negates, so SQL's NULL (unknown) always behaves as "does not match".
//!
//! Criteria are explicit: nothing filters on status unless asked ([`Criteria::unconsumed`]).

use treaty_core::{PublicKey, Timestamp, X500Name};

use crate::error::VaultError;
use crate::locks::LockId;
use crate::record::{Derived, Status, VaultState, key_text};
use crate::schema::{ColumnType, ColumnValue, Registry};
use crate::sql::{Arg, Sql};

/// Which statuses match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusFilter {
    /// Unconsumed states.
    Unconsumed,
    /// Consumed states.
    Consumed,
    /// Both.
    All,
}

/// A half-open time range `[from, until)`; a missing end is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TimeRange {
    /// The first instant in the range.
    pub from: Option<Timestamp>,
    /// The first instant after the range.
    pub until: Option<Timestamp>,
}

impl TimeRange {
    /// `[from, until)`.
    pub fn between(from: Timestamp, until: Timestamp) -> TimeRange {
        TimeRange { from: Some(from), until: Some(until) }
    }

    fn contains(&self, t: Timestamp) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

/// Conditions on the fungible columns; every condition given must hold, and the state must
/// have the fungible shape (so the default matches exactly the fungible states).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FungibleCriteria {
    /// The owner's key is one of these.
    pub owners: Option<Vec<PublicKey>>,
    /// The issuer is one of these.
    pub issuers: Option<Vec<String>>,
    /// The token is one of these.
    pub tokens: Option<Vec<String>>,
    /// The quantity is at least this.
    pub min_quantity: Option<u64>,
    /// The quantity is at most this.
    pub max_quantity: Option<u64>,
}

impl FungibleCriteria {
    /// States of `token`.
    pub fn token(token: &str) -> FungibleCriteria {
        FungibleCriteria { tokens: Some(vec![token.to_string()]), ..Default::default() }
    }

    /// Also: issued by `issuer`.
    pub fn issuer(mut self, issuer: &str) -> FungibleCriteria {
        self.issuers.get_or_insert_with(Vec::new).push(issuer.to_string());
        self
    }

    /// Also: owned by `owner`.
    pub fn owner(mut self, owner: &PublicKey) -> FungibleCriteria {
        self.owners.get_or_insert_with(Vec::new).push(owner.clone());
        self
    }

    /// Also: a quantity in `[min, max]` (either end optional).
    pub fn quantity(mut self, min: Option<u64>, max: Option<u64>) -> FungibleCriteria {
        self.min_quantity = min;
        self.max_quantity = max;
        self
    }
}

/// A condition on an app-defined column; a state without a value for the column never matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnCondition {
    /// Equal to the value.
    Equals(ColumnValue),
    /// Equal to one of the values.
    In(Vec<ColumnValue>),
    /// Within `[min, max]` (either end optional; text compares bytewise).
    Range {
        /// The smallest value that matches.
        min: Option<ColumnValue>,
        /// The largest value that matches.
        max: Option<ColumnValue>,
    },
}

/// Conditions on soft locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockFilter {
    /// No lock holds the state.
    Unlocked,
    /// Some lock holds the state.
    Locked,
    /// This lock holds the state.
    LockedBy(LockId),
}

/// Which states match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Criteria {
    /// Every state.
    All,
    /// By status.
    Status(StatusFilter),
    /// The state's type id is one of these.
    StateTypes(Vec<String>),
    /// The state's contract is one of these.
    Contracts(Vec<String>),
    /// The state's notary is one of these.
    Notaries(Vec<X500Name>),
    /// One of the state's participants has one of these keys.
    Participants(Vec<PublicKey>),
    /// The state's linear id (its UUID part) is one of these.
    LinearIds(Vec<uuid::Uuid>),
    /// The state's external id is one of these.
    ExternalIds(Vec<String>),
    /// Recorded within the range.
    Recorded(TimeRange),
    /// Consumed within the range (unconsumed states never match).
    Consumed(TimeRange),
    /// Unconsumed as of an instant: recorded at or before it and not consumed by then
    /// (`recorded_at <= T AND (consumed_at IS NULL OR consumed_at > T)`).
    UnconsumedAt(Timestamp),
    /// Conditions on the fungible columns.
    Fungible(FungibleCriteria),
    /// A condition on an app-defined column.
    Column {
        /// The column's name.
        name: String,
        /// The condition.
        condition: ColumnCondition,
    },
    /// Conditions on soft locks.
    Lock(LockFilter),
    /// Every one matches (an empty list matches everything).
    And(Vec<Criteria>),
    /// Some one matches (an empty list matches nothing).
    Or(Vec<Criteria>),
}

impl Criteria {
    /// Unconsumed states.
    pub fn unconsumed() -> Criteria {
        Criteria::Status(StatusFilter::Unconsumed)
    }

    /// Consumed states.
    pub fn consumed() -> Criteria {
        Criteria::Status(StatusFilter::Consumed)
    }

    /// States of this type id (whatever contract governs them: a query of what is there).
    pub fn state_type(type_id: &str) -> Criteria {
        Criteria::StateTypes(vec![type_id.to_string()])
    }

    /// States that are `S`: of its type id *and* governed by its own contract
    /// ([`treaty_core::ContractState::CONTRACT`]). Any contract can make states of any type id,
    /// under rules of its own, so code that acts on an `S` it finds (a linear state to evolve,
    /// a lock to open) asks for this. Filtered in the query, so such lookalikes cannot crowd a
    /// page of results either.
    pub fn of_type<S: treaty_core::ContractState>() -> Criteria {
        Criteria::state_type(S::TYPE_ID).and(Criteria::Contracts(vec![S::CONTRACT.to_string()]))
    }

    /// States in which the party with this key participates.
    pub fn participant(key: &PublicKey) -> Criteria {
        Criteria::Participants(vec![key.clone()])
    }

    /// States guarded by this notary.
    pub fn notary(name: &X500Name) -> Criteria {
        Criteria::Notaries(vec![name.clone()])
    }

    /// Every version of the linear state with this id.
    pub fn linear_id(id: uuid::Uuid) -> Criteria {
        Criteria::LinearIds(vec![id])
    }

    /// Linear states with this external id.
    pub fn external_id(id: &str) -> Criteria {
        Criteria::ExternalIds(vec![id.to_string()])
    }

    /// App column `name` equals `value`.
    pub fn column_eq(name: &str, value: impl Into<ColumnValue>) -> Criteria {
        Criteria::Column { name: name.to_string(), condition: ColumnCondition::Equals(value.into()) }
    }

    /// App column `name` within `[min, max]`.
    pub fn column_range(name: &str, min: Option<ColumnValue>, max: Option<ColumnValue>) -> Criteria {
        Criteria::Column { name: name.to_string(), condition: ColumnCondition::Range { min, max } }
    }

    /// Both this and `other`.
    pub fn and(self, other: Criteria) -> Criteria {
        match self {
            Criteria::And(mut all) => {
                all.push(other);
                Criteria::And(all)
            }
            me => Criteria::And(vec![me, other]),
        }
    }

    /// This or `other`.
    pub fn or(self, other: Criteria) -> Criteria {
        match self {
            Criteria::Or(mut any) => {
                any.push(other);
                Criteria::Or(any)
            }
            me => Criteria::Or(vec![me, other]),
        }
    }

    /// Checks the criteria against the registered app columns.
    pub(crate) fn validate(&self, registry: &Registry) -> Result<(), VaultError> {
        match self {
            Criteria::Column { name, condition } => {
                let ty = registry.column_type(name)?;
                let values: Vec<&ColumnValue> = match condition {
                    ColumnCondition::Equals(v) => vec![v],
                    ColumnCondition::In(vs) => vs.iter().collect(),
                    ColumnCondition::Range { min, max } => min.iter().chain(max.iter()).collect(),
                };
                match values.into_iter().find(|v| v.ty() != ty) {
                    Some(v) => Err(VaultError::ColumnTypeMismatch { name: name.clone(), expected: ty.name(), found: v.ty().name() }),
                    None => Ok(()),
                }
            }
            Criteria::And(list) | Criteria::Or(list) => list.iter().try_for_each(|c| c.validate(registry)),
            _ => Ok(()),
        }
    }

    /// The SQL condition over `s` (`treaty_vault_states`) and `f` (`treaty_vault_fungible`,
    /// left-joined), its values added to `sql`. Call [`Criteria::validate`] first.
    pub(crate) fn to_sql(&self, sql: &mut Sql) -> String {
        let text_in = |sql: &mut Sql, column: &str, items: Vec<String>| -> String {
            if items.is_empty() {
                return "FALSE".into();
            }
            format!("{column} IN ({})", sql.list(items.into_iter().map(Arg::Text)))
        };
        match self {
            Criteria::All => "TRUE".into(),
            Criteria::Status(StatusFilter::All) => "TRUE".into(),
            Criteria::Status(StatusFilter::Unconsumed) => "s.status = 'unconsumed'".into(),
            Criteria::Status(StatusFilter::Consumed) => "s.status = 'consumed'".into(),
            Criteria::StateTypes(types) => text_in(sql, "s.type_id", types.clone()),
            Criteria::Contracts(contracts) => text_in(sql, "s.contract", contracts.clone()),
            Criteria::Notaries(names) => text_in(sql, "s.notary", names.iter().map(|n| n.to_string()).collect()),
            Criteria::LinearIds(ids) => text_in(sql, "s.linear_id", ids.iter().map(|u| u.hyphenated().to_string()).collect()),
            Criteria::ExternalIds(ids) => text_in(sql, "s.external_id", ids.clone()),
            Criteria::Participants(keys) => {
                if keys.is_empty() {
                    return "FALSE".into();
                }
                let list = sql.list(keys.iter().map(|k| Arg::Text(key_text(k))));
                format!("EXISTS (SELECT 1 FROM treaty_vault_participants p WHERE p.state_seq = s.seq AND p.owning_key IN ({list}))")
            }
            Criteria::Recorded(range) => time_range_sql(sql, "s.recorded_at", range),
            Criteria::Consumed(range) => format!("(s.consumed_at IS NOT NULL AND {})", time_range_sql(sql, "s.consumed_at", range)),
            Criteria::UnconsumedAt(t) => {
                let t1 = sql.arg(Arg::Int(t.micros()));
                let t2 = sql.arg(Arg::Int(t.micros()));
                format!("(s.recorded_at <= {t1} AND (s.consumed_at IS NULL OR s.consumed_at > {t2}))")
            }
            Criteria::Fungible(fc) => {
                let mut parts = vec!["f.state_seq IS NOT NULL".to_string()];
                if let Some(owners) = &fc.owners {
                    parts.push(text_in(sql, "f.owner_key", owners.iter().map(key_text).collect()));
                }
                if let Some(issuers) = &fc.issuers {
                    parts.push(text_in(sql, "f.issuer", issuers.clone()));
                }
                if let Some(tokens) = &fc.tokens {
                    parts.push(text_in(sql, "f.token", tokens.clone()));
                }
                if let Some(min) = fc.min_quantity {
                    // Stored quantities are at most i64::MAX.
                    match i64::try_from(min) {
                        Ok(min) => parts.push(format!("f.quantity >= {}", sql.arg(Arg::Int(min)))),
                        Err(_) => parts.push("FALSE".into()),
                    }
                }
                if let Some(max) = fc.max_quantity
                    && let Ok(max) = i64::try_from(max)
                {
                    parts.push(format!("f.quantity <= {}", sql.arg(Arg::Int(max))));
                }
                format!("({})", parts.join(" AND "))
            }
            Criteria::Column { name, condition } => {
                let n = sql.arg(Arg::Text(name.clone()));
                let cond = match condition {
                    ColumnCondition::Equals(v) => column_cmp(sql, v, "="),
                    ColumnCondition::In(vs) if vs.is_empty() => "FALSE".into(),
                    ColumnCondition::In(vs) => format!("({})", vs.iter().map(|v| column_cmp(sql, v, "=")).collect::<Vec<_>>().join(" OR ")),
                    ColumnCondition::Range { min, max } => {
                        let mut parts = vec!["TRUE".to_string()];
                        if let Some(v) = min {
                            parts.push(column_cmp(sql, v, ">="));
                        }
                        if let Some(v) = max {
                            parts.push(column_cmp(sql, v, "<="));
                        }
                        parts.join(" AND ")
                    }
                };
                format!("EXISTS (SELECT 1 FROM treaty_vault_columns c WHERE c.state_seq = s.seq AND c.name = {n} AND {cond})")
            }
            Criteria::Lock(LockFilter::Unlocked) => "s.lock_id IS NULL".into(),
            Criteria::Lock(LockFilter::Locked) => "s.lock_id IS NOT NULL".into(),
            Criteria::Lock(LockFilter::LockedBy(id)) => format!("s.lock_id = {}", sql.arg(Arg::Text(id.to_string()))),
            Criteria::And(list) if list.is_empty() => "TRUE".into(),
            Criteria::Or(list) if list.is_empty() => "FALSE".into(),
            Criteria::And(list) => format!("({})", list.iter().map(|c| c.to_sql(sql)).collect::<Vec<_>>().join(" AND ")),
            Criteria::Or(list) => format!("({})", list.iter().map(|c| c.to_sql(sql)).collect::<Vec<_>>().join(" OR ")),
        }
    }

    /// Whether a state matches, in memory: the same answer [`Criteria::to_sql`] gives in the
    /// database, for the state as `state` and `derived` describe it.
    pub(crate) fn matches(&self, state: &VaultState, derived: &Derived) -> bool {
        match self {
            Criteria::All | Criteria::Status(StatusFilter::All) => true,
            Criteria::Status(StatusFilter::Unconsumed) => state.status == Status::Unconsumed,
            Criteria::Status(StatusFilter::Consumed) => state.status == Status::Consumed,
            Criteria::StateTypes(types) => types.contains(&state.state.data.type_id),
            Criteria::Contracts(contracts) => contracts.contains(&state.state.contract),
            Criteria::Notaries(names) => names.contains(&state.state.notary.name),
            Criteria::LinearIds(ids) => derived.linear.as_ref().is_some_and(|l| ids.contains(&l.id)),
            Criteria::ExternalIds(ids) => {
                derived.linear.as_ref().and_then(|l| l.external_id.as_ref()).is_some_and(|e| ids.iter().any(|i| i == e))
            }
            Criteria::Participants(keys) => {
                let keys: Vec<String> = keys.iter().map(key_text).collect();
                derived.participants.iter().any(|(k, _)| keys.contains(k))
            }
            Criteria::Recorded(range) => range.contains(state.recorded_at),
            Criteria::Consumed(range) => state.consumed_at.is_some_and(|t| range.contains(t)),
            Criteria::UnconsumedAt(t) => state.recorded_at <= *t && state.consumed_at.is_none_or(|c| c > *t),
            Criteria::Fungible(fc) => {
                let Some(f) = &derived.fungible else { return false };
                let quantity = u64::try_from(f.quantity).unwrap_or(0);
                fc.owners.as_ref().is_none_or(|o| o.iter().any(|k| key_text(k) == f.owner_key))
                    && fc.issuers.as_ref().is_none_or(|i| i.contains(&f.issuer))
                    && fc.tokens.as_ref().is_none_or(|t| t.contains(&f.token))
                    && fc.min_quantity.is_none_or(|m| quantity >= m)
                    && fc.max_quantity.is_none_or(|m| quantity <= m)
            }
            Criteria::Column { name, condition } => {
                let Some((_, value)) = derived.values.iter().find(|(n, _)| n == name) else { return false };
                match condition {
                    ColumnCondition::Equals(v) => value == v,
                    ColumnCondition::In(vs) => vs.contains(value),
                    ColumnCondition::Range { min, max } => {
                        min.as_ref().is_none_or(|m| value.ty() == m.ty() && value >= m)
                            && max.as_ref().is_none_or(|m| value.ty() == m.ty() && value <= m)
                    }
                }
            }
            Criteria::Lock(LockFilter::Unlocked) => state.lock_id.is_none(),
            Criteria::Lock(LockFilter::Locked) => state.lock_id.is_some(),
            Criteria::Lock(LockFilter::LockedBy(id)) => state.lock_id == Some(*id),
            Criteria::And(list) => list.iter().all(|c| c.matches(state, derived)),
            Criteria::Or(list) => list.iter().any(|c| c.matches(state, derived)),
        }
    }
}

fn time_range_sql(sql: &mut Sql, column: &str, range: &TimeRange) -> String {
    let mut parts = vec!["TRUE".to_string()];
    if let Some(from) = range.from {
        parts.push(format!("{column} >= {}", sql.arg(Arg::Int(from.micros()))));
    }
    if let Some(until) = range.until {
        parts.push(format!("{column} < {}", sql.arg(Arg::Int(until.micros()))));
    }
    format!("({})", parts.join(" AND "))
}

/// `c.int_value OP $n` or `c.text_value OP $n`, by the value's type.
fn column_cmp(sql: &mut Sql, v: &ColumnValue, op: &str) -> String {
    match v {
        ColumnValue::Integer(i) => format!("c.int_value {op} {}", sql.arg(Arg::Int(*i))),
        ColumnValue::Text(t) => format!("c.text_value {op} {}", sql.arg(Arg::Text(t.clone()))),
    }
}

/// The SQL column of an app column's value of type `ty` in the join aliased `alias`.
pub(crate) fn value_column(alias: &str, ty: ColumnType) -> String {
    match ty {
        ColumnType::Integer => format!("{alias}.int_value"),
        ColumnType::Text => format!("{alias}.text_value"),
    }
}
