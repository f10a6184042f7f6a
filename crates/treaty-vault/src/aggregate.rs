//! Aggregates: counts and quantity sums grouped by columns, and balances per token and issuer.
//!
//! Sums are exact (`u128`) on both backends: the database sums the high and the low 32 bits
//! of each quantity separately, neither of which can overflow a 64-bit integer below 2^31
//! states, and the vault combines them.

use sqlx::Row;

use crate::Vault;
use crate::criteria::{Criteria, FungibleCriteria, value_column};
use crate::error::VaultError;
use crate::query::FROM_STATES;
use crate::schema::{ColumnType, ColumnValue};
use crate::sql::{Arg, Context, Sql, bind_args, on_pool};

/// A column to group an aggregate by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// The fungible token (NULL for non-fungible states).
    Token,
    /// The fungible issuer.
    Issuer,
    /// The fungible owner's key (text form).
    Owner,
    /// The type id.
    StateType,
    /// The contract.
    Contract,
    /// The notary's name.
    Notary,
    /// The status (`unconsumed` / `consumed`).
    Status,
    /// A registered app column.
    Column(String),
}

/// One group of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateRow {
    /// The group's values, one per [`GroupBy`] asked for (`None` for NULL).
    pub group: Vec<Option<ColumnValue>>,
    /// How many states.
    pub count: u64,
    /// The sum of their fungible quantities (non-fungible states add nothing).
    pub sum: u128,
}

/// The balance of one token from one issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The token (`USD`).
    pub token: String,
    /// The issuer.
    pub issuer: String,
    /// The sum of the quantities, in the token's smallest unit.
    pub quantity: u128,
    /// How many states hold it.
    pub states: u64,
}

impl Vault {
    /// Counts and sums the quantities of the states matching `criteria`, grouped by
    /// `group_by` (one row in total when empty), groups sorted by their values (NULLs last).
    pub async fn aggregate(&self, criteria: &Criteria, group_by: &[GroupBy]) -> Result<Vec<AggregateRow>, VaultError> {
        let registry = self.registry();
        criteria.validate(&registry)?;
        let mut sql = Sql::default();
        let mut joins = String::new();
        let mut exprs: Vec<(String, ColumnType)> = Vec::new();
        for (i, g) in group_by.iter().enumerate() {
            let text = |e: &str| (e.to_string(), ColumnType::Text);
            exprs.push(match g {
                GroupBy::Token => text("f.token"),
                GroupBy::Issuer => text("f.issuer"),
                GroupBy::Owner => text("f.owner_key"),
                GroupBy::StateType => text("s.type_id"),
                GroupBy::Contract => text("s.contract"),
                GroupBy::Notary => text("s.notary"),
                GroupBy::Status => text("s.status"),
                GroupBy::Column(name) => {
                    let ty = registry.column_type(name)?;
                    let alias = format!("gc{i}");
                    let n = sql.arg(Arg::Text(name.clone()));
                    joins.push_str(&format!(" LEFT JOIN treaty_vault_columns {alias} ON {alias}.state_seq = s.seq AND {alias}.name = {n}"));
                    (value_column(&alias, ty), ty)
                }
            });
        }
        let filter = criteria.to_sql(&mut sql);
        let mut text = String::from("SELECT ");
        for (e, _) in &exprs {
            text.push_str(e);
            text.push_str(", ");
        }
        text.push_str(&format!(
            "COUNT(*), CAST(SUM(f.quantity >> 32) AS BIGINT), CAST(SUM(f.quantity & 4294967295) AS BIGINT) {FROM_STATES}{joins} WHERE {filter}"
        ));
        if !exprs.is_empty() {
            let list = exprs.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>().join(", ");
            let order = exprs.iter().map(|(e, _)| format!("CASE WHEN {e} IS NULL THEN 1 ELSE 0 END, {e}")).collect::<Vec<_>>().join(", ");
            text.push_str(&format!(" GROUP BY {list} ORDER BY {order}"));
        }
        let what = "aggregating treaty_vault_states";
        on_pool!(self.db(), pool => {
            let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_all(pool).await.ctx(what)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut group = Vec::with_capacity(exprs.len());
                for (i, (_, ty)) in exprs.iter().enumerate() {
                    group.push(match ty {
                        ColumnType::Text => row.try_get::<Option<String>, _>(i).ctx(what)?.map(ColumnValue::Text),
                        ColumnType::Integer => row.try_get::<Option<i64>, _>(i).ctx(what)?.map(ColumnValue::Integer),
                    });
                }
                let n = exprs.len();
                let count = row.try_get::<i64, _>(n).ctx(what)?;
                let high = row.try_get::<Option<i64>, _>(n + 1).ctx(what)?.unwrap_or(0);
                let low = row.try_get::<Option<i64>, _>(n + 2).ctx(what)?.unwrap_or(0);
                let corrupt = || VaultError::Corrupt { what: "treaty_vault_fungible.quantity".into(), reason: "a negative sum".into() };
                let sum = (u128::try_from(high).map_err(|_| corrupt())? << 32) + u128::try_from(low).map_err(|_| corrupt())?;
                out.push(AggregateRow { group, count: u64::try_from(count).unwrap_or(0), sum });
            }
            Ok(out)
        })
    }

    /// The balance of each token and issuer among the fungible states matching `criteria`
    /// (typically [`Criteria::unconsumed`]), sorted by token then issuer. Amounts of different
    /// issuers are never summed together.
    pub async fn balances(&self, criteria: &Criteria) -> Result<Vec<Balance>, VaultError> {
        let criteria = criteria.clone().and(Criteria::Fungible(FungibleCriteria::default()));
        let rows = self.aggregate(&criteria, &[GroupBy::Token, GroupBy::Issuer]).await?;
        rows.into_iter()
            .map(|r| match r.group.as_slice() {
                [Some(ColumnValue::Text(token)), Some(ColumnValue::Text(issuer))] => {
                    Ok(Balance { token: token.clone(), issuer: issuer.clone(), quantity: r.sum, states: r.count })
                }
                other => Err(VaultError::Corrupt { what: "treaty_vault_fungible".into(), reason: format!("a balance group {other:?}") }),
            })
            .collect()
    }
}
